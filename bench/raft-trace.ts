/**
 * `tsx bench/raft-trace.ts [--ops N] [--writers W] [--seconds S] [--warmup S] [--cpuprof DIR --profhook M --profphase seq|conc]`:
 * a quick probe of Raft writes on 3 local agents: sequential latency at the leader and through a
 * follower, then W concurrent writers: ops/s and CPU ms per write (utime+stime from /proc, summed
 * over the agents; steadier than ops/s on a shared machine), and CPU ms per sequential write too. The stage table needs an agent build
 * that prints `RTRACE <node> <stage> <index> <ms>` lines (a temporary patch; ms on the machine-wide
 * monotonic clock, `process.hrtime`); without them it holds only the client's own rows (`C.send`,
 * `C.recv`, when the request left and its reply arrived). `--cpuprof`: agents get NODE_OPTIONS=--import M (an inspector hook toggled by SIGUSR2).
 * `--node-options OPTS`: the agents' NODE_OPTIONS (e.g. `--perf-basic-prof`). `--onconc CMD`: a shell command started with
 * the concurrent writes, `$PIDS` the agents' pids (leader first), e.g. `perf record -g -p $PIDS -- sleep 5`; waited for.
 */
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { loadavg } from 'node:os'
import { Agent, request } from 'node:http'
import { authHeaders, TestCluster } from '../test/e2e/harness.ts'
import { startRaftCluster, status, waitForLeader } from '../test/e2e/raft-helpers.ts'
import { argValue, fmt, quantile } from './lib.ts'

const OPS = Number(argValue('ops', '200'))
const WRITERS = Number(argValue('writers', '16'))
const SECONDS = Number(argValue('seconds', '5'))
/** Which phase `--cpuprof` profiles: the concurrent writes (default) or the sequential ones at the leader. */
const PROFILE_PHASE = argValue('profphase', 'conc')
const keepAlive = new Agent({ keepAlive: true, maxSockets: 64 })

/** Writes one kv config entry; resolves with the Raft index the reply names (0 if none). */
function putKv(http: string, name: string, value: string): Promise<number> {
  const [host, port] = http.split(':') as [string, string]
  const body = Buffer.from(JSON.stringify({ kind: 'kv', name, value }))
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host,
        port: Number(port),
        method: 'PUT',
        path: '/v1/config',
        agent: keepAlive,
        headers: { ...authHeaders(), 'content-type': 'application/json', 'content-length': body.length },
        signal: AbortSignal.timeout(2_000),
      },
      (res) => {
        let text = ''
        res.setEncoding('utf8')
        res.on('data', (d: string) => (text += d))
        res.on('end', () => {
          if (res.statusCode !== 200) return reject(new Error(`HTTP ${res.statusCode}`))
          const index = (JSON.parse(text) as { index?: unknown }).index
          resolve(typeof index === 'number' ? index : 0)
        })
      },
    )
    req.on('error', reject)
    req.end(body)
  })
}

/**
 * The leader's Raft messages sent and received so far, and its last log index (its `/metrics`):
 * with the write count, messages per write, which batching decides.
 */
async function raftCounters(http: string): Promise<{ sent: number; received: number; lastIndex: number }> {
  const res = await fetch(`http://${http}/metrics`, { headers: authHeaders() })
  const text = await res.text()
  const sum = (re: RegExp): number => {
    let n = 0
    for (const m of text.matchAll(re)) n += Number(m[1])
    return n
  }
  return {
    sent: sum(/^peermesh_raft_transport_messages_total\{[^}]*direction="sent"[^}]*\} (\S+)$/gm),
    received: sum(/^peermesh_raft_transport_messages_total\{[^}]*direction="received"[^}]*\} (\S+)$/gm),
    lastIndex: sum(/^peermesh_raft_last_index (\S+)$/gm),
  }
}

/** This process's CPU ms so far (user + system): the client's share of a write. */
const ownCpuMs = (): number => {
  const u = process.cpuUsage()
  return (u.user + u.system) / 1000
}

/** The machine-wide monotonic clock in ms, as the agents' RTRACE lines use. */
const monoMs = (): number => Number(process.hrtime.bigint()) / 1e6

/** Client-side events of the sequential writes (`C.send`, `C.recv`), for the stage table. */
const clientEvents: Ev[] = []

async function seq(http: string, label: string): Promise<number[]> {
  const lat: number[] = []
  for (let i = 0; i < OPS; i++) {
    const t = performance.now()
    const sent = monoMs()
    const index = await putKv(http, `trace/${i % 64}`, '0123456789abcdef')
    const recv = monoMs()
    lat.push(performance.now() - t)
    clientEvents.push(
      { node: 'client', stage: 'send', idx: String(index), t: sent },
      { node: 'client', stage: 'recv', idx: String(index), t: recv },
    )
  }
  process.stderr.write(`${label}: p50 ${fmt(quantile(lat, 0.5))} ms p99 ${fmt(quantile(lat, 0.99))} ms\n`)
  return lat
}

async function conc(http: string, seconds = SECONDS): Promise<number> {
  let n = 0
  const end = performance.now() + seconds * 1000
  const t0 = performance.now()
  await Promise.all(
    Array.from({ length: WRITERS }, async (_, w) => {
      for (let i = 0; performance.now() < end; i++) {
        await putKv(http, `conc/${(w * 1000 + i) % 1024}`, '0123456789abcdef').then(
          () => n++,
          () => {},
        )
      }
    }),
  )
  const ops = n / ((performance.now() - t0) / 1000)
  process.stderr.write(`${WRITERS} writers: ${fmt(ops)} ops/s\n`)
  return ops
}

type Ev = { node: string; stage: string; idx: string; t: number }
function parse(log: string): Ev[] {
  const out: Ev[] = []
  for (const line of log.split('\n')) {
    const m = /^RTRACE (\S+) (\S+) (\S+) (\S+)$/.exec(line)
    if (m) out.push({ node: m[1]!, stage: m[2]!, idx: m[3]!, t: Number(m[4]) })
  }
  return out
}

/** For each write (by index) the first time each (role, stage) is seen, relative to propose. */
function stages(evs: Ev[], leaderId: string, from: number, to: number): void {
  const byIdx = new Map<number, Map<string, number>>()
  const firstT = (k: string, idx: number, t: number): void => {
    let m = byIdx.get(idx)
    if (m === undefined) {
      m = new Map()
      byIdx.set(idx, m)
    }
    if (!m.has(k) || m.get(k)! > t) m.set(k, t)
  }
  const sorted = [...evs].sort((a, b) => a.t - b.t)
  for (const e of sorted) {
    const role = e.node === leaderId ? 'L' : e.node === 'client' ? 'C' : `F${e.node}`
    const idx = Number(e.idx)
    if (!Number.isFinite(idx) || idx < from || idx > to) continue
    const stage = e.stage.replace(/-.*/, '')
    firstT(`${role}.${stage}`, idx, e.t)
  }
  // Messages carrying a range (app up to idx, commit idx) also cover lower indexes: ignore, since
  // sequential writes carry one entry each.
  const keys = new Map<string, number[]>()
  for (const m of byIdx.values()) {
    const t0 = m.get('L.propose')
    if (t0 === undefined) continue
    for (const [k, t] of m) {
      const a = keys.get(k) ?? []
      a.push(t - t0)
      keys.set(k, a)
    }
  }
  const rows = [...keys].map(([k, a]) => [k, quantile(a, 0.5), quantile(a, 0.9), a.length] as const)
  rows.sort((a, b) => a[1] - b[1])
  // `step`: per write, the time from the row above to this row (p50), where a write has both.
  for (let r = 0; r < rows.length; r++) {
    const [k, p50, p90, n] = rows[r]!
    const prev = rows[r - 1]?.[0]
    const steps: number[] = []
    if (prev !== undefined)
      for (const m of byIdx.values()) {
        const a = m.get(prev)
        const b = m.get(k)
        if (a !== undefined && b !== undefined && m.has('L.propose')) steps.push(b - a)
      }
    const step = steps.length > 0 ? `step ${fmt(quantile(steps, 0.5)).padStart(7)} ms` : ''
    process.stderr.write(
      `  ${k.padEnd(28)} p50 ${fmt(p50).padStart(8)} ms  p90 ${fmt(p90).padStart(8)} ms  n=${String(n).padEnd(4)} ${step}\n`,
    )
  }
}

async function main(): Promise<void> {
  process.env['PEERMESH_RAFT_TRACE'] = argValue('trace', '1')
  const prof = argValue('cpuprof')
  const nodeOptions = argValue('node-options')
  if (nodeOptions !== undefined) process.env['NODE_OPTIONS'] = nodeOptions
  if (prof !== undefined) {
    process.env['NODE_OPTIONS'] = `--import ${argValue('profhook', '/tmp/pmb/prof.mjs')}`
    process.env['PROF_DIR'] = prof
  }
  const cluster = new TestCluster()
  try {
    // `--log-level L`: the agents' log level (the harness's default: info, an audit line per write).
    const level = argValue('log-level')
    const agents = await startRaftCluster(cluster, 3, {
      prefix: 'trace',
      ...(level !== undefined ? { extraArgs: ['--log-level', level] } : {}),
    })
    const leader = await waitForLeader(agents)
    const follower = agents.find((a) => a !== leader)!
    for (let i = 0; i < 30; i++) await putKv(leader.http, 'warm', String(i))
    // `--warmup S`: concurrent writes first, so that what follows measures agents V8 has optimized.
    const warmup = Number(argValue('warmup', '0'))
    if (warmup > 0) await conc(leader.http, warmup)
    const lid = (await status(leader))!.id.slice(-6)
    if (prof !== undefined) process.stderr.write(`leader pid ${leader.child?.pid}\n`)
    const mark = (): number =>
      Math.max(0, ...parse(leader.log).map((e) => (e.stage === 'propose' ? Number(e.idx) : 0)))
    const sig = (): void => {
      if (prof !== undefined) for (const x of agents) x.child?.kill('SIGUSR2')
    }
    const cpu = (): number[] =>
      agents.map((x) => {
        const f = readFileSync(`/proc/${x.child!.pid}/stat`, 'utf8').split(') ')[1]!.split(' ')
        return (Number(f[11]) + Number(f[12])) * 10 // utime + stime, ms at 100 Hz
      })
    const a = mark()
    if (PROFILE_PHASE === 'seq') sig()
    const s0 = cpu()
    const leaderLat = await seq(leader.http, 'sequential at leader')
    const s1 = cpu()
    if (PROFILE_PHASE === 'seq') sig()
    // CPU per sequential write (at the leader): what each write costs when nothing is batched.
    const seqCpu = s1.map((v, i) => (v - s0[i]!) / OPS)
    const b = mark()
    const fwdLat = await seq(follower.http, 'sequential via follower')
    const c = mark()
    if (PROFILE_PHASE === 'conc') sig()
    const term0 = (await status(leader))?.term
    const m0 = await raftCounters(leader.http)
    const c0 = cpu()
    const own0 = ownCpuMs()
    const n0 = performance.now()
    const onConc = argValue('onconc')
    const probe =
      onConc === undefined
        ? undefined
        : spawn('sh', ['-c', onConc], {
            stdio: 'inherit',
            env: {
              ...process.env,
              PIDS: [leader, ...agents.filter((x) => x !== leader)].map((x) => x.child!.pid).join(','),
            },
          })
    const ops = await conc(leader.http)
    if (probe !== undefined && probe.exitCode === null) await once(probe, 'exit')
    const c1 = cpu()
    const own1 = ownCpuMs()
    const m1 = await raftCounters(leader.http)
    // A run whose leadership changed under load measured elections too: say so.
    const after = await status(leader)
    const termChanged = after?.term !== term0 || after?.leader !== after?.id
    if (termChanged) process.stderr.write('the leader changed during the concurrent writes\n')
    const total = (ops * (performance.now() - n0)) / 1000
    const cpuPerOp = c1.map((v, i) => (v - c0[i]!) / total)
    const leaderCpu = cpuPerOp[agents.indexOf(leader)]!
    const entries = m1.lastIndex - m0.lastIndex
    process.stderr.write(
      `leader per write: ${fmt((m1.sent - m0.sent) / entries)} messages sent, ${fmt((m1.received - m0.received) / entries)} received (${entries} entries); CPU ms per write: ${cpuPerOp.map((v, i) => `${agents[i] === leader ? 'L' : 'F'} ${fmt(v)}`).join(', ')}, client ${fmt((own1 - own0) / total)}\n`,
    )
    if (PROFILE_PHASE === 'conc') sig()
    await new Promise((r) => setTimeout(r, 1000))
    const evs = [...agents.flatMap((x) => parse(x.log)), ...clientEvents]
    process.stderr.write('stages, writes at the leader (ms after propose):\n')
    stages(evs, lid, a + 1, b)
    process.stderr.write('stages, writes via a follower (ms after propose on the leader):\n')
    stages(evs, lid, b + 1, c)
    console.log(
      JSON.stringify({
        seq_leader_p50: quantile(leaderLat, 0.5),
        seq_leader_p99: quantile(leaderLat, 0.99),
        seq_cpu_ms_per_op_leader: seqCpu[agents.indexOf(leader)],
        seq_cpu_ms_per_op_all: seqCpu.reduce((x, y) => x + y, 0),
        seq_fwd_p50: quantile(fwdLat, 0.5),
        seq_fwd_p99: quantile(fwdLat, 0.99),
        conc_ops: ops,
        conc_cpu_ms_per_op_leader: leaderCpu,
        conc_cpu_ms_per_op_all: cpuPerOp.reduce((a, b) => a + b, 0),
        conc_cpu_ms_per_op_followers: cpuPerOp.filter((_, i) => agents[i] !== leader),
        conc_cpu_ms_per_op_client: (own1 - own0) / total,
        conc_leader_msgs_sent_per_entry: (m1.sent - m0.sent) / entries,
        conc_leader_msgs_received_per_entry: (m1.received - m0.received) / entries,
        conc_leader_changed: termChanged,
        load: loadavg()[0],
      }),
    )
  } finally {
    keepAlive.destroy()
    await cluster.close()
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err)
    process.exit(1)
  },
)
