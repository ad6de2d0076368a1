/**
 * `peermesh demo`: a local cluster of real agent processes on 127.0.0.1, two small built-in apps
 * (`web` calling `api`) behind sidecars, an intention, a 90/10 split and steady traffic, while a
 * scripted story breaks things and tells what it measured (story.ts). ACLs are on, as in any
 * cluster: the agents share a fresh initial management token, and the demo's writes carry it.
 *
 * SIGINT and SIGTERM stop every agent and app and remove the temp dir (within 2 s), then print a
 * closing line. `--keep` leaves the cluster running, healthy, until then.
 */
import {
  createIntention,
  knowsManagementToken,
  leaderOf,
  membersOf,
  passingApiInstances,
  raftServersOf,
  registerService,
  writeSplitter,
} from './agent-api.ts'
import { PROXY_ERROR_HEADER } from '../../proxy/index.ts'
import { ApiApp, type DemoApp, WebApp } from './apps.ts'
import { type DemoAgent, DemoCluster } from './cluster.ts'
import {
  BOOTSTRAP_EXPECT,
  SETUP_TIMEOUT_MS,
  SPLIT,
  STOP_GRACE_MS,
  TRAFFIC_RATE_PER_S,
  VIEW_REFRESH_MS,
} from './constants.ts'
import {
  entryAgentName,
  healthyStep,
  instanceKillStep,
  intentionStep,
  leaderKillStep,
  type StepResult,
  type StoryContext,
} from './story.ts'
import { Traffic } from './traffic.ts'
import { type ClusterSnapshot, PlainView, type StatusSource, TtyView, type View } from './view.ts'
import { DemoTimeoutError, sleep, waitUntil } from './wait.ts'
import { freePort } from '../transport/free-port.ts'

export interface DemoOptions {
  /** Number of agents to start (at least 3). */
  agents: number
  /** Length of the traffic and the story, in seconds. */
  durationS: number
  /** false: skip the kills (only the intention switch). */
  failover: boolean
  /** Keep the cluster running after the story, until SIGINT/SIGTERM. */
  keep: boolean
  /** The last stdout line is a JSON summary. */
  json: boolean
  /** Where agent data dirs go; a temp dir (removed at the end) by default. */
  dir?: string
}

/** The `--json` summary (the last stdout line). */
export interface DemoSummary {
  ok: boolean
  interrupted?: string
  agents: number
  duration_s: number
  elapsed_ms: number
  setup_ms: number
  total_requests: number
  /** Requests that failed, refusals outside the deny step included. */
  failed_requests: number
  /** Requests refused while the deny intention was in force (the expected outcome). */
  denied_requests: number
  split: Record<string, number>
  steps: StepResult[]
  agent_pids: number[]
  dir: string
}

const out = (line: string): void => {
  process.stdout.write(`${line}\n`)
}

const SIGNAL_EXIT: Record<string, number> = { SIGINT: 130, SIGTERM: 143 }

/** Runs the demo; resolves with the exit code (0: the story went as expected). */
export async function runDemo(o: DemoOptions): Promise<number> {
  const startedAt = Date.now()
  const cluster = new DemoCluster(o.dir)
  const apps: DemoApp[] = []
  const abort = new AbortController()
  const steps: StepResult[] = []
  let traffic: Traffic | undefined
  let trafficStartedAt: number | undefined
  let snapshot: ClusterSnapshot | undefined
  let setupMs = 0
  let story: StoryContext | undefined
  /** The agent the live view asks: the one hosting the web instance traffic enters through. */
  const observer = (): DemoAgent | undefined => {
    const entry = story === undefined ? undefined : entryAgentName(story)
    const running = runningAgents(cluster)
    return running.find((a) => a.name === entry) ?? running[0]
  }

  const src: StatusSource = {
    snapshot: () => snapshot,
    traffic: () => traffic,
    clock: () =>
      trafficStartedAt === undefined
        ? undefined
        : { elapsedS: (Date.now() - trafficStartedAt) / 1000, durationS: o.durationS },
  }
  const view: View =
    process.stdout.isTTY && !o.json ? new TtyView(src, process.stdout) : new PlainView(src, out)
  const say = (line: string): void => view.line(line)

  // About once a second: the cluster as one running agent sees it, and a redraw.
  let polling = false
  const poller = setInterval(() => {
    if (polling || traffic === undefined) return
    polling = true
    const from = observer()
    void (async () => {
      if (from !== undefined) {
        const [members, servers] = await Promise.all([membersOf(from.api), raftServersOf(from.api)])
        snapshot = { observer: from.name, members, servers }
      }
    })()
      .catch(() => {})
      .finally(() => {
        polling = false
        view.refresh()
      })
  }, VIEW_REFRESH_MS)

  const summary = (interrupted?: string): DemoSummary => {
    const records = traffic?.records ?? []
    const windows = story?.expectedRefusals ?? []
    const inDeny = (at: number): boolean => windows.some(([a, b]) => at >= a && at <= b)
    const failed = records.filter(
      (r) => r.outcome === 'failed' || (r.outcome === 'denied' && !inDeny(r.at)),
    ).length
    const denied = records.filter((r) => r.outcome === 'denied' && inDeny(r.at)).length
    const split: Record<string, number> = {}
    const answered = records.filter((r) => r.version !== undefined)
    for (const r of answered) split[r.version!] = (split[r.version!] ?? 0) + 1
    for (const k of Object.keys(split)) split[k] = Math.round((split[k]! / answered.length) * 1000) / 1000
    // The set-up, the story's steps (the leader's rejoin its own), the final health check.
    const expectedSteps = 1 + (o.failover ? 4 : 1) + 1
    return {
      ok:
        interrupted === undefined &&
        steps.length === expectedSteps &&
        steps.every((s) => s.ok) &&
        failed === 0,
      ...(interrupted !== undefined ? { interrupted } : {}),
      agents: o.agents,
      duration_s: o.durationS,
      elapsed_ms: Date.now() - startedAt,
      setup_ms: setupMs,
      total_requests: records.length,
      failed_requests: failed,
      denied_requests: denied,
      split,
      steps,
      agent_pids: cluster.spawnedPids,
      dir: cluster.dir,
    }
  }

  // Stops everything it started: agents (SIGTERM, SIGKILL after STOP_GRACE_MS), apps, temp dir.
  let stopping: Promise<number> | undefined
  /** Resolves with the number of agent processes it stopped. */
  const stopAll = (): Promise<number> => {
    stopping ??= (async () => {
      abort.abort()
      clearInterval(poller)
      view.close()
      traffic?.halt()
      const [stopped] = await Promise.all([cluster.stop(STOP_GRACE_MS), ...apps.map((a) => a.close())])
      return stopped
    })()
    return stopping
  }
  let storyCode: number | undefined
  const onSignal = (signal: NodeJS.Signals): void => {
    if (stopping !== undefined) return
    const t = Date.now()
    void stopAll().then((stopped) => {
      const where = o.dir === undefined ? `, ${cluster.dir} removed` : ''
      out(
        `peermesh demo: stopped on ${signal} in ${Date.now() - t} ms: ${stopped} agent processes stopped, ` +
          `${apps.length} apps closed${where}`,
      )
      // Ended while kept running after the story: the story's verdict; otherwise interrupted.
      const code = storyCode ?? SIGNAL_EXIT[signal] ?? 1
      if (o.json) out(JSON.stringify(storyCode === undefined ? summary(signal) : summary()))
      process.exit(code)
    })
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)

  try {
    const mesh = await setUp(o, cluster, apps, say, abort.signal)
    setupMs = mesh.ms
    traffic = mesh.traffic
    story = {
      cluster,
      ...mesh,
      say,
      signal: abort.signal,
      restarting: new Set(),
      later: [],
      expectedRefusals: [],
    }
    steps.push({
      name: 'cluster',
      ok: true,
      timings_ms: mesh.timings,
      requests: { total: 0, ok: 0, denied: 0, failed: 0 },
    })

    // The story, spread over --duration: steady traffic, then each step at its share of the time.
    const t0 = Date.now()
    trafficStartedAt = t0
    story.traffic.start()
    say(
      `\nsteady traffic: ${TRAFFIC_RATE_PER_S} requests/s to web on ${entryAgentName(story)} for ${o.durationS} s`,
    )
    const at = (share: number): Promise<void> =>
      sleep(Math.max(0, t0 + share * o.durationS * 1000 - Date.now()), abort.signal)
    const plan: [number, string, (c: StoryContext) => Promise<StepResult>][] = o.failover
      ? [
          [0.15, 'instance-kill', instanceKillStep],
          [0.4, 'leader-kill', leaderKillStep],
          [0.7, 'intention-deny-allow', intentionStep],
        ]
      : [[0.4, 'intention-deny-allow', intentionStep]]
    for (const [share, name, step] of plan) {
      await at(share)
      const stepStart = Date.now()
      try {
        steps.push(await step(story))
      } catch (err) {
        if (abort.signal.aborted) throw err
        say(`  ✗ ${name} did not go as expected: ${(err as Error).message}`)
        steps.push({
          name,
          ok: false,
          timings_ms: {},
          requests: story.traffic.window(stepStart),
          error: (err as Error).message,
        })
        break
      }
    }
    await at(1)
    steps.push(...(await Promise.all(story.later)))
    steps.push(await healthyStep(story))
    await story.traffic.stop()
    clearInterval(poller)
    view.close()

    const s = summary()
    storyCode = s.ok ? 0 : 1
    const split = Object.entries(s.split)
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([v, x]) => `${v} ${(x * 100).toFixed(1)}%`)
      .join(' / ')
    out(
      `\n${s.ok ? '✓' : '✗'} story ${s.ok ? 'went as expected' : 'did NOT go as expected'}: ${s.total_requests} requests, ` +
        `${s.failed_requests} failed, ${s.denied_requests} refused by the deny intention (expected); split ${split} (asked: ${SPLIT.map((x) => `${x.tag} ${x.weight}%`).join(' / ')})`,
    )
    out(`  steps: ${steps.map((x) => `${x.name} ${x.ok ? 'ok' : 'FAILED'}`).join(', ')}`)

    if (o.keep) {
      printHowToReach(cluster, story)
      out(
        `\ncluster running (demo took ${((Date.now() - startedAt) / 1000).toFixed(0)} s); Ctrl-C stops it and removes everything`,
      )
      if (o.json) out(JSON.stringify(s))
      await new Promise(() => {}) // until a signal: onSignal exits
    }
    const stopped = await stopAll()
    const where = o.dir === undefined ? ', temp dir removed' : ''
    out(
      `demo done in ${((Date.now() - startedAt) / 1000).toFixed(1)} s: ${stopped} agents stopped, ` +
        `${apps.length} apps closed${where}`,
    )
    if (o.json) out(JSON.stringify(summary()))
    return storyCode
  } catch (err) {
    if (abort.signal.aborted) return new Promise(() => {}) // a signal is stopping everything
    await stopAll()
    out(`peermesh demo: ${(err as Error).message}; everything it started is stopped and removed`)
    if (o.json) out(JSON.stringify({ ...summary('error'), error: (err as Error).message }))
    return 1
  }
}

const runningAgents = (c: DemoCluster): DemoAgent[] =>
  c.agents.filter((a) => a.child.exitCode === null && a.child.signalCode === null)

/**
 * Starts the agents, waits for gossip and the Raft group (every agent lists every other as a Raft
 * server and agrees on the leader), starts the apps, registers the services with sidecars, writes
 * the intention and the split, and waits until every web answers through the mesh. The setup ms.
 */
async function setUp(
  o: DemoOptions,
  cluster: DemoCluster,
  apps: DemoApp[],
  say: (line: string) => void,
  signal: AbortSignal,
): Promise<{
  ms: number
  /** Each phase's end, in ms from the start. */
  timings: Record<string, number>
  traffic: Traffic
  webs: Map<string, WebApp>
  apis: ApiApp[]
  apiHost: Map<string, DemoAgent>
}> {
  const t0 = Date.now()
  const timings: Record<string, number> = {}
  const mark = (phase: string): void => {
    timings[phase] = Date.now() - t0
  }
  const wait = (what: string, check: () => Promise<boolean>): Promise<number> =>
    waitUntil(what, check, { timeoutMs: SETUP_TIMEOUT_MS, everyMs: 50, signal })
  const every = (check: (a: DemoAgent) => Promise<boolean>) => async () =>
    (await Promise.all(cluster.agents.map(check))).every(Boolean)

  say(
    `peermesh demo: ${o.agents} agents on 127.0.0.1 (each joins through the others), data in ${cluster.dir}`,
  )
  const names = Array.from({ length: o.agents }, (_, i) => `node${i + 1}`)
  for (const a of await cluster.startAll(names, signal))
    say(
      `  started ${a.name} (pid ${a.child.pid}): http ${a.http}, libp2p port ${a.p2pPort}, DNS port ${a.dnsPort}`,
    )
  const n = cluster.agents.length
  mark('agents_started')

  const gossip = await wait(
    'gossip to converge',
    every(async (a) => (await membersOf(a.api)).filter((m) => m.status === 'alive').length === n),
  )
  mark('gossip_converged')
  say(`gossip: every agent lists all ${n} agents alive (${gossip} ms after the last one started)`)

  // The real condition for the Raft listing: every agent knows the same leader and lists every
  // agent as a Raft server, with the founders as voters.
  const raftMs = await wait('the Raft group', async () => {
    const views = await Promise.all(
      cluster.agents.map(async (a) => ({
        leader: await leaderOf(a.api),
        servers: await raftServersOf(a.api),
      })),
    )
    const leaders = new Set(views.map((v) => v.leader))
    return (
      leaders.size === 1 &&
      !leaders.has(undefined) &&
      views.every(
        (v) =>
          names.every((name) => v.servers.some((s) => s.node === name)) &&
          v.servers.filter((s) => s.voter).length >= Math.min(BOOTSTRAP_EXPECT, n) &&
          v.servers.some((s) => s.leader),
      )
    )
  })
  mark('raft_ready')
  await wait(
    'every agent to know the management token',
    every((a) => knowsManagementToken(a.api)),
  )
  mark('token_known')
  const servers = (await raftServersOf(cluster.agents[0]!.api)).sort((a, b) => a.node.localeCompare(b.node))
  const leader = servers.find((s) => s.leader)?.node ?? '?'
  say(
    `raft: ${servers
      .map((s) => `${s.node} ${s.leader ? 'leader' : s.voter ? 'voter' : 'learner'}`)
      .join(', ')} (every agent agrees, ${raftMs} ms)`,
  )
  say(`ACLs are on: the demo's writes carry the agents' initial management token (${cluster.tokenFile})`)

  // Apps: three api instances (v1, v1, v2) spread over the first agents; a web on every agent.
  const versions = ['v1', 'v1', 'v2']
  const apis: ApiApp[] = []
  const apiHost = new Map<string, DemoAgent>()
  const webs = new Map<string, WebApp>()
  for (const [i, version] of versions.entries()) {
    const app = new ApiApp(`api-${i + 1}`, version, await freePort())
    await app.start()
    apps.push(app)
    apis.push(app)
    const host = cluster.agents[i % n]!
    apiHost.set(app.id, host)
    await registerService(host.api, {
      name: 'api',
      id: app.id,
      port: app.port,
      tags: [version],
      tcpCheck: `127.0.0.1:${app.port}`,
      sidecarPort: await freePort(),
    })
  }
  for (const a of cluster.agents) {
    const web = new WebApp(a.name, await freePort(), await freePort())
    await web.start()
    apps.push(web)
    webs.set(a.name, web)
    await registerService(a.api, {
      name: 'web',
      id: `web-${a.name}`,
      port: web.port,
      sidecarPort: await freePort(),
      upstream: { destination: 'api', localBindPort: web.upstreamPort },
    })
  }
  say(
    `services: ${apis.map((x) => `${x.id} (${x.version}) on ${apiHost.get(x.id)!.name}`).join(', ')}; ` +
      `web on ${[...webs.keys()].join(', ')}, calling api through its sidecar`,
  )
  mark('services_registered')
  const follower = cluster.agents.find((a) => a.name !== leader) ?? cluster.agents[0]!
  await createIntention(follower.api, 'web', 'api', 'allow')
  await writeSplitter(follower.api, 'api', [...SPLIT])
  say(
    `intention web -> api allow, and a split of api: ${SPLIT.map((s) => `${s.weight}% ${s.tag}`).join(' / ')} ` +
      `(service-splitter), both written through ${follower.name}, a follower: Raft forwards them to the leader`,
  )
  await wait(
    'every api instance passing on every agent',
    every(async (a) => (await passingApiInstances(a.api)).length === apis.length),
  )
  mark('instances_passing')
  // What each web last answered (status and the sidecar's error code, or the fetch's failure):
  // named in the error if the wait times out, to tell which hop did not answer.
  const lastAnswer = new Map<string, string>()
  await wait('every web to answer through the mesh', async () => {
    const answers = await Promise.all(
      [...webs.entries()].map(([node, w]) =>
        fetch(`http://127.0.0.1:${w.port}/`, { signal: AbortSignal.timeout(2_000) }).then(
          (r) => {
            lastAnswer.set(node, `${r.status}${r.ok ? '' : ` ${r.headers.get(PROXY_ERROR_HEADER) ?? ''}`}`)
            return r.ok
          },
          (err: Error) => {
            lastAnswer.set(node, err.name)
            return false
          },
        ),
      ),
    )
    return answers.every(Boolean)
  }).catch((err: unknown) => {
    if (!(err instanceof DemoTimeoutError)) throw err
    const last = [...lastAnswer].map(([node, a]) => `web on ${node}: ${a}`).join(', ')
    throw new DemoTimeoutError(`${err.message} (last answers: ${last})`)
  })
  mark('mesh_ready')
  const ms = Date.now() - t0
  say(`mesh ready after ${(ms / 1000).toFixed(1)} s`)
  // Traffic enters through a web on a follower, so the first kill leaves the entry standing.
  return { ms, timings, traffic: new Traffic(webs.get(follower.name)!.port), webs, apis, apiHost }
}

function printHowToReach(cluster: DemoCluster, story: StoryContext): void {
  const a = cluster.agents[0]!
  out('\nthe cluster stays up, healthy (every agent alive, web -> api allowed, DNS on). Reach it with:')
  out(`  HTTP API    ${cluster.agents.map((x) => `${x.name} ${x.http}`).join(', ')}`)
  out(`  web UI      http://${a.http}/ui`)
  out(
    `  token       ${cluster.tokenFile}   (writes need it: export PEERMESH_HTTP_TOKEN=$(cat ${cluster.tokenFile}))`,
  )
  out(`  DNS         ${cluster.agents.map((x) => `${x.name} 127.0.0.1:${x.dnsPort}`).join(', ')}`)
  out(`  try         npx peermesh members --http ${a.http}`)
  out(`              npx peermesh raft peers --http ${a.http} --token-file ${cluster.tokenFile}`)
  out(`              npx peermesh intention list --http ${a.http} --token-file ${cluster.tokenFile}`)
  out(`              dig @127.0.0.1 -p ${a.dnsPort} api.service.peermesh`)
  const web = story.webs.get(a.name)
  if (web !== undefined)
    out(`              curl http://127.0.0.1:${web.port}/   (web calling api through the mesh)`)
}
