import { type ChildProcess, spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { createServer as createHttpServer, type Server } from 'node:http'
import { join } from 'node:path'
import { generateClusterKey } from '../../identity/keys/cluster-key.ts'
import { renderTable } from '../cli/format.ts'
import { freePort } from '../transport/free-port.ts'
import { BIN_PATH } from '../agent/version.ts'
import { ApiClient } from '../cli/client.ts'
import type { MemberJson } from '../gossip/index.ts'

const BIN = BIN_PATH

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
  /** Anonymous: reads what any caller may (members, catalog, health). */
  api: ApiClient
  /** With the demo's management token: writes and operator reads. */
  admin: ApiClient
}

/** The demo cluster's secrets: the cluster key, and the management token its founders share. */
interface DemoSecrets {
  keyFile: string
  token: string
  tokenFile: string
}

const say = (s: string): void => {
  process.stdout.write(`${s}\n`)
}

/**
 * `peermesh demo`: a local cluster of real agent processes on 127.0.0.1, joined through one
 * seed, with a scripted tour of what the mesh does. ACLs are on, as in any cluster: the agents
 * share a fresh initial management token, and the tour's writes carry it.
 */
export async function runDemo(options: DemoOptions): Promise<void> {
  const dir = options.dir ?? mkdtempSync(join(tmpdir(), 'peermesh-demo-'))
  const keyFile = join(dir, 'cluster.key')
  writeFileSync(keyFile, generateClusterKey(), { mode: 0o600 })
  const token = randomUUID()
  const tokenFile = join(dir, 'management.token')
  writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 })
  const secrets: DemoSecrets = { keyFile, token, tokenFile }
  const agents: DemoAgent[] = []
  const apps: Server[] = []
  const cleanup = async (): Promise<void> => {
    await Promise.all(agents.map((a) => stopChild(a.child)))
    for (const app of apps) app.close()
    if (options.dir === undefined) rmSync(dir, { recursive: true, force: true })
  }
  process.once('SIGINT', () => {
    void cleanup().then(() => process.exit(130))
  })
  try {
    say(`peermesh demo: ${options.agents} agents on 127.0.0.1, data in ${dir}`)
    const voters = Math.min(3, options.agents)
    let seed: string | undefined
    for (let i = 1; i <= options.agents; i++) {
      const a = await startAgent(`node${i}`, dir, secrets, seed, undefined, undefined, voters)
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
    const restarted = await startAgent(
      victim.name,
      dir,
      secrets,
      seed,
      victim.httpPort,
      victim.p2pPort,
      voters,
    )
    agents[agents.length - 1] = restarted
    const tBack = Date.now()
    await poll(async () => {
      const views = await Promise.all(agents.map((a) => a.api.get<MemberJson[]>('/v1/agent/members')))
      return views.every((v) => v.filter((m) => m.status === 'alive').length === agents.length)
    })
    say(`  ${victim.name} alive again everywhere after ${Date.now() - tBack} ms\n`)
    await showMembers(agents[0]!)
    await meshTour(agents, apps, secrets)
    if (options.keep) {
      say(`\ncluster running; try: npx peermesh info --http ${agents[0]!.http}   (Ctrl-C stops it)`)
      say(`  writes need the token: PEERMESH_HTTP_TOKEN=$(cat ${tokenFile}) npx peermesh intention list`)
      await new Promise(() => {})
    }
  } finally {
    await cleanup()
  }
  say('\ndemo done: all agents stopped.')
}

/**
 * Services, Raft policy and the data plane: two api instances and a web client with sidecars,
 * an intention, weighted traffic, then a whole agent hosting an api instance is killed while
 * traffic flows.
 */
async function meshTour(agents: DemoAgent[], apps: Server[], secrets: DemoSecrets): Promise<void> {
  if (agents.length < 3) return
  say('\nwaiting for the Raft group (agents bootstrapped with --bootstrap-expect 3)...')
  await poll(async () => (await agents[0]!.api.get<string>('/v1/status/leader')) !== '')
  // The first leader turns the shared initial management token into a token; wait until every
  // agent has it (it arrives with Raft replication).
  await poll(async () => {
    await Promise.all(agents.map((a) => a.admin.get('/v1/acl/token/self')))
    return true
  })
  say(
    `  ACLs are on: the writes below carry the management token the agents were started with\n` +
      `  (--initial-management-token-file ${secrets.tokenFile}); without it they get 403`,
  )
  const config = await agents[0]!.admin.get<{
    servers: { node: string; leader: boolean; voter: boolean }[]
  }>('/v1/operator/raft/configuration')
  for (const s of config.servers) say(`  ${s.node}: ${s.leader ? 'leader' : s.voter ? 'voter' : 'learner'}`)

  const [web, api2, api3] = [agents[0]!, agents[1]!, agents[2]!]
  const ports = await Promise.all(Array.from({ length: 6 }, () => freePort()))
  const [api2App, api3App, api2In, api3In, webIn, upstream] = ports as [
    number,
    number,
    number,
    number,
    number,
    number,
  ]
  for (const [port, name] of [
    [api2App, api2.name],
    [api3App, api3.name],
  ] as const) {
    const app = createHttpServer((_req, res) => res.end(`api on ${name}`))
    await new Promise<void>((r) => app.listen(port, '127.0.0.1', () => r()))
    apps.push(app)
  }
  const register = (a: DemoAgent, def: object) => a.admin.call('PUT', '/v1/agent/service/register', def)
  const apiDef = (port: number, inbound: number) => ({
    name: 'api',
    id: `api-${port}`,
    address: '127.0.0.1',
    port,
    checks: [{ tcp: `127.0.0.1:${port}`, interval: '500ms', timeout: '300ms' }],
    connect: { sidecarService: { port: inbound, protocol: 'http' } },
  })
  await register(api2, apiDef(api2App, api2In))
  await register(api3, apiDef(api3App, api3In))
  await register(web, {
    name: 'web',
    port: webIn,
    connect: {
      sidecarService: { port: webIn, upstreams: [{ destinationName: 'api', localBindPort: upstream }] },
    },
  })
  say(
    `\nregistered api on ${api2.name} and ${api3.name}, web on ${web.name} (upstream api -> 127.0.0.1:${upstream})`,
  )
  await api3.admin.call('POST', '/v1/connect/intentions', {
    source: 'web',
    destination: 'api',
    action: 'allow',
  })
  say(`intention web -> api allow, written through ${api3.name} (Raft forwards it to the leader)`)
  await poll(
    async () => {
      const health = await web.api.get<{ status: string }[]>('/v1/health/service/api?passing')
      return health.length === 2 && (await fetchText(upstream)) !== undefined
    },
    60_000,
    200,
  )

  const traffic = async (ms: number): Promise<{ ok: number; failed: number; by: Map<string, number> }> => {
    const by = new Map<string, number>()
    let ok = 0
    let failed = 0
    const end = Date.now() + ms
    while (Date.now() < end) {
      const body = await fetchText(upstream)
      if (body === undefined) failed++
      else {
        ok++
        by.set(body, (by.get(body) ?? 0) + 1)
      }
    }
    return { ok, failed, by }
  }
  const t1 = await traffic(2_000)
  say(`\n2 s of requests from web through its sidecar (mTLS, P2C over healthy instances):`)
  for (const [body, n] of t1.by) say(`  ${n} answered by ${body}`)
  say(`  failed: ${t1.failed}`)

  say(`\nkill -9 ${api3.name} (the whole agent hosting one api instance) during traffic...`)
  const during = traffic(3_000)
  await new Promise((r) => setTimeout(r, 500))
  api3.child.kill('SIGKILL')
  const t2 = await during
  say(
    `  ${t2.ok} requests succeeded, ${t2.failed} failed (retries move a failed connect to another instance)`,
  )
  for (const [body, n] of t2.by) say(`  ${n} answered by ${body}`)

  await api2.admin.call('DELETE', '/v1/connect/intentions?source=web&destination=api')
  await api2.admin.call('POST', '/v1/connect/intentions', {
    source: 'web',
    destination: 'api',
    action: 'deny',
  })
  await poll(async () => (await fetchText(upstream)) === undefined, 20_000, 100)
  say("\nintention switched to deny: web can no longer reach api (refused at api's inbound sidecar)")
}

async function fetchText(port: number): Promise<string | undefined> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(2_000) })
    return res.ok ? await res.text() : undefined
  } catch {
    return undefined
  }
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
  secrets: DemoSecrets,
  seed?: string,
  httpPortIn?: number,
  p2pPortIn?: number,
  bootstrapExpect?: number,
): Promise<DemoAgent> {
  const httpPort = httpPortIn ?? (await freePort())
  const p2pPort = p2pPortIn ?? (await freePort())
  const http = `127.0.0.1:${httpPort}`
  const args = [BIN, 'agent', '--name', name, '--data-dir', join(dir, name), '--cluster-key', secrets.keyFile]
  args.push('--initial-management-token-file', secrets.tokenFile)
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
  if (bootstrapExpect !== undefined) args.push('--bootstrap-expect', String(bootstrapExpect))
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'inherit'] })
  const api = new ApiClient(http, false)
  const admin = new ApiClient(http, secrets.token)
  await poll(async () => {
    if (child.exitCode !== null) throw new Error(`${name} exited with code ${child.exitCode}`)
    return (await api.get('/v1/agent/self').catch(() => undefined)) !== undefined
  })
  return { name, http, httpPort, p2pPort, child, api, admin }
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
