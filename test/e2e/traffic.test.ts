/**
 * Traffic management through real sidecars of 3 agent processes, configured with Consul-shaped
 * config entries written through the HTTP API: a router sends /v2/* to subset v2, service-defaults
 * cut a slow backend at its request timeout, the success rate is read off /metrics, a bad entry is
 * refused naming its field, a changed router applies within a second on an open connection, and a
 * resolver fails over to a second service when every instance of the first is killed.
 */
import { createServer, type Server } from 'node:http'
import http from 'node:http'
import net from 'node:net'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type AgentProcess, apiCall, authHeaders, freePort, runCli, TestCluster, waitFor } from './harness.ts'
import { stopApp } from './mesh-helpers.ts'

describe('traffic management through the sidecars (end to end, 3 agent processes)', () => {
  const cluster = new TestCluster()
  const apps: Server[] = []
  let a: AgentProcess
  let b: AgentProcess
  let c: AgentProcess
  let apiPort = 0
  let slowPort = 0
  let flakyPort = 0
  let heldPort = 0
  const held: http.ServerResponse[] = []
  const agent = new http.Agent({ keepAlive: true, maxSockets: 8 })

  const put = async (on: AgentProcess, path: string, body: object, method = 'PUT') => {
    const res = await fetch(`http://${on.http}${path}`, {
      method,
      headers: { ...authHeaders(), 'content-type': 'application/json' },
      body: JSON.stringify(body),
    })
    expect(res.status, await res.text()).toBe(200)
  }

  /** GET through web's sidecar on a keep-alive agent. */
  const get = (port: number, path = '/', via = agent) =>
    new Promise<{ status: number; body: string; socket: unknown }>((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port, path, agent: via }, (res) => {
        let body = ''
        res.setEncoding('utf8')
        res.on('data', (d: string) => {
          body += d
        })
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body, socket: req.socket }))
      })
      req.on('error', reject)
      req.end()
    })

  const app = async (port: number, handler: http.RequestListener) => {
    const server = createServer(handler)
    await new Promise<void>((r) => server.listen(port, '127.0.0.1', r))
    apps.push(server)
  }

  beforeAll(async () => {
    const key = await cluster.writeClusterKey()
    const extra = ['--bootstrap-expect', '3']
    a = cluster.agent({ name: 'ta', clusterKeyFile: key, extraArgs: extra })
    await a.start()
    const seed = (await a.self())!.addresses[0]!
    b = cluster.agent({ name: 'tb', clusterKeyFile: key, seeds: [seed], extraArgs: extra })
    c = cluster.agent({ name: 'tc', clusterKeyFile: key, seeds: [seed], extraArgs: extra })
    await Promise.all([b.start(), c.start()])
    await waitFor(
      'a Raft leader',
      async () => ((await a.api<string>('/v1/status/leader')) ? true : undefined),
      30_000,
    )
    await cluster.waitForManagementToken()

    const ports = await Promise.all(Array.from({ length: 18 }, () => freePort()))
    const [v1App, v2App, backupApp, slowApp, v1In, v2In, backupIn, slowIn, webIn] = ports
    apiPort = ports[9]!
    slowPort = ports[10]!
    const [flakyApp, flakyIn, heldApp, heldIn] = ports.slice(11, 15)
    flakyPort = ports[15]!
    heldPort = ports[16]!
    const answer =
      (name: string): http.RequestListener =>
      (req, res) => {
        req.resume()
        res.statusCode = req.url === '/fail' ? 500 : 200
        res.end(name)
      }
    await app(v1App!, answer('v1'))
    await app(v2App!, answer('v2'))
    await app(backupApp!, answer('backup'))
    await app(slowApp!, (req) => req.resume()) // never answers
    let n = 0
    await app(flakyApp!, (req, res) => {
      req.resume()
      res.statusCode = n++ % 2 === 0 ? 503 : 200 // half the requests fail
      res.end()
    })
    await app(heldApp!, (req, res) => {
      req.resume()
      held.push(res) // answered by the test
    })

    // Consul's shapes, Kind and Name included, before the services: sidecars start with them.
    const entry = (body: Record<string, unknown>) => put(a, '/v1/config', body)
    for (const name of ['api', 'backup', 'slow', 'flaky', 'held'])
      await entry({ Kind: 'service-defaults', Name: name, Protocol: 'http' })
    await entry({ Kind: 'service-defaults', Name: 'slow', Protocol: 'http', LocalRequestTimeoutMs: 500 })
    await entry({
      Kind: 'service-resolver',
      Name: 'api',
      DefaultSubset: 'v1',
      Subsets: {
        v1: { Filter: 'Service.Tags contains "v1"' },
        v2: { Filter: 'Service.Meta.version == "v2"' },
      },
      Failover: { '*': { Targets: [{ Service: 'backup' }] } },
    })
    await entry({
      Kind: 'service-router',
      Name: 'flaky',
      Routes: [{ Destination: { NumRetries: 3, RetryOnStatusCodes: [503] } }],
    })
    await entry({
      Kind: 'service-defaults',
      Name: 'web',
      UpstreamConfig: {
        Overrides: [{ Name: 'held', Limits: { MaxConcurrentRequests: 3, MaxPendingRequests: 0 } }],
      },
    })
    await entry({
      Kind: 'service-router',
      Name: 'api',
      Routes: [{ Match: { HTTP: { PathPrefix: '/v2/' } }, Destination: { ServiceSubset: 'v2' } }],
    })

    const svc = (name: string, id: string, port: number, inbound: number, extraDef: object = {}) => ({
      name,
      id,
      port,
      address: '127.0.0.1',
      connect: { sidecarService: { port: inbound } },
      ...extraDef,
    })
    await put(b, '/v1/agent/service/register', svc('api', 'api-v1', v1App!, v1In!, { tags: ['v1'] }))
    await put(
      b,
      '/v1/agent/service/register',
      svc('api', 'api-v2', v2App!, v2In!, { meta: { version: 'v2' } }),
    )
    await put(c, '/v1/agent/service/register', svc('backup', 'backup-1', backupApp!, backupIn!))
    await put(c, '/v1/agent/service/register', svc('slow', 'slow-1', slowApp!, slowIn!))
    await put(c, '/v1/agent/service/register', svc('flaky', 'flaky-1', flakyApp!, flakyIn!))
    await put(c, '/v1/agent/service/register', svc('held', 'held-1', heldApp!, heldIn!))
    await put(a, '/v1/agent/service/register', {
      name: 'web',
      port: webIn,
      connect: {
        sidecarService: {
          port: webIn,
          upstreams: [
            { destinationName: 'api', localBindPort: apiPort },
            { destinationName: 'slow', localBindPort: slowPort },
            { destinationName: 'flaky', localBindPort: flakyPort },
            { destinationName: 'held', localBindPort: heldPort },
          ],
        },
      },
    })
    await put(c, '/v1/connect/intentions', { source: 'web', destination: '*', action: 'allow' }, 'POST')
    // A registration answers before its sidecar listens (`peermesh register` waits for this; an
    // HTTP client asks): web's outbound may learn of an instance whose inbound is not bound yet.
    for (const [agentOf, id] of [
      [c, 'backup-1'],
      [c, 'slow-1'],
      [c, 'flaky-1'],
      [c, 'held-1'],
    ] as const) {
      await waitFor(
        `${id}'s sidecar listening`,
        async () => {
          const r = await agentOf.api<{ Ready: boolean }>(`/v1/agent/sidecar/${id}?timeout=4000`)
          return r?.Ready === true ? true : undefined
        },
        60_000,
      )
    }
    await waitFor(
      'both subsets reachable through the router',
      async () => {
        const [x, y] = await Promise.all([get(apiPort, '/v2/a'), get(apiPort, '/')]).catch(() => [])
        return x?.body === 'v2' && y?.body === 'v1' ? true : undefined
      },
      60_000,
      200,
    )
  }, 180_000)

  afterAll(async () => {
    agent.destroy()
    for (const s of apps) await stopApp(s)
    await cluster.close()
  })

  it('a router sends /v2/* to subset v2 and the rest to v1', async () => {
    const paths = ['/v2/users', '/', '/v1/x', '/v2/', '/v2', '/users/v2/']
    for (let i = 0; i < 120; i++) {
      const p = paths[i % paths.length]!
      const r = await get(apiPort, p)
      expect(r.status).toBe(200)
      expect(r.body, p).toBe(p.startsWith('/v2/') ? 'v2' : 'v1')
    }
  }, 60_000)

  it('a request timeout from service-defaults cuts a slow backend at the configured time', async () => {
    const started = performance.now()
    const r = await get(slowPort, '/')
    const took = performance.now() - started
    expect(r.status).toBe(504)
    expect(took).toBeGreaterThanOrEqual(495)
    expect(took).toBeLessThan(2_500) // the default is 15 s
  }, 30_000)

  it("retries on 503 from a router rule turn a flaky backend's 50% errors into < 1%", async () => {
    await waitFor(
      'flaky reachable',
      async () => ((await get(flakyPort).catch(() => undefined))?.status === 200 ? true : undefined),
      30_000,
    )
    let failed = 0
    for (let i = 0; i < 300; i++) if ((await get(flakyPort)).status !== 200) failed++
    expect(failed / 300).toBeLessThan(0.01)
  }, 60_000)

  it('a concurrency limit of N rejects the N+1th concurrent request with 503', async () => {
    const N = 3
    const inFlight = Array.from({ length: N }, () => get(heldPort))
    await waitFor(
      'N requests held at the app',
      async () => (held.length === N ? true : undefined),
      30_000,
      20,
    )
    const over = await new Promise<{ status: number; reject: unknown }>((resolve, reject) => {
      http
        .get({ host: '127.0.0.1', port: heldPort, path: '/', agent }, (res) => {
          res.resume()
          resolve({ status: res.statusCode ?? 0, reject: res.headers['x-peermesh-reject'] })
        })
        .on('error', reject)
    })
    expect(over).toEqual({ status: 503, reject: 'concurrency-limit' })
    for (const res of held.splice(0)) res.end('done')
    expect((await Promise.all(inFlight)).map((r) => r.status)).toEqual([200, 200, 200])
  }, 60_000)

  it('the success rate computed from /metrics after a mixed 200/500 load is the true ratio', async () => {
    const sample = async (on = a, direction = 'outbound') => {
      const text = await (await fetch(`http://${on.http}/metrics`)).text()
      let ok = 0
      let all = 0
      for (const line of text.split('\n')) {
        const m = /^peermesh_proxy_responses_total\{([^}]*)\} (\d+)$/.exec(line)
        if (!m || !m[1]!.includes('upstream="api"') || !m[1]!.includes(`direction="${direction}"`)) continue
        all += Number(m[2])
        if (!m[1]!.includes('class="5xx"')) ok += Number(m[2])
      }
      return { ok, all }
    }
    const before = await sample()
    const inboundBefore = await sample(b, 'inbound') // api-v1's sidecar, which serves / and /fail
    let okSeen = 0
    for (let i = 0; i < 200; i++) {
      const r = await get(apiPort, i % 4 === 0 ? '/fail' : '/')
      if (r.status < 500) okSeen++
    }
    expect(okSeen).toBe(150)
    const after = await sample()
    expect(after.all - before.all).toBe(200)
    expect((after.ok - before.ok) / (after.all - before.all)).toBe(0.75)
    // The serving side agrees (counted at api-v1's inbound, by status code).
    const inboundAfter = await sample(b, 'inbound')
    expect(inboundAfter.all - inboundBefore.all).toBe(200)
    expect(inboundAfter.ok - inboundBefore.ok).toBe(150)
    // The default access log ("errors") has a line for each failed request and none for the others.
    const access = a.log
      .split('\n')
      .filter((l) => l.includes('"msg":"access"') && l.includes('"upstream":"api"'))
      .map((l) => JSON.parse(l) as { status: number; path: string })
    expect(access.filter((l) => l.path === '/fail').length).toBe(50)
    expect(access.filter((l) => l.status < 500)).toEqual([])
  }, 60_000)

  it('an invalid entry is refused with 400 naming the field, and nothing is written', async () => {
    const r = await apiCall(a, 'PUT', '/v1/config', {
      token: cluster.managementToken,
      body: {
        Kind: 'service-router',
        Name: 'api',
        Routes: [{ Match: { HTTP: { PathPrefix: '/x', PathRegx: '.*' } } }],
      },
    })
    expect(r.status).toBe(400)
    expect(JSON.stringify(r.json)).toContain('PathRegx')
    const stored = await a.api<{ value?: { Routes: unknown[] }; Routes?: unknown[] }>(
      '/v1/config/service-router/api',
    )
    expect(JSON.stringify(stored)).toContain('"/v2/"')
    expect(JSON.stringify(stored)).not.toContain('PathRegx')
    // A valid entry without a token, or with a token that may not write it: 403, nothing changed.
    const redirect = { Kind: 'service-resolver', Name: 'api', Redirect: { Service: 'backup' } }
    expect((await apiCall(a, 'PUT', '/v1/config', { body: redirect })).status).toBe(403)
    expect(
      (await apiCall(a, 'PUT', '/v1/config', { token: 'not-a-real-token', body: redirect })).status,
    ).toBe(403)
    expect(JSON.stringify(await a.api('/v1/config/service-resolver/api'))).not.toContain('Redirect')
    expect((await get(apiPort, '/')).body).toBe('v1')
  }, 30_000)

  it('a changed router applies within a second on an open connection, which stays open', async () => {
    const one = new http.Agent({ keepAlive: true, maxSockets: 1 })
    try {
      const first = await get(apiPort, '/v2/x', one)
      expect(first.body).toBe('v2')
      let closed = false
      ;(first.socket as import('node:net').Socket).once('close', () => {
        closed = true
      })
      await put(a, '/v1/config', {
        Kind: 'service-router',
        Name: 'api',
        Routes: [{ Match: { HTTP: { PathPrefix: '/v2/' } }, Destination: { ServiceSubset: 'v1' } }],
      })
      const written = performance.now()
      await waitFor(
        'the new route in force',
        async () => ((await get(apiPort, '/v2/x', one)).body === 'v1' ? true : undefined),
        5_000,
        20,
      )
      expect(performance.now() - written).toBeLessThan(1_000)
      expect(closed).toBe(false)
    } finally {
      one.destroy()
    }
  }, 30_000)

  it('a sidecar whose port is taken: register exits 1 naming the port, the instance is critical, no stack trace', async () => {
    const taken = await freePort()
    const blocker = net.createServer()
    await new Promise<void>((r) => blocker.listen(taken, '127.0.0.1', r))
    try {
      const file = join(cluster.dir, 'broken.json')
      writeFileSync(
        file,
        JSON.stringify({ name: 'broken', port: taken, connect: { sidecarService: { port: taken } } }),
      )
      const reg = await runCli(['register', file, '--http', a.http], { token: cluster.managementToken })
      expect(reg.code).toBe(1)
      expect(reg.stdout).toBe('')
      expect(reg.stderr.trim().split('\n')).toHaveLength(1)
      expect(reg.stderr).toContain(`sidecar is not listening: port ${taken} (inbound) is in use`)
      // Consul's health shape: the instance carries the sidecar's critical check, naming the port.
      const h = await a.api<{ Checks: { Status: string; Name: string }[] }[]>('/v1/health/service/broken')
      const critical = h?.[0]?.Checks.find((c) => c.Status === 'critical')
      expect(critical?.Name).toContain(`port ${taken} (inbound) is in use`)
      const passing = await a.api<unknown[]>('/v1/health/service/broken?passing')
      expect(passing).toEqual([])
      expect(a.log).toContain(`sidecar not started: port ${taken} (inbound) is in use`)
      expect(a.log).not.toMatch(/\n\s+at /) // no stack trace
      // The readiness route from the attacker's side: a token granting nothing is refused, a bad
      // timeout and an unknown id are clear errors, and the answer is the same afterwards.
      const nothing = await apiCall(a, 'PUT', '/v1/acl/token', {
        token: cluster.managementToken,
        body: { Description: 'grants nothing' },
      })
      expect(nothing.status).toBe(200)
      const secret = (nothing.json as { SecretID: string }).SecretID
      expect((await apiCall(a, 'GET', '/v1/agent/sidecar/broken', { token: secret })).status).toBe(403)
      const badTimeout = await apiCall(a, 'GET', '/v1/agent/sidecar/broken?timeout=9999999999', {
        token: cluster.managementToken,
      })
      expect(badTimeout.status).toBe(400)
      const unknown = await apiCall(a, 'GET', '/v1/agent/sidecar/nope', { token: cluster.managementToken })
      expect(unknown.status).toBe(404)
      const still = await apiCall(a, 'GET', '/v1/agent/sidecar/broken', { token: cluster.managementToken })
      expect(still.json).toEqual({
        ServiceID: 'broken',
        Ready: false,
        Error: `port ${taken} (inbound) is in use`,
      })
    } finally {
      await new Promise<void>((r) => blocker.close(() => r()))
    }
  }, 30_000)

  it('a resolver fails over to a second service when every instance of the first is killed', async () => {
    await b.stop('SIGKILL') // both api instances and their sidecars die with their agent
    const failed: number[] = []
    // Requests go on meanwhile: a refused connection is retried on the failover target.
    for (let i = 0; i < 100; i++) {
      const r = await get(apiPort, '/').catch(() => ({ status: 0, body: '' }))
      if (r.status !== 200 || r.body !== 'backup') failed.push(r.status)
    }
    expect(failed).toEqual([])
  }, 60_000)
})
