/**
 * One chaos host: a network namespace with one agent (`node bin/peermesh.js agent`, started
 * directly, not through npx) listening on the namespace's own address, and a Unix-socket forwarder
 * to its HTTP API, which is on the namespace's loopback. The suite talks to agents only through
 * their HTTP API, as a user would.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { createWriteStream, mkdirSync, type WriteStream } from 'node:fs'
import http from 'node:http'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { hostAddr, nsName, RUN_DIR, track } from './net.ts'
import { waitFor } from '../e2e/harness.ts'
import type { RaftStatus } from '../e2e/raft-helpers.ts'

/** The e2e suite's polling helper and Raft status shape, shared. */
export { type RaftStatus, waitFor }

export const BIN = fileURLToPath(new URL('../../bin/peermesh.js', import.meta.url))
const FORWARD = fileURLToPath(new URL('./uds-forward.mjs', import.meta.url))
const APP = fileURLToPath(new URL('./app.mjs', import.meta.url))
export const P2P_PORT = 7946
const HTTP_PORT = 7880

export interface HttpResult<T = unknown> {
  status: number
  body: T
}

export class HttpError extends Error {
  constructor(
    message: string,
    readonly status: number | undefined,
  ) {
    super(message)
  }
}

export interface Member {
  name: string
  peerId: string
  address: string
  status: 'alive' | 'suspect' | 'dead' | 'left'
  incarnation: number
}

export class Host {
  readonly name: string
  readonly ns: string
  readonly addr: string
  readonly socket: string
  readonly dataDir: string
  agent?: ChildProcess
  private readonly helpers: ChildProcess[] = []
  private readonly agentHttp = new http.Agent({ keepAlive: true, maxSockets: 16 })
  private logStream?: WriteStream
  /** Raft id (peer id) once known. */
  id = ''
  peerId = ''
  /** Sent as `X-Consul-Token` with every request of the suite when set (ACLs on). */
  token?: string

  constructor(
    readonly index: number,
    readonly runDir: string,
  ) {
    this.name = `h${index}`
    this.ns = nsName(index)
    this.addr = hostAddr(index)
    this.socket = join(RUN_DIR, `${this.name}.sock`)
    this.dataDir = join(runDir, this.name)
  }

  get seedAddr(): string {
    return `/ip4/${this.addr}/tcp/${P2P_PORT}`
  }

  get running(): boolean {
    return this.agent !== undefined && this.agent.exitCode === null && this.agent.signalCode === null
  }

  async startForwarder(): Promise<void> {
    await this.helper(FORWARD, [this.socket, String(HTTP_PORT)], 'forwarder')
  }

  /** A Unix socket in RUN_DIR forwarded to `port` on the namespace's loopback; returns its path. */
  async forwardPort(port: number): Promise<string> {
    const path = join(RUN_DIR, `${this.name}-${port}.sock`)
    await this.helper(FORWARD, [path, String(port)], `forwarder of port ${port}`)
    return path
  }

  /** An HTTP server answering `name` on 127.0.0.1:port inside the namespace. */
  async startApp(port: number, name: string): Promise<void> {
    await this.helper(APP, [String(port), name], 'app')
  }

  /** Starts a small node script inside the namespace and waits for its first line ("ready"). */
  private async helper(script: string, args: string[], what: string): Promise<ChildProcess> {
    const child = track(
      spawn('ip', ['netns', 'exec', this.ns, process.execPath, script, ...args], {
        stdio: ['pipe', 'pipe', 'inherit'],
      }),
    )
    this.helpers.push(child)
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.name}: ${what} not ready`)), 20_000)
      child.stdout?.once('data', () => {
        clearTimeout(timer)
        resolve()
      })
      child.once('exit', (code) => {
        clearTimeout(timer)
        reject(new Error(`${this.name}: ${what} exited with ${code}`))
      })
    })
    return child
  }

  /**
   * Spawns the agent; `ready()` waits for its API. It listens on `listen` (default: the host's own
   * address, `seedAddr`), e.g. `/ip4/0.0.0.0/tcp/7946` with `--advertise` in `extraArgs`.
   */
  spawnAgent(opts: { clusterKey: string; seeds: string[]; listen?: string; extraArgs?: string[] }): void {
    if (this.running) throw new Error(`${this.name} already running`)
    mkdirSync(this.dataDir, { recursive: true })
    this.logStream ??= createWriteStream(join(this.runDir, `${this.name}.log`), { flags: 'a' })
    const args = [
      BIN,
      'agent',
      '--name',
      this.name,
      '--data-dir',
      this.dataDir,
      '--listen',
      opts.listen ?? this.seedAddr,
      '--http',
      `127.0.0.1:${HTTP_PORT}`,
      '--dns',
      'off',
      '--cluster-key',
      opts.clusterKey,
      '--log-level',
      'info',
      ...opts.seeds.filter((s) => s !== this.seedAddr).flatMap((s) => ['--seed', s]),
      ...(opts.extraArgs ?? []),
    ]
    // `ip netns exec` execs node in place, so the child's pid is the agent's.
    const child = track(
      spawn('ip', ['netns', 'exec', this.ns, process.execPath, ...args], {
        stdio: ['ignore', 'pipe', 'pipe'],
      }),
    )
    this.logStream.write(`--- ${new Date().toISOString()} start: ${args.slice(1).join(' ')}\n`)
    child.stdout?.pipe(this.logStream, { end: false })
    child.stderr?.pipe(this.logStream, { end: false })
    this.agent = child
  }

  /** Waits until the agent answers `/v1/agent/self`. */
  async ready(timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    while (Date.now() < deadline) {
      if (!this.running)
        throw new Error(
          `${this.name}: agent exited (${this.agent?.exitCode ?? this.agent?.signalCode}); see ${this.name}.log`,
        )
      try {
        const self = await this.get<{ PeerID: string }>('/v1/agent/self', 2_000)
        this.peerId = self.PeerID
        this.id = self.PeerID
        return
      } catch {
        await sleep(100)
      }
    }
    throw new Error(`${this.name}: HTTP API not ready after ${timeoutMs} ms`)
  }

  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const child = this.agent
    if (child === undefined || !this.running) return
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
    child.kill(signal)
    await exited
    this.agentHttp.destroy()
  }

  request<T>(method: string, path: string, body?: unknown, timeoutMs = 5_000): Promise<HttpResult<T>> {
    return requestVia<T>(this.socket, method, path, body, timeoutMs, this.agentHttp, this.name, this.token)
  }

  /** GET that throws unless 200. */
  async get<T>(path: string, timeoutMs = 5_000): Promise<T> {
    const r = await this.request<T>('GET', path, undefined, timeoutMs)
    if (r.status !== 200)
      throw new HttpError(`${this.name} GET ${path}: ${r.status} ${JSON.stringify(r.body)}`, r.status)
    return r.body
  }

  raftStatus(timeoutMs = 2_000): Promise<RaftStatus> {
    return this.get<RaftStatus>('/v1/operator/raft/status', timeoutMs)
  }

  async members(timeoutMs = 2_000): Promise<Member[]> {
    // The API's Consul shape, in the terms the scenarios use.
    const list = await this.get<
      { Name: string; PeerID: string; Address: string; State: Member['status']; Incarnation: number }[]
    >('/v1/agent/members', timeoutMs)
    return list.map((m) => ({
      name: m.Name,
      peerId: m.PeerID,
      address: m.Address,
      status: m.State,
      incarnation: m.Incarnation,
    }))
  }

  close(): void {
    this.agentHttp.destroy()
    for (const c of this.helpers) c.stdin?.end()
    this.logStream?.end()
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

/** One HTTP request over a Unix socket; `agent: false` for a fresh connection each time. */
export function requestVia<T>(
  socketPath: string,
  method: string,
  path: string,
  body: unknown,
  timeoutMs: number,
  agent: http.Agent | false,
  label = socketPath,
  token?: string,
): Promise<HttpResult<T>> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body))
    const req = http.request(
      {
        socketPath,
        path,
        method,
        agent,
        headers: {
          ...(payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {}),
          ...(token !== undefined ? { 'x-consul-token': token } : {}),
        },
      },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('end', () => {
          clearTimeout(timer)
          const text = Buffer.concat(chunks).toString()
          let parsed: unknown = text
          try {
            parsed = JSON.parse(text)
          } catch {
            // not JSON
          }
          resolve({ status: res.statusCode ?? 0, body: parsed as T })
        })
        res.on('error', (e) => {
          clearTimeout(timer)
          reject(e)
        })
      },
    )
    const timer = setTimeout(
      () => req.destroy(new HttpError(`${label} ${method} ${path}: timeout`, undefined)),
      timeoutMs,
    )
    req.on('error', (e) => {
      clearTimeout(timer)
      reject(e)
    })
    req.end(payload)
  })
}
