/**
 * `npm run bench:failover [-- --json --gap S --warmup S --tail S --window-ms MS --rps N --protocol http|tcp]`
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
 *
 * `--protocol tcp`: the api sidecars are registered without a protocol (L4, the multiplexed mode
 * between sidecars), and each request goes on a fresh connection (`agent: false`): an L4 proxy
 * balances and retries connections, not requests, so a kept-alive connection stays on its
 * instance and dies with it. A connection is retried onto another instance until the first
 * response byte. L4 access lines carry no request id: the retried count is web's retry log lines.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { Agent, request } from 'node:http'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { type AgentProcess, authHeaders, freePort, TestCluster, waitFor } from '../test/e2e/harness.ts'
import { startRaftCluster, waitForLeader } from '../test/e2e/raft-helpers.ts'
import { argValue, fmt, progress } from './lib.ts'
import type { SvgEvent } from './failover-svg.ts'
import { type EventSpec, type LogMark, report, type Sample } from './failover-report.ts'

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
const PROTOCOL = (argValue('protocol', 'http') ?? 'http') as 'http' | 'tcp'
if (!['http', 'tcp'].includes(PROTOCOL)) {
  process.stderr.write(`--protocol must be http or tcp, not ${PROTOCOL}\n`)
  process.exit(2)
}

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
          // tcp: a fresh connection per request (see the file comment).
          agent: PROTOCOL === 'tcp' ? false : this.agent,
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

// ---- main -------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const cluster = new TestCluster()
  const apps: ApiApp[] = []
  let load: Load | undefined
  try {
    progress('starting 5 agents (--bootstrap-expect 5)...')
    // Debug level: web's sidecar logs each retry with the endpoint it gave up on. Every request's
    // access line (`accessLog: all`; the default logs failed ones only) carries its attempts.
    const config = join(cluster.dir, 'failover-agent.json')
    writeFileSync(config, JSON.stringify({ accessLog: 'all' }), { mode: 0o600 })
    const agents = await startRaftCluster(cluster, 5, {
      prefix: 'f',
      extraArgs: ['--log-level', 'debug', '--config', config],
    })
    const leader = await waitForLeader(agents, 60_000)
    await waitFor(
      'gossip: every agent sees 5 alive',
      async () => {
        const views = await Promise.all(agents.map((a) => a.api<{ State: string }[]>('/v1/agent/members')))
        return views.every((v) => v?.filter((m) => m.State === 'alive').length === 5) ? true : undefined
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
        headers: { ...authHeaders(), 'content-type': 'application/json' },
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
        connect: {
          sidecarService: { port: inPorts[i], ...(PROTOCOL === 'http' ? { protocol: 'http' } : {}) },
        },
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
      `load: ${CONNECTIONS} ${PROTOCOL === 'tcp' ? 'loops of fresh connections (L4)' : 'keep-alive connections'} to 127.0.0.1:${upstream}${RPS > 0 ? `, ${RPS} req/s cap` : ''}`,
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
    report(
      samples,
      events,
      marks,
      passingLog,
      retries,
      ejections,
      endMs,
      {
        leader: L.name,
        newLeader,
        web: W.name,
        accessLogLines: attempts.size,
        protocol: PROTOCOL,
      },
      { windowMs: WINDOW_MS, bucketMs: BUCKET_MS, outDir: OUT_DIR, connections: CONNECTIONS },
    )
  } finally {
    load?.stop()
    for (const a of apps) a.kill()
    await cluster.close()
  }
}

main().catch((err) => {
  progress(`bench:failover failed: ${(err as Error).stack ?? String(err)}`)
  process.exit(1)
})
