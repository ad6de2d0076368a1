/**
 * L7 intentions and inbound rate limits through real sidecars of an agent process (issue #17):
 * for the same source, an L7 intention allows GET /public and denies POST /admin (403 from api's
 * inbound sidecar, the app never sees it, the denial in /metrics and the log); a change of
 * permissions applies within a second without closing the open keep-alive connection; a caller
 * over RequestsPerSecond gets 429s while another caller is unaffected. Everything is written
 * through the HTTP API and the CLI, as a user would.
 */
import { writeFileSync } from 'node:fs'
import http, { createServer, type Server } from 'node:http'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type AgentProcess, authHeaders, freePort, runCli, TestCluster, waitFor } from './harness.ts'
import { stopApp } from './mesh-helpers.ts'

describe('L7 intentions and rate limits through the sidecars (end to end)', () => {
  const cluster = new TestCluster()
  const apps: Server[] = []
  /** Requests the api app saw, as "METHOD /path". */
  const apiSaw: string[] = []
  const agents: http.Agent[] = []
  let a: AgentProcess
  let webApi = 0
  let noisyLimited = 0
  let quietLimited = 0

  const send = async (on: AgentProcess, method: string, path: string, body?: object) => {
    const res = await fetch(`http://${on.http}${path}`, {
      method,
      headers: { ...authHeaders(), 'content-type': 'application/json' },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    })
    return { status: res.status, text: await res.text() }
  }
  const put = async (path: string, body: object, method = 'PUT') => {
    const r = await send(a, method, path, body)
    expect(r.status, r.text).toBe(200)
  }

  /** A caller app's keep-alive client, one connection at a time. */
  const client = () => {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
    agents.push(agent)
    const sockets = new Set<unknown>()
    const request = (port: number, method: string, path: string) =>
      new Promise<{ status: number; body: string; reject: unknown }>((resolve, reject) => {
        const req = http.request({ host: '127.0.0.1', port, method, path, agent }, (res) => {
          sockets.add(req.socket)
          let body = ''
          res.setEncoding('utf8')
          res.on('data', (d: string) => {
            body += d
          })
          res.on('end', () =>
            resolve({ status: res.statusCode ?? 0, body, reject: res.headers['x-peermesh-reject'] }),
          )
        })
        req.on('error', reject)
        req.end(method === 'POST' ? '{}' : undefined)
      })
    return { request, sockets }
  }

  const metrics = async (): Promise<string> => (await fetch(`http://${a.http}/metrics`)).text()
  /** Sum of the samples of `name` whose label set includes every `labels` pair. */
  const sample = (text: string, name: string, labels: Record<string, string>): number => {
    let sum = 0
    for (const line of text.split('\n')) {
      const m = new RegExp(`^${name}\\{([^}]*)\\} (\\S+)$`).exec(line)
      if (m && Object.entries(labels).every(([k, v]) => m[1]!.includes(`${k}="${v}"`))) sum += Number(m[2])
    }
    return sum
  }

  beforeAll(async () => {
    const key = await cluster.writeClusterKey()
    a = cluster.agent({ name: 'l7', clusterKeyFile: key, extraArgs: ['--bootstrap'] })
    await a.start()
    await waitFor(
      'a Raft leader',
      async () => ((await a.api<string>('/v1/status/leader')) ? true : undefined),
      30_000,
    )
    await cluster.waitForManagementToken()

    const [apiApp, apiIn, limitedApp, limitedIn, webIn, noisyIn, quietIn, p1, p2, p3] = await Promise.all(
      Array.from({ length: 10 }, () => freePort()),
    )
    webApi = p1!
    noisyLimited = p2!
    quietLimited = p3!
    const app = async (port: number, handler: http.RequestListener) => {
      const server = createServer(handler)
      await new Promise<void>((r) => server.listen(port, '127.0.0.1', r))
      apps.push(server)
    }
    await app(apiApp!, (req, res) => {
      apiSaw.push(`${req.method} ${req.url}`)
      req.resume()
      req.on('end', () => res.end(`api${req.url}`))
    })
    await app(limitedApp!, (req, res) => {
      req.resume()
      req.on('end', () => res.end('limited'))
    })

    // Config entries first (Consul's shapes): both destinations speak http; `limited` has a
    // rate limit per source, written with the CLI.
    await put('/v1/config', { Kind: 'service-defaults', Name: 'api', Protocol: 'http' })
    const limits = join(cluster.dir, 'limited-defaults.json')
    writeFileSync(
      limits,
      JSON.stringify({
        Kind: 'service-defaults',
        Name: 'limited',
        Protocol: 'http',
        RateLimits: { InstanceLevel: { RequestsPerSecond: 1, RequestsMaxBurst: 5 } },
      }),
    )
    const cli = await runCli(['config', 'write', limits, '--http', a.http])
    expect(cli.code, cli.stderr).toBe(0)

    const register = (name: string, port: number, inbound: number, upstreams: object[] = []) =>
      put('/v1/agent/service/register', {
        name,
        port,
        address: '127.0.0.1',
        connect: { sidecarService: { port: inbound, upstreams } },
      })
    await register('api', apiApp!, apiIn!)
    await register('limited', limitedApp!, limitedIn!)
    await register('web', webIn!, webIn!, [{ destinationName: 'api', localBindPort: webApi }])
    await register('noisy', noisyIn!, noisyIn!, [{ destinationName: 'limited', localBindPort: noisyLimited }])
    await register('quiet', quietIn!, quietIn!, [{ destinationName: 'limited', localBindPort: quietLimited }])

    // The L7 intention, Consul's exact endpoint with Permissions in place of Action.
    await put('/v1/connect/intentions/exact?source=web&destination=api', {
      Permissions: [
        { Action: 'allow', HTTP: { PathExact: '/public', Methods: ['GET'] } },
        { Action: 'deny', HTTP: { PathPrefix: '/admin' } },
      ],
    })
    await put(
      '/v1/connect/intentions',
      { SourceName: '*', DestinationName: 'limited', Action: 'allow' },
      'POST',
    )
    const probe = client()
    await waitFor(
      'web reaches api and both callers reach limited',
      async () => {
        const r = await Promise.all([
          probe.request(webApi, 'GET', '/public'),
          probe.request(quietLimited, 'GET', '/warmup'),
        ]).catch(() => [])
        return r.length === 2 && r.every((x) => x.status === 200) ? true : undefined
      },
      60_000,
      200,
    )
    apiSaw.length = 0
  }, 120_000)

  afterAll(async () => {
    for (const agent of agents) agent.destroy()
    for (const s of apps) await stopApp(s)
    await cluster.close()
  })

  it('an L7 intention allows GET /public and denies POST /admin for the same source', async () => {
    const web = client()
    const ok = await web.request(webApi, 'GET', '/public')
    expect(ok).toEqual({ status: 200, body: 'api/public', reject: undefined })
    const denied = await web.request(webApi, 'POST', '/admin')
    expect(denied.status).toBe(403)
    expect(denied.reject).toBe('intention')
    expect(denied.body).toMatch(/web -> api POST \/admin denied by intention/)
    expect(apiSaw).toEqual(['GET /public']) // the app never saw the POST
    const text = await metrics()
    expect(
      sample(text, 'peermesh_proxy_inbound_denied_total', { service: 'api', source: 'web' }),
    ).toBeGreaterThanOrEqual(1)
    expect(
      sample(text, 'peermesh_proxy_responses_total', { direction: 'inbound', upstream: 'api', code: '403' }),
    ).toBeGreaterThanOrEqual(1)
    await waitFor(
      'the denial in the log',
      async () => (/inbound request denied src=web dst=api POST \/admin/.test(a.log) ? true : undefined),
      5_000,
    )
  }, 60_000)

  it('a change of permissions applies within a second of commit, on the open keep-alive connection', async () => {
    const web = client()
    expect((await web.request(webApi, 'POST', '/admin')).status).toBe(403)
    const inboundConnections = () =>
      metrics().then((t) =>
        sample(t, 'peermesh_proxy_connections_total', { service: 'api', direction: 'inbound' }),
      )
    const before = await inboundConnections()
    await put('/v1/connect/intentions/exact?source=web&destination=api', {
      Permissions: [{ Action: 'allow', HTTP: { PathPrefix: '/admin', Methods: ['POST'] } }],
    })
    const committed = performance.now()
    const allowed = await waitFor(
      'POST /admin allowed',
      async () => {
        const r = await web.request(webApi, 'POST', '/admin')
        return r.status === 200 ? performance.now() - committed : undefined
      },
      5_000,
      20,
    )
    expect(allowed).toBeLessThan(1_000)
    expect((await web.request(webApi, 'GET', '/public')).status).toBe(403) // no longer listed
    expect(web.sockets.size).toBe(1) // the caller's keep-alive connection stayed open
    expect(await inboundConnections()).toBe(before) // and so did the sidecars' connection
    expect(apiSaw.filter((s) => s === 'POST /admin').length).toBeGreaterThanOrEqual(1)
  }, 60_000)

  it('a caller over RequestsPerSecond gets 429s while another source is unaffected', async () => {
    const noisy = client()
    const quiet = client()
    const started = performance.now()
    const statuses: number[] = []
    for (let i = 0; i < 20; i++) statuses.push((await noisy.request(noisyLimited, 'GET', '/x')).status)
    const seconds = (performance.now() - started) / 1000
    const passed = statuses.filter((s) => s === 200).length
    // A burst of 5, then 1 a second.
    expect(passed).toBeGreaterThanOrEqual(5)
    expect(passed).toBeLessThanOrEqual(5 + Math.ceil(seconds))
    expect(statuses.filter((s) => s === 429).length).toBe(20 - passed)
    const over = await noisy.request(noisyLimited, 'GET', '/x')
    if (over.status === 429) expect(over.reject).toBe('rate-limit')
    for (let i = 0; i < 3; i++) expect((await quiet.request(quietLimited, 'GET', '/y')).status).toBe(200)
    const text = await metrics()
    expect(
      sample(text, 'peermesh_proxy_limit_rejections_total', { upstream: 'limited', reason: 'rate-limit' }),
    ).toBeGreaterThanOrEqual(20 - passed)
    // A raised limit applies within a second of commit, on the same open connection.
    await put('/v1/config', {
      Kind: 'service-defaults',
      Name: 'limited',
      Protocol: 'http',
      RateLimits: { InstanceLevel: { RequestsPerSecond: 1000 } },
    })
    const committed = performance.now()
    const took = await waitFor(
      'the raised limit in force',
      async () => {
        const burst = await Promise.all(
          Array.from({ length: 3 }, () => noisy.request(noisyLimited, 'GET', '/z')),
        )
        return burst.every((r) => r.status === 200) ? performance.now() - committed : undefined
      },
      5_000,
      20,
    )
    expect(took).toBeLessThan(1_000)
    expect(noisy.sockets.size).toBe(1)
  }, 60_000)

  it('config write of Kind service-intentions is the same data as /v1/connect/intentions; writing it needs intentions write', async () => {
    const file = join(cluster.dir, 'db-intentions.json')
    writeFileSync(
      file,
      JSON.stringify({
        Kind: 'service-intentions',
        Name: 'db',
        Sources: [
          {
            Name: 'web',
            Permissions: [{ Action: 'allow', HTTP: { PathPrefix: '/read', Methods: ['GET'] } }],
          },
          { Name: '*', Action: 'deny' },
        ],
      }),
    )
    const cli = await runCli(['config', 'write', file, '--http', a.http])
    expect(cli.code, cli.stderr).toBe(0)
    const exact = JSON.parse(
      (await send(a, 'GET', '/v1/connect/intentions/exact?source=web&destination=db')).text,
    )
    expect(exact).toMatchObject({
      Action: '',
      Permissions: [{ Action: 'allow', HTTP: { PathPrefix: '/read' } }],
    })
    const entry = JSON.parse((await send(a, 'GET', '/v1/config/service-intentions/db')).text)
    expect(entry).toMatchObject({ kind: 'service-intentions', name: 'db' })
    expect(entry.Sources.map((x: { Name: string }) => x.Name)).toEqual(['web', '*'])
    const listed = await runCli(['config', 'list', 'service-intentions', '--http', a.http])
    expect(listed.code, listed.stderr).toBe(0)
    expect(listed.stdout).toMatch(/service-intentions\s+db\s/)
    // The attacker's side: anonymous, and a token for web (no intentions write on db): 403.
    const token = await send(a, 'PUT', '/v1/acl/token', { ServiceIdentities: [{ ServiceName: 'web' }] })
    expect(token.status, token.text).toBe(200)
    const webToken = JSON.parse(token.text).SecretID as string
    for (const t of [false, webToken] as const) {
      const r = await fetch(`http://${a.http}/v1/config`, {
        method: 'PUT',
        headers: { ...authHeaders(t), 'content-type': 'application/json' },
        body: JSON.stringify({
          Kind: 'service-intentions',
          Name: 'db',
          Sources: [{ Name: '*', Action: 'allow' }],
        }),
      })
      expect(r.status).toBe(403)
      expect(await r.text()).toMatch(/intention:write/)
    }
    const still = JSON.parse((await send(a, 'GET', '/v1/config/service-intentions/db')).text)
    expect(still.Sources).toEqual(entry.Sources)
    expect((await send(a, 'DELETE', '/v1/config/service-intentions/db')).status).toBe(200)
    expect((await send(a, 'GET', '/v1/connect/intentions/exact?source=web&destination=db')).status).toBe(404)
  }, 30_000)

  it('bad entries are refused with 400 naming the field, and nothing is written', async () => {
    const r1 = await send(a, 'PUT', '/v1/config', {
      Kind: 'service-defaults',
      Name: 'limited',
      RateLimits: { InstanceLevel: { RequestsPerSecond: -1 } },
    })
    expect(r1.status).toBe(400)
    expect(r1.text).toMatch(/RateLimits\.InstanceLevel\.RequestsPerSecond/)
    const r2 = await send(a, 'PUT', '/v1/connect/intentions/exact?source=web&destination=api', {
      Permissions: [{ Action: 'allow', HTTP: { PathRegex: '(' } }],
    })
    expect(r2.status).toBe(400)
    expect(r2.text).toMatch(/permissions: 0\.HTTP\.PathRegex/)
    const r3 = await send(a, 'PUT', '/v1/config', {
      Kind: 'service-intentions',
      Name: 'api',
      Sources: [
        { Name: 'web', Action: 'allow', Permissions: [{ Action: 'allow', HTTP: { PathExact: '/' } }] },
      ],
    })
    expect(r3.status).toBe(400)
    expect(r3.text).toMatch(/Sources\.0\.Permissions: cannot be combined with Action/)
    const still = await send(a, 'GET', '/v1/connect/intentions/exact?source=web&destination=api')
    expect(JSON.parse(still.text).Permissions).toHaveLength(1) // as the previous test left it
    const stored = await send(a, 'GET', '/v1/config/service-defaults/limited')
    expect(JSON.parse(stored.text).RateLimits.InstanceLevel.RequestsPerSecond).toBe(1000) // as the rate-limit test left it
  }, 30_000)
})
