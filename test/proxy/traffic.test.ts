/**
 * Consul-shaped config entries in force on a real HTTP outbound listener, against real inbound
 * listeners and apps: routes to subsets, failover to another service, request timeouts, retries
 * on status codes, the concurrency limit, header rewrites, status-code metrics and a policy swap
 * that keeps open connections.
 */
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { Registry } from 'prom-client'
import { afterEach, beforeAll, describe, expect, it } from 'vitest'
import type { RootCa } from '../../src/identity/ca/ca.ts'
import { InboundListener } from '../../src/proxy/inbound.ts'
import { HttpOutboundListener, REJECT_HEADER } from '../../src/proxy/outbound-http.ts'
import { OutboundListener } from '../../src/proxy/outbound-tcp.ts'
import {
  IntentionAuthorizer,
  StaticCertificateSource,
  StaticEndpointSource,
} from '../../src/proxy/sources.ts'
import type { Endpoint, ServiceCertificate } from '../../src/proxy/types.ts'
import { compileUpstreamPolicy } from '../../src/node/sidecars/traffic-config.ts'
import {
  endpoint,
  httpGet,
  leafFor,
  makeRoot,
  metricValue,
  runConcurrently,
  startInstance,
  TD,
  tcpRequest,
  trafficEntries,
  waitFor,
} from './helpers.ts'

let root: RootCa
const certs = new Map<string, ServiceCertificate>()
const allow = IntentionAuthorizer.from([{ source: '*', destination: '*', action: 'allow' }])

beforeAll(async () => {
  root = await makeRoot()
  for (const s of ['web', 'api', 'backup']) certs.set(s, await leafFor(root, s))
})

const cleanups: (() => Promise<void>)[] = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

type Handler = (req: http.IncomingMessage, res: http.ServerResponse) => void

/** An app behind an inbound listener: one instance of `service`. */
async function instance(
  id: string,
  service: string,
  handler: Handler,
  extra: Partial<Endpoint> = {},
  inboundExtra: { registry?: Registry; protocol?: 'tcp' | 'http' } = {},
): Promise<{ endpoint: Endpoint; hits: () => number; stop: () => Promise<void> }> {
  let hits = 0
  const server = http.createServer((req, res) => {
    hits++
    req.resume()
    handler(req, res)
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const inbound = new InboundListener({
    service,
    trustDomain: TD,
    port: 0,
    bindAddress: '127.0.0.1',
    localServicePort: (server.address() as AddressInfo).port,
    certificates: new StaticCertificateSource(certs.get(service)!),
    authorizer: allow,
    ...inboundExtra,
  })
  await inbound.start()
  let stopped = false
  const stop = async () => {
    if (stopped) return
    stopped = true
    await inbound.stop()
    server.closeAllConnections()
    await new Promise<void>((r) => server.close(() => r()))
  }
  cleanups.push(stop)
  return { endpoint: endpoint(id, inbound.port, service, extra), hits: () => hits, stop }
}

const answer =
  (body: string, status = 200): Handler =>
  (_req, res) => {
    res.statusCode = status
    res.end(body)
  }

async function outbound(
  upstream: StaticEndpointSource,
  others: Record<string, StaticEndpointSource>,
  list: Parameters<typeof trafficEntries>[0],
) {
  const registry = new Registry()
  const listener = new HttpOutboundListener({
    sourceService: 'web',
    destinationService: 'api',
    trustDomain: TD,
    bindPort: 0,
    certificates: new StaticCertificateSource(certs.get('web')!),
    endpoints: upstream,
    endpointsFor: (s) => others[s] ?? new StaticEndpointSource([]),
    policy: compileUpstreamPolicy(trafficEntries(list), 'web', 'api'),
    registry,
  })
  await listener.start()
  cleanups.push(() => listener.stop())
  return { listener, registry }
}

function keepAlive(): http.Agent {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 })
  cleanups.push(async () => agent.destroy())
  return agent
}

describe('service-router and service-resolver', () => {
  it('sends /v2/* to subset v2 (by meta) and the rest to v1 (by tag)', async () => {
    const v1 = await instance('api-v1', 'api', answer('v1'), { tags: ['v1'] })
    const v2 = await instance('api-v2', 'api', answer('v2'), { tags: ['v2'], meta: { version: 'v2' } })
    const { listener } = await outbound(new StaticEndpointSource([v1.endpoint, v2.endpoint]), {}, [
      {
        kind: 'service-resolver',
        name: 'api',
        value: {
          DefaultSubset: 'v1',
          Subsets: {
            v1: { Filter: 'Service.Tags contains "v1"' },
            v2: { Filter: 'Service.Meta.version == "v2"' },
          },
        },
      },
      {
        kind: 'service-router',
        name: 'api',
        value: {
          Routes: [{ Match: { HTTP: { PathPrefix: '/v2/' } }, Destination: { ServiceSubset: 'v2' } }],
        },
      },
    ])
    const agent = keepAlive()
    const paths = ['/v2/users', '/', '/v1/x', '/v2/', '/v2', '/other']
    const bodies = await runConcurrently(120, 8, (i) =>
      httpGet(listener.port, paths[i % paths.length]!, {}, agent),
    )
    bodies.forEach((r, i) => {
      const p = paths[i % paths.length]!
      expect(r.status).toBe(200)
      expect(r.body, p).toBe(p.startsWith('/v2/') ? 'v2' : 'v1')
    })
  })

  it('matches header, query and method, and rewrites request and response headers', async () => {
    const seen: http.IncomingHttpHeaders[] = []
    const a = await instance('api-1', 'api', (req, res) => {
      seen.push(req.headers)
      res.setHeader('x-internal', 'secret')
      res.end('a')
    })
    const b = await instance('b-1', 'backup', answer('backup'))
    const { listener } = await outbound(
      new StaticEndpointSource([a.endpoint]),
      { backup: new StaticEndpointSource([b.endpoint]) },
      [
        {
          kind: 'service-router',
          name: 'api',
          value: {
            Routes: [
              {
                Match: {
                  HTTP: {
                    Header: [{ Name: 'X-Canary', Exact: '1' }],
                    QueryParam: [{ Name: 'beta', Present: true }],
                    Methods: ['GET'],
                  },
                },
                Destination: { Service: 'backup' },
              },
              {
                Match: { HTTP: { PathExact: '/rewrite' } },
                Destination: {
                  RequestHeaders: { Add: { 'x-added': 'yes' }, Set: { 'x-set': 'one' }, Remove: ['x-drop'] },
                  ResponseHeaders: { Remove: ['x-internal'], Set: { 'x-served-by': 'mesh' } },
                },
              },
            ],
          },
        },
      ],
    )
    expect((await httpGet(listener.port, '/?beta=1', { 'x-canary': '1' })).body).toBe('backup')
    expect((await httpGet(listener.port, '/?beta=1', { 'x-canary': '2' })).body).toBe('a')
    expect((await httpGet(listener.port, '/', { 'x-canary': '1' })).body).toBe('a')
    const r = await httpGet(listener.port, '/rewrite', { 'x-set': 'zero', 'x-drop': 'gone' })
    expect(r.body).toBe('a')
    expect(r.headers['x-internal']).toBeUndefined()
    expect(r.headers['x-served-by']).toBe('mesh')
    const last = seen.at(-1)!
    expect(last['x-added']).toBe('yes')
    expect(last['x-set']).toBe('one')
    expect(last['x-drop']).toBeUndefined()
  })

  it('fails over to a second service when every instance of the first is gone, and back', async () => {
    const a = await instance('api-1', 'api', answer('api'))
    const b = await instance('backup-1', 'backup', answer('backup'))
    const apiSource = new StaticEndpointSource([a.endpoint])
    const { listener } = await outbound(apiSource, { backup: new StaticEndpointSource([b.endpoint]) }, [
      {
        kind: 'service-resolver',
        name: 'api',
        value: { Failover: { '*': { Targets: [{ Service: 'backup' }] } } },
      },
    ])
    expect((await httpGet(listener.port)).body).toBe('api')
    // The instance dies: requests in the ejection window are retried on the failover target.
    await a.stop()
    const during = await runConcurrently(50, 4, () => httpGet(listener.port))
    expect(during.filter((r) => r.status !== 200)).toEqual([])
    apiSource.set([]) // the catalog drops it
    const after = await runConcurrently(100, 4, () => httpGet(listener.port))
    expect(after.every((r) => r.status === 200 && r.body === 'backup')).toBe(true)
  })

  it('redirect sends every request to another service', async () => {
    const a = await instance('api-1', 'api', answer('api'))
    const b = await instance('backup-1', 'backup', answer('backup'))
    const { listener } = await outbound(
      new StaticEndpointSource([a.endpoint]),
      { backup: new StaticEndpointSource([b.endpoint]) },
      [{ kind: 'service-resolver', name: 'api', value: { Redirect: { Service: 'backup' } } }],
    )
    expect((await httpGet(listener.port)).body).toBe('backup')
    expect(a.hits()).toBe(0)
  })

  it('ring_hash on a header keeps a key on one instance', async () => {
    const xs = await Promise.all(['a', 'b', 'c'].map((n) => instance(`api-${n}`, 'api', answer(n))))
    const { listener } = await outbound(new StaticEndpointSource(xs.map((x) => x.endpoint)), {}, [
      {
        kind: 'service-resolver',
        name: 'api',
        value: {
          LoadBalancer: { Policy: 'ring_hash', HashPolicies: [{ Field: 'header', FieldValue: 'x-user' }] },
        },
      },
    ])
    const agent = keepAlive()
    const servedBy = new Map<string, Set<string>>()
    for (let i = 0; i < 90; i++) {
      const user = `u${i % 15}`
      const r = await httpGet(listener.port, '/', { 'x-user': user }, agent)
      servedBy.set(user, (servedBy.get(user) ?? new Set()).add(r.body))
    }
    for (const s of servedBy.values()) expect(s.size).toBe(1)
    expect(new Set([...servedBy.values()].flatMap((s) => [...s])).size).toBeGreaterThan(1)
  })
})

describe('timeouts, retries and limits', () => {
  it("service-defaults' LocalRequestTimeoutMs cuts a slow backend at the configured time", async () => {
    const slow = await instance('api-1', 'api', () => {}) // never answers
    const { listener, registry } = await outbound(new StaticEndpointSource([slow.endpoint]), {}, [
      { kind: 'service-defaults', name: 'api', value: { Protocol: 'http', LocalRequestTimeoutMs: 300 } },
    ])
    const started = performance.now()
    const r = await httpGet(listener.port)
    const took = performance.now() - started
    expect(r.status).toBe(504)
    expect(took).toBeGreaterThanOrEqual(295)
    expect(took).toBeLessThan(1_000) // the listener default is 15 s
    expect(await metricValue(registry, 'peermesh_proxy_errors_total', { reason: 'timeout' })).toBe(1)
    expect(await metricValue(registry, 'peermesh_proxy_responses_total', { code: '504', class: '5xx' })).toBe(
      1,
    )
  })

  it('a route RequestTimeout wins over service-defaults', async () => {
    const slow = await instance('api-1', 'api', () => {})
    const { listener } = await outbound(new StaticEndpointSource([slow.endpoint]), {}, [
      { kind: 'service-defaults', name: 'api', value: { LocalRequestTimeoutMs: 5000 } },
      {
        kind: 'service-router',
        name: 'api',
        value: { Routes: [{ Destination: { RequestTimeout: '200ms' } }] },
      },
    ])
    const started = performance.now()
    expect((await httpGet(listener.port)).status).toBe(504)
    expect(performance.now() - started).toBeLessThan(2_000)
  })

  it('retries on 503 from a router rule turn 50% errors into < 1%', async () => {
    let n = 0
    // Every other request fails: 50% exactly, so the outcome does not hang on luck.
    const flaky = await instance('api-1', 'api', (_req, res) => {
      res.statusCode = n++ % 2 === 0 ? 503 : 200
      res.end()
    })
    const { listener, registry } = await outbound(new StaticEndpointSource([flaky.endpoint]), {}, [
      {
        kind: 'service-router',
        name: 'api',
        value: { Routes: [{ Destination: { NumRetries: 3, RetryOnStatusCodes: [503] } }] },
      },
    ])
    const agent = keepAlive()
    const rs = await runConcurrently(400, 1, () => httpGet(listener.port, '/', {}, agent))
    const failed = rs.filter((r) => r.status !== 200).length
    expect(failed / rs.length).toBeLessThan(0.01)
    expect(await metricValue(registry, 'peermesh_proxy_retries_total')).toBeGreaterThanOrEqual(150)
  })

  it('without the router rule the same backend fails half the requests', async () => {
    let n = 0
    const flaky = await instance('api-1', 'api', (_req, res) => {
      res.statusCode = n++ % 2 === 0 ? 503 : 200
      res.end()
    })
    const { listener } = await outbound(new StaticEndpointSource([flaky.endpoint]), {}, [])
    const rs = await runConcurrently(100, 1, () => httpGet(listener.port))
    expect(rs.filter((r) => r.status === 503).length).toBe(50)
  })

  it('a concurrency limit of N rejects the N+1th concurrent request with 503 and a reason header', async () => {
    const held: http.ServerResponse[] = []
    let holding = true
    const app = await instance('api-1', 'api', (_req, res) => (holding ? held.push(res) : res.end('ok')))
    const N = 4
    const { listener, registry } = await outbound(new StaticEndpointSource([app.endpoint]), {}, [
      {
        kind: 'service-defaults',
        name: 'web',
        value: {
          UpstreamConfig: {
            Overrides: [{ Name: 'api', Limits: { MaxConcurrentRequests: N, MaxPendingRequests: 0 } }],
          },
        },
      },
    ])
    const agent = keepAlive()
    const inFlight = Array.from({ length: N }, () => httpGet(listener.port, '/', {}, agent))
    await waitFor(() => held.length === N, 5_000, 'N requests at the app')
    const extra = await httpGet(listener.port, '/', {}, agent)
    expect(extra.status).toBe(503)
    expect(extra.headers[REJECT_HEADER]).toBe('concurrency-limit')
    expect(
      await metricValue(registry, 'peermesh_proxy_limit_rejections_total', { reason: 'concurrency-limit' }),
    ).toBe(1)
    holding = false
    for (const res of held) res.end('ok')
    expect((await Promise.all(inFlight)).map((r) => r.status)).toEqual(Array(N).fill(200))
    // Slots are given back: a new request passes.
    expect((await httpGet(listener.port, '/', {}, agent)).status).toBe(200)
  })

  it('queues up to MaxPendingRequests and serves them when slots free', async () => {
    const held: http.ServerResponse[] = []
    const app = await instance('api-1', 'api', (_req, res) => held.push(res))
    const { listener } = await outbound(new StaticEndpointSource([app.endpoint]), {}, [
      {
        kind: 'proxy-defaults',
        name: 'global',
        value: {
          UpstreamConfig: { Defaults: { Limits: { MaxConcurrentRequests: 1, MaxPendingRequests: 2 } } },
        },
      },
    ])
    const agent = keepAlive()
    const accepted = [0, 1, 2].map(() => httpGet(listener.port, '/', {}, agent))
    await waitFor(() => held.length === 1, 5_000, 'one request at the app')
    expect((await httpGet(listener.port, '/', {}, agent)).status).toBe(503) // 1 active + 2 queued
    for (let i = 0; i < 3; i++) {
      await waitFor(() => held.length === i + 1, 5_000, `request ${i + 1} at the app`)
      held[i]!.end('ok')
    }
    expect((await Promise.all(accepted)).map((r) => r.status)).toEqual([200, 200, 200])
  })
})

describe('metrics and live changes', () => {
  it('the success rate computed from /metrics after a mixed 200/500 load is the true ratio', async () => {
    let n = 0
    // 3 in 10 fail, deterministically.
    const app = await instance('api-1', 'api', (_req, res) => {
      res.statusCode = n++ % 10 < 3 ? 500 : 200
      res.end()
    })
    const { listener, registry } = await outbound(new StaticEndpointSource([app.endpoint]), {}, [])
    const rs = await runConcurrently(500, 8, () => httpGet(listener.port))
    const trueRate = rs.filter((r) => r.status < 500).length / rs.length
    expect(trueRate).toBeCloseTo(0.7, 5)
    // What a Prometheus query does: sum(responses_total{class!="5xx"}) / sum(responses_total).
    const text = await registry.metrics()
    let ok = 0
    let all = 0
    for (const line of text.split('\n')) {
      const m = /^peermesh_proxy_responses_total\{([^}]*)\} (\d+)$/.exec(line)
      if (!m) continue
      all += Number(m[2])
      if (!m[1]!.includes('class="5xx"')) ok += Number(m[2])
    }
    expect(all).toBe(500)
    expect(ok / all).toBe(trueRate)
    expect(text).toMatch(/peermesh_proxy_request_duration_seconds_count\{[^}]*class="2xx"[^}]*\} 350/)
  })

  it('the inbound side of an http service counts responses by code too', async () => {
    const inboundRegistry = new Registry()
    let n = 0
    const app = await instance(
      'api-1',
      'api',
      (_req, res) => {
        res.statusCode = n++ % 5 === 0 ? 503 : 200
        res.end('x'.repeat(n % 3 === 0 ? 70_000 : 10)) // some bodies span many chunks
      },
      {},
      { registry: inboundRegistry, protocol: 'http' },
    )
    const { listener } = await outbound(new StaticEndpointSource([app.endpoint]), {}, [])
    const agent = keepAlive()
    const rs = await runConcurrently(200, 4, () => httpGet(listener.port, '/', {}, agent))
    const failed = rs.filter((r) => r.status === 503).length
    expect(failed).toBe(40)
    const inbound = (labels: Record<string, string>) =>
      metricValue(inboundRegistry, 'peermesh_proxy_responses_total', { direction: 'inbound', ...labels })
    await waitFor(async () => (await inbound({})) === 200, 5_000, 'inbound counts')
    expect(await inbound({ class: '5xx', code: '503' })).toBe(40)
    expect(await inbound({ class: '2xx' })).toBe(160)
  })

  it('a new policy applies to the next request without closing open connections', async () => {
    const v1 = await instance('api-v1', 'api', answer('v1'), { tags: ['v1'] })
    const v2 = await instance('api-v2', 'api', answer('v2'), { tags: ['v2'] })
    const { listener } = await outbound(new StaticEndpointSource([v1.endpoint, v2.endpoint]), {}, [
      { kind: 'service-splitter', name: 'api', value: { Splits: [{ Weight: 100, ServiceSubset: 'v1' }] } },
    ])
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
    cleanups.push(async () => agent.destroy())
    let sockets = 0
    agent.on('free', () => {})
    const first = await httpGet(listener.port, '/', {}, agent)
    expect(first.body).toBe('v1')
    const socket = Object.values(agent.freeSockets)[0]![0]!
    socket.on('close', () => sockets++)
    listener.setPolicy(
      compileUpstreamPolicy(
        trafficEntries([
          {
            kind: 'service-splitter',
            name: 'api',
            value: { Splits: [{ Weight: 100, ServiceSubset: 'v2' }] },
          },
        ]),
        'web',
        'api',
      ),
    )
    const second = await httpGet(listener.port, '/', {}, agent)
    expect(second.body).toBe('v2')
    expect(sockets).toBe(0) // the same client connection carried both
    expect(Object.values(agent.freeSockets)[0]![0]).toBe(socket)
  })

  it('access log: errors mode logs the failed requests only', async () => {
    const lines: Record<string, unknown>[] = []
    const logger = { info: (f: Record<string, unknown>) => lines.push(f), warn: () => {}, debug: () => {} }
    let n = 0
    const app = await instance('api-1', 'api', (_req, res) => {
      res.statusCode = n++ % 2 === 0 ? 500 : 200
      res.end()
    })
    const listener = new HttpOutboundListener({
      sourceService: 'web',
      destinationService: 'api',
      trustDomain: TD,
      bindPort: 0,
      certificates: new StaticCertificateSource(certs.get('web')!),
      endpoints: new StaticEndpointSource([app.endpoint]),
      logger,
      accessLog: 'errors',
    })
    await listener.start()
    cleanups.push(() => listener.stop())
    await runConcurrently(10, 1, () => httpGet(listener.port))
    await waitFor(() => lines.length >= 5, 2_000, 'access lines')
    expect(lines.map((l) => l['status'])).toEqual([500, 500, 500, 500, 500])
  })
})

describe('L4 (tcp) upstreams', () => {
  async function tcpOutbound(
    upstream: StaticEndpointSource,
    others: Record<string, StaticEndpointSource>,
    list: Parameters<typeof trafficEntries>[0],
  ) {
    const registry = new Registry()
    const listener = new OutboundListener({
      sourceService: 'web',
      destinationService: 'api',
      trustDomain: TD,
      bindPort: 0,
      certificates: new StaticCertificateSource(certs.get('web')!),
      endpoints: upstream,
      endpointsFor: (s) => others[s] ?? new StaticEndpointSource([]),
      policy: compileUpstreamPolicy(trafficEntries(list), 'web', 'api'),
      registry,
    })
    await listener.start()
    cleanups.push(() => listener.stop())
    return { listener, registry }
  }

  async function tcpInstance(id: string, service: string) {
    const x = await startInstance({ id, service, cert: certs.get(service)!, authorizer: allow, kind: 'tcp' })
    cleanups.push(() => x.stop())
    return x
  }

  it('fail over per connection to another service when the first has no instance left', async () => {
    const b = await tcpInstance('backup-1', 'backup')
    const apiSource = new StaticEndpointSource([])
    const { listener } = await tcpOutbound(apiSource, { backup: new StaticEndpointSource([b.endpoint]) }, [
      { kind: 'service-resolver', name: 'api', value: { Failover: { '*': { Service: 'backup' } } } },
    ])
    expect(await tcpRequest(listener.port, 'hi')).toBe('backup-1:hi')
  })

  it('MaxConnections closes the connection over the limit at once, and counts it', async () => {
    const a = await tcpInstance('api-1', 'api')
    const { listener, registry } = await tcpOutbound(new StaticEndpointSource([a.endpoint]), {}, [
      {
        kind: 'service-defaults',
        name: 'web',
        value: { UpstreamConfig: { Defaults: { Limits: { MaxConnections: 1 } } } },
      },
    ])
    const net = await import('node:net')
    const first = net.connect({ port: listener.port, host: '127.0.0.1' })
    cleanups.push(async () => void first.destroy())
    await new Promise<void>((r) => first.once('connect', () => r()))
    await waitFor(async () => (await metricValue(registry, 'peermesh_proxy_active_connections')) === 1)
    const closed = await new Promise<string>((resolve) => {
      const second = net.connect({ port: listener.port, host: '127.0.0.1' })
      let data = ''
      second.on('data', (d) => {
        data += d
      })
      second.on('error', () => {})
      second.on('close', () => resolve(data))
    })
    expect(closed).toBe('')
    expect(
      await metricValue(registry, 'peermesh_proxy_limit_rejections_total', { reason: 'concurrency-limit' }),
    ).toBe(1)
  })
})
