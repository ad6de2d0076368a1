/**
 * bench:proxy-overhead — what the sidecar pair adds to a request, next to a pair of HAProxy
 * instances doing the same job, in the same run on 127.0.0.1 (ANCHORS.md, HAProxy section).
 *
 * A Node HTTP server answers every request with a 1 KiB body (keep-alive). `wrk -t1 --latency`
 * drives, at 1 and 32 connections, these paths:
 * - direct: wrk -> app;
 * - ours (L4): wrk -> our outbound listener (process A, service `web`, L4 mode) -> mutual TLS 1.3
 *   -> our inbound listener (process B, service `api`, intention web -> api allowed) -> app;
 * - HAProxy: wrk -> HAProxy A (plain, TCP mode, nbthread 1) -> mutual TLS 1.3, `verify required`
 *   both ways -> HAProxy B -> app;
 * - ours (HTTP): as ours (L4) with the outbound in `protocol: http` mode (an extra row, not in the ratios).
 * Both pairs present the same certificates: ECDSA P-256 leaves for `web` and `api` from one P-256
 * root of our CA (`src/identity`). P-256 because that is the curve of the ANCHORS.md HAProxy
 * figures and what every TLS stack speaks; the leaf type is a flag (`--key ed25519` works too).
 *
 * Each run lasts `--duration` seconds (default 10) after a warm-up of every path; paths are
 * interleaved (the order rotates every repetition), repeated `--reps` times (default 3), and the
 * median taken. Added latency is computed per repetition against the direct run of the same
 * repetition, then the median. RSS of every proxy process is sampled from /proc/PID/status
 * during its runs.
 *
 * HTTP/2 rows: an h2c app (1 KiB body) driven by `h2load` (Debian `nghttp2-client`) on one
 * connection with 1 and 32 concurrent streams (`--h2-streams`), along three paths:
 * - direct h2: h2load -> app (h2c);
 * - ours (HTTP/2): h2load -> our outbound in `protocol: http2` -> one mTLS session, ALPN h2 ->
 *   our inbound in `protocol: http2` (per-stream, the request gate open) -> one h2c session -> app;
 * - HAProxy h2: h2load -> HAProxy A (`mode http`, `proto h2`) -> mutual TLS 1.3, ALPN h2 ->
 *   HAProxy B -> `proto h2` to the app.
 * Percentiles come from h2load's per-request log (`--log-file`).
 *
 * Flags: --duration S, --reps N, --warmup S (default 3), --conns 1,32, --key ecdsa-p256|ed25519,
 * --no-http (skip the HTTP-mode row), --no-h2 (skip the HTTP/2 rows), --h2-streams 1,32, --json.
 *
 * `latency_ratio` = added p50 ours / added p50 HAProxy at 1 connection (target ≤ 1.0, issue #14);
 * `throughput_ratio` = ours req/s / HAProxy req/s at 32 connections (target ≥ 0.8, issue #14);
 * `h2_latency_ratio` = the same over HTTP/2 at 1 stream, `h2_throughput_ratio` at 32 streams on
 * one connection.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import http from 'node:http'
import http2 from 'node:http2'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createRootCa } from '../src/identity/ca/ca.ts'
import type { KeyType } from '../src/identity/keys/keys.ts'
import {
  cpuUs,
  haproxyPairCerts,
  leafCert,
  parseWrk,
  type Proc,
  startRunner as startBenchRunner,
  type WrkFigures,
} from './proxy-bench-lib.ts'
import { argValue, emitJson, fmt, median, progress, quantile, table } from './lib.ts'
import { ensureInstalled, haproxyVersion, startHaproxyPair, WRK } from './peers/haproxy.ts'
import type { RunnerConfig } from './proxy-sidecar-runner.ts'

const durationS = Number(argValue('duration', '10'))
const reps = Number(argValue('reps', '3'))
const warmupS = Number(argValue('warmup', '3'))
const connsList = (argValue('conns', '1,32') ?? '').split(',').map(Number)
const keyType = (argValue('key', 'ecdsa-p256') ?? 'ecdsa-p256') as KeyType
const withHttp = !process.argv.includes('--no-http')
const withH2 = !process.argv.includes('--no-h2')
const h2StreamsList = (argValue('h2-streams', '1,32') ?? '').split(',').map(Number)
const H2LOAD = '/usr/bin/h2load'
const BODY_BYTES = 1024
const TD = 'bench.mesh'
const RUNNER = fileURLToPath(new URL('./proxy-sidecar-runner.ts', import.meta.url))

type PathName = 'direct' | 'ours' | 'haproxy' | 'ours_http' | 'direct_h2' | 'ours_h2' | 'haproxy_h2'
const LABEL: Record<PathName, string> = {
  direct: 'direct',
  ours: 'peermesh sidecar pair (L4)',
  haproxy: 'HAProxy mTLS pair',
  ours_http: 'peermesh sidecar pair (HTTP mode)',
  direct_h2: 'direct (h2c)',
  ours_h2: 'peermesh sidecar pair (HTTP/2 mode)',
  haproxy_h2: 'HAProxy mTLS pair (h2)',
}

interface WrkResult extends WrkFigures {
  /** CPU time (user + system) each proxy process of the path spent per request in this run, µs. */
  cpuUsPerReq: Record<string, number>
}

/** RSS samples (kB) per process name, from /proc/PID/status. */
const rssSamples = new Map<string, { vmRss: number[]; rssAnon: number[] }>()

function readStatus(pid: number): { vmRss: number; rssAnon: number } | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/status`, 'utf8')
    const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN)
    return { vmRss: kb('VmRSS'), rssAnon: kb('RssAnon') }
  } catch {
    return undefined
  }
}

function sampleRss(procs: readonly Proc[]): void {
  for (const p of procs) {
    const s = readStatus(p.pid)
    if (!s) continue
    let entry = rssSamples.get(p.name)
    if (!entry) {
      entry = { vmRss: [], rssAnon: [] }
      rssSamples.set(p.name, entry)
    }
    entry.vmRss.push(s.vmRss)
    entry.rssAnon.push(s.rssAnon)
  }
}

/** Parses a wrk duration such as `75.00us`, `1.04ms`, `2.00s` into microseconds. */
const live = new Set<ChildProcess>()

// PEERMESH_BENCH_NODE_ARGS: extra node flags for the runners, e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof`.
const runnerNodeArgs = (process.env.PEERMESH_BENCH_NODE_ARGS ?? '').split(' ').filter((a) => a !== '')

/** Starts one sidecar-runner process and waits for its `{port}` line. */
const startRunner = (dir: string, name: string, config: RunnerConfig) =>
  startBenchRunner(live, dir, RUNNER, name, config, runnerNodeArgs)

const leaf = (root: Awaited<ReturnType<typeof createRootCa>>, service: string) =>
  leafCert(root, service, TD, keyType)

function runWrk(port: number, conns: number, seconds: number, procs: readonly Proc[]): Promise<WrkResult> {
  return new Promise((resolve, reject) => {
    const args = ['-t1', `-c${conns}`, `-d${seconds}s`, '--latency', `http://127.0.0.1:${port}/`]
    const cpuBefore = procs.map((p) => cpuUs(p.pid))
    const child = spawn(WRK, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    live.add(child)
    let out = ''
    let err = ''
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString()
    })
    child.stderr!.on('data', (d: Buffer) => {
      err += d.toString()
    })
    // RSS sampled while the load runs (not in the first second, while connections open).
    const sampler = setInterval(() => sampleRss(procs), 500)
    child.on('error', (e) => {
      clearInterval(sampler)
      live.delete(child)
      reject(e)
    })
    child.on('exit', (code) => {
      clearInterval(sampler)
      live.delete(child)
      const r: WrkResult = { ...parseWrk(out), cpuUsPerReq: {} }
      procs.forEach((p, i) => {
        r.cpuUsPerReq[p.name] = (cpuUs(p.pid) - cpuBefore[i]!) / r.requests
      })
      if (code !== 0 || !Number.isFinite(r.rps) || !Number.isFinite(r.p50Us)) {
        reject(new Error(`wrk exited ${code}: ${err.trim() || out.trim()}`))
      } else resolve(r)
    })
  })
}

/** h2load's summary lines; latencies come from its per-request log. */
export function parseH2load(out: string, log: string): WrkResult {
  const rps = Number(/finished in [\d.]+\w+, ([\d.]+) req\/s/.exec(out)?.[1] ?? NaN)
  const req =
    /requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout/.exec(
      out,
    )
  const status = /status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx/.exec(out)
  const requests = Number(req?.[3] ?? NaN)
  const errors =
    (req ? Number(req[5]) + Number(req[6]) + Number(req[7]) : 0) +
    (status ? Number(status[3]) + Number(status[4]) : 0)
  const latencies: number[] = []
  for (const line of log.split('\n')) {
    const us = Number(line.split('\t')[2])
    if (line !== '' && Number.isFinite(us)) latencies.push(us)
  }
  return {
    rps,
    p50Us: quantile(latencies, 0.5),
    p99Us: quantile(latencies, 0.99),
    requests,
    errors,
    cpuUsPerReq: {},
  }
}

/** h2load on one connection with `streams` concurrent streams for `seconds`. */
function runH2load(
  dir: string,
  port: number,
  streams: number,
  seconds: number,
  procs: readonly Proc[],
): Promise<WrkResult> {
  return new Promise((resolve, reject) => {
    const logPath = join(dir, `h2load-${port}-${streams}.log`)
    const args = [
      '-c1',
      `-m${streams}`,
      '-t1',
      `-D${seconds}`,
      `--log-file=${logPath}`,
      `http://127.0.0.1:${port}/`,
    ]
    const cpuBefore = procs.map((p) => cpuUs(p.pid))
    const child = spawn(H2LOAD, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    live.add(child)
    let out = ''
    let err = ''
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString()
    })
    child.stderr!.on('data', (d: Buffer) => {
      err += d.toString()
    })
    const sampler = setInterval(() => sampleRss(procs), 500)
    child.on('error', (e) => {
      clearInterval(sampler)
      live.delete(child)
      reject(e)
    })
    child.on('exit', (code) => {
      clearInterval(sampler)
      live.delete(child)
      let log = ''
      try {
        log = readFileSync(logPath, 'utf8')
        rmSync(logPath, { force: true })
      } catch {
        // no log: reported below
      }
      const r = parseH2load(out, log)
      procs.forEach((p, i) => {
        r.cpuUsPerReq[p.name] = (cpuUs(p.pid) - cpuBefore[i]!) / r.requests
      })
      if (code !== 0 || !Number.isFinite(r.rps) || !Number.isFinite(r.p50Us)) {
        reject(new Error(`h2load exited ${code}: ${err.trim() || out.trim()}`))
      } else resolve(r)
    })
  })
}

/** Installs nghttp2-client (h2load) with apt-get when missing and we are root; throws otherwise. */
function ensureH2load(): void {
  const has = (): boolean => spawnSync(H2LOAD, ['--version'], { stdio: 'ignore' }).status === 0
  if (has()) return
  if (process.getuid?.() !== 0)
    throw new Error('missing h2load; run: apt-get install -y nghttp2-client (as root)')
  progress('installing nghttp2-client (h2load) with apt-get')
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
  const install = () =>
    spawnSync('apt-get', ['install', '-y', '--no-install-recommends', 'nghttp2-client'], {
      stdio: ['ignore', 'ignore', 'inherit'],
      env,
    }).status
  if (install() !== 0) {
    spawnSync('apt-get', ['update'], { stdio: ['ignore', 'ignore', 'inherit'], env })
    install()
  }
  if (!has()) throw new Error('h2load still missing after apt-get install -y nghttp2-client')
}

/** One HTTP/2 GET through `port` (h2c): must be a 200 with the 1 KiB body. */
function probeH2(port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(`http://127.0.0.1:${port}`)
    const timer = setTimeout(() => {
      session.destroy()
      reject(new Error(`h2 probe of :${port} timed out`))
    }, 5_000)
    session.on('error', (e) => {
      clearTimeout(timer)
      reject(e)
    })
    const req = session.request({ ':path': '/' })
    let status = 0
    let n = 0
    req.on('response', (h) => {
      status = Number(h[':status'])
    })
    req.on('data', (d: Buffer) => {
      n += d.length
    })
    req.on('close', () => {
      clearTimeout(timer)
      session.close()
      status === 200 && n === BODY_BYTES
        ? resolve()
        : reject(new Error(`h2 probe of :${port}: status ${status}, ${n} bytes`))
    })
    req.end()
  })
}

function killAllChildren(): void {
  for (const c of live) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL')
}

/** Asks the runners to stop (stdin closed: they close their listeners and exit), then kills what is left. */
async function stopChildren(graceMs = 3_000): Promise<void> {
  const running = [...live].filter((c) => c.exitCode === null && c.signalCode === null)
  const exits = running.map((c) => new Promise<void>((resolve) => c.once('exit', () => resolve())))
  for (const c of running) {
    if (c.stdin) c.stdin.end()
    else c.kill('SIGTERM')
  }
  await Promise.race([Promise.all(exits), new Promise((r) => setTimeout(r, graceMs))])
  killAllChildren()
}

const round1 = (x: number): number => Math.round(x * 10) / 10

/** One GET through `port`: must be a 200 with the 1 KiB body. */
function probe(port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/', agent: false }, (res) => {
      let n = 0
      res.on('data', (d: Buffer) => {
        n += d.length
      })
      res.on('end', () =>
        res.statusCode === 200 && n === BODY_BYTES
          ? resolve()
          : reject(new Error(`probe of :${port}: status ${res.statusCode}, ${n} bytes`)),
      )
    })
    req.setTimeout(5_000, () => req.destroy(new Error(`probe of :${port} timed out`)))
    req.on('error', reject)
  })
}

async function main(): Promise<void> {
  if (
    !(durationS > 0) ||
    !(reps >= 1) ||
    !(warmupS >= 0) ||
    connsList.some((c) => !(c >= 1)) ||
    h2StreamsList.some((m) => !(m >= 1))
  ) {
    throw new Error(
      'bad flags: --duration S (> 0), --reps N (≥ 1), --warmup S (≥ 0), --conns 1,32, --h2-streams 1,32',
    )
  }
  ensureInstalled()
  if (withH2) ensureH2load()
  const dir = mkdtempSync(join(tmpdir(), 'peermesh-proxy-overhead-'))
  const cleanups: (() => Promise<void>)[] = [async () => rmSync(dir, { recursive: true, force: true })]
  const onSignal = (): void => {
    killAllChildren()
    rmSync(dir, { recursive: true, force: true })
    process.exit(130)
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  process.on('exit', killAllChildren)
  try {
    progress(`certificates: ${keyType} root and leaves for web and api (trust domain ${TD})`)
    const root = await createRootCa({ trustDomain: TD, keyType, validityDays: 1, nowMs: Date.now() })
    const [web, api] = await Promise.all([leaf(root, 'web'), leaf(root, 'api')])

    progress('starting the app, our sidecar processes and HAProxy', haproxyVersion())
    const app = await startRunner(dir, 'app', { role: 'app', bodyBytes: BODY_BYTES })
    const inbound = await startRunner(dir, 'ours-inbound', {
      role: 'inbound',
      trustDomain: TD,
      cert: api,
      appPort: app.port,
    })
    const outbound = await startRunner(dir, 'ours-outbound', {
      role: 'outbound',
      trustDomain: TD,
      cert: web,
      protocol: 'tcp',
      inboundPort: inbound.port,
    })
    const outboundHttp = withHttp
      ? await startRunner(dir, 'ours-outbound-http', {
          role: 'outbound',
          trustDomain: TD,
          cert: web,
          protocol: 'http',
          inboundPort: inbound.port,
        })
      : undefined
    const haproxy = await startHaproxyPair({
      dir,
      ...haproxyPairCerts(root.certPem, web, api),
      appPort: app.port,
    })
    cleanups.push(() => haproxy.close())

    // HTTP/2: an h2c app, our pair in `protocol: http2`, HAProxy in h2 mode.
    const h2 = withH2
      ? await (async () => {
          const appH2 = await startRunner(dir, 'app-h2', { role: 'app-h2', bodyBytes: BODY_BYTES })
          const inboundH2 = await startRunner(dir, 'ours-inbound-h2', {
            role: 'inbound',
            trustDomain: TD,
            cert: api,
            appPort: appH2.port,
            protocol: 'http2',
          })
          const outboundH2 = await startRunner(dir, 'ours-outbound-h2', {
            role: 'outbound',
            trustDomain: TD,
            cert: web,
            protocol: 'http2',
            inboundPort: inboundH2.port,
          })
          const haproxyH2 = await startHaproxyPair({
            dir,
            ...haproxyPairCerts(root.certPem, web, api),
            appPort: appH2.port,
            mode: 'h2',
          })
          cleanups.push(() => haproxyH2.close())
          return { appH2, inboundH2, outboundH2, haproxyH2 }
        })()
      : undefined

    const haproxyProcs: Proc[] = [
      { name: 'haproxy-a', pid: haproxy.pidA },
      { name: 'haproxy-b', pid: haproxy.pidB },
    ]
    const paths: { name: PathName; port: number; procs: Proc[] }[] = [
      { name: 'direct', port: app.port, procs: [] },
      { name: 'ours', port: outbound.port, procs: [outbound, inbound] },
      { name: 'haproxy', port: haproxy.port, procs: haproxyProcs },
      ...(outboundHttp
        ? [{ name: 'ours_http' as const, port: outboundHttp.port, procs: [outboundHttp, inbound] }]
        : []),
    ]
    const h2Paths: { name: PathName; port: number; procs: Proc[] }[] = h2
      ? [
          { name: 'direct_h2', port: h2.appH2.port, procs: [] },
          { name: 'ours_h2', port: h2.outboundH2.port, procs: [h2.outboundH2, h2.inboundH2] },
          {
            name: 'haproxy_h2',
            port: h2.haproxyH2.port,
            procs: [
              { name: 'haproxy-h2-a', pid: h2.haproxyH2.pidA },
              { name: 'haproxy-h2-b', pid: h2.haproxyH2.pidB },
            ],
          },
        ]
      : []
    const idleRss: Record<string, number> = {}
    for (const p of [
      inbound,
      outbound,
      ...(outboundHttp ? [outboundHttp] : []),
      ...haproxyProcs,
      ...h2Paths.flatMap((x) => x.procs),
    ]) {
      idleRss[p.name] = readStatus(p.pid)?.vmRss ?? Number.NaN
    }

    for (const p of paths) await probe(p.port)
    for (const p of h2Paths) await probeH2(p.port)
    progress('every path answers 200 with a 1 KiB body')

    if (warmupS > 0) {
      for (const p of paths) {
        progress(`warm-up ${p.name}: ${warmupS} s at ${Math.max(...connsList)} connections`)
        await runWrk(p.port, Math.max(...connsList), warmupS, [])
      }
      for (const p of h2Paths) {
        progress(`warm-up ${p.name}: ${warmupS} s at ${Math.max(...h2StreamsList)} streams`)
        await runH2load(dir, p.port, Math.max(...h2StreamsList), warmupS, [])
      }
    }

    // results[path][conns] = one result per repetition, in order.
    const results = new Map<PathName, Map<number, WrkResult[]>>()
    for (const p of paths) results.set(p.name, new Map(connsList.map((c) => [c, []])))
    for (let rep = 0; rep < reps; rep++) {
      for (const conns of connsList) {
        // Interleaved: the order of the paths rotates every repetition.
        const order = paths.map((_, i) => paths[(i + rep) % paths.length]!)
        for (const p of order) {
          const r = await runWrk(p.port, conns, durationS, p.procs)
          results.get(p.name)!.get(conns)!.push(r)
          progress(
            `rep ${rep + 1}/${reps} c=${conns} ${p.name.padEnd(9)} ${r.rps.toFixed(0).padStart(6)} req/s  p50 ${r.p50Us.toFixed(0)} µs  p99 ${r.p99Us.toFixed(0)} µs${r.errors ? `  errors ${r.errors}` : ''}`,
          )
        }
      }
    }

    // HTTP/2: h2Results[path][streams], one result per repetition, interleaved the same way.
    const h2Results = new Map<PathName, Map<number, WrkResult[]>>()
    for (const p of h2Paths) h2Results.set(p.name, new Map(h2StreamsList.map((m) => [m, []])))
    for (let rep = 0; rep < reps && h2Paths.length > 0; rep++) {
      for (const streams of h2StreamsList) {
        const order = h2Paths.map((_, i) => h2Paths[(i + rep) % h2Paths.length]!)
        for (const p of order) {
          const r = await runH2load(dir, p.port, streams, durationS, p.procs)
          h2Results.get(p.name)!.get(streams)!.push(r)
          progress(
            `rep ${rep + 1}/${reps} m=${streams} ${p.name.padEnd(10)} ${r.rps.toFixed(0).padStart(6)} req/s  p50 ${r.p50Us.toFixed(0)} µs  p99 ${r.p99Us.toFixed(0)} µs${r.errors ? `  errors ${r.errors}` : ''}`,
          )
        }
      }
    }

    // Summaries: medians over repetitions; added latency per repetition against direct.
    const summary: Record<string, Record<string, unknown>> = {}
    const rows: (string | number)[][] = []
    const h2Rows: (string | number)[][] = []
    /** Median over repetitions of (p50 of `name` - p50 of its direct path in the same repetition). */
    const addedIn = (
      set: Map<PathName, Map<number, WrkResult[]>>,
      direct: PathName,
      name: PathName,
      level: number,
    ): number => {
      const mine = set.get(name)!.get(level)!
      const base = set.get(direct)!.get(level)!
      return median(mine.map((r, i) => r.p50Us - base[i]!.p50Us))
    }
    const added = (name: PathName, conns: number): number => addedIn(results, 'direct', name, conns)
    const addedH2 = (name: PathName, streams: number): number =>
      addedIn(h2Results, 'direct_h2', name, streams)
    const medianRps = (set: Map<PathName, Map<number, WrkResult[]>>, name: PathName, level: number): number =>
      median(
        set
          .get(name)!
          .get(level)!
          .map((r) => r.rps),
      )
    const sections = [
      { set: results, list: paths, levels: connsList, suffix: 'c', direct: 'direct' as const, out: rows },
      {
        set: h2Results,
        list: h2Paths,
        levels: h2StreamsList,
        suffix: 'm',
        direct: 'direct_h2' as const,
        out: h2Rows,
      },
    ]
    for (const { set, list, levels, suffix, direct, out } of sections) {
      for (const level of levels) {
        for (const p of list) {
          const rs = set.get(p.name)!.get(level)!
          const s = {
            rps: Math.round(median(rs.map((r) => r.rps))),
            p50_us: median(rs.map((r) => r.p50Us)),
            p99_us: median(rs.map((r) => r.p99Us)),
            added_p50_us: p.name === direct ? 0 : addedIn(set, direct, p.name, level),
            errors: rs.reduce((a, r) => a + r.errors, 0),
            cpu_us_per_req: Object.fromEntries(
              p.procs.map((proc) => [proc.name, round1(median(rs.map((r) => r.cpuUsPerReq[proc.name]!)))]),
            ),
            runs: rs.map((r) => ({
              rps: r.rps,
              p50_us: r.p50Us,
              p99_us: r.p99Us,
              errors: r.errors,
              cpu_us_per_req: r.cpuUsPerReq,
            })),
          }
          summary[`${p.name}_${suffix}${level}`] = s
          out.push([
            LABEL[p.name],
            suffix === 'c' ? level : `1 × ${level}`,
            s.rps,
            `${s.p50_us.toFixed(0)} µs${p.name === direct ? '' : ` (+${s.added_p50_us.toFixed(0)})`}`,
            `${s.p99_us.toFixed(0)} µs`,
            p.procs.length === 0
              ? '-'
              : p.procs
                  .map(
                    (proc) =>
                      `${proc.name.replace(/^ours-|^haproxy-/, '')} ${fmt(s.cpu_us_per_req[proc.name]!)}`,
                  )
                  .join(', '),
            s.errors,
          ])
        }
      }
    }
    const rss: Record<
      string,
      { idle_kb: number; peak_kb: number; median_kb: number; anon_median_kb: number }
    > = {}
    for (const [name, idle] of Object.entries(idleRss)) {
      const s = rssSamples.get(name)
      rss[name] = {
        idle_kb: idle,
        peak_kb: s ? Math.max(...s.vmRss) : Number.NaN,
        median_kb: s ? median(s.vmRss) : Number.NaN,
        anon_median_kb: s ? median(s.rssAnon) : Number.NaN,
      }
    }

    const c1 = Math.min(...connsList)
    const cN = Math.max(...connsList)
    const addedOurs = added('ours', c1)
    const addedHaproxy = added('haproxy', c1)
    const latencyRatio = addedOurs / addedHaproxy
    const rpsOurs = median(
      results
        .get('ours')!
        .get(cN)!
        .map((r) => r.rps),
    )
    const rpsHaproxy = median(
      results
        .get('haproxy')!
        .get(cN)!
        .map((r) => r.rps),
    )
    const throughputRatio = rpsOurs / rpsHaproxy
    const m1 = Math.min(...h2StreamsList)
    const mN = Math.max(...h2StreamsList)
    const h2Figures = withH2
      ? (() => {
          const addedOursH2 = addedH2('ours_h2', m1)
          const addedHaproxyH2 = addedH2('haproxy_h2', m1)
          const rpsOursH2 = medianRps(h2Results, 'ours_h2', mN)
          const rpsHaproxyH2 = medianRps(h2Results, 'haproxy_h2', mN)
          return {
            added_p50_us_ours_h2: addedOursH2,
            added_p50_us_haproxy_h2: addedHaproxyH2,
            h2_latency_ratio: addedOursH2 / addedHaproxyH2,
            h2_throughput_ratio: rpsOursH2 / rpsHaproxyH2,
            [`rps_ours_h2_m${mN}`]: rpsOursH2,
            [`rps_haproxy_h2_m${mN}`]: rpsHaproxyH2,
          }
        })()
      : undefined

    table(['path', 'conns', 'req/s', 'p50 (added)', 'p99', 'proxy CPU µs/req', 'errors'], rows)
    process.stdout.write('\n')
    if (h2Rows.length > 0) {
      table(
        [
          'path (HTTP/2, h2load)',
          'conn × streams',
          'req/s',
          'p50 (added)',
          'p99',
          'proxy CPU µs/req',
          'errors',
        ],
        h2Rows,
      )
      process.stdout.write('\n')
    }
    table(
      ['process', 'VmRSS idle', 'VmRSS under load (median)', 'peak', 'RssAnon (median)'],
      Object.entries(rss).map(([name, r]) => [
        name,
        `${(r.idle_kb / 1024).toFixed(1)} MiB`,
        `${(r.median_kb / 1024).toFixed(1)} MiB`,
        `${(r.peak_kb / 1024).toFixed(1)} MiB`,
        `${(r.anon_median_kb / 1024).toFixed(1)} MiB`,
      ]),
    )
    process.stdout.write(
      `\nadded p50 at ${c1} conn: ours +${addedOurs.toFixed(0)} µs, HAProxy +${addedHaproxy.toFixed(0)} µs` +
        ` -> latency_ratio ${latencyRatio.toFixed(2)} (target ≤ 1.0)\n` +
        `req/s at ${cN} conns: ours ${rpsOurs.toFixed(0)}, HAProxy ${rpsHaproxy.toFixed(0)}` +
        ` -> throughput_ratio ${throughputRatio.toFixed(2)} (target ≥ 0.8)\n` +
        (h2Figures
          ? `HTTP/2 added p50 at 1 × ${m1} stream: ours +${h2Figures.added_p50_us_ours_h2.toFixed(0)} µs, HAProxy +${h2Figures.added_p50_us_haproxy_h2.toFixed(0)} µs` +
            ` -> h2_latency_ratio ${h2Figures.h2_latency_ratio.toFixed(2)}\n` +
            `HTTP/2 req/s at 1 × ${mN} streams: ours ${h2Figures[`rps_ours_h2_m${mN}`]!.toFixed(0)}, HAProxy ${h2Figures[`rps_haproxy_h2_m${mN}`]!.toFixed(0)}` +
            ` -> h2_throughput_ratio ${h2Figures.h2_throughput_ratio.toFixed(2)}\n`
          : '') +
        `${durationS} s per run, ${reps} repetitions (median), ${keyType} leaves for both systems, wrk -t1${withH2 ? ', h2load -t1 -c1' : ''}, HAProxy ${haproxyVersion()} nbthread 1\n`,
    )
    emitJson({
      added_p50_us_ours: addedOurs,
      added_p50_us_haproxy: addedHaproxy,
      latency_ratio: latencyRatio,
      throughput_ratio: throughputRatio,
      rps_ours_c32: rpsOurs,
      rps_haproxy_c32: rpsHaproxy,
      added_p50_us_ours_http: withHttp ? added('ours_http', c1) : null,
      ...(h2Figures ?? {}),
      targets: { latency_ratio_max: 1.0, throughput_ratio_min: 0.8 },
      config: {
        duration_s: durationS,
        reps,
        warmup_s: warmupS,
        conns: connsList,
        h2_streams: withH2 ? h2StreamsList : null,
        body_bytes: BODY_BYTES,
        key_type: keyType,
        haproxy: haproxyVersion(),
        node: process.version,
      },
      paths: summary,
      rss_kb: rss,
    })
  } finally {
    await stopChildren()
    for (const c of cleanups.reverse()) await c().catch(() => {})
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
  }
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    killAllChildren()
    process.stderr.write(
      `bench:proxy-overhead failed: ${error instanceof Error ? error.message : String(error)}\n`,
    )
    process.exit(1)
  },
)
