/**
 * The demo's scripted story, step by step, each told in plain words with what was measured:
 * an api instance crashes, the agent leading Raft is killed, the intention web -> api is switched
 * to deny and back. Every step restores what it broke, so the cluster ends healthy (`--keep`).
 */
import {
  intentionActionOf,
  leaderOf,
  membersOf,
  passingApiInstances,
  raftServersOf,
  updateIntention,
} from './agent-api.ts'
import type { ApiApp, WebApp } from './apps.ts'
import type { DemoAgent, DemoCluster } from './cluster.ts'
import { MEASURE_POLL_MS, STEP_TIMEOUT_MS } from './constants.ts'
import type { Traffic, WindowCounts } from './traffic.ts'
import { sleep, waitUntil } from './wait.ts'

/** One step's outcome, as the `--json` summary lists it. */
export interface StepResult {
  name: string
  ok: boolean
  /** What was measured, in milliseconds from the step's action. */
  timings_ms: Record<string, number>
  /** Requests completed while the step ran, and how they ended. */
  requests: WindowCounts
  error?: string
}

export interface StoryContext {
  cluster: DemoCluster
  apis: ApiApp[]
  /** The web instance on each agent, by agent name. */
  webs: Map<string, WebApp>
  /** The agent each api instance is registered on, by instance id. */
  apiHost: Map<string, DemoAgent>
  traffic: Traffic
  say: (line: string) => void
  signal: AbortSignal
  /** Agents being restarted in the background (not to be used by a step). */
  restarting: Set<DemoAgent>
  /** Steps still running in the background; the story waits for them before it ends. */
  later: Promise<StepResult>[]
  /** Time windows [from, to] (ms) in which a refusal by intention is the expected outcome. */
  expectedRefusals: [number, number][]
}

/** The agents running and not restarting. */
const alive = (ctx: StoryContext): DemoAgent[] =>
  ctx.cluster.agents.filter(
    (a) => a.child.exitCode === null && a.child.signalCode === null && !ctx.restarting.has(a),
  )

/** Polls every agent given until `check` holds on each; resolves with the ms since `since`. */
async function untilEveryAgent(
  ctx: StoryContext,
  what: string,
  since: number,
  agents: DemoAgent[],
  check: (a: DemoAgent) => Promise<boolean>,
): Promise<number> {
  await until(ctx, what, async () => (await Promise.all(agents.map(check))).every(Boolean))
  return Date.now() - since
}

function until(ctx: StoryContext, what: string, check: () => Promise<boolean>): Promise<number> {
  return waitUntil(what, check, { timeoutMs: STEP_TIMEOUT_MS, everyMs: MEASURE_POLL_MS, signal: ctx.signal })
}

/** The agent whose web instance the traffic enters through. */
export function entryAgentName(ctx: Pick<StoryContext, 'webs' | 'traffic'>): string | undefined {
  for (const [name, web] of ctx.webs) if (web.port === ctx.traffic.entryPort) return name
  return undefined
}

/**
 * The Raft leader's node name, as the running agents report it: waits while there is none (an
 * election under way, e.g. on a loaded machine).
 */
async function currentLeader(ctx: StoryContext): Promise<string> {
  let leader: string | undefined
  await until(ctx, 'a Raft leader', async () => {
    const servers = await raftServersOf(alive(ctx)[0]!.api)
    leader = servers.find((s) => s.leader)?.node
    return leader !== undefined
  })
  return leader!
}

function failedLine(c: WindowCounts): string {
  const why = c.failures !== undefined ? ` (${[...new Set(c.failures)].join('; ')})` : ''
  return `${c.failed} of ${c.total} requests failed${why}`
}

/**
 * Crash one api instance (v1) while traffic flows: how long until every agent's catalog lists it
 * critical, and how many requests failed meanwhile (none: the sidecars retry on another instance).
 * Then it comes back and is passing again.
 */
export async function instanceKillStep(ctx: StoryContext): Promise<StepResult> {
  const leader = await currentLeader(ctx)
  const victim =
    ctx.apis.find((a) => a.version === 'v1' && ctx.apiHost.get(a.id)?.name !== leader) ?? ctx.apis[0]!
  const host = ctx.apiHost.get(victim.id)!
  ctx.say(`\n▶ crash api instance ${victim.id} (${victim.version}, on ${host.name}) while traffic flows`)
  const t0 = Date.now()
  await victim.crash()
  const agents = alive(ctx)
  const notPassing = await untilEveryAgent(
    ctx,
    `every agent to see ${victim.id} critical`,
    t0,
    agents,
    async (a) => (await passingApiInstances(a.api)).every((i) => i.id !== victim.id),
  )
  const during = ctx.traffic.window(t0)
  ctx.say(
    `  every agent lists ${victim.id} critical after ${notPassing} ms (it is checked every 500 ms); ` +
      `${failedLine(during)} meanwhile (sidecars retry a failed request on another instance)`,
  )
  const t1 = Date.now()
  await victim.start()
  const back = await untilEveryAgent(ctx, `every agent to see ${victim.id} passing`, t1, agents, async (a) =>
    (await passingApiInstances(a.api)).some((i) => i.id === victim.id),
  )
  const all = ctx.traffic.window(t0)
  ctx.say(
    `  ${victim.id} restarted: passing again everywhere after ${back} ms; ${failedLine(all)} in the whole step`,
  )
  return {
    name: 'instance-kill',
    ok: all.failed === 0 && all.denied === 0,
    timings_ms: { critical_everywhere: notPassing, passing_again: back, restart_at: t1 - t0 },
    requests: all,
  }
}

/**
 * kill -9 the agent that leads Raft: how long until the survivors elect a new leader and until
 * every survivor reports the victim dead, and how many requests failed (none). Traffic enters
 * through a web instance on another agent. Then the victim restarts and rejoins (`rejoinStep`).
 */
export async function leaderKillStep(ctx: StoryContext): Promise<StepResult> {
  const before = alive(ctx)
  const leader = await currentLeader(ctx)
  const victim = before.find((a) => a.name === leader)
  if (victim === undefined) throw new Error(`the Raft leader ${leader} is not a running agent`)
  const oldLeaderAddress = await leaderOf(victim.api)
  if (entryAgentName(ctx) === victim.name) {
    const other = [...ctx.webs].find(([name]) => name !== victim.name)!
    const oldEntry = ctx.traffic.entryPort
    ctx.traffic.entryPort = other[1].port
    ctx.say(`\n  (traffic now enters through web on ${other[0]}: ${victim.name} is about to go)`)
    // Requests that went in through the victim's web are not the mesh's to save: let them finish.
    await ctx.traffic.drained(oldEntry)
  }
  const survivors = before.filter((a) => a !== victim)
  ctx.say(`\n▶ kill -9 ${victim.name}, the agent that leads Raft (a crashed machine)`)
  const t0 = Date.now()
  await ctx.cluster.kill(victim)
  const [newLeader, dead] = await Promise.all([
    untilEveryAgent(ctx, 'the survivors to elect a new Raft leader', t0, survivors, async (a) => {
      const l = await leaderOf(a.api)
      return l !== undefined && l !== oldLeaderAddress
    }),
    untilEveryAgent(ctx, `every survivor to report ${victim.name} dead`, t0, survivors, async (a) =>
      (await membersOf(a.api)).some((m) => m.name === victim.name && m.status === 'dead'),
    ),
  ])
  const during = ctx.traffic.window(t0)
  const elected = await currentLeader(ctx)
  ctx.say(`  new Raft leader ${elected} after ${newLeader} ms`)
  ctx.say(`  every survivor reports ${victim.name} dead after ${dead} ms (Serf's LAN default: ~6-7 s)`)
  const hosted = ctx.apis.filter((x) => ctx.apiHost.get(x.id) === victim).map((x) => x.id)
  const why = hosted.length > 0 ? ` (${hosted.join(', ')} went with it; retries moved its requests)` : ''
  ctx.say(`  ${failedLine(during)} meanwhile${why}`)

  // The victim restarts while the story goes on (on a loaded machine an agent takes seconds to
  // start); the demo waits for it before it ends.
  ctx.restarting.add(victim)
  const rejoin = rejoinStep(ctx, victim).finally(() => ctx.restarting.delete(victim))
  rejoin.catch(() => {}) // rejects only when the demo is stopping; awaited (or not) by the story
  ctx.later.push(rejoin)
  return {
    name: 'leader-kill',
    ok: during.failed === 0 && during.denied === 0,
    timings_ms: { new_leader: newLeader, dead_everywhere: dead },
    requests: during,
  }
}

/**
 * The killed agent started again with its data dir (same identity, higher incarnation): how long
 * until every agent lists it alive, it is back in the Raft group and its api instance is passing.
 */
async function rejoinStep(ctx: StoryContext, victim: DemoAgent): Promise<StepResult> {
  const t0 = Date.now()
  try {
    ctx.say(`  restarting ${victim.name} with its data dir, in the background`)
    await ctx.cluster.restart(victim, ctx.signal)
    const everyone = ctx.cluster.agents
    const back = await untilEveryAgent(
      ctx,
      `${victim.name} alive everywhere and back in Raft`,
      t0,
      everyone,
      async (a) => {
        const [members, servers] = await Promise.all([membersOf(a.api), raftServersOf(a.api)])
        return (
          members.filter((m) => m.status === 'alive').length === everyone.length &&
          servers.some((s) => s.node === victim.name) &&
          servers.some((s) => s.leader)
        )
      },
    )
    // Its api instance's sidecar comes back with it.
    const passing = await untilEveryAgent(ctx, 'every api instance passing', t0, everyone, async (a) => {
      return (await passingApiInstances(a.api)).length === ctx.apis.length
    })
    const during = ctx.traffic.window(t0)
    ctx.say(
      `  ${victim.name} is back (pid ${victim.child.pid}): alive everywhere and in the Raft group ${back} ms after its restart, ` +
        `its api instance passing after ${passing} ms; ${failedLine(during)} meanwhile`,
    )
    return {
      name: 'leader-rejoin',
      ok: during.failed === 0,
      timings_ms: { rejoined: back, instance_passing: passing },
      requests: during,
    }
  } catch (err) {
    if (ctx.signal.aborted) throw err
    ctx.say(`  ✗ ${victim.name} did not come back: ${(err as Error).message}`)
    return {
      name: 'leader-rejoin',
      ok: false,
      timings_ms: {},
      requests: ctx.traffic.window(t0),
      error: (err as Error).message,
    }
  }
}

/**
 * The intention web -> api switched to deny and back to allow, each in one write (`intention
 * update`): how long until web is refused, and until it is allowed again. Refusals in between are
 * the expected outcome, not failures.
 */
export async function intentionStep(ctx: StoryContext): Promise<StepResult> {
  const agents = alive(ctx)
  const leader = await currentLeader(ctx)
  const via = agents.find((a) => a.name !== leader) ?? agents[0]!
  ctx.say(
    `\n▶ intention web -> api switched to deny (one write, like \`peermesh intention update web api deny\`, through ${via.name})`,
  )
  const t0 = Date.now()
  await updateIntention(via.api, 'web', 'api', 'deny')
  await until(ctx, 'web to be refused', async () => ctx.traffic.firstAfter(t0, 'denied') !== undefined)
  const refused = ctx.traffic.firstAfter(t0, 'denied')!.at - t0
  ctx.say(
    `  web refused after ${refused} ms (at api's inbound sidecar; Raft replicated the change to every agent)`,
  )
  await sleep(1_000, ctx.signal) // a second of steady refusals, then back

  const t1 = Date.now()
  await updateIntention(via.api, 'web', 'api', 'allow')
  // Allowed again: the last few requests all succeeded (timed from the first of them).
  await until(ctx, 'web to be allowed again', async () => ctx.traffic.settledAt(t1, 'ok', 5) !== undefined)
  const allowed = ctx.traffic.settledAt(t1, 'ok', 5)! - t1
  const t2 = Date.now()
  ctx.expectedRefusals.push([t0, t2])
  const all = ctx.traffic.window(t0, t2)
  ctx.say(
    `  switched back to allow: requests succeed again after ${allowed} ms; ${all.denied} of ${all.total} requests ` +
      `were refused while deny was in force, ${all.failed} failed otherwise`,
  )
  return {
    name: 'intention-deny-allow',
    ok: all.denied > 0 && all.failed === 0,
    timings_ms: { refused: refused, allowed_again: allowed, allow_at: t1 - t0 },
    requests: all,
  }
}

/**
 * The story ends with the cluster as it began: every agent alive on every agent's list, every api
 * instance passing, web -> api allowed. What `--keep` leaves running.
 */
export async function healthyStep(ctx: StoryContext): Promise<StepResult> {
  const t0 = Date.now()
  const agents = ctx.cluster.agents
  try {
    const ms = await untilEveryAgent(ctx, 'the cluster to be healthy again', t0, agents, async (a) => {
      const [members, instances, action] = await Promise.all([
        membersOf(a.api),
        passingApiInstances(a.api),
        intentionActionOf(a.api, 'web', 'api'),
      ])
      return (
        members.filter((m) => m.status === 'alive').length === agents.length &&
        instances.length === ctx.apis.length &&
        action === 'allow'
      )
    })
    ctx.say(
      `\nhealthy again: every agent lists all ${agents.length} alive, all ${ctx.apis.length} api instances passing, web -> api allowed`,
    )
    return { name: 'healthy', ok: true, timings_ms: { checked: ms }, requests: ctx.traffic.window(t0) }
  } catch (err) {
    if (ctx.signal.aborted) throw err
    ctx.say(`  ✗ the cluster is not healthy again: ${(err as Error).message}`)
    const error = (err as Error).message
    return { name: 'healthy', ok: false, timings_ms: {}, requests: ctx.traffic.window(t0), error }
  }
}
