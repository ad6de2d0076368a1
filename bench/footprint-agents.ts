/**
 * The agents bench:footprint measures, started as a user starts them and timed from spawn:
 * ours through `node bin/peermesh.js agent` (the compiled dist/ when fresh, or the TypeScript
 * through tsx when asked), Serf through `serf agent`; and one CLI call of each, timed from spawn
 * to exit.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { readdirSync, statSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { BIN, freePort } from '../test/e2e/harness.ts'
import { SerfRpc, startSerf } from './peers/serf.ts'

/** How our agent runs: the compiled build in dist/, or the TypeScript sources through tsx. */
export type OursBuild = 'dist' | 'tsx'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
/** How often a starting agent's API is tried: the resolution of the start figures. */
const START_POLL_MS = 10
const START_DEADLINE_MS = 120_000
const LOG_TAIL_CHARS = 16_384

/** Every process this bench spawned and has not seen exit: killed when the bench exits. */
const live = new Set<ChildProcess>()
process.once('exit', () => {
  for (const c of live) c.kill('SIGKILL')
})
function track(child: ChildProcess): ChildProcess {
  live.add(child)
  child.once('exit', () => live.delete(child))
  return child
}

/**
 * Whether bin/peermesh.js will run dist/: the build completed (dist/BUILD) and is newer than every
 * file under src/ and package.json. The same test as bin/peermesh.js makes.
 */
export function compiledBuildIsFresh(): boolean {
  const newest = (dir: string): number => {
    let max = 0
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const path = `${dir}/${e.name}`
      max = Math.max(max, e.isDirectory() ? newest(path) : statSync(path).mtimeMs)
    }
    return max
  }
  try {
    const built = statSync(`${ROOT}dist/BUILD`).mtimeMs
    return built >= newest(`${ROOT}src`) && built >= statSync(`${ROOT}package.json`).mtimeMs
  } catch {
    return false
  }
}

/** The environment that makes bin/peermesh.js run `build` (dist only when it is fresh). */
function binEnv(build: OursBuild, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  return { ...process.env, PEERMESH_FROM_SOURCE: build === 'tsx' ? '1' : '0', ...extra }
}

function exitOf(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve()
    child.once('exit', () => resolve())
  })
}

async function killAndWait(child: ChildProcess): Promise<void> {
  const exited = exitOf(child)
  child.kill('SIGKILL')
  await exited
}

export interface OurAgentOptions {
  name: string
  dataDir: string
  clusterKeyFile: string
  /** The agent config file (`--config`): the ACL settings. */
  configFile: string
  build: OursBuild
  seeds?: string[]
  extraArgs?: string[]
}

/** One of our agents as a separate process, reached through its HTTP API. */
export class OurAgent {
  private constructor(
    readonly name: string,
    readonly child: ChildProcess,
    readonly http: string,
    /** Spawn to the first 200 from `GET /v1/agent/self`, ms. */
    readonly startMs: number,
    private readonly output: { text: string },
  ) {}

  get pid(): number {
    return this.child.pid!
  }

  /** The last lines the agent printed (its log). */
  get logTail(): string {
    return this.output.text
  }

  /**
   * Spawns the agent and times it until its API answers `GET /v1/agent/self` with 200 (tried every
   * 10 ms, anonymously: the ACL default lets anyone read agent self). When a port picked free is
   * taken by another process before the agent binds it, starts again on new ports (at most 3
   * times); the time of the failed attempt does not count.
   */
  static async start(o: OurAgentOptions): Promise<OurAgent> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await OurAgent.startOnce(o)
      } catch (err) {
        if (!/address already in use/i.test(String(err)) || attempt >= 3) throw err
      }
    }
  }

  private static async startOnce(o: OurAgentOptions): Promise<OurAgent> {
    const [httpPort, p2pPort] = [await freePort(), await freePort()]
    const http = `127.0.0.1:${httpPort}`
    const args = [
      BIN,
      'agent',
      '--config',
      o.configFile,
      '--name',
      o.name,
      '--data-dir',
      o.dataDir,
      '--listen',
      `/ip4/127.0.0.1/tcp/${p2pPort}`,
      '--http',
      http,
      '--cluster-key',
      o.clusterKeyFile,
      '--log-level',
      'info',
      // DNS on, as by default, on a free port so that agents on one machine don't collide.
      '--dns',
      '127.0.0.1:0',
      ...(o.seeds ?? []).flatMap((s) => ['--seed', s]),
      ...(o.extraArgs ?? []),
    ]
    const output = { text: '' }
    const keep = (d: Buffer): void => {
      output.text = (output.text + d.toString()).slice(-LOG_TAIL_CHARS)
    }
    const t0 = performance.now()
    const child = track(
      spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env: binEnv(o.build) }),
    )
    child.stdout!.on('data', keep)
    child.stderr!.on('data', keep)
    const deadline = t0 + START_DEADLINE_MS
    while (performance.now() < deadline) {
      if (child.exitCode !== null || child.signalCode !== null) {
        await new Promise((r) => setTimeout(r, 50)) // let the last output arrive
        throw new Error(
          `agent ${o.name} exited while starting (${child.exitCode ?? child.signalCode}):\n${output.text}`,
        )
      }
      const tick = performance.now()
      try {
        const res = await fetch(`http://${http}/v1/agent/self`, { signal: AbortSignal.timeout(2_000) })
        await res.arrayBuffer()
        if (res.status === 200) return new OurAgent(o.name, child, http, performance.now() - t0, output)
      } catch {
        // not listening yet
      }
      await new Promise((r) => setTimeout(r, Math.max(0, START_POLL_MS - (performance.now() - tick))))
    }
    await killAndWait(child)
    throw new Error(`agent ${o.name}: no API within ${START_DEADLINE_MS / 1000} s:\n${output.text}`)
  }

  /** One API call; the status and the parsed body (the text when not JSON). */
  async call(method: string, path: string, opts: { token?: string; body?: unknown } = {}): Promise<ApiReply> {
    const res = await fetch(`http://${this.http}${path}`, {
      method,
      headers: {
        ...(opts.token !== undefined ? { 'x-consul-token': opts.token } : {}),
        ...(opts.body !== undefined ? { 'content-type': 'application/json' } : {}),
      },
      ...(opts.body !== undefined ? { body: JSON.stringify(opts.body) } : {}),
      signal: AbortSignal.timeout(20_000),
    })
    const text = await res.text()
    let body: unknown = text
    try {
      body = JSON.parse(text)
    } catch {
      // not JSON
    }
    return { status: res.status, body }
  }

  /** `call` that throws unless the agent answered 200. */
  async ok<T>(method: string, path: string, opts: { token?: string; body?: unknown } = {}): Promise<T> {
    const r = await this.call(method, path, opts)
    if (r.status !== 200)
      throw new Error(`${this.name}: ${method} ${path} answered ${r.status}: ${JSON.stringify(r.body)}`)
    return r.body as T
  }

  kill(): Promise<void> {
    return killAndWait(this.child)
  }
}

export interface ApiReply {
  status: number
  body: unknown
}

/** One Serf agent, with its RPC connection open. */
export class SerfProcess {
  private constructor(
    readonly name: string,
    readonly child: ChildProcess,
    /** `host:port` of its gossip (the address others join). */
    readonly bind: string,
    readonly rpcPort: number,
    readonly rpc: SerfRpc,
    /** Spawn to the first RPC handshake answered, ms. */
    readonly startMs: number,
  ) {}

  get pid(): number {
    return this.child.pid!
  }

  /**
   * Spawns `serf agent` (with `profile`, `lan` by default; joined to `join` if given) and times it
   * until its RPC interface (Serf's API) answers a handshake, tried every 10 ms.
   */
  static async start(name: string, join?: string, profile = 'lan'): Promise<SerfProcess> {
    const [bindPort, rpcPort] = [await freePort(), await freePort()]
    const t0 = performance.now()
    const child = track(startSerf(name, bindPort, rpcPort, profile, join).child)
    const deadline = t0 + START_DEADLINE_MS
    while (performance.now() < deadline) {
      if (child.exitCode !== null || child.signalCode !== null)
        throw new Error(`serf ${name} exited while starting (${child.exitCode ?? child.signalCode})`)
      const tick = performance.now()
      const rpc = await SerfRpc.connect(rpcPort).catch(() => undefined)
      if (rpc !== undefined)
        return new SerfProcess(name, child, `127.0.0.1:${bindPort}`, rpcPort, rpc, performance.now() - t0)
      await new Promise((r) => setTimeout(r, Math.max(0, START_POLL_MS - (performance.now() - tick))))
    }
    await killAndWait(child)
    throw new Error(`serf ${name}: no RPC within ${START_DEADLINE_MS / 1000} s`)
  }

  async kill(): Promise<void> {
    this.rpc.close()
    await killAndWait(this.child)
  }
}

/** Runs a command to completion; its wall time from spawn to exit in ms. Throws unless it exits 0. */
export function timeCommand(
  command: string,
  args: string[],
  env: NodeJS.ProcessEnv = process.env,
): Promise<number> {
  return new Promise((resolve, reject) => {
    let stderr = ''
    const t0 = performance.now()
    const child = track(spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'], env }))
    child.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString()
    })
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000)
    let ms = 0
    child.once('error', reject)
    // The time is taken at exit; 'close' follows once stderr is read to the end.
    child.once('exit', () => {
      ms = performance.now() - t0
    })
    child.once('close', (code, signal) => {
      clearTimeout(timer)
      if (code === 0) resolve(ms)
      else reject(new Error(`${command} ${args.join(' ')}: exit ${code ?? signal}: ${stderr.trim()}`))
    })
  })
}

/** `node bin/peermesh.js info --http HTTP` with the token in $PEERMESH_HTTP_TOKEN: ms. */
export function timeOurCli(http: string, token: string, build: OursBuild): Promise<number> {
  return timeCommand(
    process.execPath,
    [BIN, 'info', '--http', http],
    binEnv(build, { PEERMESH_HTTP_TOKEN: token }),
  )
}

/** `serf members -rpc-addr=127.0.0.1:PORT`: ms. */
export function timeSerfCli(rpcPort: number): Promise<number> {
  return timeCommand('serf', ['members', `-rpc-addr=127.0.0.1:${rpcPort}`])
}
