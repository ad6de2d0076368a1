import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { Agent, request } from 'node:http'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { argValue, fmt, median, progress, table } from '../lib.ts'

/**
 * etcd 3.4 (Debian package `etcd-server`, binary /usr/bin/etcd) as the peer system for Raft
 * benchmarks: a 3-member cluster on 127.0.0.1 with free ports, data dirs under a temp dir, fsync
 * on (etcd's default), talked to only through its v3 JSON gateway over keep-alive connections.
 *
 * Every process started here is killed by `close()`, and by a process `exit` hook if the caller
 * never gets that far.
 */

const ETCD = '/usr/bin/etcd'

/** etcd's own defaults: heartbeat 100 ms, election timeout 1000 ms (10 heartbeats). */
export const DEFAULT_TIMING: EtcdTiming = { heartbeatMs: 100, electionMs: 1000 }
/** The tuned profile in ANCHORS.md: 5 heartbeats per election timeout, like Raft §9.3's 150–300 ms. */
export const TUNED_TIMING: EtcdTiming = { heartbeatMs: 50, electionMs: 250 }

export interface EtcdTiming {
  /** `--heartbeat-interval`: how often the leader sends heartbeats, in ms. */
  heartbeatMs: number
  /** `--election-timeout`: how long a follower waits without a heartbeat before campaigning, in ms. */
  electionMs: number
}

export interface EtcdMember {
  name: string
  /** `http://127.0.0.1:PORT`, the client URL that also serves the v3 JSON gateway. */
  clientUrl: string
  peerUrl: string
  pid: number
  /** True once the process has exited. */
  readonly exited: boolean
  kill(signal?: NodeJS.Signals): void
}

export interface RequestOptions {
  /** Per-request timeout; default 1000 ms. */
  timeoutMs?: number
  signal?: AbortSignal
}

export interface EtcdCluster {
  members: EtcdMember[]
  /** The member all live members agree is leader, polled until one exists (default 10 s). */
  leader(opts?: { timeoutMs?: number; signal?: AbortSignal }): Promise<EtcdMember>
  /** `POST /v3/kv/put` through `member`; rejects on timeout, a non-200 answer, or a gateway error. */
  put(member: EtcdMember, key: string, value: string, opts?: RequestOptions): Promise<void>
  /** `POST /v3/kv/range` (linearizable read) through `member`; `null` if the key is absent. */
  get(member: EtcdMember, key: string, opts?: RequestOptions): Promise<string | null>
  /** `POST /v3/maintenance/status` of `member`: its own id and the leader it believes in. */
  status(
    member: EtcdMember,
    opts?: RequestOptions,
  ): Promise<{ memberId: string; leader: string; raftTerm: string }>
  /** Kills every member (SIGKILL), waits for them to exit and removes the data dirs. */
  close(): Promise<void>
}

export function etcdAvailable(): boolean {
  return spawnSync(ETCD, ['--version'], { stdio: 'ignore' }).status === 0
}

/** Installs `etcd-server` with apt-get when it is missing and we are root; throws otherwise. */
export function ensureEtcdInstalled(): void {
  if (etcdAvailable()) return
  if (process.getuid?.() !== 0) {
    throw new Error(`etcd is not installed at ${ETCD}; run: apt-get install -y etcd-server (as root)`)
  }
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
  const install = (): number | null =>
    spawnSync('apt-get', ['install', '-y', '--no-install-recommends', 'etcd-server'], {
      stdio: 'inherit',
      env,
    }).status
  if (install() !== 0) {
    spawnSync('apt-get', ['update'], { stdio: 'inherit', env })
    if (install() !== 0) throw new Error('apt-get install etcd-server failed')
  }
  if (!etcdAvailable()) throw new Error(`etcd-server installed but ${ETCD} does not run`)
}

/** Ports the OS says are free right now (bound to port 0 on 127.0.0.1, then released). */
export async function freePorts(count: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from(
      { length: count },
      () =>
        new Promise<ReturnType<typeof createServer>>((resolve, reject) => {
          const s = createServer()
          s.once('error', reject)
          s.listen(0, '127.0.0.1', () => resolve(s))
        }),
    ),
  )
  const ports = servers.map((s) => {
    const a = s.address()
    if (a === null || typeof a === 'string') throw new Error('no port')
    return a.port
  })
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))))
  return ports
}

const live = new Set<ChildProcess>()
let exitHookInstalled = false
function installExitHook(): void {
  if (exitHookInstalled) return
  exitHookInstalled = true
  process.once('exit', () => {
    for (const child of live) child.kill('SIGKILL')
  })
}

const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64')

/** POSTs JSON to the gateway; resolves with the parsed body of a 200, rejects otherwise. */
function postJson(agent: Agent, url: string, body: unknown, opts: RequestOptions = {}): Promise<unknown> {
  const timeout = AbortSignal.timeout(opts.timeoutMs ?? 1000)
  const signal = opts.signal === undefined ? timeout : AbortSignal.any([opts.signal, timeout])
  const payload = JSON.stringify(body)
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      {
        method: 'POST',
        agent,
        signal,
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
      },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('error', reject)
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8')
          if (res.statusCode !== 200) {
            reject(new Error(`etcd ${url}: HTTP ${res.statusCode}: ${text.slice(0, 200)}`))
            return
          }
          try {
            const parsed = JSON.parse(text) as { error?: string }
            if (parsed.error !== undefined) reject(new Error(`etcd ${url}: ${parsed.error}`))
            else resolve(parsed)
          } catch (err) {
            reject(new Error(`etcd ${url}: bad JSON`, { cause: err }))
          }
        })
      },
    )
    req.on('error', reject)
    req.end(payload)
  })
}

/** Keeps the last few KB of a member's log, for the error when it fails to start. */
function tail(child: ChildProcess, limit = 8192): () => string {
  let buf = ''
  child.stderr?.on('data', (d: Buffer) => {
    buf = (buf + d.toString('utf8')).slice(-limit)
  })
  return () => buf
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * Starts a 3-member cluster and resolves once every member agrees on a leader. Rejects (after
 * killing what it started) if that does not happen within `startTimeoutMs` (default 15 s).
 */
export async function startEtcdCluster(
  opts: Partial<EtcdTiming> & { size?: number; startTimeoutMs?: number } = {},
): Promise<EtcdCluster> {
  const heartbeatMs = opts.heartbeatMs ?? DEFAULT_TIMING.heartbeatMs
  const electionMs = opts.electionMs ?? DEFAULT_TIMING.electionMs
  const size = opts.size ?? 3
  if (electionMs < 5 * heartbeatMs) {
    // etcd itself refuses an election timeout under 5 heartbeats; say why before spawning.
    throw new RangeError(`electionMs (${electionMs}) must be at least 5 × heartbeatMs (${heartbeatMs})`)
  }
  installExitHook()
  const dir = mkdtempSync(join(tmpdir(), 'peermesh-etcd-'))
  const ports = await freePorts(2 * size)
  const names = Array.from({ length: size }, (_, i) => `etcd${i}`)
  const peerUrls = names.map((_, i) => `http://127.0.0.1:${ports[2 * i + 1]}`)
  const initialCluster = names.map((n, i) => `${n}=${peerUrls[i]}`).join(',')
  const env: NodeJS.ProcessEnv = { ...process.env }
  // etcd 3.4 refuses to start on architectures other than amd64/ppc64le unless told to.
  if (process.arch !== 'x64') env.ETCD_UNSUPPORTED_ARCH = process.arch

  const agents = new Map<EtcdMember, Agent>()
  const children: ChildProcess[] = []
  const logs: (() => string)[] = []
  const members: EtcdMember[] = names.map((name, i) => {
    const clientUrl = `http://127.0.0.1:${ports[2 * i]}`
    const peerUrl = peerUrls[i]!
    const child = spawn(
      ETCD,
      [
        `--name=${name}`,
        `--data-dir=${join(dir, name)}`,
        `--listen-client-urls=${clientUrl}`,
        `--advertise-client-urls=${clientUrl}`,
        `--listen-peer-urls=${peerUrl}`,
        `--initial-advertise-peer-urls=${peerUrl}`,
        `--initial-cluster=${initialCluster}`,
        '--initial-cluster-state=new',
        `--initial-cluster-token=peermesh-${ports[0]}`,
        `--heartbeat-interval=${heartbeatMs}`,
        `--election-timeout=${electionMs}`,
        '--logger=zap',
        '--log-level=warn',
      ],
      { stdio: ['ignore', 'ignore', 'pipe'], env },
    )
    live.add(child)
    child.once('exit', () => live.delete(child))
    children.push(child)
    logs.push(tail(child))
    const member: EtcdMember = {
      name,
      clientUrl,
      peerUrl,
      pid: child.pid ?? -1,
      get exited() {
        return child.exitCode !== null || child.signalCode !== null
      },
      kill(signal: NodeJS.Signals = 'SIGKILL') {
        child.kill(signal)
      },
    }
    agents.set(member, new Agent({ keepAlive: true, maxSockets: 64 }))
    return member
  })

  const agentOf = (m: EtcdMember): Agent => {
    const a = agents.get(m)
    if (a === undefined) throw new Error(`${m.name} is not a member of this cluster`)
    return a
  }

  const status: EtcdCluster['status'] = async (member, o) => {
    const r = (await postJson(agentOf(member), `${member.clientUrl}/v3/maintenance/status`, {}, o)) as {
      header: { member_id: string }
      leader?: string
      raftTerm?: string
    }
    return { memberId: r.header.member_id, leader: r.leader ?? '0', raftTerm: r.raftTerm ?? '0' }
  }

  const leader: EtcdCluster['leader'] = async (o = {}) => {
    const deadline = performance.now() + (o.timeoutMs ?? 10_000)
    while (performance.now() < deadline) {
      o.signal?.throwIfAborted()
      const alive = members.filter((m) => !m.exited)
      const seen = await Promise.all(
        alive.map((m) =>
          status(m, { timeoutMs: 500, signal: o.signal }).then(
            (s) => ({ m, s }),
            () => undefined,
          ),
        ),
      )
      const answers = seen.filter((x) => x !== undefined)
      const claimed = answers[0]?.s.leader
      if (claimed !== undefined && claimed !== '0' && answers.every((x) => x.s.leader === claimed)) {
        const found = answers.find((x) => x.s.memberId === claimed)
        if (found !== undefined) return found.m
      }
      await sleep(20)
    }
    throw new Error('etcd: no agreed leader before the deadline')
  }

  const put: EtcdCluster['put'] = async (member, key, value, o) => {
    await postJson(agentOf(member), `${member.clientUrl}/v3/kv/put`, { key: b64(key), value: b64(value) }, o)
  }

  const get: EtcdCluster['get'] = async (member, key, o) => {
    const r = (await postJson(agentOf(member), `${member.clientUrl}/v3/kv/range`, { key: b64(key) }, o)) as {
      kvs?: { value?: string }[]
    }
    const kv = r.kvs?.[0]
    return kv === undefined ? null : Buffer.from(kv.value ?? '', 'base64').toString('utf8')
  }

  let closed = false
  const close = async (): Promise<void> => {
    if (closed) return
    closed = true
    for (const a of agents.values()) a.destroy()
    await Promise.all(
      children.map(
        (child) =>
          new Promise<void>((resolve) => {
            if (child.exitCode !== null || child.signalCode !== null) return resolve()
            child.once('exit', () => resolve())
            child.kill('SIGKILL')
          }),
      ),
    )
    rmSync(dir, { recursive: true, force: true })
  }

  const cluster: EtcdCluster = { members, leader, put, get, status, close }
  try {
    await leader({ timeoutMs: opts.startTimeoutMs ?? 15_000 })
  } catch (err) {
    const why = logs.map((l, i) => `--- ${names[i]}\n${l().slice(-1500)}`).join('\n')
    await close()
    throw new Error(`etcd cluster did not elect a leader\n${why}`, { cause: err })
  }
  return cluster
}

/**
 * Leader failover as ANCHORS.md measures it: `kill -9` the leader (t0 just before), then a
 * write through a survivor every `intervalMs`, each with its own `timeoutMs`; returns seconds
 * from t0 to the first write that succeeds. Throws if none does within `deadlineMs`.
 *
 * By default writes start on a fixed cadence whether or not the previous one has finished (at
 * most timeoutMs / intervalMs in flight), so the figure is not rounded up to a multiple of the
 * timeout: a write sent to a follower that still believes in the dead leader is lost and hangs
 * until it times out. `sequential: true` waits for each write (or its timeout) before the next.
 */
export async function measureFailover(
  cluster: EtcdCluster,
  opts: { intervalMs?: number; timeoutMs?: number; deadlineMs?: number; sequential?: boolean } = {},
): Promise<number> {
  const intervalMs = opts.intervalMs ?? 20
  const timeoutMs = opts.timeoutMs ?? 200
  const deadlineMs = opts.deadlineMs ?? 30_000
  const old = await cluster.leader()
  const survivor = cluster.members.find((m) => m !== old)!
  // Warm the keep-alive connection so the first post-kill write does not pay for a TCP connect.
  await cluster.put(survivor, 'failover/warm', 'x', { timeoutMs: 2000 })
  const t0 = performance.now()
  old.kill('SIGKILL')
  if (opts.sequential) {
    for (let i = 0; performance.now() - t0 < deadlineMs; i++) {
      const started = performance.now()
      try {
        await cluster.put(survivor, 'failover/probe', String(i), { timeoutMs })
        return (performance.now() - t0) / 1000
      } catch {
        const wait = started + intervalMs - performance.now()
        if (wait > 0) await sleep(wait)
      }
    }
    throw new Error(`no write succeeded within ${deadlineMs} ms of killing the leader`)
  }
  const inFlight = new AbortController()
  return await new Promise<number>((resolve, reject) => {
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
        reject(new Error(`no write succeeded within ${deadlineMs} ms of killing the leader`))
        return
      }
      cluster.put(survivor, 'failover/probe', String(i++), { timeoutMs, signal: inFlight.signal }).then(
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

async function selftest(): Promise<void> {
  ensureEtcdInstalled()
  const reps = Number(argValue('reps', '1'))
  const sequential = process.argv.includes('--sequential')
  const rows: (string | number)[][] = []
  for (const [label, timing] of [
    ['defaults 100/1000', DEFAULT_TIMING],
    ['tuned 50/250', TUNED_TIMING],
  ] as const) {
    const figures: number[] = []
    for (let r = 0; r < reps; r++) {
      const started = performance.now()
      const cluster = await startEtcdCluster(timing)
      try {
        const l = await cluster.leader()
        await cluster.put(l, 'selftest', 'hello', { timeoutMs: 2000 })
        const read = await cluster.get(cluster.members.find((m) => m !== l)!, 'selftest', { timeoutMs: 2000 })
        if (read !== 'hello') throw new Error(`read back ${JSON.stringify(read)}`)
        progress(`${label}: cluster up in ${fmt((performance.now() - started) / 1000)} s, leader ${l.name}`)
        const s = await measureFailover(cluster, { sequential })
        const next = await cluster.leader()
        progress(`${label}: rep ${r + 1}: write OK ${fmt(s)} s after kill -9; new leader ${next.name}`)
        figures.push(s)
      } finally {
        await cluster.close()
      }
    }
    rows.push([
      label,
      reps,
      `${fmt(median(figures))} s`,
      `[${fmt(Math.min(...figures))}–${fmt(Math.max(...figures))}]`,
      figures.map((f) => fmt(f)).join(' '),
    ])
  }
  table(['timing (heartbeat/election ms)', 'reps', 'write OK after leader kill', 'range', 'all'], rows)
}

if (process.argv[1] === fileURLToPath(import.meta.url) && process.argv.includes('--selftest')) {
  const stop = (): void => process.exit(130)
  process.once('SIGINT', stop)
  process.once('SIGTERM', stop)
  selftest().then(
    () => process.exit(0),
    (err: unknown) => {
      console.error(err)
      process.exit(1)
    },
  )
}
