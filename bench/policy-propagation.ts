/**
 * bench:policy-propagation — time from an intention write at a non-leader agent to the moment every
 * agent has applied it to its local committed state (what its proxies authorize with).
 *
 * For each N (5, 20): N real agents on 127.0.0.1 (one per process at N = 5; several per process
 * above, `--per-process K`, default 4), the first bootstrapping Raft, the others joining as
 * learners (autopilot promotes up to 3 voters). Writes alternate the action of one intention
 * (`PUT /v1/connect/intentions/exact?source=bench-a&destination=bench-b`) through an agent that is
 * not the leader, so each one is forwarded to the leader, committed, and replicated to all.
 * Every agent is watched with a blocking query (`GET /v1/connect/intentions?index=I&wait=W`,
 * re-issued with each reply's index until the reply shows the new action), started 20 ms before
 * the write; a write's propagation time is from just before it is sent to the last agent's reply
 * showing it. No polling.
 *
 * Flags: --sizes 5,20  --writes 200  --warmup 10 (uncounted)  --per-process K  --json.
 * JSON (last line): propagation_ms_p50/_p99/_max (N = 20), the same with `_n5`, `writes`, `missed`.
 *
 * Agents run in `multi-agent-worker.ts` processes (bench/lib.ts `startWorkerCluster`), watched with
 * lib.ts `watchBlocking`, as in bench:catalog-propagation.
 */
import { waitFor } from '../test/e2e/harness.ts'
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

const SOURCE = 'bench-a'
const DESTINATION = 'bench-b'
const INTENTIONS = '/v1/connect/intentions'
/** A write not seen everywhere by then counts as missed (recorded at this value). */
const WRITE_TIMEOUT_MS = 15_000
/** Writes slower than this are reported on stderr with their slowest agents. */
const SLOW_MS = 100
/** Pause between starting the watchers of a write and sending it (see the write loop). */
const WATCH_SETTLE_MS = 20

/** The cluster being measured, killed on Ctrl-C too. */
let active: BenchCluster | undefined

function api(http: string, path: string, init?: RequestInit): Promise<Response> {
  return apiFetch(http, path, WRITE_TIMEOUT_MS + 5_000, init)
}

/** An intention as `GET /v1/connect/intentions` lists it (Consul's shape). */
interface IntentionJson {
  SourceName: string
  DestinationName: string
  Action: string
}

function actionIn(list: IntentionJson[]): string | undefined {
  return list.find((i) => i.SourceName === SOURCE && i.DestinationName === DESTINATION)?.Action
}

async function current(http: string): Promise<{ index: string; action: string | undefined }> {
  const { index, body } = await currentView<IntentionJson[]>(http, INTENTIONS)
  return { index, action: actionIn(body) }
}

interface RaftStatus {
  id: string
  leader: string
  voters: string[]
  learners: string[]
}

interface Result {
  n: number
  perProcess: number
  times: number[]
  acks: number[]
  missed: number
}

async function measure(
  n: number,
  writes: number,
  warmup: number,
  perProcessFlag: string | undefined,
): Promise<Result> {
  const perProcess = perProcessFlag !== undefined ? Number(perProcessFlag) : n <= 5 ? 1 : 4
  progress(`N=${n}: starting ${n} agents, ${perProcess} per process`)
  const cluster = await startWorkerCluster({ n, perProcess, prefix: 'pp', bootstrap: true })
  active = cluster
  try {
    const { https } = cluster
    let lastReport = performance.now()
    const sts = await waitFor(
      `all ${n} agents in the raft configuration with one leader`,
      async () => {
        const all = await Promise.all(
          https.map(async (h) => (await (await api(h, '/v1/operator/raft/status')).json()) as RaftStatus),
        )
        const leader = all[0]?.leader
        if (performance.now() - lastReport > 10_000) {
          lastReport = performance.now()
          const sizes = all.map((s) => `${s.leader.slice(-4)}:${s.voters.length}+${s.learners.length}`)
          progress(
            `N=${n}: waiting for raft membership (leader:voters+learners per agent) ${sizes.join(' ')}`,
          )
        }
        const ok =
          leader !== undefined &&
          leader !== '' &&
          all.every((s) => s.leader === leader && s.voters.length + s.learners.length === n)
        return ok ? all : undefined
      },
      // Generous: on a loaded 2-core machine 20 agents' learners join over a minute or more.
      180_000,
      200,
    )
    // Write through the last agent that is not the leader (a learner when there are any).
    const writerIdx = sts
      .map((s, i) => ({ s, i }))
      .reverse()
      .find(({ s }) => s.leader !== s.id)!.i
    const writer = https[writerIdx]!
    progress(`N=${n}: converged (${sts[0]!.voters.length} voters); writing through agent ${writerIdx}`)
    const put = (action: string) =>
      api(writer, `/v1/connect/intentions/exact?source=${SOURCE}&destination=${DESTINATION}`, {
        method: 'PUT',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ action }),
      })
    const first = await put('deny')
    if (!first.ok) throw new Error(`first write answered ${first.status}: ${await first.text()}`)
    const indexes = await waitFor(
      `first intention on all ${n} agents`,
      async () => {
        const now = await Promise.all(https.map(current))
        return now.every((c) => c.action === 'deny') ? now.map((c) => c.index) : undefined
      },
      30_000,
      50,
    )
    const times: number[] = []
    /** Time until the writer's HTTP reply (committed and applied on the leader), for comparison. */
    const acks: number[] = []
    let missed = 0
    let action = 'deny'
    for (let i = -warmup; i < writes; i++) {
      const want = action === 'allow' ? 'deny' : 'allow'
      const deadline = performance.now() + WATCH_SETTLE_MS + WRITE_TIMEOUT_MS
      const watchers = https.map((h, k) =>
        watchBlocking<IntentionJson[]>(h, INTENTIONS, indexes[k]!, (b) => actionIn(b) === want, deadline),
      )
      // Let the blocking queries reach their agents before the clock starts, as a proxy's watch is
      // already waiting when a write happens: issuing 20 of them is the bench's own work, not the
      // write's (counted, it was ~6 ms of a write's p50 at N=20). A query that arrives late
      // still sees the write (its index has passed), so nothing is missed either way.
      await new Promise((r) => setTimeout(r, WATCH_SETTLE_MS))
      const t0 = performance.now()
      const res = await put(want)
      const acked = performance.now() - t0
      if (!res.ok) throw new Error(`write answered ${res.status}: ${await res.text()}`)
      const seen = await Promise.all(watchers)
      action = want
      const counted = i >= 0
      if (seen.some((s) => s === undefined)) {
        if (counted) {
          missed++
          times.push(WRITE_TIMEOUT_MS)
        }
        const now = await Promise.all(https.map(current))
        for (const [k, c] of now.entries()) indexes[k] = c.index
        continue
      }
      for (const [k, s] of seen.entries()) indexes[k] = s!.index
      if (!counted) continue
      const each = seen.map((s) => s!.at - t0)
      const worst = Math.max(...each)
      times.push(worst)
      acks.push(acked)
      if (worst > SLOW_MS) {
        const order = each.map((ms, k) => ({ k, ms })).sort((a, b) => b.ms - a.ms)
        progress(
          `N=${n}: write ${i + 1} slow: ${order
            .slice(0, 3)
            .map((o) => `agent ${o.k} ${o.ms.toFixed(0)} ms`)
            .join(', ')}; median agent ${order[order.length >> 1]!.ms.toFixed(0)} ms`,
        )
      }
      if ((i + 1) % 50 === 0 || i + 1 === writes) {
        progress(
          `N=${n}: ${i + 1}/${writes} writes, p50 ${quantile(times, 0.5).toFixed(1)} ms, p99 ${quantile(times, 0.99).toFixed(1)} ms`,
        )
      }
    }
    return { n, perProcess, times, acks, missed }
  } finally {
    active = undefined
    await cluster.close()
  }
}

async function runBench(): Promise<void> {
  const sizes = (argValue('sizes', '5,20') ?? '5,20').split(',').map(Number)
  const writes = Number(argValue('writes', '200'))
  const warmup = Number(argValue('warmup', '10'))
  const perProcessFlag = argValue('per-process')
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      progress(`${sig}: stopping agents`)
      void (active?.close() ?? Promise.resolve()).finally(() => process.exit(130))
    })
  }
  const results: Result[] = []
  for (const n of sizes) results.push(await measure(n, writes, warmup, perProcessFlag))
  const round = (x: number): number => Math.round(x * 10) / 10
  table(
    ['agents', 'per process', 'writes', 'p50 ms', 'p99 ms', 'max ms', 'write ack p50 ms', 'missed'],
    results.map((r) => [
      r.n,
      r.perProcess,
      r.times.length,
      round(quantile(r.times, 0.5)),
      round(quantile(r.times, 0.99)),
      round(Math.max(...r.times)),
      round(quantile(r.acks, 0.5)),
      r.missed,
    ]),
  )
  const figures: Record<string, unknown> = { writes }
  for (const r of results) {
    const suffix = r.n === 20 ? '' : `_n${r.n}`
    figures[`propagation_ms_p50${suffix}`] = round(quantile(r.times, 0.5))
    figures[`propagation_ms_p99${suffix}`] = round(quantile(r.times, 0.99))
    figures[`propagation_ms_max${suffix}`] = round(Math.max(...r.times))
    figures[`write_ack_ms_p50${suffix}`] = round(quantile(r.acks, 0.5))
    figures[`missed${suffix}`] = r.missed
    figures[`agents_per_process${suffix}`] = r.perProcess
  }
  emitJson(figures)
  process.exit(0)
}

await runBench()
