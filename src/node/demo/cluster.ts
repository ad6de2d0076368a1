/**
 * The demo's agents: real `peermesh agent` processes on 127.0.0.1 in one temp dir (data dirs, the
 * cluster key, the shared initial management token), started, killed, restarted and finally all
 * stopped and removed by this class alone.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateClusterKey } from '../../identity/keys/cluster-key.ts'
import { BIN_PATH } from '../agent/version.ts'
import { freePort } from '../transport/free-port.ts'
import { type AgentClients, agentClients, seedAddressOf } from './agent-api.ts'
import { BOOTSTRAP_EXPECT } from './constants.ts'
import { waitUntil } from './wait.ts'

export interface DemoAgent {
  readonly name: string
  readonly http: string
  readonly httpPort: number
  readonly p2pPort: number
  readonly dnsPort: number
  readonly api: AgentClients
  child: ChildProcess
  /** The last lines the agent wrote to stderr (shown if it fails to start). */
  stderr: string
}

/** Start attempts when a port picked free was taken by another process before the agent bound it. */
const START_ATTEMPTS = 3
const AGENT_START_TIMEOUT_MS = 60_000

export class DemoCluster {
  readonly dir: string
  readonly keyFile: string
  readonly token = randomUUID()
  readonly tokenFile: string
  readonly agents: DemoAgent[] = []
  /** Every agent process ever started (restarts included), for the record. */
  readonly spawnedPids: number[] = []
  /** Every agent process started and not yet seen exit (what `stop()` stops). */
  private readonly children = new Set<ChildProcess>()
  private readonly ownsDir: boolean
  private removed = false

  /** `dir`: where data dirs go; default a fresh temp dir, removed by `stop()`. */
  constructor(dir?: string) {
    this.ownsDir = dir === undefined
    this.dir = dir ?? mkdtempSync(join(tmpdir(), 'peermesh-demo-'))
    mkdirSync(this.dir, { recursive: true, mode: 0o700 })
    this.keyFile = join(this.dir, 'cluster.key')
    writeFileSync(this.keyFile, generateClusterKey(), { mode: 0o600 })
    this.tokenFile = join(this.dir, 'management.token')
    writeFileSync(this.tokenFile, `${this.token}\n`, { mode: 0o600 })
  }

  /**
   * Starts the agents `names` all at once, each given the others' libp2p addresses as seeds (a
   * seed needs no peer id: the handshake tells it), and waits for every HTTP API.
   */
  async startAll(names: string[], signal: AbortSignal): Promise<DemoAgent[]> {
    const ports: AgentPorts[] = []
    for (const _ of names)
      ports.push({ http: await freePort(), p2p: await freePort(), dns: await freePort() })
    const started = await Promise.all(
      names.map(async (name, i) => {
        for (let attempt = 1; ; attempt++) {
          const seeds = ports.filter((_, j) => j !== i).map((p) => p2pAddress(p.p2p))
          try {
            return await this.spawnAgent(name, ports[i]!, seeds, signal)
          } catch (err) {
            if (!/address already in use/i.test(String(err)) || attempt >= START_ATTEMPTS) throw err
            ports[i] = { http: await freePort(), p2p: await freePort(), dns: await freePort() }
          }
        }
      }),
    )
    this.agents.push(...started)
    return started
  }

  /** kill -9: the agent stops at once, as a crashed machine would. Resolves once it exited. */
  async kill(a: DemoAgent): Promise<void> {
    await signalAndWait(a.child, 'SIGKILL')
  }

  /**
   * Starts a stopped agent again with its data dir and ports (same identity, higher incarnation),
   * joining through the other agents.
   */
  async restart(a: DemoAgent, signal: AbortSignal): Promise<void> {
    const seeds = this.agents.filter((x) => x !== a).map((x) => p2pAddress(x.p2pPort))
    const ports = { http: a.httpPort, p2p: a.p2pPort, dns: a.dnsPort }
    const fresh = await this.spawnAgent(a.name, ports, seeds, signal)
    a.child = fresh.child
    a.stderr = fresh.stderr
  }

  /** The pids of the agent processes still running. */
  livePids(): number[] {
    return this.agents
      .filter((a) => a.child.exitCode === null && a.child.signalCode === null && a.child.pid !== undefined)
      .map((a) => a.child.pid!)
  }

  /**
   * Stops every agent process still running (SIGTERM, then SIGKILL after `graceMs`) and removes
   * the temp dir (not a `--dir` the user gave). Resolves with how many processes it stopped.
   */
  async stop(graceMs: number): Promise<number> {
    const running = [...this.children]
    await Promise.all(
      running.map(async (child) => {
        const exited = signalAndWait(child, 'SIGTERM')
        const timer = setTimeout(() => child.kill('SIGKILL'), graceMs)
        await exited
        clearTimeout(timer)
      }),
    )
    if (this.ownsDir && !this.removed) {
      rmSync(this.dir, { recursive: true, force: true })
      this.removed = true
    }
    return running.length
  }

  private async spawnAgent(
    name: string,
    ports: AgentPorts,
    seeds: string[],
    signal: AbortSignal,
  ): Promise<DemoAgent> {
    signal.throwIfAborted() // stopping: start nothing more
    const http = `127.0.0.1:${ports.http}`
    const args = [
      BIN_PATH,
      'agent',
      '--name',
      name,
      '--data-dir',
      join(this.dir, name),
      '--cluster-key',
      this.keyFile,
      '--initial-management-token-file',
      this.tokenFile,
      '--listen',
      `/ip4/127.0.0.1/tcp/${ports.p2p}`,
      '--http',
      http,
      '--dns',
      `127.0.0.1:${ports.dns}`,
      '--log-level',
      'error',
      '--bootstrap-expect',
      String(BOOTSTRAP_EXPECT),
      ...seeds.flatMap((seed) => ['--seed', seed]),
    ]
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'] })
    if (child.pid !== undefined) this.spawnedPids.push(child.pid)
    this.children.add(child)
    child.once('exit', () => this.children.delete(child))
    const agent: DemoAgent = {
      name,
      http,
      httpPort: ports.http,
      p2pPort: ports.p2p,
      dnsPort: ports.dns,
      api: agentClients(http, this.token),
      child,
      stderr: '',
    }
    child.stderr?.on('data', (d: Buffer) => {
      agent.stderr = (agent.stderr + d.toString()).slice(-4_000)
    })
    try {
      await waitUntil(
        `${name} to answer on ${http}`,
        async () => {
          if (child.exitCode !== null || child.signalCode !== null)
            throw new AgentExitedError(
              `${name} exited (${child.exitCode ?? child.signalCode}): ${agent.stderr.trim()}`,
            )
          return (await seedAddressOf(agent.api).catch(() => undefined)) !== undefined
        },
        {
          timeoutMs: AGENT_START_TIMEOUT_MS,
          everyMs: 50,
          signal,
          fatal: (e) => e instanceof AgentExitedError,
        },
      )
    } catch (err) {
      child.kill('SIGKILL')
      throw err
    }
    return agent
  }
}

interface AgentPorts {
  http: number
  p2p: number
  dns: number
}

const p2pAddress = (port: number): string => `/ip4/127.0.0.1/tcp/${port}`

class AgentExitedError extends Error {
  override readonly name = 'AgentExitedError'
}

function signalAndWait(child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => {
    child.once('exit', () => resolve())
    child.kill(signal)
  })
}
