import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { generateClusterKey } from '../identity/cluster-key.ts'
import { renderTable } from './format.ts'
import { ApiClient } from './client.ts'
import type { MemberJson } from './gossip-module.ts'

const BIN = fileURLToPath(new URL('../../bin/peermesh.js', import.meta.url))

export interface DemoOptions {
  /** Number of agents to start. */
  agents: number
  /** Keep the cluster running after the scripted tour, until Ctrl-C. */
  keep: boolean
  /** Where agent data dirs go; a temp dir (removed at the end) by default. */
  dir?: string
}

interface DemoAgent {
  name: string
  http: string
  httpPort: number
  p2pPort: number
  child: ChildProcess
  api: ApiClient
}

const say = (s: string): void => {
  process.stdout.write(`${s}\n`)
}

/**
 * `peermesh demo`: a local cluster of real agent processes on 127.0.0.1, joined through one
 * seed, with a scripted tour of what the mesh does.
 */
export async function runDemo(options: DemoOptions): Promise<void> {
  const dir = options.dir ?? mkdtempSync(join(tmpdir(), 'peermesh-demo-'))
  const keyFile = join(dir, 'cluster.key')
  writeFileSync(keyFile, generateClusterKey(), { mode: 0o600 })
  const agents: DemoAgent[] = []
  const cleanup = async (): Promise<void> => {
    await Promise.all(agents.map((a) => stopChild(a.child)))
    if (options.dir === undefined) rmSync(dir, { recursive: true, force: true })
  }
  process.once('SIGINT', () => {
    void cleanup().then(() => process.exit(130))
  })
  try {
    say(`peermesh demo: ${options.agents} agents on 127.0.0.1, data in ${dir}`)
    let seed: string | undefined
    for (let i = 1; i <= options.agents; i++) {
      const a = await startAgent(`node${i}`, dir, keyFile, seed)
      agents.push(a)
      if (seed === undefined) {
        const self = await a.api.get<{ addresses: string[] }>('/v1/agent/self')
        seed = self.addresses[0]
      }
      say(`  started ${a.name}: http ${a.http}, libp2p port ${a.p2pPort}${i > 1 ? ', seed node1' : ''}`)
    }
    say('\nwaiting for gossip to converge (every agent lists every agent alive)...')
    const t0 = Date.now()
    await poll(async () => {
      const views = await Promise.all(agents.map((a) => a.api.get<MemberJson[]>('/v1/agent/members')))
      return views.every((v) => v.filter((m) => m.status === 'alive').length === agents.length)
    })
    say(`  converged after ${Date.now() - t0} ms\n`)
    await showMembers(agents[0]!)

    const victim = agents[agents.length - 1]!
    const survivors = agents.filter((a) => a !== victim)
    say(`\nkill -9 ${victim.name} (a crashed machine); timing until every survivor reports it dead...`)
    const tKill = Date.now()
    victim.child.kill('SIGKILL')
    await poll(
      async () => {
        const views = await Promise.all(survivors.map((a) => a.api.get<MemberJson[]>('/v1/agent/members')))
        return views.every((v) => v.find((m) => m.name === victim.name)?.status === 'dead')
      },
      30_000,
      20,
    )
    say(
      `  every survivor reports ${victim.name} dead after ${Date.now() - tKill} ms (Serf's LAN default: ~6-7 s)\n`,
    )
    await showMembers(agents[0]!)

    say(`\nrestarting ${victim.name} with its data dir (same identity, higher incarnation)...`)
    const restarted = await startAgent(victim.name, dir, keyFile, seed, victim.httpPort, victim.p2pPort)
    agents[agents.length - 1] = restarted
    const tBack = Date.now()
    await poll(async () => {
      const views = await Promise.all(agents.map((a) => a.api.get<MemberJson[]>('/v1/agent/members')))
      return views.every((v) => v.filter((m) => m.status === 'alive').length === agents.length)
    })
    say(`  ${victim.name} alive again everywhere after ${Date.now() - tBack} ms\n`)
    await showMembers(agents[0]!)
    if (options.keep) {
      say(`\ncluster running; try: npx peermesh info --http ${agents[0]!.http}   (Ctrl-C stops it)`)
      await new Promise(() => {})
    }
  } finally {
    await cleanup()
  }
  say('\ndemo done: all agents stopped.')
}

async function showMembers(a: DemoAgent): Promise<void> {
  const members = await a.api.get<MemberJson[]>('/v1/agent/members')
  members.sort((x, y) => x.name.localeCompare(y.name))
  say(`  members as ${a.name} sees them:`)
  const rows = members.map((m) => [m.name, m.peerId.slice(0, 20) + '…', m.status, String(m.incarnation)])
  for (const line of renderTable(['NAME', 'PEER ID', 'STATUS', 'INCARNATION'], rows).split('\n'))
    say(`    ${line}`)
}

async function startAgent(
  name: string,
  dir: string,
  keyFile: string,
  seed?: string,
  httpPortIn?: number,
  p2pPortIn?: number,
): Promise<DemoAgent> {
  const httpPort = httpPortIn ?? (await freePort())
  const p2pPort = p2pPortIn ?? (await freePort())
  const http = `127.0.0.1:${httpPort}`
  const args = [BIN, 'agent', '--name', name, '--data-dir', join(dir, name), '--cluster-key', keyFile]
  args.push(
    '--listen',
    `/ip4/127.0.0.1/tcp/${p2pPort}`,
    '--http',
    http,
    '--log-level',
    'error',
    '--dns',
    'off',
  )
  if (seed !== undefined) args.push('--seed', seed)
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'inherit'] })
  const api = new ApiClient(http)
  await poll(async () => {
    if (child.exitCode !== null) throw new Error(`${name} exited with code ${child.exitCode}`)
    return (await api.get('/v1/agent/self').catch(() => undefined)) !== undefined
  })
  return { name, http, httpPort, p2pPort, child, api }
}

async function poll(fn: () => Promise<boolean>, timeoutMs = 30_000, everyMs = 100): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (await fn().catch(() => false)) return
    await new Promise((r) => setTimeout(r, everyMs))
  }
  throw new Error('demo: timed out waiting for the cluster')
}

function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => {
    child.once('exit', () => resolve())
    child.kill('SIGTERM')
  })
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address()
      srv.close(() => resolve(typeof addr === 'object' && addr !== null ? addr.port : 0))
    })
  })
}
