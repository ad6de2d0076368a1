/**
 * What node itself costs per relayed request, next to our sidecar pair and HAProxy's (issue #14):
 *
 *   npm run bench:proxy-relay-floor -- [--duration S] [--reps N] [--conns 1,32] [--json]
 *
 * The app and the load (wrk -t1, 1 KiB responses, keep-alive) are those of bench:proxy-overhead,
 * and four L4 pairs stand between them, all with mutual TLS 1.3 and P-256 leaves of one root:
 * - `ours`: our sidecar pair (bench/proxy-sidecar-runner.ts, as bench:proxy-overhead runs it);
 * - `lean`: the leanest node relay of the same design, one TLS connection per client connection
 *   (bench/relay-floor-runner.ts): the floor of that design in node;
 * - `mux`: a prototype that multiplexes every client connection over one TLS connection and sends
 *   what one event-loop turn produced in one write (relay-floor-runner.ts; not the product);
 * - `haproxy`: the HAProxy pair of bench:proxy-overhead.
 * Paths are interleaved (the order rotates every repetition); each run reports req/s, p50, the p50
 * added to the direct path of the same repetition, and the CPU time (utime + stime from
 * /proc/PID/stat) each proxy process spent per request, which is steadier than latency on a busy
 * machine. The load average is printed with the figures.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createRootCa } from '../src/identity/ca/ca.ts'
import {
  cpuUs,
  haproxyPairCerts,
  leafCert,
  parseWrk,
  type Proc,
  startRunner as startBenchRunner,
} from './proxy-bench-lib.ts'
import { argValue, emitJson, median, progress, table } from './lib.ts'
import { ensureInstalled, startHaproxyPair, WRK } from './peers/haproxy.ts'
import type { RunnerConfig } from './proxy-sidecar-runner.ts'
import type { FloorRunnerConfig } from './relay-floor-runner.ts'

const durationS = Number(argValue('duration', '8'))
const reps = Number(argValue('reps', '3'))
const connsList = (argValue('conns', '1,32') ?? '').split(',').map(Number)
const TD = 'bench.mesh'
const SIDECAR_RUNNER = fileURLToPath(new URL('./proxy-sidecar-runner.ts', import.meta.url))
const FLOOR_RUNNER = fileURLToPath(new URL('./relay-floor-runner.ts', import.meta.url))

interface Run {
  rps: number
  p50Us: number
  cpuUsPerReq: number[]
  load1: number
}

const live = new Set<ChildProcess>()
const killAll = (): void => {
  for (const c of live) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL')
}

const startRunner = (dir: string, script: string, name: string, config: RunnerConfig | FloorRunnerConfig) =>
  startBenchRunner(live, dir, script, name, config)

const leaf = (root: Awaited<ReturnType<typeof createRootCa>>, service: string) =>
  leafCert(root, service, TD, 'ecdsa-p256')

function wrk(port: number, conns: number, seconds: number, procs: readonly Proc[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    const before = procs.map((p) => cpuUs(p.pid))
    const child = spawn(WRK, ['-t1', `-c${conns}`, `-d${seconds}s`, '--latency', `http://127.0.0.1:${port}/`])
    live.add(child)
    let out = ''
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString()
    })
    child.on('error', reject)
    child.on('exit', (code) => {
      live.delete(child)
      const { rps, requests, p50Us } = parseWrk(out)
      if (code !== 0 || !Number.isFinite(rps) || !Number.isFinite(p50Us) || !(requests > 0)) {
        reject(new Error(`wrk exited ${code}: ${out.trim()}`))
        return
      }
      resolve({
        rps,
        p50Us,
        cpuUsPerReq: procs.map((p, i) => (cpuUs(p.pid) - before[i]!) / requests),
        load1: loadavg()[0]!,
      })
    })
  })
}

async function main(): Promise<void> {
  if (!(durationS > 0) || !(reps >= 1) || connsList.some((c) => !(c >= 1))) {
    throw new Error('bad flags: --duration S (> 0), --reps N (≥ 1), --conns 1,32')
  }
  ensureInstalled()
  const dir = mkdtempSync(join(tmpdir(), 'peermesh-relay-floor-'))
  process.on('exit', killAll)
  const cleanups: (() => Promise<void>)[] = [async () => rmSync(dir, { recursive: true, force: true })]
  try {
    const root = await createRootCa({
      trustDomain: TD,
      keyType: 'ecdsa-p256',
      validityDays: 1,
      nowMs: Date.now(),
    })
    const [web, api] = await Promise.all([leaf(root, 'web'), leaf(root, 'api')])
    const app = await startRunner(dir, SIDECAR_RUNNER, 'app', { role: 'app', bodyBytes: 1024 })
    const oursIn = await startRunner(dir, SIDECAR_RUNNER, 'ours-in', {
      role: 'inbound',
      trustDomain: TD,
      cert: api,
      appPort: app.port,
    })
    const oursOut = await startRunner(dir, SIDECAR_RUNNER, 'ours-out', {
      role: 'outbound',
      trustDomain: TD,
      cert: web,
      protocol: 'tcp',
      inboundPort: oursIn.port,
    })
    const pair = async (kind: 'lean' | 'mux') => {
      const inbound = await startRunner(dir, FLOOR_RUNNER, `${kind}-in`, {
        role: `${kind}-inbound`,
        cert: api,
        appPort: app.port,
      })
      const outbound = await startRunner(dir, FLOOR_RUNNER, `${kind}-out`, {
        role: `${kind}-outbound`,
        cert: web,
        inboundPort: inbound.port,
      })
      return { port: outbound.port, procs: [outbound, inbound] }
    }
    const lean = await pair('lean')
    const mux = await pair('mux')
    const haproxy = await startHaproxyPair({
      dir,
      ...haproxyPairCerts(root.certPem, web, api),
      appPort: app.port,
    })
    cleanups.push(() => haproxy.close())
    const paths: { name: string; port: number; procs: Proc[] }[] = [
      { name: 'direct', port: app.port, procs: [] },
      { name: 'ours', port: oursOut.port, procs: [oursOut, oursIn] },
      { name: 'lean', ...lean },
      { name: 'mux', ...mux },
      {
        name: 'haproxy',
        port: haproxy.port,
        procs: [
          { name: 'haproxy-a', pid: haproxy.pidA },
          { name: 'haproxy-b', pid: haproxy.pidB },
        ],
      },
    ]
    for (const p of paths) {
      progress(`warm-up ${p.name}`)
      await wrk(p.port, Math.max(...connsList), 2, [])
    }
    const results = new Map<string, Run[]>()
    for (let rep = 0; rep < reps; rep++) {
      for (const conns of connsList) {
        for (const p of paths.map((_, i) => paths[(i + rep) % paths.length]!)) {
          const r = await wrk(p.port, conns, durationS, p.procs)
          const key = `${p.name}/${conns}`
          results.set(key, [...(results.get(key) ?? []), r])
          progress(
            `rep ${rep + 1}/${reps} c=${conns} ${p.name.padEnd(8)} ${r.rps.toFixed(0).padStart(6)} req/s  p50 ${r.p50Us.toFixed(0)} µs  CPU µs/req ${r.cpuUsPerReq.map((x) => x.toFixed(1)).join(' / ') || '-'}  load ${r.load1.toFixed(2)}`,
          )
        }
      }
    }
    const rows: (string | number)[][] = []
    const summary: Record<string, unknown> = {}
    for (const conns of connsList) {
      const direct = results.get(`direct/${conns}`)!
      for (const p of paths) {
        const rs = results.get(`${p.name}/${conns}`)!
        const s = {
          rps: Math.round(median(rs.map((r) => r.rps))),
          p50_us: median(rs.map((r) => r.p50Us)),
          added_p50_us: median(rs.map((r, i) => r.p50Us - direct[i]!.p50Us)),
          cpu_us_per_req: p.procs.map(
            (_, i) => Math.round(median(rs.map((r) => r.cpuUsPerReq[i]!)) * 10) / 10,
          ),
        }
        summary[`${p.name}_c${conns}`] = s
        rows.push([
          p.name,
          conns,
          s.rps,
          `${s.p50_us.toFixed(0)} µs (+${s.added_p50_us.toFixed(0)})`,
          s.cpu_us_per_req.join(' / ') || '-',
        ])
      }
    }
    const loads = [...results.values()].flat().map((r) => r.load1)
    table(['path', 'conns', 'req/s', 'p50 (added)', 'CPU µs/req (outbound / inbound)'], rows)
    process.stdout.write(
      `\n${durationS} s per run, ${reps} repetitions (median), load average (1 min) ${Math.min(...loads).toFixed(2)}–${Math.max(...loads).toFixed(2)} during the runs\n`,
    )
    emitJson({
      paths: summary,
      load1_min: Math.min(...loads),
      load1_max: Math.max(...loads),
      config: { duration_s: durationS, reps, conns: connsList, node: process.version },
    })
  } finally {
    for (const c of live) c.stdin?.end()
    killAll()
    for (const c of cleanups.reverse()) await c().catch(() => {})
  }
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    killAll()
    process.stderr.write(
      `proxy-relay-floor failed: ${error instanceof Error ? error.message : String(error)}\n`,
    )
    process.exit(1)
  },
)
