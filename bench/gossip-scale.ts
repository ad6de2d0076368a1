/**
 * Large-cluster SWIM simulator bench: `npx tsx bench/gossip-scale.ts [--json] [--sizes=100,1000,10000]`.
 *
 * For each cluster size N, with the `lan` profile, 0.2–2 ms one-way latency and 0.5% datagram loss:
 * 1. Builds a converged cluster. The cluster starts pre-converged: every node begins with the full
 *    alive member list (one shared copy-on-write snapshot, `SimNetwork.bootstrapConverged`) instead
 *    of simulating N joins; records are signed with `nullSigner` (no crypto cost).
 * 2. Warms up (startup gossip drains, probes settle), then measures steady-state messages and bytes
 *    sent per member per second (datagrams + push/pull transfers) over a virtual window.
 * 3. Changes one node's record and measures the virtual time until 99.99% of the members
 *    (rounded up, the originator included) hold the new version (`reach_ms_N`).
 * Progress goes to stderr, a table to stdout; with `--json` the last stdout line is one JSON object.
 */
import { lanConfig, SimNetwork } from '../src/gossip/index.ts'

interface SizeResult {
  n: number
  reachMs: number
  msgsPerMemberS: number
  bytesPerMemberS: number
  datagramBytesPerMemberS: number
  falseDeaths: number
  realSeconds: number
}

const args = process.argv.slice(2)
const json = args.includes('--json')
const sizesArg = args.find((a) => a.startsWith('--sizes='))
const sizes = sizesArg ? sizesArg.slice('--sizes='.length).split(',').map(Number) : [100, 1000, 10000]

function log(msg: string): void {
  process.stderr.write(`${msg}\n`)
}

function totals(
  sim: SimNetwork,
  ids: string[],
): { msgs: number; bytes: number; dgBytes: number; deaths: number } {
  let msgs = 0
  let bytes = 0
  let dgBytes = 0
  let deaths = 0
  for (const id of ids) {
    const s = sim.node(id).stats()
    msgs += s.messagesSent + s.pushPullSent
    bytes += s.bytesSent + s.pushPullBytesSent
    dgBytes += s.bytesSent
    deaths += s.deaths
  }
  return { msgs, bytes, dgBytes, deaths }
}

function runSize(n: number): SizeResult {
  const started = performance.now()
  const sim = new SimNetwork({
    seed: 42 + n,
    config: lanConfig,
    latencyMs: { min: 0.2, max: 2 },
    loss: 0.005,
  })
  const ids = Array.from({ length: n }, (_, i) => `node-${i}`)
  sim.bootstrapConverged(ids)
  log(`[${n}] bootstrapped in ${((performance.now() - started) / 1000).toFixed(1)} s`)

  const warmupMs = 3000
  sim.runFor(warmupMs)
  log(`[${n}] warmed up ${warmupMs} virtual ms (${((performance.now() - started) / 1000).toFixed(1)} s real)`)

  const windowMs = n >= 10000 ? 5000 : 10000
  const before = totals(sim, ids)
  sim.runFor(windowMs)
  const after = totals(sim, ids)
  const seconds = windowMs / 1000
  const msgsPerMemberS = (after.msgs - before.msgs) / n / seconds
  const bytesPerMemberS = (after.bytes - before.bytes) / n / seconds
  const datagramBytesPerMemberS = (after.dgBytes - before.dgBytes) / n / seconds
  log(`[${n}] steady state over ${windowMs} virtual ms: ${msgsPerMemberS.toFixed(2)} msgs/member/s`)

  const target = ids[Math.floor(n / 2)]!
  const need = Math.ceil(0.9999 * n)
  let version = -1
  const have = new Set<string>([target])
  sim.onEvent = (nodeId, e) => {
    if (e.member.id === target && e.member.version >= version && version > 0) have.add(nodeId)
  }
  sim.act(target, (s) => {
    const out = s.updateLocalRecord({ meta: { bench: 'changed', at: sim.now } })
    version = s.localRecord.version
    return out
  })
  const changedAt = sim.now
  const reachedAt = sim.runUntilCondition(() => have.size >= need, 30_000, 1)
  const reachMs = reachedAt === undefined ? Number.POSITIVE_INFINITY : reachedAt - changedAt
  log(`[${n}] record reached ${have.size}/${n} members after ${reachMs.toFixed(1)} virtual ms`)
  const falseDeaths = totals(sim, ids).deaths
  const realSeconds = (performance.now() - started) / 1000
  log(`[${n}] done in ${realSeconds.toFixed(1)} s real`)
  return { n, reachMs, msgsPerMemberS, bytesPerMemberS, datagramBytesPerMemberS, falseDeaths, realSeconds }
}

const results: SizeResult[] = []
for (const n of sizes) results.push(runSize(n))

const header = [
  'members',
  'reach_ms',
  'msgs/member/s',
  'bytes/member/s',
  'datagram bytes/member/s',
  'false deaths',
  'real s',
]
const rows = results.map((r) => [
  String(r.n),
  r.reachMs.toFixed(1),
  r.msgsPerMemberS.toFixed(2),
  r.bytesPerMemberS.toFixed(0),
  r.datagramBytesPerMemberS.toFixed(0),
  String(r.falseDeaths),
  r.realSeconds.toFixed(1),
])
const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)))
const line = (cells: string[]): string => cells.map((c, i) => c.padStart(widths[i]!)).join('  ')
console.log(line(header))
for (const r of rows) console.log(line(r))

const out: Record<string, number | null> = {}
for (const r of results) {
  out[`reach_ms_${r.n}`] = Number.isFinite(r.reachMs) ? Math.round(r.reachMs * 10) / 10 : null
  out[`msgs_per_member_s_${r.n}`] = Math.round(r.msgsPerMemberS * 1000) / 1000
  out[`bytes_per_member_s_${r.n}`] = Math.round(r.bytesPerMemberS)
  out[`datagram_bytes_per_member_s_${r.n}`] = Math.round(r.datagramBytesPerMemberS)
  out[`false_deaths_${r.n}`] = r.falseDeaths
}
const byN = new Map(results.map((r) => [r.n, r]))
const r1k = byN.get(1000)
const r10k = byN.get(10000)
if (r1k && r10k) {
  out['load_ratio_10k_1k'] = Math.round((r10k.msgsPerMemberS / r1k.msgsPerMemberS) * 1000) / 1000
  out['bytes_ratio_10k_1k'] = Math.round((r10k.bytesPerMemberS / r1k.bytesPerMemberS) * 1000) / 1000
}
if (json) console.log(JSON.stringify(out))
