/**
 * `npm run bench:raft-failover [-- --rounds N --seconds S --warmup-seconds S --write-reps N --json]`
 *
 * peermesh's Raft (3 voters, agents as separate processes on 127.0.0.1) against a 3-member etcd
 * (Debian `etcd-server`) in the same run, measured the same way (ANCHORS.md, etcd section):
 * - failover: `kill -9` the leader, then a write through a survivor every 20 ms, 200 ms timeout
 *   each, over keep-alive HTTP; the figure is the time to the first success. Our killed agent is
 *   restarted with its data dir between rounds and the cluster is healthy again (3 voters, one
 *   leader) before the next; etcd gets a fresh cluster per round (its harness cannot restart a
 *   member), healthy before the kill all the same. etcd at its defaults (100/1000 ms) and tuned
 *   (50/250 ms).
 * - writes to the leader, 16-byte values, fsync on in both: `--write-reps` (default 5)
 *   repetitions alternating between the two systems, each on a fresh cluster of its own with
 *   nothing else of the bench running: the same warm-up for both (50 sequential writes, then 16
 *   writers for `--warmup-seconds`, default 10: a long-running cluster's pace, not a fresh
 *   process's unoptimized code; its throughput is reported), then `--sequential-ops` (default 500)
 *   sequential writes (latency p50/p99) and 16 concurrent writers for `--seconds` (default 10:
 *   throughput and latency). Each figure is the median over the repetitions; the two write
 *   targets' ratios (`write_throughput_ratio`, `write_seq_p50_ratio`) are the medians of the
 *   ratios of paired repetitions (ours, then etcd's right after), each listed in the JSON
 *   (`*_reps`). Ours through `PUT /v1/config` (kv entries), etcd through its v3 JSON gateway
 *   (`POST /v3/kv/put`).
 *
 * Progress on stderr, a table on stdout, and with `--json` the figures as the last stdout line.
 */
import { mkdirSync, writeFileSync } from 'node:fs'
import { Agent, request } from 'node:http'
import { loadavg } from 'node:os'
import { join } from 'node:path'
import { type AgentProcess, authHeaders, TestCluster, waitFor } from '../test/e2e/harness.ts'
import { type RaftStatus, startRaftCluster, status, waitForLeader } from '../test/e2e/raft-helpers.ts'
import { argValue, emitJson, fmt, median, progress, quantile, table } from './lib.ts'
import {
  DEFAULT_TIMING,
  type EtcdCluster,
  type EtcdTiming,
  ensureEtcdInstalled,
  measureFailover,
  startEtcdCluster,
  TUNED_TIMING,
} from './peers/etcd.ts'

const ROUNDS = Number(argValue('rounds', '10'))
const SECONDS = Number(argValue('seconds', '10'))
const SEQUENTIAL_OPS = Number(argValue('sequential-ops', '500'))
const WARMUP_SECONDS = Number(argValue('warmup-seconds', '10'))
const WRITE_REPS = Number(argValue('write-reps', '5'))
const WRITERS = 16
const VALUE = '0123456789abcdef' // 16 bytes

// ---- our HTTP API over a keep-alive agent ------------------------------------------------------

const keepAlive = new Agent({ keepAlive: true, maxSockets: 64 })

function putKv(
  http: string,
  name: string,
  value: string,
  timeoutMs: number,
  signal?: AbortSignal,
): Promise<void> {
  const [host, port] = http.split(':') as [string, string]
  const body = Buffer.from(JSON.stringify({ kind: 'kv', name, value }))
  // As etcd's client (bench/peers/etcd.ts): a combined signal only when there is a second one.
  const timeout = AbortSignal.timeout(timeoutMs)
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host,
        port: Number(port),
        method: 'PUT',
        path: '/v1/config',
        agent: keepAlive,
        headers: { ...authHeaders(), 'content-type': 'application/json', 'content-length': body.length },
        signal: signal === undefined ? timeout : AbortSignal.any([signal, timeout]),
      },
      (res) => {
        res.resume()
        res.on('error', reject)
        res.on('end', () =>
          res.statusCode === 200 ? resolve() : reject(new Error(`HTTP ${res.statusCode ?? 0}`)),
        )
      },
    )
    req.on('error', reject)
    req.end(body)
  })
}

// ---- measurements shared by both systems -------------------------------------------------------

type Put = (i: number, opts: { timeoutMs: number; signal?: AbortSignal }) => Promise<void>

/** Writes every `intervalMs` (not waiting for the previous one) until one succeeds; seconds from t0. */
async function firstSuccess(put: Put, t0: number, intervalMs = 20, timeoutMs = 200, deadlineMs = 30_000) {
  const inFlight = new AbortController()
  return new Promise<number>((resolve, reject) => {
    let done = false
    let i = 0
    const finish = (): void => {
      done = true
      clearInterval(timer)
      inFlight.abort()
    }
    const launch = (): void => {
      if (done) return
      if (performance.now() - t0 > deadlineMs) {
        finish()
        reject(new Error(`no write succeeded within ${deadlineMs} ms of the kill`))
        return
      }
      put(i++, { timeoutMs, signal: inFlight.signal }).then(
        () => {
          if (done) return
          const s = (performance.now() - t0) / 1000
          finish()
          resolve(s)
        },
        () => {},
      )
    }
    const timer = setInterval(launch, intervalMs)
    launch()
  })
}

/** One repetition of the write phase on one system. */
interface WriteRep {
  /** 1-minute load average at the end of the repetition: the machine is shared, so say how busy. */
  load: number
  seqP50: number
  seqP99: number
  seqOps: number
  concOps: number
  concP50: number
  concP99: number
}

interface Concurrent {
  ops: number
  lat: number[]
  errors: number
}

/** `WRITERS` writers, each writing back to back for `seconds`: throughput and latencies. */
async function concurrent(put: Put, seconds: number): Promise<Concurrent> {
  const lat: number[] = []
  let errors = 0
  const end = performance.now() + seconds * 1000
  const c0 = performance.now()
  await Promise.all(
    Array.from({ length: WRITERS }, async (_, w) => {
      for (let i = 0; performance.now() < end; i++) {
        const t = performance.now()
        try {
          await put(w * 1_000_000 + i, { timeoutMs: 2_000 })
          lat.push(performance.now() - t)
        } catch {
          errors++
        }
      }
    }),
  )
  return { ops: lat.length / ((performance.now() - c0) / 1000), lat, errors }
}

/**
 * Brings a fresh cluster to a long-running one's pace: a fresh Node process runs its first
 * thousands of writes in V8's unoptimized tiers, with the optimizing compiler busy beside them.
 * Both systems get the same warm-up; its throughput is reported (`write_warmup_ops_*`), so the
 * cold cluster's figure stays visible.
 */
async function warmUp(label: string, put: Put): Promise<number> {
  for (let i = 0; i < 50; i++) await put(i, { timeoutMs: 2_000 })
  const warm = await concurrent(put, WARMUP_SECONDS)
  progress(
    `${label}: warm-up, ${WRITERS} writers for ${WARMUP_SECONDS} s from a fresh start: ${fmt(warm.ops)} ops/s, ${warm.errors} errors`,
  )
  return warm.ops
}

/** Sequential writes (`SEQUENTIAL_OPS`), then `WRITERS` writers for `SECONDS`. */
async function writeRep(label: string, put: Put): Promise<WriteRep> {
  const seq: number[] = []
  const s0 = performance.now()
  for (let i = 0; i < SEQUENTIAL_OPS; i++) {
    const t = performance.now()
    await put(i, { timeoutMs: 2_000 })
    seq.push(performance.now() - t)
  }
  const seqOps = SEQUENTIAL_OPS / ((performance.now() - s0) / 1000)
  progress(
    `${label}: sequential p50 ${fmt(quantile(seq, 0.5))} ms, p99 ${fmt(quantile(seq, 0.99))} ms, ${fmt(seqOps)} ops/s`,
  )
  const { ops: concOps, lat, errors } = await concurrent(put, SECONDS)
  progress(
    `${label}: ${WRITERS} writers: ${fmt(concOps)} ops/s, p50 ${fmt(quantile(lat, 0.5))} ms, p99 ${fmt(quantile(lat, 0.99))} ms, ${errors} errors, load ${fmt(loadavg()[0]!)}`,
  )
  return {
    load: loadavg()[0]!,
    seqP50: quantile(seq, 0.5),
    seqP99: quantile(seq, 0.99),
    seqOps,
    concOps,
    concP50: quantile(lat, 0.5),
    concP99: quantile(lat, 0.99),
  }
}

/** A system's write figures: the median of each figure over the repetitions, and the reps. */
interface WriteFigures extends WriteRep {
  /** The warm-ups' throughput (median): a fresh cluster's first seconds of load. */
  warmupOps: number
  reps: WriteRep[]
}

/** A cluster started for one repetition: where to write, and how to close it. */
interface WriteCluster {
  put: Put
  close(): Promise<void>
}

/**
 * The write phase: `WRITE_REPS` repetitions alternating between the systems, so that a change in
 * the machine's load meanwhile falls on both alike. Each repetition starts a fresh cluster, warms
 * it up (see warmUp), measures (see writeRep) and closes it: nothing else of the bench runs beside
 * the one measured.
 */
async function measureWrites(
  systems: { label: string; start(): Promise<WriteCluster> }[],
): Promise<WriteFigures[]> {
  const warm: number[][] = systems.map(() => [])
  const reps: WriteRep[][] = systems.map(() => [])
  for (let r = 0; r < WRITE_REPS; r++)
    for (const [i, s] of systems.entries()) {
      const label = `${s.label} (rep ${r + 1})`
      const c = await s.start()
      try {
        warm[i]!.push(await warmUp(label, c.put))
        reps[i]!.push(await writeRep(label, c.put))
      } finally {
        await c.close()
      }
    }
  return systems.map((_, i) => {
    const rs = reps[i]!
    const med = (f: (x: WriteRep) => number): number => median(rs.map(f))
    return {
      warmupOps: median(warm[i]!),
      reps: rs,
      load: med((x) => x.load),
      seqP50: med((x) => x.seqP50),
      seqP99: med((x) => x.seqP99),
      seqOps: med((x) => x.seqOps),
      concOps: med((x) => x.concOps),
      concP50: med((x) => x.concP50),
      concP99: med((x) => x.concP99),
    }
  })
}

// ---- peermesh ------------------------------------------------------------------------------------

/** `ROUNDS` kill -9s of our leader, each restarted after; seconds to the first write OK at a survivor. */
async function oursFailover(agents: AgentProcess[]): Promise<number[]> {
  const healthy = async (): Promise<RaftStatus[] | undefined> => {
    const sts = await Promise.all(agents.map(status))
    if (sts.some((s) => s === undefined)) return undefined
    const all = sts as RaftStatus[]
    const leader = all[0]!.leader
    const ok =
      leader !== '' &&
      all.every(
        (s) => s.leader === leader && s.voters.length === 3 && s.appliedIndex >= all[0]!.commitIndex - 1,
      )
    return ok ? all : undefined
  }
  const waitHealthy = async (): Promise<void> => {
    try {
      await waitFor('a healthy 3-voter cluster', healthy, 30_000, 50)
    } catch (err) {
      for (const a of agents) {
        progress(`--- ${a.name}: ${JSON.stringify(await status(a))}\n${a.log.slice(-6000)}`)
      }
      throw err
    }
  }
  await waitHealthy()
  const failover: number[] = []
  for (let r = 0; r < ROUNDS; r++) {
    await waitHealthy()
    const leader = await waitForLeader(agents)
    const survivor = agents.find((a) => a !== leader)!
    await putKv(survivor.http, 'failover/warm', 'x', 5_000)
    const t0 = performance.now()
    const killed = leader.stop('SIGKILL') // sends SIGKILL now; resolves on exit
    let s: number
    try {
      s = await firstSuccess(
        (i, o) => putKv(survivor.http, 'failover/probe', String(i), o.timeoutMs, o.signal),
        t0,
      )
    } catch (err) {
      for (const a of agents) progress(`--- ${a.name} (survivor: ${a === survivor})\n${a.log.slice(-6000)}`)
      throw err
    }
    await killed
    failover.push(s)
    progress(`peermesh: round ${r + 1}: write OK ${fmt(s)} s after kill -9 of ${leader.name}`)
    await leader.start()
  }
  await waitHealthy()
  return failover
}

// ---- etcd ----------------------------------------------------------------------------------------

async function etcdFailover(label: string, timing: EtcdTiming): Promise<number[]> {
  const out: number[] = []
  for (let r = 0; r < ROUNDS; r++) {
    const cluster = await startEtcdCluster(timing)
    try {
      const s = await measureFailover(cluster)
      out.push(s)
      progress(`etcd ${label}: round ${r + 1}: write OK ${fmt(s)} s after kill -9`)
    } finally {
      await cluster.close()
    }
  }
  return out
}

/** A fresh 3-voter cluster of ours for one write repetition, writes going to its leader. */
async function startOurs(): Promise<WriteCluster> {
  // Logs: the last 64 KB of each agent's (an audit line per write, kept whole, grew this process's
  // heap repetition after repetition and slowed its client).
  const cluster = new TestCluster({ logTailChars: 64 * 1024 })
  try {
    const agents = await startRaftCluster(cluster, 3, { prefix: 'writes' })
    const leader = await waitForLeader(agents)
    return {
      put: (i, o) => putKv(leader.http, `bench/${i % 1024}`, VALUE, o.timeoutMs, o.signal),
      close: () => cluster.close(),
    }
  } catch (err) {
    await cluster.close()
    throw err
  }
}

/** A fresh 3-member etcd (defaults) for one write repetition, writes going to its leader. */
async function startEtcd(): Promise<WriteCluster> {
  const cluster: EtcdCluster = await startEtcdCluster(DEFAULT_TIMING)
  try {
    const leader = await cluster.leader()
    return {
      put: (i, o) =>
        cluster.put(leader, `bench/${i % 1024}`, VALUE, {
          timeoutMs: o.timeoutMs,
          ...(o.signal ? { signal: o.signal } : {}),
        }),
      close: () => cluster.close(),
    }
  } catch (err) {
    await cluster.close()
    throw err
  }
}

async function main(): Promise<void> {
  ensureEtcdInstalled()
  progress(
    `raft failover bench: ${ROUNDS} rounds each; writes: ${WRITE_REPS} alternated repetitions, each on a fresh cluster: ${WARMUP_SECONDS} s warm-up, ${SEQUENTIAL_OPS} sequential, ${WRITERS} writers for ${SECONDS} s`,
  )
  const cluster = new TestCluster()
  let oursFo: number[]
  try {
    oursFo = await oursFailover(await startRaftCluster(cluster, 3, { prefix: 'bench' }))
  } finally {
    const dir = argValue('logs')
    if (dir !== undefined) {
      // `--logs DIR`: every agent's log (all its runs), to see why a round was slow.
      mkdirSync(dir, { recursive: true })
      for (const a of cluster.agents) writeFileSync(join(dir, `${a.name}.log`), a.log)
    }
    await cluster.close()
  }
  const ours = { label: 'peermesh', start: startOurs }
  if (process.argv.includes('--ours-only')) {
    const [w] = await measureWrites([ours])
    progress(JSON.stringify({ failover: oursFo, writes: w }))
    return
  }
  const etcdDefault = await etcdFailover('defaults 100/1000', DEFAULT_TIMING)
  const etcdTuned = await etcdFailover('tuned 50/250', TUNED_TIMING)
  const [w, etcdW] = (await measureWrites([ours, { label: 'etcd', start: startEtcd }])) as [
    WriteFigures,
    WriteFigures,
  ]
  keepAlive.destroy()
  report(oursFo, etcdDefault, etcdTuned, w, etcdW)
}

function report(
  oursFailover: number[],
  etcdDefault: number[],
  etcdTuned: number[],
  w: WriteFigures,
  etcdW: WriteFigures,
): void {
  const fo = median(oursFailover) * 1000
  const fd = median(etcdDefault) * 1000
  const ft = median(etcdTuned) * 1000
  // The two write targets' ratios pair each repetition of ours with the etcd one right after it, and
  // take the median of those ratios: the pairs saw the same machine (the other rows: medians of
  // each system's figures).
  const paired = (f: (r: WriteRep) => number): number[] => w.reps.map((r, i) => f(r) / f(etcdW.reps[i]!))
  const throughputRatio = median(paired((r) => r.concOps))
  const seqRatio = median(paired((r) => r.seqP50))
  const range = (xs: number[]): string => `[${fmt(Math.min(...xs))}–${fmt(Math.max(...xs))}] s`
  table(
    ['figure', 'peermesh', 'etcd', 'ratio ours/etcd', 'target'],
    [
      [
        'failover, etcd defaults 100/1000 (median s)',
        `${fmt(fo / 1000)} ${range(oursFailover)}`,
        `${fmt(fd / 1000)} ${range(etcdDefault)}`,
        fo / fd,
        '<= 0.35',
      ],
      [
        'failover, etcd tuned 50/250 (median s)',
        `${fmt(fo / 1000)}`,
        `${fmt(ft / 1000)} ${range(etcdTuned)}`,
        fo / ft,
        '<= 1.0',
      ],
      ['sequential write p50 (ms)', w.seqP50, etcdW.seqP50, seqRatio, '<= 1.5'],
      ['sequential write p99 (ms)', w.seqP99, etcdW.seqP99, w.seqP99 / etcdW.seqP99, ''],
      ['sequential writes (ops/s)', w.seqOps, etcdW.seqOps, w.seqOps / etcdW.seqOps, ''],
      [`${WRITERS} writers (ops/s)`, w.concOps, etcdW.concOps, throughputRatio, '>= 0.8'],
      [`${WRITERS} writers p50 (ms)`, w.concP50, etcdW.concP50, w.concP50 / etcdW.concP50, ''],
      [`${WRITERS} writers p99 (ms)`, w.concP99, etcdW.concP99, w.concP99 / etcdW.concP99, ''],
    ],
  )
  emitJson({
    rounds: ROUNDS,
    failover_ms_ours: Math.round(fo),
    failover_ms_etcd: Math.round(fd),
    failover_ms_etcd_tuned: Math.round(ft),
    failover_ratio: fo / fd,
    failover_ratio_tuned: fo / ft,
    failover_rounds_ours_ms: oursFailover.map((s) => Math.round(s * 1000)),
    failover_rounds_etcd_ms: etcdDefault.map((s) => Math.round(s * 1000)),
    failover_rounds_etcd_tuned_ms: etcdTuned.map((s) => Math.round(s * 1000)),
    write_seq_p50_ms_ours: w.seqP50,
    write_seq_p99_ms_ours: w.seqP99,
    write_seq_p50_ms_etcd: etcdW.seqP50,
    write_seq_p99_ms_etcd: etcdW.seqP99,
    write_seq_ops_ours: w.seqOps,
    write_seq_ops_etcd: etcdW.seqOps,
    write_throughput_ours: w.concOps,
    write_throughput_etcd: etcdW.concOps,
    write_throughput_ratio: throughputRatio,
    write_seq_p50_ratio: seqRatio,
    write_conc_p50_ms_ours: w.concP50,
    write_conc_p99_ms_ours: w.concP99,
    write_conc_p50_ms_etcd: etcdW.concP50,
    write_conc_p99_ms_etcd: etcdW.concP99,
    write_reps: WRITE_REPS,
    write_throughput_ratio_reps: paired((r) => r.concOps),
    write_seq_p50_ratio_reps: paired((r) => r.seqP50),
    write_warmup_ops_ours: w.warmupOps,
    write_warmup_ops_etcd: etcdW.warmupOps,
    loadavg_writes_ours: w.load,
    loadavg_writes_etcd: etcdW.load,
  })
}

const stop = (): void => process.exit(130)
process.once('SIGINT', stop)
process.once('SIGTERM', stop)
main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err)
    process.exit(1)
  },
)
