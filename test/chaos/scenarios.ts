/**
 * The chaos scenarios. Each builds its own cluster (fresh namespaces and data dirs), injects its
 * fault, and returns its figures; `checks` are the properties that must hold (a failed one makes
 * the run exit 1).
 */
import { execFile } from 'node:child_process'
import { createHash, randomUUID } from 'node:crypto'
import { promisify } from 'node:util'
import { Cluster, type ClusterOptions, log } from './cluster.ts'
import { type Host, type Member, P2P_PORT, requestVia, sleep, waitFor } from './host.ts'
import { loop, now, Workload } from './workload.ts'

export interface ScenarioOptions {
  rounds: number
  short: boolean
  keepLogs: boolean
}

export interface ScenarioResult {
  name: string
  ok: boolean
  /** Failed checks, human readable. */
  failures: string[]
  figures: Record<string, unknown>
  /** Where the agents' logs are, when kept. */
  logs?: string
}

type Figures = Record<string, unknown>

/**
 * Cluster of `n` (default 5): h1-h3 bootstrapped as voters with --bootstrap-expect 3, the others
 * join as non-voters. ACLs off unless `options` say otherwise (see ClusterOptions).
 */
async function standardCluster(n = 5, options: ClusterOptions = {}): Promise<Cluster> {
  const c = new Cluster(n, options)
  try {
    await c.start({ hosts: n, founders: [1, 2, 3], bootstrapExpect: 3 })
    // Every agent agrees on the leader, and h4.. are learners in the configuration.
    const leader = await c.waitLeader(c.hosts, 60_000, { among: c.hosts.slice(0, 3) })
    await waitFor(
      `${c.hosts
        .slice(3)
        .map((h) => h.name)
        .join(' and ')} added as learners`,
      async () => {
        const st = await leader.raftStatus()
        return c.hosts.slice(3).every((h) => st.learners.includes(h.id)) && st.voters.length === 3
          ? true
          : undefined
      },
      60_000,
    )
    log(`cluster ready: leader ${leader.name}`)
    return c
  } catch (err) {
    await c.stop(true)
    throw new Error(`cluster set-up failed (logs: ${c.dir}): ${(err as Error).message}`)
  }
}

/**
 * Runs `body` on a fresh standard cluster and reports it as scenario `name`: failed if `body`
 * pushed a failure or threw, with the agents' logs kept then (or with --keep-logs); the cluster
 * is stopped either way.
 */
function onStandardCluster(
  name: string,
  o: ScenarioOptions,
  body: (c: Cluster, f: Figures, failures: string[]) => Promise<void>,
): Promise<ScenarioResult> {
  return onCluster(name, o, () => standardCluster(), body)
}

/** `onStandardCluster` on the cluster `make` builds. */
async function onCluster(
  name: string,
  o: ScenarioOptions,
  make: () => Promise<Cluster>,
  body: (c: Cluster, f: Figures, failures: string[]) => Promise<void>,
): Promise<ScenarioResult> {
  const failures: string[] = []
  const f: Figures = {}
  const c = await make()
  try {
    await body(c, f, failures)
    return {
      name,
      ok: failures.length === 0,
      failures,
      figures: f,
      ...(o.keepLogs || failures.length ? { logs: c.dir } : {}),
    }
  } catch (err) {
    failures.push(`error: ${(err as Error).stack ?? String(err)}`)
    return { name, ok: false, failures, figures: f, logs: c.dir }
  } finally {
    await c.stop(o.keepLogs || failures.length > 0)
  }
}

/** A digest of what an agent holds: applied index, raft configuration and every kv entry. */
async function digest(h: Host): Promise<string> {
  const [st, conf, kv] = await Promise.all([
    h.raftStatus(2_000),
    h.get<{ servers: { id: string; voter: boolean }[] }>('/v1/operator/raft/configuration', 2_000),
    h.get<{ name: string; value: string; modifyIndex: number }[]>('/v1/config/kv', 5_000),
  ])
  const servers = conf.servers.map((s) => `${s.id}:${s.voter}`).sort()
  const entries = kv.map((e) => `${e.name}=${e.value}@${e.modifyIndex}`).sort()
  const body = JSON.stringify({
    applied: st.appliedIndex,
    commit: st.commitIndex,
    leader: st.leader,
    servers,
    entries,
  })
  return createHash('sha256').update(body).digest('hex').slice(0, 16)
}

/** Milliseconds from `since` until every host's digest is the same (polled every 100 ms). */
async function waitConverged(hosts: Host[], since: number, timeoutMs = 60_000): Promise<number> {
  await waitFor(
    'identical state on every agent',
    async () => {
      const ds = await Promise.all(hosts.map(digest))
      return ds.every((d) => d === ds[0]) ? true : undefined
    },
    timeoutMs,
    100,
  )
  return Math.round(now() - since)
}

function acksAfter(w: Workload, host: string, from: number, to: number): number {
  return w.writes.filter((x) => x.host === host && x.outcome === 'ok' && x.call >= from && x.call <= to)
    .length
}

async function waitAcked(w: Workload, more: number, timeoutMs: number): Promise<void> {
  const target = w.acked().length + more
  await waitFor(
    `${more} more acknowledged writes`,
    async () => (w.acked().length >= target ? true : undefined),
    timeoutMs,
    50,
  )
}

/** What every scenario ends with: stop writes, converge, read everything back, check. */
async function finish(
  c: Cluster,
  w: Workload,
  f: Figures,
  failures: string[],
  since?: number,
): Promise<void> {
  const t = since ?? now()
  try {
    f.converge_ms = await waitConverged(
      c.hosts.filter((h) => h.running),
      t,
    )
  } catch (err) {
    f.converge_ms = null
    failures.push(`no convergence: ${(err as Error).message}`)
  }
  const fc = await w.finalCheck(c.hosts.filter((h) => h.running))
  f.acked_writes_lost = fc.ackedLost
  f.writes_acked = w.acked().length
  f.writes_failed = w.writes.length - w.acked().length
  f.linearizable = fc.linearizable
  f.history_ops = fc.ops
  if (fc.ackedLost > 0)
    failures.push(`${fc.ackedLost} acknowledged writes lost: ${fc.lostExamples.join('; ')}`)
  if (fc.linearizable === false) failures.push(`history not linearizable: ${fc.explanation}`)
  if (fc.linearizable === 'unknown') failures.push('linearizability check ran out of time (unknown)')
  await c.stopObserver()
  const two = c.termsWithTwoLeaders()
  f.terms_with_two_leaders = two.count
  f.terms_seen = c.leadersByTerm.size
  if (two.count > 0) failures.push(`two leaders in a term: ${two.details.join(' | ')}`)
}

// ---------------------------------------------------------------------------------------------

/**
 * partition-leader / asymmetric: the leader is cut off (both ways, or only what it receives) while
 * writes flow through a non-voter (h4); writes sent to the cut-off leader must never be
 * acknowledged; the majority elects a new leader and keeps accepting writes; after the heal every
 * agent converges to the same state and no acknowledged write is lost.
 */
async function isolateLeader(name: string, mode: 'both' | 'in', o: ScenarioOptions): Promise<ScenarioResult> {
  return onStandardCluster(name, o, async (c, f, failures) => {
    const w = new Workload(name.replace(/[^a-z]/g, ''))
    // Writes go through a non-voter (h4 at first; each round picks a learner that is not cut off,
    // since autopilot may have promoted h4 or h5 to voter, even to leader, in an earlier round).
    let via = c.host(4)
    let regVia = c.host(5)
    const writer = loop(50, () => w.putUnique(via))
    let reg = 0
    const regs = loop(100, () =>
      reg++ % 2 === 0 ? w.putRegister(regVia, 'r0') : w.getRegister(regVia, 'r0'),
    )
    await waitAcked(w, 20, 30_000)
    const newLeaderMs: number[] = []
    const writeOkMs: number[] = []
    const followMs: number[] = []
    let minorityAcks = 0
    let minorityTried = 0
    let majorityAcks = 0
    let lastHeal = now()
    const holdMs = o.short ? 5_000 : 15_000
    for (let round = 1; round <= o.rounds; round++) {
      const old = await c.waitLeader(c.hosts, 30_000)
      const majority = c.hosts.filter((h) => h !== old)
      const st = await old.raftStatus()
      const learners = majority.filter((h) => st.learners.includes(h.id))
      via = learners[0] ?? majority.find((h) => h.id !== st.leader)!
      regVia = learners[1] ?? via
      log(
        `${name} round ${round}: cutting off leader ${old.name} (term ${st.term}, mode ${mode}); writes via ${via.name}`,
      )
      const tCut = now()
      await c.net.partition(old.index, mode)
      // Three clients keep writing to the cut-off leader: none of these may be acknowledged.
      const minority = [0, 1, 2].map(() => loop(100, () => w.putUnique(old, 2_000)))
      const ackedBefore = w.acked().length
      try {
        const nl = await c.waitLeader(majority, 30_000, { not: old })
        newLeaderMs.push(Math.round(now() - tCut))
        log(`  new leader ${nl.name} after ${newLeaderMs.at(-1)} ms`)
      } catch (err) {
        failures.push(`round ${round}: no new leader in the majority: ${(err as Error).message}`)
      }
      try {
        await waitFor(
          'a write acknowledged by the majority',
          async () =>
            w.writes.some((x) => x.host !== old.name && x.outcome === 'ok' && x.call > tCut)
              ? true
              : undefined,
          30_000,
          20,
        )
        const first = w.writes.find((x) => x.host !== old.name && x.outcome === 'ok' && x.call > tCut)!
        writeOkMs.push(Math.round(first.ret - tCut))
      } catch {
        failures.push(`round ${round}: the majority acknowledged no write while the leader was cut off`)
      }
      await sleep(holdMs)
      await Promise.all(minority.map((m) => m.stop()))
      const tHealAt = now()
      minorityAcks += acksAfter(w, old.name, tCut, tHealAt)
      minorityTried += w.writes.filter((x) => x.host === old.name && x.call >= tCut).length
      majorityAcks += w.acked().length - ackedBefore
      if (round === o.rounds) {
        // Last round: writes stop at the heal, so converge_ms is heal -> identical digests.
        await writer.stop()
        await regs.stop()
        lastHeal = now()
      }
      await c.net.heal(old.index)
      log(`  healed ${old.name}; minority acks so far ${minorityAcks}`)
      if (round < o.rounds) {
        try {
          followMs.push(await waitFollowing(c, tHealAt))
        } catch (err) {
          failures.push(`round ${round}: ${(err as Error).message}`)
        }
      }
    }
    await finish(c, w, f, failures, lastHeal)
    f.new_leader_ms = newLeaderMs.length ? median(newLeaderMs) : null
    f.new_leader_ms_all = newLeaderMs
    f.majority_write_ok_ms = writeOkMs
    f.follow_again_ms_between_rounds = followMs
    f.minority_acks = minorityAcks
    f.minority_writes_tried = minorityTried
    f.majority_acks_during_cut = majorityAcks
    f.rounds = o.rounds
    if (minorityAcks > 0) failures.push(`${minorityAcks} writes acknowledged by the cut-off leader`)
  })
}

/**
 * Between rounds the writers keep going, so "the same digest at one instant" is racy: there we
 * only wait until every agent follows one leader with its applied index within 200 entries of the
 * others. The full digest comparison (`converge_ms`) is taken after the last heal, writes stopped.
 */
async function waitFollowing(c: Cluster, since: number): Promise<number> {
  await waitFor(
    'every agent follows one leader again',
    async () => {
      const sts = await Promise.all(c.hosts.map((h) => h.raftStatus(1_000)))
      const lead = sts[0]!.leader
      const maxA = Math.max(...sts.map((s) => s.appliedIndex))
      return lead && sts.every((s) => s.leader === lead && maxA - s.appliedIndex < 200) ? true : undefined
    },
    60_000,
  )
  return Math.round(now() - since)
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  const m = Math.floor(s.length / 2)
  return s.length % 2 ? s[m]! : Math.round((s[m - 1]! + s[m]!) / 2)
}

// ---------------------------------------------------------------------------------------------

/** kill -9 of the leader during writes every 50 ms, `rounds` times, each time restarted. */
async function killLeader(o: ScenarioOptions): Promise<ScenarioResult> {
  return onStandardCluster('kill-leader', o, async (c, f, failures) => {
    const w = new Workload('kill')
    let rr = 0
    // Writes go round-robin through the agents that are running (any of them may be the leader).
    const pick = (): Host => {
      const live = c.hosts.filter((h) => h.running)
      return live[rr++ % live.length]!
    }
    const writer = loop(50, () => w.putUnique(pick()))
    let reg = 0
    const regs = loop(100, () =>
      reg++ % 2 === 0 ? w.putRegister(pick(), 'r0') : w.getRegister(pick(), 'r0'),
    )
    const newLeaderMs: number[] = []
    const writeOkMs: number[] = []
    const rejoinMs: number[] = []
    for (let round = 1; round <= o.rounds; round++) {
      await waitAcked(w, 20, 30_000)
      const old = await c.waitLeader(c.hosts, 30_000)
      log(`kill-leader round ${round}: kill -9 ${old.name}`)
      const tKill = now()
      await old.kill('SIGKILL')
      const live = c.hosts.filter((h) => h.running)
      try {
        const nl = await c.waitLeader(live, 30_000)
        newLeaderMs.push(Math.round(now() - tKill))
        log(`  new leader ${nl.name} after ${newLeaderMs.at(-1)} ms`)
      } catch (err) {
        failures.push(`round ${round}: no new leader: ${(err as Error).message}`)
      }
      try {
        await waitFor(
          'a write acknowledged after the kill',
          async () => (w.writes.some((x) => x.outcome === 'ok' && x.call > tKill) ? true : undefined),
          30_000,
          20,
        )
        writeOkMs.push(Math.round(w.writes.find((x) => x.outcome === 'ok' && x.call > tKill)!.ret - tKill))
      } catch {
        failures.push(`round ${round}: no write acknowledged after the kill`)
      }
      await waitAcked(w, 20, 30_000).catch(() =>
        failures.push(`round ${round}: writes stalled after the kill`),
      )
      const tRestart = now()
      await c.restart(old)
      await c
        .waitLeader(c.hosts, 60_000)
        .then(() => rejoinMs.push(Math.round(now() - tRestart)))
        .catch((err: Error) =>
          failures.push(`round ${round}: restarted ${old.name} did not rejoin: ${err.message}`),
        )
    }
    await waitAcked(w, 20, 30_000).catch(() => failures.push('writes stalled at the end'))
    const tStop = now()
    await writer.stop()
    await regs.stop()
    await finish(c, w, f, failures, tStop)
    f.new_leader_ms = newLeaderMs.length ? median(newLeaderMs) : null
    f.new_leader_ms_all = newLeaderMs
    f.write_ok_after_kill_ms = writeOkMs
    f.restart_rejoin_ms = rejoinMs
    f.minority_acks = null
    f.rounds = o.rounds
  })
}

// ---------------------------------------------------------------------------------------------

/**
 * bootstrap-all: every agent started with --bootstrap-expect 3 (5 hosts, staggered starts), a
 * fresh cluster per round: afterwards every agent must hold one and the same configuration (one
 * Raft cluster, not two) and there must be one leader per term.
 */
const SETTLE_MS = 20_000
async function bootstrapAll(o: ScenarioOptions): Promise<ScenarioResult> {
  const failures: string[] = []
  const f: Figures = {}
  const rounds: Figures[] = []
  let twoLeaders = 0
  const leaderMs: number[] = []
  let logs: string | undefined
  for (let round = 1; round <= o.rounds; round++) {
    const c = new Cluster(5)
    const rf: Figures = { round }
    let roundFailed = false
    try {
      const t0 = now()
      const stagger = 150 + round * 100
      rf.stagger_ms = stagger
      await c.start({
        hosts: 5,
        founders: [1, 2, 3, 4, 5],
        bootstrapExpect: 3,
        staggerMs: stagger,
        waitLeaderBeforeOthers: false,
      })
      try {
        await c.waitLeader(c.hosts, 30_000)
        rf.one_leader_ms = Math.round(now() - t0)
        leaderMs.push(rf.one_leader_ms as number)
      } catch {
        rf.one_leader_ms = null
      }
      // Configurations may differ for a moment while autopilot promotes voters and learners catch
      // up: poll until every agent shows the same one (SETTLE_MS at most), and report what is left.
      const confsNow = (): Promise<string[]> =>
        Promise.all(
          c.hosts.map((h) =>
            h
              .get<{ servers: { id: string; voter: boolean }[] }>('/v1/operator/raft/configuration', 2_000)
              .then((x) =>
                x.servers
                  .map((s) => `${c.byId(s.id)?.name ?? s.id}${s.voter ? '*' : ''}`)
                  .sort()
                  .join(','),
              )
              .catch(() => 'unreachable'),
          ),
        )
      const tSettle = now()
      let confs = await confsNow()
      while (new Set(confs).size > 1 && now() - tSettle < SETTLE_MS) {
        await sleep(250)
        confs = await confsNow()
      }
      rf.one_configuration_ms = new Set(confs).size === 1 ? Math.round(now() - t0) : null
      rf.configurations_per_agent = Object.fromEntries(c.hosts.map((h, k) => [h.name, confs[k]]))
      const sts = await Promise.all(c.hosts.map((h) => h.raftStatus().catch(() => undefined)))
      rf.configurations = [...new Set(confs)]
      rf.leaders = [
        ...new Set(sts.map((s) => `${c.byId(s?.leader ?? '')?.name ?? (s?.leader || 'none')}@${s?.term}`)),
      ]
      await c.stopObserver()
      const two = c.termsWithTwoLeaders()
      rf.terms_with_two_leaders = two.count
      twoLeaders += two.count
      if ((rf.configurations as string[]).length !== 1) {
        roundFailed = true
        failures.push(
          `round ${round}: ${(rf.configurations as string[]).length} configurations ${SETTLE_MS / 1000} s after one leader: ${(rf.configurations as string[]).join(' | ')}`,
        )
      }
      if ((rf.leaders as string[]).length !== 1) {
        roundFailed = true
        failures.push(
          `round ${round}: agents disagree on the leader: ${(rf.leaders as string[]).join(' | ')}`,
        )
      }
      if (two.count > 0) {
        roundFailed = true
        failures.push(`round ${round}: two leaders in a term: ${two.details.join(' | ')}`)
      }
    } catch (err) {
      roundFailed = true
      failures.push(`round ${round}: ${(err as Error).message}`)
    } finally {
      log(`bootstrap-all round ${round}: ${JSON.stringify(rf)}`)
      rounds.push(rf)
      if (roundFailed) logs ??= c.dir
      await c.stop(o.keepLogs || (roundFailed && logs === c.dir))
    }
  }
  f.terms_with_two_leaders = twoLeaders
  f.rounds_failed = rounds.filter((r) => failures.some((x) => x.startsWith(`round ${r.round}:`))).length
  f.rounds = rounds
  // From the first start to one leader named by all five: not a failover time, so not new_leader_ms.
  f.first_leader_ms = leaderMs.length ? median(leaderMs) : null
  f.new_leader_ms = null
  return { name: 'bootstrap-all', ok: failures.length === 0, failures, figures: f, ...(logs ? { logs } : {}) }
}

// ---------------------------------------------------------------------------------------------

/**
 * delay-loss: 50 ms ± 10 ms delay on everything every host sends and 5% loss on everything every
 * host receives, for 2 minutes (short: 30 s). Every agent's member list is polled every 500 ms:
 * members declared dead are false deaths (nobody failed), suspicions are counted as % of
 * (poll × member) observations. Writes through h4 every 200 ms must keep succeeding.
 */
async function delayLoss(o: ScenarioOptions): Promise<ScenarioResult> {
  return onStandardCluster('delay-loss', o, async (c, f, failures) => {
    const w = new Workload('dl')
    const durationMs = o.short ? 30_000 : 120_000
    for (const h of c.hosts) {
      await c.net.setDelay(h.index, 50, 10)
      await c.net.setLoss(h.index, 5)
    }
    log(`delay-loss: ${c.net.rules(1)} on every host, for ${durationMs / 1000} s`)
    const termOf = async (): Promise<number> =>
      Math.max(
        ...(await Promise.all(
          c.hosts.map((h) =>
            h
              .raftStatus()
              .then((x) => x.term)
              .catch(() => 0),
          ),
        )),
      )
    const termBefore = await termOf()
    const tStart = now()
    const writer = loop(200, () => w.putUnique(c.host(4), 5_000))
    let polls = 0
    let observations = 0
    let suspects = 0
    let deads = 0
    let falseDeaths = 0
    const deathEvents: string[] = []
    const last = new Map<string, string>()
    const pollErrors = { count: 0 }
    const poller = loop(500, async () => {
      await Promise.all(
        c.hosts.map(async (h) => {
          let ms: Member[]
          try {
            ms = await h.members(2_000)
          } catch {
            pollErrors.count++
            return
          }
          polls++
          for (const m of ms) {
            if (m.name === h.name) continue
            observations++
            if (m.status === 'suspect') suspects++
            if (m.status === 'dead') deads++
            const k = `${h.name}>${m.name}`
            if (m.status === 'dead' && last.get(k) !== 'dead') {
              falseDeaths++
              if (deathEvents.length < 20)
                deathEvents.push(`${h.name} saw ${m.name} dead at +${Math.round((now() - tStart) / 1000)} s`)
            }
            last.set(k, m.status)
          }
        }),
      )
    })
    await sleep(durationMs)
    await poller.stop()
    await writer.stop()
    f.term_increase_during = (await termOf()) - termBefore
    for (const h of c.hosts) await c.net.clearNet(h.index)
    const tClear = now()
    f.duration_s = durationMs / 1000
    f.false_deaths = falseDeaths
    f.false_death_events = deathEvents
    f.member_polls = polls
    f.member_poll_errors = pollErrors.count
    f.suspect_pct = observations ? Math.round((suspects / observations) * 10_000) / 100 : null
    f.dead_pct = observations ? Math.round((deads / observations) * 10_000) / 100 : null
    const acked = w.acked().length
    f.writes_during = w.writes.length
    f.write_success_pct = w.writes.length ? Math.round((acked / w.writes.length) * 10_000) / 100 : null
    if (falseDeaths > 0) failures.push(`${falseDeaths} false deaths under 50±10 ms delay and 5% loss`)
    if (acked < w.writes.length * 0.9) failures.push(`only ${acked} of ${w.writes.length} writes succeeded`)
    // After the network is clean again, everyone must see everyone alive.
    try {
      await waitFor(
        'every member alive everywhere',
        async () => {
          const all = await Promise.all(c.hosts.map((h) => h.members(2_000)))
          return all.every((ms) => ms.filter((m) => m.status === 'alive').length === c.hosts.length)
            ? true
            : undefined
        },
        30_000,
      )
    } catch (err) {
      failures.push(`members not all alive after the network was cleared: ${(err as Error).message}`)
    }
    await finish(c, w, f, failures, tClear)
    f.minority_acks = null
    f.new_leader_ms = null
  })
}

/**
 * sidecar-partition: `api` instances on h4 and h5 and a `web` client on h1, each with a sidecar
 * (mTLS between hosts), web -> api allowed by an intention. Requests from web's upstream listener
 * run in 4 concurrent loops while h5, hosting an api instance, is partitioned both ways. Requests
 * failing during the ejection window (EJECTION_WINDOW_MS after the cut) are counted apart; those
 * failing after it are `failed_requests`, and should be 0.
 */
const EJECTION_WINDOW_MS = 5_000
async function sidecarPartition(o: ScenarioOptions): Promise<ScenarioResult> {
  return onStandardCluster('sidecar-partition', o, async (c, f, failures) => {
    const [web, api4, api5] = [c.host(1), c.host(4), c.host(5)]
    const APP_PORT = 9090
    const INBOUND = 21000
    const UPSTREAM = 9191
    for (const h of [api4, api5]) {
      await h.startApp(APP_PORT, `api on ${h.name}`)
      const r = await h.request('PUT', '/v1/agent/service/register', {
        name: 'api',
        id: `api-${h.name}`,
        // No `address`: the catalog then uses the node's (10.77.0.i), which is where other hosts'
        // sidecars dial this instance's sidecar. With address 127.0.0.1 (the app's) they would
        // dial their own loopback: endpointsOf() takes the sidecar's host from the service address.
        port: APP_PORT,
        checks: [{ tcp: `127.0.0.1:${APP_PORT}`, interval: '500ms', timeout: '300ms' }],
        connect: { sidecarService: { port: INBOUND, localServicePort: APP_PORT, protocol: 'http' } },
      })
      if (r.status !== 200)
        throw new Error(`register api on ${h.name}: ${r.status} ${JSON.stringify(r.body)}`)
    }
    const rw = await web.request('PUT', '/v1/agent/service/register', {
      name: 'web',
      port: 21001,
      connect: {
        sidecarService: { port: 21001, upstreams: [{ destinationName: 'api', localBindPort: UPSTREAM }] },
      },
    })
    if (rw.status !== 200) throw new Error(`register web: ${rw.status} ${JSON.stringify(rw.body)}`)
    const ri = await c
      .host(2)
      .request(
        'POST',
        '/v1/connect/intentions?timeout=10000',
        { source: 'web', destination: 'api', action: 'allow' },
        12_000,
      )
    if (ri.status !== 200) throw new Error(`intention: ${ri.status} ${JSON.stringify(ri.body)}`)
    const upstream = await web.forwardPort(UPSTREAM)
    const call = async (): Promise<string | undefined> => {
      try {
        const r = await requestVia<string>(upstream, 'GET', '/', undefined, 2_000, false)
        return r.status === 200 ? String(r.body) : undefined
      } catch {
        return undefined
      }
    }
    const tReady = now()
    await waitFor(
      "both api instances answering through web's sidecar",
      async () => {
        const seen = new Set<string>()
        for (let k = 0; k < 10; k++) {
          const b = await call()
          if (b !== undefined) seen.add(b)
        }
        return seen.size === 2 ? true : undefined
      },
      120_000,
      200,
    )
    f.mesh_ready_ms = Math.round(now() - tReady)
    log(`sidecar-partition: both api instances answer through web's sidecar after ${f.mesh_ready_ms} ms`)
    const results: { t: number; ok: boolean; by?: string }[] = []
    const clients = Array.from({ length: 4 }, () =>
      loop(20, async () => {
        const t = now()
        const b = await call()
        results.push({ t, ok: b !== undefined, ...(b !== undefined ? { by: b } : {}) })
      }),
    )
    await sleep(3_000)
    const tCut = now()
    log('sidecar-partition: partitioning h5 (an api instance host)')
    await c.net.partition(api5.index, 'both')
    await sleep(o.short ? 15_000 : 30_000)
    for (const cl of clients) await cl.stop()
    await c.net.heal(api5.index)
    const before = results.filter((r) => r.t < tCut)
    const window = results.filter((r) => r.t >= tCut && r.t < tCut + EJECTION_WINDOW_MS)
    const after = results.filter((r) => r.t >= tCut + EJECTION_WINDOW_MS)
    f.requests = results.length
    f.failed_before_cut = before.filter((r) => !r.ok).length
    f.failed_in_ejection_window = window.filter((r) => !r.ok).length
    f.failed_requests = after.filter((r) => !r.ok).length
    f.ejection_window_ms = EJECTION_WINDOW_MS
    f.requests_after_window = after.length
    f.answered_by_h5_after_window = after.filter((r) => r.by?.endsWith('h5')).length
    const lastFail = results.filter((r) => !r.ok && r.t >= tCut).at(-1)
    f.last_failure_after_cut_ms = lastFail ? Math.round(lastFail.t - tCut) : null
    if ((f.failed_requests as number) > 0)
      failures.push(`${f.failed_requests} requests failed after the ${EJECTION_WINDOW_MS} ms ejection window`)
    if (after.length === 0) failures.push('no request completed after the ejection window')
    await c.stopObserver()
    f.terms_with_two_leaders = c.termsWithTwoLeaders().count
  })
}

// ---------------------------------------------------------------------------------------------

/**
 * advertise: agents listen on 0.0.0.0 (every address of their host, loopback included); h1-h3
 * with `--advertise <own address>`, h4 without it (the agent picks a routable address itself).
 * ACLs on, with a shared initial management token that the suite sends with every request: the
 * way a cluster across machines is deployed. `api` instances on h3 and h4 and a `web` client on h1
 * are registered without an `address`, each with a sidecar. Must hold, polled every 500 ms for the
 * whole run: every member alive on every agent, announced at its host's address (never loopback
 * or 0.0.0.0). The catalog and DNS give each api instance its node's address. Requests through
 * web's upstream listener (4 loops, 10 s; 30 s without --short) all succeed, answered by both
 * instances: cross-host traffic between sidecars (mTLS), `failed_requests` 0.
 */
const ADVERTISE_DNS_PORT = 8600
async function advertise(o: ScenarioOptions): Promise<ScenarioResult> {
  const token = randomUUID()
  const make = (): Promise<Cluster> =>
    standardCluster(4, {
      acl: { enabled: true, managementToken: token },
      listen: () => `/ip4/0.0.0.0/tcp/${P2P_PORT}`,
      agentArgs: (h) => [
        ...(h.index === 4 ? [] : ['--advertise', h.addr]),
        '--dns',
        `127.0.0.1:${ADVERTISE_DNS_PORT}`,
      ],
    })
  return onCluster('advertise', o, make, async (c, f, failures) => {
    const [web, api3, api4] = [c.host(1), c.host(3), c.host(4)]
    const APP_PORT = 9090
    const INBOUND = 21000
    const UPSTREAM = 9191
    const addrOf = (name: string): string | undefined => c.hosts.find((h) => h.name === name)?.addr
    // A member's address names its host's IP (a multiaddr or HOST:PORT), nothing else.
    const announcedRight = (m: Member): boolean => namesIp(m.address, addrOf(m.name))
    const views = async (): Promise<Map<Host, Member[] | undefined>> =>
      new Map(
        await Promise.all(
          c.hosts.map(async (h) => [h, await h.members(2_000).catch(() => undefined)] as const),
        ),
      )
    const tStart = now()
    try {
      await waitFor(
        'every member alive everywhere, at its own address',
        async () => {
          const vs = await views()
          return [...vs.values()].every(
            (ms) =>
              ms !== undefined &&
              ms.length === c.hosts.length &&
              ms.every((m) => m.status === 'alive' && announcedRight(m)),
          )
            ? true
            : undefined
        },
        30_000,
      )
      f.members_ready_ms = Math.round(now() - tStart)
    } catch (err) {
      failures.push(`members: ${(err as Error).message}`)
    }
    const seenBy2 = (await views()).get(c.host(2)) ?? []
    f.announced = Object.fromEntries(seenBy2.map((m) => [m.name, m.address]))
    log(`advertise: announced addresses (seen by h2): ${JSON.stringify(f.announced)}`)

    // The membership watch runs from here to the end of the traffic.
    let observations = 0
    let notAlive = 0
    let wrongAddress = 0
    let falseDeaths = 0
    const examples: string[] = []
    const lastStatus = new Map<string, string>()
    const watch = loop(500, async () => {
      for (const [h, ms] of await views()) {
        if (ms === undefined) continue
        for (const m of ms) {
          observations++
          const k = `${h.name}>${m.name}`
          if (m.status !== 'alive') notAlive++
          if (m.status === 'dead' && lastStatus.get(k) !== 'dead') falseDeaths++
          if (!announcedRight(m)) wrongAddress++
          if ((m.status !== 'alive' || !announcedRight(m)) && examples.length < 10)
            examples.push(`${h.name} saw ${m.name} ${m.status} at ${m.address}`)
          lastStatus.set(k, m.status)
        }
      }
    })

    // ACLs are on: the same registration without the token is refused.
    const anon = await requestVia(
      api3.socket,
      'PUT',
      '/v1/agent/service/register',
      { name: 'api', port: APP_PORT },
      5_000,
      false,
    )
    f.anonymous_register_status = anon.status
    if (anon.status !== 403) failures.push(`a registration without a token answered ${anon.status}, not 403`)
    for (const h of [api3, api4]) {
      await h.startApp(APP_PORT, `api on ${h.name}`)
      // No `address`: the instance is reached at its node's advertised address.
      const r = await h.request('PUT', '/v1/agent/service/register', {
        name: 'api',
        id: `api-${h.name}`,
        port: APP_PORT,
        checks: [{ tcp: `127.0.0.1:${APP_PORT}`, interval: '500ms', timeout: '300ms' }],
        connect: { sidecarService: { port: INBOUND, localServicePort: APP_PORT, protocol: 'http' } },
      })
      if (r.status !== 200)
        throw new Error(`register api on ${h.name}: ${r.status} ${JSON.stringify(r.body)}`)
    }
    const rw = await web.request('PUT', '/v1/agent/service/register', {
      name: 'web',
      port: 21001,
      connect: {
        sidecarService: { port: 21001, upstreams: [{ destinationName: 'api', localBindPort: UPSTREAM }] },
      },
    })
    if (rw.status !== 200) throw new Error(`register web: ${rw.status} ${JSON.stringify(rw.body)}`)
    const ri = await c
      .host(2)
      .request(
        'POST',
        '/v1/connect/intentions?timeout=10000',
        { source: 'web', destination: 'api', action: 'allow' },
        12_000,
      )
    if (ri.status !== 200) throw new Error(`intention: ${ri.status} ${JSON.stringify(ri.body)}`)

    // The catalog (seen from web's host) and DNS give each instance its node's address.
    interface CatalogEntry {
      Node: string
      Address: string
      ServiceAddress?: string
    }
    try {
      const entries = await waitFor(
        'both api instances in the catalog on h1',
        async () => {
          const es = await web.get<CatalogEntry[]>('/v1/catalog/service/api')
          return es.length === 2 ? es : undefined
        },
        30_000,
      )
      f.catalog_api = entries.map((e) => `${e.Node} ${e.Address} service address ${e.ServiceAddress || '-'}`)
      for (const e of entries)
        if (!namesIp(e.Address, addrOf(e.Node)))
          failures.push(`catalog: ${e.Node}'s api instance at ${e.Address}, not ${addrOf(e.Node)}`)
    } catch (err) {
      failures.push(`catalog: ${(err as Error).message}`)
    }
    const want = [api3.addr, api4.addr].sort().join(',')
    try {
      const got = await waitFor(
        `DNS api.service.peermesh on h1 answering ${want}`,
        async () => {
          const a = (await resolveIn(web, 'api.service.peermesh', ADVERTISE_DNS_PORT)).sort().join(',')
          f.dns_api = a
          return a === want ? a : undefined
        },
        30_000,
        250,
      )
      f.dns_api = got
    } catch (err) {
      failures.push(`DNS: ${(err as Error).message} (last answer: ${String(f.dns_api)})`)
    }

    const upstream = await web.forwardPort(UPSTREAM)
    const call = async (): Promise<string | undefined> => {
      try {
        const r = await requestVia<string>(upstream, 'GET', '/', undefined, 2_000, false)
        return r.status === 200 ? String(r.body) : undefined
      } catch {
        return undefined
      }
    }
    const tReady = now()
    try {
      await waitFor(
        "both api instances answering through web's sidecar",
        async () => {
          const seen = new Set<string>()
          for (let k = 0; k < 10; k++) {
            const b = await call()
            if (b !== undefined) seen.add(b)
          }
          return seen.size === 2 ? true : undefined
        },
        120_000,
        200,
      )
      f.mesh_ready_ms = Math.round(now() - tReady)
      log(`advertise: both api instances answer through web's sidecar after ${f.mesh_ready_ms} ms`)
    } catch (err) {
      failures.push(`mesh: ${(err as Error).message}`)
    }
    const results: { ok: boolean; by?: string }[] = []
    const clients = Array.from({ length: 4 }, () =>
      loop(20, async () => {
        const b = await call()
        results.push({ ok: b !== undefined, ...(b !== undefined ? { by: b } : {}) })
      }),
    )
    await sleep(o.short ? 10_000 : 30_000)
    for (const cl of clients) await cl.stop()
    await watch.stop()
    f.requests = results.length
    f.failed_requests = results.filter((r) => !r.ok).length
    f.answered_by = Object.fromEntries(
      [api3, api4].map((h) => [h.name, results.filter((r) => r.by?.endsWith(h.name)).length]),
    )
    f.member_observations = observations
    f.not_alive_observations = notAlive
    f.wrong_address_observations = wrongAddress
    f.false_deaths = falseDeaths
    if (examples.length) f.member_examples = examples
    if (results.length === 0) failures.push('no request completed')
    if ((f.failed_requests as number) > 0) failures.push(`${f.failed_requests} cross-host requests failed`)
    for (const h of [api3, api4])
      if (results.every((r) => !r.by?.endsWith(h.name)))
        failures.push(`no request answered by ${h.name}'s instance`)
    if (notAlive > 0) failures.push(`${notAlive} of ${observations} member observations not alive`)
    if (wrongAddress > 0)
      failures.push(`${wrongAddress} of ${observations} member observations at a wrong address`)
    await c.stopObserver()
    f.terms_with_two_leaders = c.termsWithTwoLeaders().count
    f.new_leader_ms = null
    f.minority_acks = null
  })
}

/** Whether `address` (a multiaddr, HOST:PORT or an IP) holds the IPv4 address `ip`. */
function namesIp(address: string, ip: string | undefined): boolean {
  if (ip === undefined) return false
  return new RegExp(`(^|[^0-9.])${ip.replace(/\./g, '\\.')}([^0-9.]|$)`).test(address)
}

const execFileP = promisify(execFile)

/** A records for `name` from the agent's DNS interface on h's loopback, asked from inside h. */
async function resolveIn(h: Host, name: string, port: number): Promise<string[]> {
  const script = `const { Resolver } = require('node:dns').promises; const r = new Resolver({ timeout: 1000, tries: 1 }); r.setServers(['127.0.0.1:${port}']); r.resolve4(${JSON.stringify(name)}).then((a) => console.log(JSON.stringify(a)), () => console.log('[]'))`
  const { stdout } = await execFileP('ip', ['netns', 'exec', h.ns, process.execPath, '-e', script], {
    timeout: 5_000,
  })
  return JSON.parse(stdout.trim()) as string[]
}

export const SCENARIOS: Record<string, (o: ScenarioOptions) => Promise<ScenarioResult>> = {
  'partition-leader': (o) => isolateLeader('partition-leader', 'both', o),
  'kill-leader': killLeader,
  asymmetric: (o) => isolateLeader('asymmetric', 'in', o),
  'bootstrap-all': bootstrapAll,
  'delay-loss': delayLoss,
  'sidecar-partition': sidecarPartition,
  advertise,
}

/** What `--short` runs (CI): scenarios that pass on main. bootstrap-all and delay-loss are known to fail today. */
export const SHORT_SET = [
  'partition-leader',
  'kill-leader',
  'asymmetric',
  'sidecar-partition',
  'bootstrap-all',
  'advertise',
]
