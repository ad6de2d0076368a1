import { type ChildProcess, spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { freePort } from '../../src/node/transport/free-port.ts'
import { makeTempDir, removeTempDir } from '../temp-dir.ts'

export const BIN = fileURLToPath(new URL('../../bin/peermesh.js', import.meta.url))

/**
 * The management token of this test file's clusters (a fresh UUID per file: vitest loads the
 * harness once per file). Every TestCluster gives it to its agents as their initial management
 * token unless told otherwise, so the first leader creates it; tests send it (`runCli` as
 * `$PEERMESH_HTTP_TOKEN`, `AgentProcess.api` and `authHeaders()` as `X-Consul-Token`).
 */
export const MANAGEMENT_TOKEN = randomUUID()

/**
 * Headers that carry `token` (default: the management token) as `X-Consul-Token`; `false`: none
 * (anonymous). Spread into a fetch: `headers: { ...authHeaders(), 'content-type': ... }`.
 */
export function authHeaders(token: string | false = MANAGEMENT_TOKEN): Record<string, string> {
  return token === false ? {} : { 'x-consul-token': token }
}

/**
 * Runs the CLI to completion; returns exit code and output. The CLI gets `token` (default: the
 * management token) as `$PEERMESH_HTTP_TOKEN`; `token: false` runs it anonymous.
 */
export function runCli(
  args: string[],
  options: { timeoutMs?: number; token?: string | false } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const env = { ...process.env }
  delete env['PEERMESH_HTTP_TOKEN']
  delete env['CONSUL_HTTP_TOKEN']
  const token = options.token ?? MANAGEMENT_TOKEN
  if (token !== false) env['PEERMESH_HTTP_TOKEN'] = token
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 30_000)
    child.once('error', reject)
    child.once('exit', (code) => {
      clearTimeout(timer)
      resolve({ code: code ?? -1, stdout, stderr })
    })
  })
}

/**
 * One API call as a client with `token` (none: anonymous), to an agent or a `host:port`: the
 * status and the parsed body (the text when it is not JSON).
 */
export async function apiCall(
  target: { http: string } | string,
  method: string,
  path: string,
  opts: { token?: string; body?: unknown } = {},
): Promise<{ status: number; json: unknown }> {
  const http = typeof target === 'string' ? target : target.http
  const res = await fetch(`http://${http}${path}`, {
    method,
    headers: {
      ...(opts.token !== undefined ? { 'x-consul-token': opts.token } : {}),
      ...(opts.body !== undefined ? { 'content-type': 'application/json' } : {}),
    },
    ...(opts.body !== undefined ? { body: JSON.stringify(opts.body) } : {}),
    signal: AbortSignal.timeout(10_000),
  })
  const text = await res.text()
  let json: unknown = text
  try {
    json = JSON.parse(text)
  } catch {
    // not JSON
  }
  return { status: res.status, json }
}

/** The `error` field of an API answer, "" if none. */
export const errorOf = (r: { json: unknown }): string =>
  String((r.json as { error?: string } | null)?.error ?? '')

/** Polls `fn` until it returns a value other than undefined, or throws after the deadline. */
export async function waitFor<T>(
  what: string,
  fn: () => Promise<T | undefined>,
  timeoutMs = 20_000,
  everyMs = 100,
): Promise<T> {
  const deadline = Date.now() + timeoutMs
  let lastErr: unknown
  while (Date.now() < deadline) {
    try {
      const v = await fn()
      if (v !== undefined) return v
      lastErr = undefined // an earlier error is not why it is still waiting
    } catch (err) {
      lastErr = err
    }
    await new Promise((r) => setTimeout(r, everyMs))
  }
  throw new Error(`timed out waiting for ${what}${lastErr ? `: ${String(lastErr)}` : ''}`)
}

export interface AgentOptions {
  name: string
  clusterKeyFile: string
  seeds?: string[]
  dataDir?: string
  /** DNS interface HOST:PORT (default: any free port, so agents on one machine don't collide). */
  dns?: string
  /**
   * Give the agent the cluster's management token as its initial management token
   * (`--initial-management-token-file`; default true). false: a plain joiner, which holds no token
   * unless `tokenFile` gives it one.
   */
  initialManagementToken?: boolean
  /** A file (0600) holding this agent's token (`--token-file`), e.g. from `TestCluster.writeToken`. */
  tokenFile?: string
  extraArgs?: string[]
  /**
   * The test set this agent's ports itself (to name them in other agents' seeds), and nothing
   * depends on them staying: on "address already in use" at the start they are picked again, as
   * ports the harness picked are (the other agents' other seeds still lead the cluster to it).
   */
  portsMayMove?: boolean
}

/** One agent process, spoken to only through its HTTP API and the CLI, as a user would. */
export class AgentProcess {
  child?: ChildProcess
  log = ''
  readonly name: string
  readonly dataDir: string
  httpPort = 0
  p2pPort = 0

  constructor(
    readonly cluster: TestCluster,
    readonly options: AgentOptions,
  ) {
    this.name = options.name
    this.dataDir = options.dataDir ?? join(cluster.dir, options.name)
  }

  get http(): string {
    return `127.0.0.1:${this.httpPort}`
  }

  /**
   * Starts the agent and waits for its HTTP API. A port that `freePort` found free can be taken by
   * another test file's process before the agent binds it: on "address already in use" for a port
   * this harness picked (or any, with `portsMayMove`), it picks new ones and starts again (at most 3
   * times).
   */
  async start(): Promise<void> {
    const moves = this.options.portsMayMove === true
    const picked = { http: moves || this.httpPort === 0, p2p: moves || this.p2pPort === 0 }
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.startOnce()
      } catch (err) {
        const clash = /address already in use/.test(String(err)) && (picked.http || picked.p2p)
        if (!clash || attempt >= 3) throw err
        if (picked.http) this.httpPort = 0
        if (picked.p2p) this.p2pPort = 0
        this.log = ''
      }
    }
  }

  private async startOnce(): Promise<void> {
    if (this.httpPort === 0) this.httpPort = await freePort()
    if (this.p2pPort === 0) this.p2pPort = await freePort()
    const args = [
      BIN,
      'agent',
      '--name',
      this.name,
      '--data-dir',
      this.dataDir,
      '--listen',
      `/ip4/127.0.0.1/tcp/${this.p2pPort}`,
      '--http',
      this.http,
      '--cluster-key',
      this.options.clusterKeyFile,
      '--log-level',
      'info',
      '--dns',
      this.options.dns ?? '127.0.0.1:0',
      ...(this.options.initialManagementToken !== false
        ? ['--initial-management-token-file', this.cluster.managementTokenFile]
        : []),
      ...(this.options.tokenFile !== undefined ? ['--token-file', this.options.tokenFile] : []),
      ...(this.options.seeds ?? []).flatMap((s) => ['--seed', s]),
      ...(this.options.extraArgs ?? []),
    ]
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    this.child = child
    const tail = this.cluster.logTailChars
    const onData = (d: Buffer): void => {
      this.log += d.toString()
      if (tail !== undefined && this.log.length > 2 * tail) this.log = this.log.slice(-tail)
    }
    child.stdout?.on('data', onData)
    child.stderr?.on('data', onData)
    // An agent that exits while starting fails the start at once (not at the deadline).
    let onExit: (() => void) | undefined
    const exited = new Promise<never>((_, reject) => {
      // 'close': the process exited and its output was read to the end.
      onExit = () => reject(new Error(`${this.name} exited with ${child.exitCode}:\n${this.log}`))
      child.once('close', onExit)
    })
    try {
      await Promise.race([
        exited,
        // Generous: with other test files' agents on the same cores a start can take a while.
        waitFor(`${this.name} HTTP API`, async () => ((await this.self()) ? true : undefined), 60_000),
      ])
    } finally {
      child.off('close', onExit!)
    }
  }

  /**
   * `GET /v1/agent/self` as anonymous (allowed before the cluster has a leader or any token):
   * name, peer id and addresses; undefined when unreachable.
   */
  async self(): Promise<{ name: string; peerId: string; addresses: string[] } | undefined> {
    const r = await this.api<{ Config: { NodeName: string }; PeerID: string; Addresses: string[] }>(
      '/v1/agent/self',
      undefined,
      { token: false },
    )
    return r === undefined ? undefined : { name: r.Config.NodeName, peerId: r.PeerID, addresses: r.Addresses }
  }

  /**
   * A request with `token` (default: the cluster's management token; false: anonymous); the
   * parsed body, or undefined on any failure (a 403 too, e.g. before the first leader created the
   * management token: poll).
   */
  async api<T = unknown>(
    path: string,
    init?: RequestInit,
    options: { token?: string | false } = {},
  ): Promise<T | undefined> {
    try {
      const res = await fetch(`http://${this.http}${path}`, {
        ...init,
        headers: {
          ...authHeaders(options.token ?? this.cluster.managementToken),
          ...(init?.headers as Record<string, string> | undefined),
        },
        signal: AbortSignal.timeout(5_000),
      })
      if (!res.ok) return undefined
      return (await res.json()) as T
    } catch {
      return undefined
    }
  }

  /**
   * Waits until this agent knows the cluster's management token (`GET /v1/acl/token/self`): the
   * first leader created it and Raft replicated it here.
   */
  async waitForManagementToken(timeoutMs = 30_000): Promise<void> {
    await waitFor(
      `${this.name} to know the management token`,
      async () => ((await this.api('/v1/acl/token/self')) !== undefined ? true : undefined),
      timeoutMs,
    )
  }

  /** The value of an unlabelled metric on `/metrics`, undefined if absent or unreachable. */
  async metric(name: string): Promise<number | undefined> {
    try {
      const res = await fetch(`http://${this.http}/metrics`, { signal: AbortSignal.timeout(5_000) })
      const line = (await res.text()).split('\n').find((l) => l.startsWith(`${name} `))
      return line === undefined ? undefined : Number(line.slice(name.length + 1))
    } catch {
      return undefined
    }
  }

  /** Sends a signal and waits for the process to exit. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    const child = this.child
    if (child === undefined || child.exitCode !== null || child.signalCode !== null)
      return child?.exitCode ?? null
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
    child.kill(signal)
    return exited
  }
}

/**
 * A temp dir with a cluster key, a management token and a set of agent processes, cleaned up by
 * `close()`.
 */
export class TestCluster {
  readonly dir = makeTempDir('e2e')
  readonly agents: AgentProcess[] = []
  readonly logTailChars: number | undefined
  /** The cluster's management token (a UUID); its agents get it as initial management token. */
  readonly managementToken: string
  /** The 0600 file holding it, given to agents with `--initial-management-token-file`. */
  readonly managementTokenFile: string

  /**
   * `logTailChars`: each agent's `log` keeps only its last this many characters (default: all of
   * it). A benchmark's agents log an audit line per write; kept whole, their logs grow the
   * measuring process's heap run after run.
   */
  constructor(options: { managementToken?: string; logTailChars?: number } = {}) {
    this.logTailChars = options.logTailChars
    this.managementToken = options.managementToken ?? MANAGEMENT_TOKEN
    this.managementTokenFile = this.writeToken(this.managementToken, 'management.token')
  }

  /** Writes `secret` to a new 0600 file in the cluster dir (for `--token-file`); returns its path. */
  writeToken(secret: string, name = `${randomUUID()}.token`): string {
    const path = join(this.dir, name)
    writeFileSync(path, `${secret}\n`, { mode: 0o600 })
    return path
  }

  async writeClusterKey(name = 'cluster.key'): Promise<string> {
    const { stdout, code } = await runCli(['keygen'])
    if (code !== 0) throw new Error('keygen failed')
    const path = join(this.dir, name)
    writeFileSync(path, stdout, { mode: 0o600 })
    return path
  }

  /**
   * Waits until every given agent (default: all) knows the management token: after it, writes
   * with it work through any of them.
   */
  async waitForManagementToken(agents: AgentProcess[] = this.agents, timeoutMs = 30_000): Promise<void> {
    await Promise.all(agents.map((a) => a.waitForManagementToken(timeoutMs)))
  }

  agent(options: AgentOptions): AgentProcess {
    const a = new AgentProcess(this, options)
    this.agents.push(a)
    return a
  }

  async close(): Promise<void> {
    await Promise.all(this.agents.map((a) => a.stop('SIGKILL')))
    removeTempDir(this.dir)
  }
}

export { freePort }
