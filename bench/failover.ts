/**
 * `npm run bench:failover [-- --json --gap S --warmup S --tail S --window-ms MS --rps N]`
 *
 * Failover of the data plane under keep-alive HTTP load (issue 7). Five agents (separate processes
 * on 127.0.0.1, `--bootstrap-expect 5`, so Raft keeps a quorum after losing the leader and another
 * agent). Once the leader L is known the topology is picked around it:
 * - api instances (HTTP apps run by this bench, one child process each, answering with their own
 *   name) on L and on two other agents P and Q, each registered with a sidecar, `protocol: 'http'`;
 * - web (the client) on a fourth agent W, upstream api on 127.0.0.1:<port>; the fifth agent only
 *   holds a Raft vote. So web's agent is never the one killed.
 * Load: 32 closed loops over `http.Agent({ keepAlive: true, maxSockets: 32 })` to web's upstream
 * listener, each request recorded (start, latency, ok/failed, which instance answered) and tagged
 * with an `x-request-id` that web's access log echoes with its `attempts` count.
 * After `--warmup` seconds (default 10), events `--gap` seconds apart (default 8): (1) kill -9
 * the api app on P; (1b) restart it (a supervisor would), so two instances remain for (3);
 * (2) kill -9 agent Q (its sidecar and its api app are gone); (3) kill -9 the Raft leader L (which
 * also hosts an api instance).
 * Figures per event: failed requests (from the kill to the next event), p99 latency of requests
 * started in the window after the kill (`--window-ms`, default 2000), `reroute_ms` = time from the
 * kill to the start of the last request that still went to the dead instance (seen as a failure or
 * as a retry, `attempts > 1` in web's access log), and `critical_ms` = time until web's agent no
 * longer lists the instance as passing. A 100 ms timeline is printed and drawn to
 * bench/out/failover.svg.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { mkdirSync, writeFileSync } from 'node:fs'
import { Agent, request } from 'node:http'
import { fileURLToPath } from 'node:url'
import { type AgentProcess, freePort, TestCluster, waitFor } from '../test/e2e/harness.ts'
import { startRaftCluster, waitForLeader } from '../test/e2e/raft-helpers.ts'
import { argValue, emitJson, fmt, progress, quantile, table } from './lib.ts'
import { renderTimelineSvg, type SvgEvent } from './failover-svg.ts'

const CONNECTIONS = 32
const GAP_MS = Number(argValue('gap', '8')) * 1000
const WARMUP_MS = Number(argValue('warmup', '10')) * 1000
const TAIL_MS = Number(argValue('tail', '8')) * 1000
const WINDOW_MS = Number(argValue('window-ms', '2000'))
/** Total request rate cap (0 = closed loops as fast as they go). */
const RPS = Number(argValue('rps', '0'))
const BUCKET_MS = 100
const REQUEST_TIMEOUT_MS = 10_000
const OUT_DIR = fileURLToPath(new URL('./out/', import.meta.url))

// ---- api apps: one child process each, so one can be killed -----------------------------------

const APP_SOURCE = `
const http = require('node:http')
const [name, port] = process.argv.slice(1)
const body = Buffer.from(name)
const srv = http.createServer((req, res) => {
  req.resume()
  res.writeHead(200, { 'content-type': 'text/plain', 'content-length': body.length })
  res.end(body)
})
srv.keepAliveTimeout = 60000
srv.listen(Number(port), '127.0.0.1', () => process.stdout.write('ready\\n'))
`

class ApiApp {
  child?: ChildProcess
  constructor(
    readonly name: string,
    readonly port: number,
  ) {}

  async start(): Promise<void> {
    const child = spawn(process.execPath, ['-e', APP_SOURCE, this.name, String(this.port)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    })
    this.child = child
    await new Promise<void>((resolve, reject) => {
      child.once('exit', (code) => reject(new Error(`${this.name} exited with ${code}`)))
      child.stdout?.once('data', () => resolve())
    })
  }

  kill(): void {
    this.child?.kill('SIGKILL')
  }
}

// ---- load generator ---------------------------------------------------------------------------

interface Sample {
  seq: number
  /** ms since load start. */
  start: number
  latency: number
  ok: boolean
  /** Instance name that answered (the body), or the error. */
  by: string
  attempts?: number
}

class Load {
  readonly samples: Sample[] = []
  private stopped = false
  private seq = 0
  private readonly agent = new Agent({ keepAlive: true, maxSockets: CONNECTIONS })
  t0 = 0
  /** Date.now() at t0, to place the agents' log lines (ISO times) on the same axis. */
  wallT0 = 0

  constructor(private readonly port: number) {}

  now(): number {
    return performance.now() - this.t0
  }

  one(): Promise<Sample> {
    const seq = this.seq++
    const start = this.now()
    return new Promise((resolve) => {
      let done = false
      const finish = (ok: boolean, by: string): void => {
        if (done) return
        done = true
        resolve({ seq, start, latency: this.now() - start, ok, by })
      }
      const req = request(
        {
          host: '127.0.0.1',
          port: this.port,
          path: '/',
          agent: this.agent,
          headers: { 'x-request-id': `fo-${seq}` },
          signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
        },
        (res) => {
          const chunks: Buffer[] = []
          res.on('data', (c: Buffer) => chunks.push(c))
          res.on('error', (e) => finish(false, `body: ${e.message}`))
          res.on('end', () => {
            const body = Buffer.concat(chunks).toString()
            if (res.statusCode === 200) finish(true, body)
            else
              finish(false, `HTTP ${res.statusCode} ${String(res.headers['x-peermesh-error'] ?? '')} ${body}`)
          })
        },
      )
      req.on('error', (e) => finish(false, (e as NodeJS.ErrnoException).code ?? e.message))
      req.end()
    })
  }

  async loop(): Promise<void> {
    const perLoopGap = RPS > 0 ? (1000 * CONNECTIONS) / RPS : 0
    while (!this.stopped) {
      const s = await this.one()
      this.samples.push(s)
      if (perLoopGap > 0) {
        const wait = perLoopGap - s.latency
        if (wait > 0) await new Promise((r) => setTimeout(r, wait))
      }
    }
  }

  async run(): Promise<void> {
    this.t0 = performance.now()
    this.wallT0 = Date.now()
    await Promise.all(Array.from({ length: CONNECTIONS }, () => this.loop()))
  }

  stop(): void {
    this.stopped = true
  }

  close(): void {
    this.agent.destroy()
  }
}

// ---- helpers ----------------------------------------------------------------------------------

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

interface HealthEntry {
  service?: { id?: string; ID?: string }
  Service?: { ID?: string }
}

/** Ids of api instances that `agent` lists as passing. */
async function passingIds(agent: AgentProcess): Promise<Set<string> | undefined> {
  const h = await agent.api<HealthEntry[]>('/v1/health/service/api?passing')
  if (h === undefined) return undefined
  return new Set(h.map((e) => e.service?.id ?? e.service?.ID ?? e.Service?.ID ?? JSON.stringify(e)))
}

interface EventSpec {
  name: string
  /** Name the dead instance answers with (its requests stop). */
  instance: string
  /** Service id of the dead instance. */
  id: string
  at: number
  /** When the instance answers again (restarted), if it does; ms since load start. */
  backAt?: number
}

interface LogMark {
  t: number
  endpoint: string
}

// ---- main -------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const cluster = new TestCluster()
  const apps: ApiApp[] = []
  let load: Load | undefined
  try {
    progress('starting 5 agents (--bootstrap-expect 5)...')
    // Debug level: web's sidecar logs each retry with the endpoint it gave up on.
    const agents = await startRaftCluster(cluster, 5, { prefix: 'f', extraArgs: ['--log-level', 'debug'] })
    const leader = await waitForLeader(agents, 60_000)
    await waitFor(
      'gossip: every agent sees 5 alive',
      async () => {
        const views = await Promise.all(agents.map((a) => a.api<{ status: string }[]>('/v1/agent/members')))
        return views.every((v) => v?.filter((m) => m.status === 'alive').length === 5) ? true : undefined
      },
      60_000,
      200,
    )
    const others = agents.filter((a) => a !== leader)
    const [P, Q, W, spare] = others as [AgentProcess, AgentProcess, AgentProcess, AgentProcess]
    const L = leader
    progress(
      `leader ${L.name}; api on ${P.name} (app killed), ${Q.name} (agent killed), ${L.name} (leader killed); web on ${W.name}; ${spare.name} votes only`,
    )

    const hosts = [P, Q, L]
    const appPorts = await Promise.all(hosts.map(() => freePort()))
    const inPorts = await Promise.all(hosts.map(() => freePort()))
    const [webPort, webIn, upstream] = [await freePort(), await freePort(), await freePort()]
    for (let i = 0; i < 3; i++) {
      const app = new ApiApp(`api@${hosts[i]!.name}`, appPorts[i]!)
      await app.start()
      apps.push(app)
    }
    const ids = hosts.map((h) => `api-${h.name}`)
    const put = async (a: AgentProcess, path: string, body: object, method = 'PUT'): Promise<void> => {
      const res = await fetch(`http://${a.http}${path}`, {
        method,
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body),
      })
      if (!res.ok) throw new Error(`${method} ${path} on ${a.name}: ${res.status} ${await res.text()}`)
    }
    for (let i = 0; i < 3; i++) {
      await put(hosts[i]!, '/v1/agent/service/register', {
        name: 'api',
        id: ids[i],
        address: '127.0.0.1',
        port: appPorts[i],
        checks: [{ tcp: `127.0.0.1:${appPorts[i]}`, interval: '500ms', timeout: '300ms' }],
        connect: { sidecarService: { port: inPorts[i], protocol: 'http' } },
      })
    }
    await put(W, '/v1/agent/service/register', {
      name: 'web',
      address: '127.0.0.1',
      port: webPort,
      connect: {
        sidecarService: { port: webIn, upstreams: [{ destinationName: 'api', localBindPort: upstream }] },
      },
    })
    await put(spare, '/v1/connect/intentions', { source: 'web', destination: 'api', action: 'allow' }, 'POST')
    progress(
      `registered; intention web -> api allow (through ${spare.name}); waiting for 3 passing + traffic...`,
    )
    const probe = new Load(upstream)
    await waitFor(
      'web sees 3 passing api instances and every one answers through the upstream',
      async () => {
        const p = await passingIds(W)
        if (p === undefined || ids.some((id) => !p.has(id))) return undefined
        const seen = new Set<string>()
        for (let i = 0; i < 30; i++) {
          const s = await probe.one()
          if (s.ok) seen.add(s.by)
        }
        return seen.size === 3 ? true : undefined
      },
      90_000,
      300,
    )
    probe.close()

    // Health view from web's agent, every 100 ms: when does each dead instance stop being passing?
    load = new Load(upstream)
    const passingLog: { t: number; ids: Set<string> }[] = []
    let polling = true
    const poller = (async () => {
      while (polling) {
        const p = await passingIds(W)
        if (p !== undefined && load !== undefined) passingLog.push({ t: load.now(), ids: p })
        await sleep(100)
      }
    })()

    progress(
      `load: ${CONNECTIONS} keep-alive connections to 127.0.0.1:${upstream}${RPS > 0 ? `, ${RPS} req/s cap` : ''}`,
    )
    const running = load.run()
    const events: EventSpec[] = []
    const marks: SvgEvent[] = []
    await sleep(WARMUP_MS)

    events.push({ name: 'kill -9 api app', instance: apps[0]!.name, id: ids[0]!, at: load.now() })
    apps[0]!.kill()
    progress(`t=${fmt(load.now() / 1000)}s kill -9 api app on ${P.name}`)
    await sleep(GAP_MS / 2)
    await apps[0]!.start()
    events[0]!.backAt = load.now()
    marks.push({ t: load.now(), label: `restart app ${P.name}`, minor: true })
    progress(`t=${fmt(load.now() / 1000)}s api app on ${P.name} restarted`)
    await sleep(GAP_MS / 2)

    events.push({ name: 'kill -9 agent', instance: apps[1]!.name, id: ids[1]!, at: load.now() })
    await Q.stop('SIGKILL')
    apps[1]!.kill() // the agent's "machine" is gone: its app goes with it
    progress(`t=${fmt(load.now() / 1000)}s kill -9 agent ${Q.name} (and its app)`)
    await sleep(GAP_MS)

    events.push({ name: 'kill -9 raft leader', instance: apps[2]!.name, id: ids[2]!, at: load.now() })
    await L.stop('SIGKILL')
    apps[2]!.kill()
    progress(`t=${fmt(load.now() / 1000)}s kill -9 leader ${L.name} (and its app)`)
    await sleep(TAIL_MS)
    const survivors = agents.filter((a) => a !== L && a !== Q)
    const newLeader = await waitForLeader(survivors, 20_000).then(
      (a) => a.name,
      () => 'none',
    )
    load.stop()
    await running
    polling = false
    await poller
    load.close()
    const endMs = load.now()
    progress(`load stopped at t=${fmt(endMs / 1000)}s; new raft leader: ${newLeader}`)

    // Web's log: access lines (attempts per request, joined to the samples by x-request-id), the
    // endpoint of each retry, and outlier ejections.
    const attempts = new Map<string, number>()
    const retries: LogMark[] = []
    const ejections: LogMark[] = []
    const rel = (iso: string | undefined): number => (iso ? Date.parse(iso) - load!.wallT0 : Number.NaN)
    for (const line of W.log.split('\n')) {
      const access = line.includes('"access"') && line.includes('fo-')
      const retry = line.includes('retrying upstream=')
      const eject = line.includes('outlier ejected')
      if (!access && !retry && !eject) continue
      try {
        const j = JSON.parse(line) as {
          requestId?: string
          attempts?: number
          direction?: string
          endpoint?: string
          time?: string
        }
        if (access && j.direction === 'outbound' && j.requestId !== undefined && j.attempts !== undefined)
          attempts.set(j.requestId, j.attempts)
        if ((retry || eject) && j.endpoint !== undefined)
          (retry ? retries : ejections).push({ t: rel(j.time), endpoint: j.endpoint })
      } catch {}
    }
    const samples = load.samples.sort((a, b) => a.start - b.start)
    for (const s of samples) {
      const n = attempts.get(`fo-${s.seq}`)
      if (n !== undefined) s.attempts = n
    }
    report(samples, events, marks, passingLog, retries, ejections, endMs, {
      leader: L.name,
      newLeader,
      web: W.name,
      accessLogLines: attempts.size,
    })
  } finally {
    load?.stop()
    for (const a of apps) a.kill()
    await cluster.close()
  }
}

function report(
  samples: Sample[],
  events: EventSpec[],
  marks: SvgEvent[],
  passingLog: { t: number; ids: Set<string> }[],
  retries: LogMark[],
  ejections: LogMark[],
  endMs: number,
  info: { leader: string; newLeader: string; web: string; accessLogLines: number },
): void {
  const failed = samples.filter((s) => !s.ok)
  const retried = samples.filter((s) => (s.attempts ?? 1) > 1)
  const perEvent = events.map((e, i) => {
    // A request belongs to the event when it ends after the kill and before the next event (or
    // before the killed app is back, for the dead instance's own figures).
    const until = events[i + 1]?.at ?? endMs
    const deadUntil = e.backAt ?? until
    const span = samples.filter((s) => s.start + s.latency >= e.at && s.start + s.latency < until)
    const window = samples.filter((s) => s.start >= e.at && s.start < e.at + WINDOW_MS)
    const before = samples.filter((s) => s.start >= e.at - WINDOW_MS && s.start < e.at)
    const hit = span.filter((s) => !s.ok || (s.attempts ?? 1) > 1)
    const isDead = (m: LogMark): boolean => m.endpoint.endsWith(`/${e.id}`) && m.t >= e.at - 20
    const toDead = retries.filter((m) => isDead(m) && m.t < deadUntil)
    const lastToDead = toDead.reduce((m, r) => Math.max(m, r.t), Number.NEGATIVE_INFINITY)
    const firstEject = ejections.find((m) => isDead(m) && m.t < deadUntil)
    const stillAnswered = samples.filter(
      (s) => s.ok && s.by === e.instance && s.start >= e.at && s.start < deadUntil,
    )
    const notPassing = passingLog.find((p) => p.t >= e.at && !p.ids.has(e.id))
    return {
      event: e.name,
      at_s: Math.round(e.at) / 1000,
      failed_requests: span.filter((s) => !s.ok).length,
      retried_requests: hit.filter((s) => s.ok).length,
      retries_to_dead: toDead.length,
      requests_in_window: window.length,
      p99_ms_before:
        Math.round(
          quantile(
            before.map((s) => s.latency),
            0.99,
          ) * 10,
        ) / 10,
      p99_ms_window:
        Math.round(
          quantile(
            window.map((s) => s.latency),
            0.99,
          ) * 10,
        ) / 10,
      max_ms_window: Math.round(Math.max(...window.map((s) => s.latency)) * 10) / 10,
      reroute_ms: Number.isFinite(lastToDead) ? Math.max(0, Math.round(lastToDead - e.at)) : 0,
      ejected_ms: firstEject ? Math.round(firstEject.t - e.at) : null,
      answered_by_dead_after_kill: stillAnswered.length,
      critical_ms: notPassing ? Math.round(notPassing.t - e.at) : null,
    }
  })
  const baseline = samples.filter((s) => s.start < (events[0]?.at ?? endMs))
  const p99Base = quantile(
    baseline.map((s) => s.latency),
    0.99,
  )

  // Timeline, by request start time, 100 ms buckets.
  const n = Math.floor(endMs / BUCKET_MS) // whole buckets only: the last partial one would read low
  const rps = new Array<number>(n).fill(0)
  const errs = new Array<number>(n).fill(0)
  const retr = new Array<number>(n).fill(0)
  for (const s of samples) {
    const b = Math.floor(s.start / BUCKET_MS)
    if (b >= n) continue
    rps[b]! += 1000 / BUCKET_MS
    if (!s.ok) errs[b]! += 1
    else if ((s.attempts ?? 1) > 1) retr[b]! += 1
  }
  const byInstance = new Map<string, number>()
  for (const s of samples) if (s.ok) byInstance.set(s.by, (byInstance.get(s.by) ?? 0) + 1)

  {
    process.stdout.write(
      `\ntimeline (100 ms buckets by request start; # = 100 req/s, E = errors, r = retried)\n`,
    )
    const evAt = new Map(events.map((e) => [Math.floor(e.at / BUCKET_MS), e.name]))
    for (const m of marks) evAt.set(Math.floor(m.t / BUCKET_MS), m.label)
    for (let b = 0; b < n; b++) {
      const bar = '#'.repeat(Math.round(rps[b]! / 100))
      const tag = evAt.has(b) ? `  <== ${evAt.get(b)}` : ''
      process.stdout.write(
        `${(b / 10).toFixed(1).padStart(5)}s ${String(rps[b]).padStart(6)} req/s ${String(errs[b]).padStart(3)} err ${String(retr[b]).padStart(3)} retried ${bar}${'E'.repeat(errs[b]!)}${'r'.repeat(Math.min(20, retr[b]!))}${tag}\n`,
      )
    }
    process.stdout.write('\n')
  }
  table(
    [
      'event',
      'at s',
      'failed',
      'retried',
      'retries to dead',
      `p99 ms ${WINDOW_MS} ms before`,
      `p99 ms ${WINDOW_MS} ms after`,
      'max ms',
      'reroute ms',
      'ejected after ms',
      'not passing after ms',
      'answered by dead',
    ],
    perEvent.map((e) => [
      e.event,
      e.at_s,
      e.failed_requests,
      e.retried_requests,
      e.retries_to_dead,
      e.p99_ms_before,
      e.p99_ms_window,
      e.max_ms_window,
      e.reroute_ms,
      e.ejected_ms ?? '-',
      e.critical_ms ?? 'never',
      e.answered_by_dead_after_kill,
    ]),
  )
  process.stdout.write('\n')
  table(
    ['total requests', 'failed', 'retried', 'req/s', 'p99 ms before events', 'leader killed', 'new leader'],
    [
      [
        samples.length,
        failed.length,
        retried.length,
        Math.round((samples.length / endMs) * 1000),
        Math.round(p99Base * 10) / 10,
        info.leader,
        info.newLeader,
      ],
    ],
  )
  process.stdout.write('\nanswered by: ')
  process.stdout.write(`${[...byInstance].map(([k, v]) => `${k} ${v}`).join(', ')}\n`)
  const errorKinds = new Map<string, number>()
  for (const s of failed) errorKinds.set(s.by, (errorKinds.get(s.by) ?? 0) + 1)
  if (errorKinds.size > 0)
    process.stdout.write(`errors: ${[...errorKinds].map(([k, v]) => `${v}× ${k}`).join('; ')}\n`)
  if (info.accessLogLines < samples.length * 0.99)
    process.stdout.write(
      `note: only ${info.accessLogLines} of ${samples.length} requests found in web's access log; retries may be undercounted\n`,
    )

  mkdirSync(OUT_DIR, { recursive: true })
  const svgPath = `${OUT_DIR}failover.svg`
  writeFileSync(
    svgPath,
    renderTimelineSvg({
      bucketMs: BUCKET_MS,
      rps,
      errors: errs,
      retried: retr,
      events: [...events.map((e) => ({ t: e.at, label: e.name })), ...marks],
      title: `peermesh failover: ${CONNECTIONS} keep-alive connections through web's sidecar to 3 api instances`,
    }),
  )
  process.stdout.write(`plot: ${svgPath}\n`)

  emitJson({
    failed_requests: failed.length,
    total_requests: samples.length,
    retried_requests: retried.length,
    reroute_ms: Math.max(...perEvent.map((e) => e.reroute_ms)),
    p99_ms_baseline: Math.round(p99Base * 10) / 10,
    window_ms: WINDOW_MS,
    connections: CONNECTIONS,
    leader_killed: info.leader,
    new_leader: info.newLeader,
    events: perEvent,
  })
}

main().catch((err) => {
  progress(`bench:failover failed: ${(err as Error).stack ?? String(err)}`)
  process.exit(1)
})
