/**
 * bench:gossip-idle — what an idle agent costs: gossip traffic per node (SWIM UDP datagrams and
 * their bytes, sealed envelope included, per second, from each agent's /metrics counters over a
 * quiet window; push/pull state bytes over libp2p separately) and the number of open libp2p
 * connections per agent (sampled every second of the window), at N = 5, 20 and 200 agents
 * (several agents per process so that 200 fit on a small machine; gossip traffic is the same
 * whether the peers share a process or not).
 *
 * A size that does not converge (every agent sees N alive) within --converge SECONDS is measured
 * anyway and reported with `converged_nN: 0` and the median fraction of members each agent sees
 * alive (`alive_fraction_nN`): on an overloaded machine, 200 agents in a handful of processes
 * may never all agree at once, and connections and traffic are still worth knowing.
 *
 * A size that converged is then held idle for --hold SECONDS (default 300): every agent's member
 * list is polled every 15 s (`stayed_converged_nN`: 1 if every poll saw every agent with all N
 * alive), and the members any agent moved to dead in that time are counted from its
 * `peermesh_gossip_deaths_total` (`false_deaths_nN`: nobody was stopped, so every one is false).
 * CPU of each worker process (Linux /proc, user + system) over the hold (or the window without a
 * hold): `cpu_pct_per_agent_nN` (all workers' CPU over N, % of one core) and the busiest process.
 *
 * Every agent runs the gossip profile `--gossip-profile` (default `local`): these agents share one
 * machine, 100 of them a core at N=200, which is what Serf's and memberlist's `local` profile is for.
 * With the `lan` default (probes every 150 ms, made for one agent per machine), 200 agents on two
 * cores of this machine saturate both in bursts; a worker's event loop then stalls up to 1.4 s, past
 * what lan's suspicion timeout lets a member refute in, and members die falsely (README, Gossip
 * membership). `--gossip-profile lan` measures that. The profile is printed and in the JSON
 * (`gossip_profile`).
 *
 * Flags: --sizes 5,20,200, --window SECONDS (default 10), --converge SECONDS (default 300),
 * --hold SECONDS (default 300; 0 skips it), --gossip-profile lan|local|wan (default local), --json.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { generateClusterKey } from '../src/identity/keys/cluster-key.ts'
import { argValue, emitJson, gossipProfileArg, median, progress, quantile, table } from './lib.ts'

const sizes = (argValue('sizes', '5,20,200') ?? '').split(',').map(Number)
const windowS = Number(argValue('window', '10'))
const convergeS = Number(argValue('converge', '300'))
const holdS = Number(argValue('hold', '300'))
const gossipProfile = gossipProfileArg('local')
/** Member lists of every agent are polled this often during the hold (each poll is N requests). */
const HOLD_POLL_MS = 15_000
/** Requests in flight at once when polling every agent. */
const POLL_CONCURRENCY = 25
const WORKER = fileURLToPath(new URL('./multi-agent-worker.ts', import.meta.url))
// 20 agents per process: each agent runs its own libp2p host, DHT and timers; more per process
// and one event loop falls behind the 150 ms probe period on a 2-core machine.
const PER_PROCESS = 20

interface Handle {
  name: string
  http: string
  address: string
}

/**
 * GET `url`'s body, tried 3 times 1 s apart with 15 s each (an agent of a starved process can be
 * slow to answer); undefined if it never answered.
 */
async function getText(url: string): Promise<string | undefined> {
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(15_000) })
      if (res.ok) return await res.text()
    } catch {
      // retried below
    }
    await new Promise((r) => setTimeout(r, 1_000))
  }
  return undefined
}

/** Maps `f` over `xs`, at most `limit` at a time (N=200 polls are 200 requests). */
async function mapLimited<T, R>(xs: T[], limit: number, f: (x: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(xs.length)
  let next = 0
  const lane = async (): Promise<void> => {
    while (next < xs.length) {
      const i = next++
      out[i] = await f(xs[i]!)
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, xs.length) }, lane))
  return out
}

/** An agent's counters of interest; empty (counted as missing) if it did not answer. */
async function metricsOf(http: string): Promise<Record<string, number>> {
  const text = (await getText(`http://${http}/metrics`)) ?? ''
  const out: Record<string, number> = {}
  for (const line of text.split('\n')) {
    const m =
      /^(peermesh_(?:gossip_(?:messages|bytes)_(?:sent|received)_total|gossip_pushpull_(?:bytes_sent_)?total|gossip_datagrams_rejected_total|gossip_(?:deaths|suspicions|refutations|state_syncs|state_sync_matches)_total|libp2p_connections)(?:\{[^}]*\})?) (\S+)$/.exec(
        line,
      )
    if (m) out[m[1]!] = Number(m[2])
  }
  return out
}

const sum = (r: Record<string, number>, prefix: string): number =>
  Object.entries(r)
    .filter(([k]) => k.startsWith(prefix))
    .reduce((a, [, v]) => a + v, 0)

/** CPU seconds (user + system) a process has used so far; NaN where /proc is not there. */
function cpuSeconds(pid: number | undefined): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    // Fields 14 and 15 of stat(5) (utime, stime), counted after the command name.
    return (Number(fields[11]) + Number(fields[12])) / 100
  } catch {
    return Number.NaN
  }
}

async function startWorker(
  dir: string,
  key: string,
  count: number,
  prefix: string,
  seed?: string,
): Promise<{ child: ChildProcess; handles: Handle[] }> {
  const args = ['--import', 'tsx', WORKER, dir, key, String(count), prefix, ...(seed ? [seed] : [])]
  const child = spawn(process.execPath, args, {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, PEERMESH_BENCH_GOSSIP_PROFILE: gossipProfile },
  })
  const handles: Handle[] = []
  const rl = createInterface({ input: child.stdout! })
  for await (const line of rl) {
    handles.push(JSON.parse(line) as Handle)
    if (handles.length === count) break
  }
  return { child, handles }
}

async function measure(n: number): Promise<Record<string, number>> {
  const dir = mkdtempSync(join(tmpdir(), 'peermesh-idle-'))
  const key = join(dir, 'cluster.key')
  writeFileSync(key, generateClusterKey())
  const workers: ChildProcess[] = []
  try {
    const first = await startWorker(dir, key, 1, 'seed')
    workers.push(first.child)
    const all = [...first.handles]
    const seed = first.handles[0]!.address
    for (let left = n - 1, p = 0; left > 0; p++) {
      const k = Math.min(PER_PROCESS, left)
      const w = await startWorker(dir, key, k, `p${p}-`, seed)
      workers.push(w.child)
      all.push(...w.handles)
      left -= k
      progress(`[N=${n}] ${all.length} agents up`)
    }
    const t0 = Date.now()
    const aliveFractions = async (): Promise<number[]> =>
      mapLimited(all, POLL_CONCURRENCY, async (h) => {
        const body = await getText(`http://${h.http}/v1/agent/members`)
        if (body === undefined) return 0 // did not answer: not converged as far as we know
        const v = JSON.parse(body) as { State: string }[]
        return v.filter((m) => m.State === 'alive').length / n
      })
    let converged = 1
    for (;;) {
      const fractions = await aliveFractions()
      if (fractions.every((f) => f === 1)) break
      if (Date.now() - t0 > convergeS * 1000) {
        converged = 0
        progress(`[N=${n}] no convergence in ${convergeS} s (median alive fraction ${median(fractions)})`)
        break
      }
      // Polling every agent's member list is itself load at N=200: not more than every 2 s.
      await new Promise((r) => setTimeout(r, n > 50 ? 2_000 : 500))
    }
    const convergeMs = Date.now() - t0
    progress(`[N=${n}] after ${convergeMs} ms: settling 5 s, then measuring ${windowS} s idle`)
    await new Promise((r) => setTimeout(r, 5_000))
    const cpuAt = (): { t: number; cpu: number[] } => ({
      t: performance.now(),
      cpu: workers.map((w) => cpuSeconds(w.pid)),
    })
    let cpu0 = cpuAt()
    const before = await mapLimited(all, POLL_CONCURRENCY, (h) => metricsOf(h.http))
    // Connections per agent, sampled once a second through the window (max over the samples).
    const connSamples: number[][] = all.map(() => [])
    const windowEnd = Date.now() + windowS * 1000
    while (Date.now() < windowEnd - 1000) {
      await new Promise((r) => setTimeout(r, 1000))
      const snap = await mapLimited(all, POLL_CONCURRENCY, (h) => metricsOf(h.http))
      for (const [i, m] of snap.entries()) connSamples[i]!.push(sum(m, 'peermesh_libp2p_connections'))
    }
    await new Promise((r) => setTimeout(r, Math.max(0, windowEnd - Date.now())))
    const after = await mapLimited(all, POLL_CONCURRENCY, (h) => metricsOf(h.http))
    // Agents that answered both times (a starved one may not have).
    const answered = after.map((a, i) => Object.keys(a).length > 0 && Object.keys(before[i]!).length > 0)
    const rate = (name: string): number[] =>
      after.map((a, i) => (sum(a, name) - sum(before[i]!, name)) / windowS).filter((_, i) => answered[i])
    const msgs = rate('peermesh_gossip_messages_sent_total')
    const bytes = rate('peermesh_gossip_bytes_sent_total')
    const pushPullBytes = rate('peermesh_gossip_pushpull_bytes_sent_total')
    const rejected = rate('peermesh_gossip_datagrams_rejected_total')
    const conns = after.map((a, i) => Math.max(sum(a, 'peermesh_libp2p_connections'), ...connSamples[i]!))
    const connsNow = after.map((a) => sum(a, 'peermesh_libp2p_connections'))
    const aliveAfter = await aliveFractions()
    let cpu1 = cpuAt()
    const hold: Record<string, number> = {}
    if (converged && holdS > 0) {
      progress(`[N=${n}] holding ${holdS} s idle, polling member lists every ${HOLD_POLL_MS / 1000} s`)
      cpu0 = cpuAt()
      const m0 = await mapLimited(all, POLL_CONCURRENCY, (h) => metricsOf(h.http))
      const holdEnd = Date.now() + holdS * 1000
      let polls = 0
      let convergedPolls = 0
      let minAlive = 1
      while (Date.now() < holdEnd) {
        await new Promise((r) => setTimeout(r, Math.min(HOLD_POLL_MS, Math.max(0, holdEnd - Date.now()))))
        const f = await aliveFractions()
        polls++
        if (f.every((x) => x === 1)) convergedPolls++
        minAlive = Math.min(minAlive, ...f)
        progress(`[N=${n}] hold poll ${polls}: ${f.filter((x) => x === 1).length}/${n} agents see all alive`)
      }
      cpu1 = cpuAt()
      const m1 = await mapLimited(all, POLL_CONCURRENCY, (h) => metricsOf(h.http))
      const both = (i: number): boolean => Object.keys(m0[i]!).length > 0 && Object.keys(m1[i]!).length > 0
      const delta = (name: string): number =>
        m1.reduce((a, m, i) => (both(i) ? a + sum(m, name) - sum(m0[i]!, name) : a), 0)
      hold['hold_unanswered_agents'] = m1.filter((_, i) => !both(i)).length
      hold['hold_s'] = holdS
      hold['stayed_converged'] = convergedPolls === polls ? 1 : 0
      hold['converged_polls'] = convergedPolls
      hold['polls'] = polls
      hold['min_alive_fraction'] = minAlive
      hold['false_deaths'] = delta('peermesh_gossip_deaths_total')
      hold['suspicions'] = delta('peermesh_gossip_suspicions_total')
      hold['refutations'] = delta('peermesh_gossip_refutations_total')
      hold['state_syncs'] = delta('peermesh_gossip_state_syncs_total')
      hold['state_sync_matches'] = delta('peermesh_gossip_state_sync_matches_total')
    }
    const cpuS = (cpu1.t - cpu0.t) / 1000
    const perProcess = cpu1.cpu.map((c, i) => (100 * (c - cpu0.cpu[i]!)) / cpuS)
    return {
      n,
      converged,
      converge_ms: converged ? convergeMs : Number.NaN,
      alive_fraction: median(aliveAfter),
      msgs_per_node_s: median(msgs),
      bytes_per_node_s: median(bytes),
      pushpull_bytes_per_node_s: median(pushPullBytes),
      rejected_datagrams_total: rejected.reduce((x, y) => x + y, 0) * windowS,
      conns_median: median(connsNow),
      conns_max: Math.max(...conns),
      conns_p90: quantile(conns, 0.9),
      unanswered_agents: answered.filter((x) => !x).length,
      cpu_pct_per_agent: perProcess.reduce((a, b) => a + b, 0) / n,
      cpu_pct_busiest_process: Math.max(...perProcess),
      ...hold,
    }
  } finally {
    for (const w of workers) w.kill('SIGKILL')
    rmSync(dir, { recursive: true, force: true })
  }
}

const rows: (string | number)[][] = []
const figures: Record<string, number | string> = { gossip_profile: gossipProfile }
progress(`gossip profile: ${gossipProfile}`)
for (const n of sizes) {
  let f: Record<string, number>
  try {
    f = await measure(n)
  } catch (err) {
    progress(`[N=${n}] failed: ${(err as Error).message}`)
    figures[`failed_n${n}`] = 1
    continue
  }
  rows.push([
    n,
    f.msgs_per_node_s!,
    f.bytes_per_node_s!,
    f.pushpull_bytes_per_node_s!,
    f.conns_median!,
    f.conns_max!,
    f.converged ? 'yes' : `no (${(100 * f.alive_fraction!).toFixed(0)}% alive)`,
    f.cpu_pct_per_agent!.toFixed(2),
    f.hold_s === undefined
      ? '-'
      : `${f.stayed_converged ? 'yes' : `no (${f.converged_polls}/${f.polls} polls)`}, ${f.false_deaths} false deaths`,
  ])
  for (const [k, v] of Object.entries(f)) if (k !== 'n') figures[`${k}_n${n}`] = +v.toFixed(3)
}
table(
  [
    'N',
    'UDP msgs/s per node',
    'UDP bytes/s per node',
    'push/pull bytes/s per node',
    'connections (median)',
    'connections (max in window)',
    'converged',
    'CPU % of a core per agent',
    'hold',
  ],
  rows,
)
emitJson(figures)
