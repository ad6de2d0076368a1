import { execFileSync } from 'node:child_process'
import { X509Certificate } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import http, { type Server } from 'node:http'
import type { Socket } from 'node:net'
import { join } from 'node:path'
import tls from 'node:tls'
import { afterAll, describe, expect, it } from 'vitest'
import { type AgentProcess, freePort, runCli, TestCluster, waitFor } from './harness.ts'
import { metricSamples, registerService, startApp } from './mesh-helpers.ts'
import { startRaftCluster, waitForLeader } from './raft-helpers.ts'

interface RootsJson {
  activeRootId: string
  roots: { id: string; rootCert: string; active: boolean }[]
  index: number
}

interface LeafJson {
  certPem: string
  privateKeyPem: string
  intermediatesPem: string[]
  serialNumber: string
}

/** What one agent's `GET /v1/connect/ca/roots` said: root ids (active first) in order of change. */
type RootsSeen = string[]

/** An agent's `GET /v1/connect/ca/roots` (Consul's shape) in the CLI's `ca roots --json` terms. */
async function rootsOf(a: AgentProcess): Promise<RootsJson | undefined> {
  const r = await a.api<{
    ActiveRootID: string
    Roots: { ID: string; RootCert: string; Active: boolean }[]
    Index: number
  }>('/v1/connect/ca/roots')
  return r === undefined
    ? undefined
    : {
        activeRootId: r.ActiveRootID,
        index: r.Index,
        roots: r.Roots.map((x) => ({ id: x.ID, rootCert: x.RootCert, active: x.Active })),
      }
}

const rootsKey = (r: RootsJson): string =>
  [r.activeRootId, ...r.roots.filter((x) => !x.active).map((x) => x.id)].join('+')

/** Whether `certPem` carries a signature by the key of `rootPem`. */
const signedBy = (certPem: string, rootPem: string): boolean =>
  new X509Certificate(certPem).verify(new X509Certificate(rootPem).publicKey)

/**
 * Requests through web's outbound listener until `stop()`: `keepAlive` clients that each hold one
 * connection for the whole run, and `fresh` loops that open a new connection per request (a new
 * mutual TLS handshake to an api instance each time: the outbound listener is L4).
 */
class Traffic {
  ok = 0
  failures: string[] = []
  readonly servedBy = new Map<string, number>()
  private readonly keepAliveSockets: Set<Socket>[] = []
  /** Requests answered on each keep-alive client. */
  readonly keepAliveOk: number[] = []
  private running = true
  private readonly loops: Promise<void>[] = []

  constructor(
    private readonly port: number,
    opts: { keepAlive: number; fresh: number },
  ) {
    for (let i = 0; i < opts.keepAlive; i++) {
      const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
      const sockets = new Set<Socket>()
      this.keepAliveSockets.push(sockets)
      this.keepAliveOk.push(0)
      this.loops.push(this.loop(() => this.request({ agent }, sockets, i)).finally(() => agent.destroy()))
    }
    for (let i = 0; i < opts.fresh; i++) {
      this.loops.push(this.loop(() => this.request({ agent: false, headers: { connection: 'close' } })))
    }
  }

  /** Connections each keep-alive client has used so far (1 each when none was dropped). */
  keepAliveConnections(): number[] {
    return this.keepAliveSockets.map((s) => s.size)
  }

  async stop(): Promise<void> {
    this.running = false
    await Promise.all(this.loops)
  }

  private async loop(send: () => Promise<void>): Promise<void> {
    while (this.running) {
      await send()
      // Yield a little so that 2 shared cores keep time for the agents doing the rotation.
      await new Promise((r) => setTimeout(r, 2))
    }
  }

  private request(options: http.RequestOptions, sockets?: Set<Socket>, client?: number): Promise<void> {
    return new Promise((resolve) => {
      const fail = (why: string): void => {
        this.failures.push(`${new Date().toISOString()} ${why}`)
        resolve()
      }
      const req = http.get(
        { host: '127.0.0.1', port: this.port, path: '/', timeout: 5_000, ...options },
        (res) => {
          let body = ''
          res.setEncoding('utf8')
          res.on('data', (d: string) => (body += d))
          res.on('error', (err) => fail(`response: ${err.message}`))
          res.on('end', () => {
            if (res.statusCode !== 200 || !body.startsWith('api-')) {
              fail(`status ${res.statusCode} body ${JSON.stringify(body.slice(0, 80))}`)
              return
            }
            this.ok++
            if (client !== undefined) this.keepAliveOk[client]!++
            this.servedBy.set(body, (this.servedBy.get(body) ?? 0) + 1)
            resolve()
          })
        },
      )
      if (sockets !== undefined) req.on('socket', (s) => sockets.add(s))
      req.on('timeout', () => req.destroy(new Error('timeout')))
      req.on('error', (err: Error & { code?: string }) => fail(`request: ${err.code ?? err.message}`))
    })
  }
}

/** Follows `GET /v1/connect/ca/roots` on each agent, recording every distinct state it shows. */
class RootsWatcher {
  readonly seen = new Map<string, RootsSeen>()
  private running = true
  private readonly loops: Promise<void>[]

  constructor(agents: AgentProcess[]) {
    this.loops = agents.map(async (a) => {
      const seen: RootsSeen = []
      this.seen.set(a.name, seen)
      while (this.running) {
        const r = await rootsOf(a)
        if (r !== undefined && seen.at(-1) !== rootsKey(r)) seen.push(rootsKey(r))
        await new Promise((res) => setTimeout(res, 10))
      }
    })
  }

  async stop(): Promise<void> {
    this.running = false
    await Promise.all(this.loops)
  }
}

/**
 * One request over mutual TLS straight to a sidecar's inbound listener, as `client`, trusting only
 * `rootPem`: the certificate the sidecar presents, and the app's answer (read to the end, so the
 * sidecar has accepted the client before the connection closes).
 */
function throughInbound(
  port: number,
  client: LeafJson,
  rootPem: string,
): Promise<{ presented: X509Certificate; body: string }> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host: '127.0.0.1',
      port,
      key: client.privateKeyPem,
      cert: [client.certPem, ...client.intermediatesPem].join('\n'),
      ca: [rootPem],
      minVersion: 'TLSv1.3',
      checkServerIdentity: () => undefined,
    })
    let response = ''
    socket.setEncoding('utf8')
    socket.setTimeout(5_000, () => socket.destroy(new Error('timeout')))
    socket.once('secureConnect', () => socket.end('GET / HTTP/1.0\r\n\r\n'))
    socket.on('data', (d: string) => (response += d))
    socket.once('end', () => {
      const presented = socket.getPeerX509Certificate()
      socket.destroy()
      if (presented === undefined) reject(new Error('no peer certificate'))
      else resolve({ presented, body: response.slice(response.indexOf('\r\n\r\n') + 4) })
    })
    socket.once('error', reject)
  })
}

describe('CA root rotation under live traffic (end to end, 3 agent processes)', () => {
  const cluster = new TestCluster()
  const apps: Server[] = []
  let traffic: Traffic | undefined
  let watcher: RootsWatcher | undefined
  afterAll(async () => {
    await traffic?.stop()
    await watcher?.stop()
    for (const a of apps) a.close()
    await cluster.close()
  })

  it('`peermesh ca rotate` re-issues every leaf under a cross-signed new root, then drops the old one, with no failed request', async () => {
    const agents = await startRaftCluster(cluster, 3, { prefix: 'rot' })
    const [a, b, c] = agents as [AgentProcess, AgentProcess, AgentProcess]
    await waitForLeader(agents)

    const [apiB, apiC, inB, inC, webApp, webIn, upstream] = (await Promise.all(
      Array.from({ length: 7 }, () => freePort()),
    )) as number[] as [number, number, number, number, number, number, number]
    apps.push(await startApp(apiB, 'api-b'), await startApp(apiC, 'api-c'), await startApp(webApp, 'web'))
    const api = (port: number, inbound: number) => ({
      name: 'api',
      id: `api-${inbound}`,
      port,
      address: '127.0.0.1',
      connect: { sidecarService: { port: inbound } },
    })
    await Promise.all([registerService(b, api(apiB, inB)), registerService(c, api(apiC, inC))])
    await registerService(a, {
      name: 'web',
      port: webApp,
      address: '127.0.0.1',
      connect: {
        sidecarService: { port: webIn, upstreams: [{ destinationName: 'api', localBindPort: upstream }] },
      },
    })
    const allow = await runCli(['intention', 'create', 'web', 'api', 'allow', '--http', b.http])
    expect(allow.code, allow.stderr).toBe(0)

    // Both api instances answer through web's sidecar before the rotation.
    const warm = new Set<string>()
    await waitFor(
      'both api instances through web -> api',
      async () => {
        const r = await fetch(`http://127.0.0.1:${upstream}/`, {
          headers: { connection: 'close' },
          signal: AbortSignal.timeout(2_000),
        }).catch(() => undefined)
        if (r?.ok) warm.add(await r.text())
        return warm.has('api-b') && warm.has('api-c') ? true : undefined
      },
      30_000,
      50,
    )

    const leafOf = async (agent: AgentProcess, service: string): Promise<LeafJson> =>
      (await agent.api<LeafJson>(`/v1/agent/connect/ca/leaf/${service}`)) ??
      Promise.reject(new Error(`no leaf for ${service} on ${agent.name}`))
    const holders: [AgentProcess, string][] = [
      [a, 'web'],
      [b, 'api'],
      [c, 'api'],
    ]
    const before = (await rootsOf(a))!
    expect(before.roots).toHaveLength(1)
    const oldRoot = before.roots[0]!
    const oldSerials = await Promise.all(holders.map(async ([h, s]) => (await leafOf(h, s)).serialNumber))

    // Failed or retried upstream attempts and refused handshakes, on every agent's sidecars.
    // By sample (labels), so that a failure says which reason and route.
    const troubles = async (): Promise<Record<string, number>> => {
      const out: Record<string, number> = {}
      for (const ag of agents)
        for (const m of ['peermesh_proxy_errors_total', 'peermesh_proxy_retries_total'])
          for (const [labels, v] of Object.entries(await metricSamples(ag, m)))
            out[`${ag.name} ${m}${labels}`] = v
      return out
    }
    const troublesBefore = await troubles()

    // Traffic from here to the end: 8 keep-alive connections and 4 loops of fresh connections.
    traffic = new Traffic(upstream, { keepAlive: 8, fresh: 4 })
    const t = traffic
    await waitFor('traffic on every keep-alive connection', async () =>
      t.ok >= 200 && t.keepAliveConnections().every((n) => n === 1) ? true : undefined,
    )
    watcher = new RootsWatcher(agents)
    const okBeforeRotate = t.ok

    const rotated = await runCli(['ca', 'rotate', '--json', '--http', c.http])
    expect(rotated.code, rotated.stderr).toBe(0)
    const { activeRootId: newId, previousRootId } = JSON.parse(rotated.stdout) as {
      activeRootId: string
      previousRootId: string
    }
    expect(previousRootId).toBe(oldRoot.id)
    expect(newId).not.toBe(oldRoot.id)

    // Every sidecar's leaf is re-issued under the new root...
    const newRootPem = await waitFor('the new root in the roots API', async () => {
      const r = await rootsOf(a)
      return r?.roots.find((x) => x.id === newId)?.rootCert
    })
    const reissued = await waitFor(
      'every leaf re-issued under the new root',
      async () => {
        const leaves = await Promise.all(holders.map(([h, s]) => leafOf(h, s)))
        return leaves.every((l) => signedBy(l.certPem, newRootPem)) ? leaves : undefined
      },
      20_000,
      50,
    )
    for (const [i, l] of reissued.entries()) {
      expect(l.serialNumber).not.toBe(oldSerials[i])
      expect(signedBy(l.certPem, oldRoot.rootCert)).toBe(false)
    }
    // ...and it is what their sidecars present: api's inbound listeners answer web's new leaf
    // with a leaf of the new root. A peer that still trusts only the old root accepts it too,
    // through the new root cross-signed by the old that the sidecar sends along.
    const webLeaf = reissued[0]!
    for (const [port, app] of [
      [inB, 'api-b'],
      [inC, 'api-c'],
    ] as const) {
      const r = await waitFor(`api inbound :${port} presenting a new-root leaf`, async () => {
        const got = await throughInbound(port, webLeaf, newRootPem)
        return got.presented.verify(new X509Certificate(newRootPem).publicKey) ? got : undefined
      })
      expect(r.presented.subjectAltName).toContain('/svc/api')
      expect(r.body).toBe(app)
      const viaOld = await throughInbound(port, webLeaf, oldRoot.rootCert)
      // A new-root api leaf (not necessarily the same one: a leader change during a rotation
      // renews every leaf again, see ConnectModule.onLeaderChange; on a loaded machine it happens).
      expect(viaOld.presented.verify(new X509Certificate(newRootPem).publicKey)).toBe(true)
      expect(viaOld.presented.subjectAltName).toContain('/svc/api')
      expect(viaOld.body).toBe(app)
    }

    // ...then the old root is dropped everywhere.
    await Promise.all(
      agents.map((ag) =>
        waitFor(`${ag.name} trusting only the new root`, async () => {
          const r = await rootsOf(ag)
          return r?.roots.length === 1 && r.activeRootId === newId ? true : undefined
        }),
      ),
    )
    const cli = await runCli(['ca', 'roots', '--json', '--http', b.http])
    expect(cli.code, cli.stderr).toBe(0)
    expect((JSON.parse(cli.stdout) as RootsJson).roots.map((r) => r.id)).toEqual([newId])

    // Traffic keeps flowing after the drop, over new connections and the old keep-alive ones.
    const okAtDrop = t.ok
    const keepAliveOkAtDrop = [...t.keepAliveOk]
    await waitFor('traffic after the old root was dropped, on every keep-alive connection too', async () =>
      t.ok >= okAtDrop + 300 && t.keepAliveOk.every((n, i) => n >= keepAliveOkAtDrop[i]! + 10)
        ? true
        : undefined,
    )
    await watcher.stop()
    await t.stop()

    // During the transition every agent showed two roots, the new one active: old -> new+old -> new.
    const twoRoots = `${newId}+${oldRoot.id}`
    for (const [name, seen] of watcher.seen) {
      expect(seen, name).toEqual([oldRoot.id, twoRoots, newId])
    }
    expect(t.failures).toEqual([])
    // Not even hidden by a retry: no handshake was refused and no attempt failed.
    expect(await troubles()).toEqual(troublesBefore)
    // The keep-alive connections opened before the rotation were never dropped.
    expect(t.keepAliveConnections()).toEqual(Array(8).fill(1))
    expect(t.ok).toBeGreaterThan(okBeforeRotate + 300)
    expect([...t.servedBy.keys()].sort()).toEqual(['api-b', 'api-c'])

    // An exported leaf verifies with openssl against the new root alone.
    const out = join(cluster.dir, 'web-cert')
    const exp = await runCli(['cert', 'export', 'web', '--out', out, '--http', a.http])
    expect(exp.code, exp.stderr).toBe(0)
    writeFileSync(join(out, 'new-root.pem'), newRootPem)
    expect(readFileSync(join(out, 'root.pem'), 'utf8').trim()).toBe(newRootPem.trim())
    const verify = execFileSync(
      'openssl',
      ['verify', '-CAfile', join(out, 'new-root.pem'), join(out, 'leaf.pem')],
      {
        encoding: 'utf8',
      },
    )
    expect(verify).toMatch(/leaf\.pem: OK/)
  }, 90_000)
})
