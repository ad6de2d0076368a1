/**
 * bench:catalog-propagation — time from a health change on one agent to every agent seeing it.
 *
 * For each N (5, 20): N real agents on 127.0.0.1 joined through one seed (one process each, or
 * several agents per process, by default 4 when N > 5: bench/lib.ts `startWorkerCluster`), DNS off.
 * A service with a TTL check is registered on the first agent. Then, `--changes` times: every agent
 * is watched with blocking queries (bench/lib.ts `watchBlocking`:
 * `GET /v1/health/service/NAME?index=I&wait=W`, re-issued with the index of each reply until the
 * reply shows the new status), the check is flipped (`PUT /v1/agent/check/pass|fail/:id`), and the
 * change's propagation time is from just before the flip is sent to the moment the last agent's
 * reply shows the new status. No polling.
 *
 * Flags: --sizes 5,20  --changes 50  --warmup 5 (uncounted first changes)  --per-process K  --json.
 * JSON: health_propagation_ms_p50/_p99/_max (N = 20) and the same with `_n5`; `changes`, `missed`.
 */
import { type AgentProcess, TestCluster, waitFor } from '../test/e2e/harness.ts'
import {
  apiFetch,
  argValue,
  type BenchCluster,
  currentView,
  emitJson,
  progress,
  quantile,
  startWorkerCluster,
  table,
  watchBlocking,
} from './lib.ts'

const sizes = (argValue('sizes', '5,20') ?? '5,20').split(',').map(Number)
const changes = Number(argValue('changes', '50'))
/** Changes made first and not counted: they pay for JIT warm-up and connection set-up. */
const warmup = Number(argValue('warmup', '5'))
/** Agents per process: `--per-process K`, or by default 1 up to 5 agents and 4 above (small machines). */
const perProcessFlag = argValue('per-process')
const agentsPerProcess = (n: number): number =>
  perProcessFlag !== undefined ? Number(perProcessFlag) : n <= 5 ? 1 : 4
const SERVICE = 'bench-web'
const SERVICE_ID = 'bench-web-1'
const CHECK_ID = 'bench-ttl'
/** A change not seen everywhere by then counts as missed (recorded at this value). */
const CHANGE_TIMEOUT_MS = 15_000
/** Changes slower than this are reported on stderr with their slowest agents. */
const SLOW_MS = 500
const HEALTH = `/v1/health/service/${SERVICE}`

/** A `/v1/health/service` entry (Consul's shape; `Status` is peermesh's aggregated health). */
interface HealthEntry {
  Service: { ID: string }
  Status: string
}

function api(http: string, path: string, init?: RequestInit): Promise<Response> {
  return apiFetch(http, path, CHANGE_TIMEOUT_MS + 5_000, init)
}

/** One process per agent (`peermesh agent`), through the e2e harness. */
async function processCluster(n: number): Promise<BenchCluster> {
  const tc = new TestCluster()
  try {
    const key = await tc.writeClusterKey()
    // cp0 bootstraps a one-voter Raft group, whose first term creates the management token the
    // registration needs (ACLs are on).
    const first = tc.agent({ name: 'cp0', clusterKeyFile: key, dns: 'off', extraArgs: ['--bootstrap'] })
    await first.start()
    const seed = (await first.self())!.addresses[0]!
    const rest: AgentProcess[] = []
    for (let i = 1; i < n; i++) {
      rest.push(tc.agent({ name: `cp${i}`, clusterKeyFile: key, dns: 'off', seeds: [seed] }))
    }
    // Two at a time: many cold tsx starts at once starve a small machine. On a failure, let the
    // starts under way finish spawning before `close()` kills them, so none is left behind.
    for (let i = 0; i < rest.length; i += 2) {
      const starts = rest.slice(i, i + 2).map((a) => a.start())
      const failed = (await Promise.allSettled(starts)).find((r) => r.status === 'rejected')
      if (failed !== undefined) throw failed.reason
    }
    return { https: tc.agents.map((a) => a.http), close: () => tc.close() }
  } catch (err) {
    await tc.close()
    throw err
  }
}

function statusIn(entries: HealthEntry[]): string | undefined {
  return entries.find((e) => e.Service.ID === SERVICE_ID)?.Status
}

/** The agent's current health answer and its index (no blocking). */
async function current(http: string): Promise<{ index: string; status: string | undefined }> {
  const { index, body } = await currentView<HealthEntry[]>(http, HEALTH)
  return { index, status: statusIn(body) }
}

interface Result {
  n: number
  perProcess: number
  times: number[]
  missed: number
}

/** The cluster being measured, killed on Ctrl-C too. */
let active: BenchCluster | undefined
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    progress(`${sig}: stopping agents`)
    void (active?.close() ?? Promise.resolve()).finally(() => process.exit(130))
  })
}

async function measure(n: number): Promise<Result> {
  const perProcess = agentsPerProcess(n)
  progress(`N=${n}: starting ${n} agents, ${perProcess} per process`)
  const cluster =
    perProcess > 1
      ? await startWorkerCluster({ n, perProcess, prefix: 'cw', bootstrap: true })
      : await processCluster(n)
  active = cluster
  try {
    const { https } = cluster
    const owner = https[0]!
    // The reads carry the management token (apiFetch), so this also waits until every agent has it.
    await waitFor(
      `${n} agents to converge`,
      async () => {
        const views = await Promise.all(
          https.map(async (h) => (await (await api(h, '/v1/agent/members')).json()) as { State: string }[]),
        )
        return views.every((v) => v.filter((m) => m.State === 'alive').length === n) ? true : undefined
      },
      120_000,
      200,
    )
    progress(`N=${n}: converged; registering ${SERVICE_ID} on the first agent`)
    const reg = await api(owner, '/v1/agent/service/register', {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        name: SERVICE,
        id: SERVICE_ID,
        port: 8080,
        checks: [{ id: CHECK_ID, ttl: '10m', status: 'passing' }],
      }),
    })
    if (!reg.ok) throw new Error(`register answered ${reg.status}: ${await reg.text()}`)
    const indexes = await waitFor(
      `${SERVICE_ID} passing on all ${n} agents`,
      async () => {
        const now = await Promise.all(https.map(current))
        return now.every((c) => c.status === 'passing') ? now.map((c) => c.index) : undefined
      },
      30_000,
      100,
    )

    const times: number[] = []
    let missed = 0
    let status = 'passing'
    for (let i = -warmup; i < changes; i++) {
      const want = status === 'passing' ? 'critical' : 'passing'
      const t0 = performance.now()
      const deadline = t0 + CHANGE_TIMEOUT_MS
      const watchers = https.map((h, k) =>
        watchBlocking<HealthEntry[]>(h, HEALTH, indexes[k]!, (b) => statusIn(b) === want, deadline),
      )
      const flip = await api(owner, `/v1/agent/check/${want === 'passing' ? 'pass' : 'fail'}/${CHECK_ID}`, {
        method: 'PUT',
      })
      if (!flip.ok) throw new Error(`check flip answered ${flip.status}`)
      const seen = await Promise.all(watchers)
      status = want
      const counted = i >= 0 // the warm-up changes are not
      if (!counted || seen.some((s) => s === undefined)) {
        if (counted) {
          missed++
          times.push(CHANGE_TIMEOUT_MS)
        }
        // Re-sync every watcher's index before the next change.
        const now = await Promise.all(https.map(current))
        for (const [k, c] of now.entries()) indexes[k] = c.index
        continue
      }
      const each = seen.map((s) => s!.at - t0)
      times.push(Math.max(...each))
      for (const [k, s] of seen.entries()) indexes[k] = s!.index
      if (Math.max(...each) > SLOW_MS) {
        const order = each.map((ms, k) => ({ k, ms })).sort((a, b) => b.ms - a.ms)
        const slowest = order.slice(0, 3).map((o) => `agent ${o.k} ${o.ms.toFixed(0)} ms`)
        progress(
          `N=${n}: change ${i + 1} slow: ${slowest.join(', ')}; median agent ${order[order.length >> 1]!.ms.toFixed(0)} ms`,
        )
      }
      if ((i + 1) % 10 === 0 || i + 1 === changes) {
        progress(
          `N=${n}: ${i + 1}/${changes} changes, p50 ${quantile(times, 0.5).toFixed(1)} ms, max ${Math.max(...times).toFixed(1)} ms`,
        )
      }
    }
    return { n, perProcess, times, missed }
  } finally {
    active = undefined
    await cluster.close()
  }
}

const results: Result[] = []
for (const n of sizes) results.push(await measure(n))

const round = (x: number): number => Math.round(x * 10) / 10
table(
  ['agents', 'per process', 'changes', 'p50 ms', 'p99 ms', 'max ms', 'missed'],
  results.map((r) => [
    r.n,
    r.perProcess,
    r.times.length,
    round(quantile(r.times, 0.5)),
    round(quantile(r.times, 0.99)),
    round(Math.max(...r.times)),
    r.missed,
  ]),
)
const figures: Record<string, unknown> = { changes }
for (const r of results) {
  const suffix = r.n === 20 ? '' : `_n${r.n}`
  figures[`health_propagation_ms_p50${suffix}`] = round(quantile(r.times, 0.5))
  figures[`health_propagation_ms_p99${suffix}`] = round(quantile(r.times, 0.99))
  figures[`health_propagation_ms_max${suffix}`] = round(Math.max(...r.times))
  figures[`missed${suffix}`] = r.missed
  figures[`agents_per_process${suffix}`] = r.perProcess
}
emitJson(figures)
