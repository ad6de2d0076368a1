/**
 * The sidecar part of bench:footprint: what one sidecar adds to an agent under light load.
 *
 * Two one-agent clusters (`--bootstrap`, ACLs on), "control" and "subject", run side by side, set
 * up the same way through the HTTP API: a local app (a Node HTTP server answering "ok"), service
 * `api` on it, service `web` (so that a `web` leaf certificate can be fetched), the intention
 * web -> api allow. The same light load runs against both the whole time. In the first window it
 * goes straight to each agent's app; then the subject's `api` is registered again with
 * `connect.sidecarService` and the subject's load is sent through that sidecar's inbound listener,
 * with mutual TLS as `web` (the leaf and key from `GET /v1/agent/connect/ca/leaf/web`): exactly one
 * sidecar on the path, reached as a caller's sidecar would reach it. Each client keeps one
 * connection alive, as a caller's pooled sidecar does. The second window follows.
 *
 * What the sidecar adds is a difference of differences, (subject after - subject before) -
 * (control after - control before): the subject's own change cancels the few MiB two agent
 * processes differ by, and the control's change cancels what any agent does over time (its RSS
 * settles for minutes after start).
 */
import type { Server } from 'node:http'
import http from 'node:http'
import https from 'node:https'
import { join } from 'node:path'
import { freePort, waitFor } from '../test/e2e/harness.ts'
import { startApp, stopApp } from '../test/e2e/mesh-helpers.ts'
import { OurAgent, type OurAgentOptions } from './footprint-agents.ts'

interface LeafJson {
  certPem: string
  privateKeyPem: string
  intermediatesPem: string[]
  rootsPem: string[]
}

/** Requests fired at a fixed rate (not waiting for the previous one), counted by outcome. */
export class LightLoad {
  private timer: NodeJS.Timeout | undefined
  private since = 0
  private okSince = 0
  ok = 0
  errors = 0
  lastError = ''

  constructor(
    private readonly perSecond: number,
    private readonly request: () => Promise<number>,
  ) {}

  start(): void {
    this.mark()
    this.timer = setInterval(() => {
      this.request().then(
        (status) => {
          if (status === 200) this.ok++
          else {
            this.errors++
            this.lastError = `status ${status}`
          }
        },
        (err: unknown) => {
          this.errors++
          this.lastError = String((err as Error).cause ?? err)
        },
      )
    }, 1000 / this.perSecond)
  }

  /** Starts a new count for `rate()`. */
  mark(): void {
    this.since = performance.now()
    this.okSince = this.ok
  }

  /** Answered (200) requests per second since the last `mark()`. */
  rate(): number {
    return (this.ok - this.okSince) / ((performance.now() - this.since) / 1000)
  }

  stop(): void {
    clearInterval(this.timer)
  }
}

/** One GET through `agent` (a keep-alive http or https agent); resolves with the status. */
function get(url: string, agent: http.Agent): Promise<number> {
  return new Promise((resolve, reject) => {
    const mod = url.startsWith('https:') ? https : http
    const req = mod.get(url, { agent, timeout: 5_000 }, (res) => {
      res.resume()
      res.once('end', () => resolve(res.statusCode ?? 0))
      res.once('error', reject)
    })
    req.once('timeout', () => req.destroy(new Error('timed out')))
    req.once('error', reject)
  })
}

/** One of the two agents of the sidecar part, set up and under load. */
export interface SidecarSubject {
  agent: OurAgent
  /** Fires one request of the load: to the app, or (after `addSidecar`) through the sidecar. */
  request(): Promise<number>
  /**
   * Registers `api` again, with a sidecar, and sends the load through its inbound listener;
   * resolves once a request through it answered 200.
   */
  addSidecar(): Promise<void>
  close(): Promise<void>
}

/**
 * Starts a one-agent cluster and sets it up (see the file comment); resolves once a request of
 * the load answers 200.
 */
export async function startSidecarSubject(
  name: string,
  base: Omit<OurAgentOptions, 'name' | 'dataDir' | 'extraArgs' | 'seeds'>,
  dir: string,
  token: string,
): Promise<SidecarSubject> {
  const agent = await OurAgent.start({ ...base, name, dataDir: join(dir, name), extraArgs: ['--bootstrap'] })
  let app: Server | undefined
  const clients: http.Agent[] = []
  const close = async (): Promise<void> => {
    for (const c of clients) c.destroy()
    if (app !== undefined) await stopApp(app)
    await agent.kill()
  }
  try {
    await waitFor(
      `${name}: a leader that accepts the management token`,
      async () => {
        const r = await agent.call('GET', '/v1/operator/raft/status', { token })
        return r.status === 200 && (r.body as { leader: string }).leader !== '' ? true : undefined
      },
      60_000,
      100,
    )
    const [appPort, webPort, inboundPort] = [await freePort(), await freePort(), await freePort()]
    app = await startApp(appPort, 'ok')
    const api = { name: 'api', port: appPort, address: '127.0.0.1' }
    await agent.ok('PUT', '/v1/agent/service/register', {
      token,
      body: { name: 'web', port: webPort, address: '127.0.0.1' },
    })
    await agent.ok('PUT', '/v1/agent/service/register', { token, body: api })
    await agent.ok('POST', '/v1/connect/intentions', {
      token,
      body: { source: 'web', destination: 'api', action: 'allow' },
    })
    const leaf = await waitFor(
      `${name}: the web leaf certificate`,
      async () => {
        const r = await agent.call('GET', '/v1/agent/connect/ca/leaf/web', { token })
        return r.status === 200 ? (r.body as LeafJson) : undefined
      },
      60_000,
      250,
    )
    const plain = {
      url: `http://127.0.0.1:${appPort}/`,
      client: new http.Agent({ keepAlive: true, maxSockets: 1 }),
    }
    const mtls = {
      url: `https://127.0.0.1:${inboundPort}/`,
      client: new https.Agent({
        keepAlive: true,
        maxSockets: 1,
        cert: [leaf.certPem, ...leaf.intermediatesPem].join('\n'),
        key: leaf.privateKeyPem,
        ca: leaf.rootsPem,
        minVersion: 'TLSv1.3',
        // The chain is verified against the mesh roots; the server's name is a SPIFFE URI, not a
        // host name, so the host name check is left out (a caller's sidecar checks the URI).
        checkServerIdentity: () => undefined,
      }),
    }
    clients.push(plain.client, mtls.client)
    let current = plain
    const answered = (t: typeof plain, what: string): Promise<true> =>
      waitFor(
        `${name}: a request to ${what} answered 200`,
        async () => ((await get(t.url, t.client).catch(() => 0)) === 200 ? true : undefined),
        60_000,
        250,
      )
    await answered(plain, 'the app')
    return {
      agent,
      request: () => get(current.url, current.client),
      addSidecar: async () => {
        await agent.ok('PUT', '/v1/agent/service/register', {
          token,
          body: { ...api, connect: { sidecarService: { port: inboundPort } } },
        })
        await answered(mtls, 'the sidecar inbound')
        current = mtls
      },
      close,
    }
  } catch (err) {
    await close()
    throw err
  }
}
