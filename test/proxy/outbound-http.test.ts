/**
 * The HTTP/1.1 outbound listener against real inbound listeners and HTTP apps: traffic splits,
 * request-id and traceparent pass-through, retries past a dead instance, timeouts, denials.
 */
import http from 'node:http'
import { Registry } from 'prom-client'
import { afterEach, beforeAll, describe, expect, it } from 'vitest'
import type { RootCa } from '../../src/identity/ca/ca.ts'
import {
  InvalidSplitConfigError,
  NoHealthyEndpointError,
  UpstreamDeniedError,
  UpstreamTimeoutError,
} from '../../src/proxy/errors.ts'
import { HttpOutboundListener, type HttpOutboundListenerInit } from '../../src/proxy/outbound-http.ts'
import {
  IntentionAuthorizer,
  StaticCertificateSource,
  StaticEndpointSource,
} from '../../src/proxy/sources.ts'
import type { ServiceCertificate } from '../../src/proxy/types.ts'
import {
  deadPort,
  endpoint,
  httpGet,
  leafFor,
  makeRoot,
  metricValue,
  runConcurrently,
  startInstance,
  TD,
} from './helpers.ts'

let root: RootCa
let apiCert: ServiceCertificate
let webCert: ServiceCertificate
const allow = IntentionAuthorizer.from([{ source: 'web', destination: 'api', action: 'allow' }])

beforeAll(async () => {
  root = await makeRoot()
  ;[apiCert, webCert] = await Promise.all([leafFor(root, 'api'), leafFor(root, 'web')])
})

const cleanups: (() => Promise<void>)[] = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

async function instance(id: string, tags: string[] = [], authorizer = allow) {
  const x = await startInstance({ id, service: 'api', cert: apiCert, authorizer, kind: 'http', tags })
  cleanups.push(() => x.stop())
  return x
}

async function outbound(source: StaticEndpointSource, extra: Partial<HttpOutboundListenerInit> = {}) {
  const registry = new Registry()
  const listener = new HttpOutboundListener({
    sourceService: 'web',
    destinationService: 'api',
    trustDomain: TD,
    bindPort: 0,
    certificates: new StaticCertificateSource(webCert),
    endpoints: source,
    registry,
    ...extra,
  })
  await listener.start()
  cleanups.push(() => listener.stop())
  return { listener, registry }
}

function clientAgent(): http.Agent {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 16 })
  cleanups.push(async () => agent.destroy())
  return agent
}

describe('HttpOutboundListener', () => {
  it('a 90/10 split over 2,000 requests lands within ±3 points', async () => {
    const v1 = await instance('api-v1', ['v1'])
    const v2 = await instance('api-v2', ['v2'])
    const { listener, registry } = await outbound(new StaticEndpointSource([v1.endpoint, v2.endpoint]), {
      split: [
        { weight: 90, subset: 'v1' },
        { weight: 10, subset: 'v2' },
      ],
    })
    const agent = clientAgent()
    const results = await runConcurrently(2_000, 16, () => httpGet(listener.port, '/', {}, agent))
    expect(results.every((r) => r.status === 200)).toBe(true)
    const toV2 = results.filter((r) => r.body === 'api-v2').length
    const share = (100 * toV2) / results.length
    expect(share).toBeGreaterThanOrEqual(7)
    expect(share).toBeLessThanOrEqual(13)
    expect(await metricValue(registry, 'peermesh_proxy_requests_total')).toBe(2_000)
    // Keep-alive: far fewer upstream connections than requests.
    expect(v1.inbound.openConnections + v2.inbound.openConnections).toBeLessThanOrEqual(32)
  })

  it('generates x-request-id when absent, and passes x-request-id and traceparent through', async () => {
    const api = await instance('api-1')
    const { listener } = await outbound(new StaticEndpointSource([api.endpoint]))
    await httpGet(listener.port, '/a')
    const generated = api.app.lastHeaders?.['x-request-id']
    expect(generated).toMatch(/^[0-9a-f-]{36}$/)

    const traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'
    const r = await httpGet(listener.port, '/b', { 'x-request-id': 'req-42', traceparent })
    expect(r.status).toBe(200)
    expect(api.app.lastHeaders?.['x-request-id']).toBe('req-42')
    expect(api.app.lastHeaders?.traceparent).toBe(traceparent)
  })

  it('3 endpoints, one dead: zero failed requests, retries, and the dead one is ejected', async () => {
    const a = await instance('api-1')
    const b = await instance('api-2')
    const dead = endpoint('api-dead', await deadPort())
    const { listener, registry } = await outbound(new StaticEndpointSource([a.endpoint, dead, b.endpoint]))
    const agent = clientAgent()
    const results = await runConcurrently(300, 8, () => httpGet(listener.port, '/', {}, agent))
    expect(results.filter((r) => r.status !== 200)).toEqual([])
    expect(await metricValue(registry, 'peermesh_proxy_retries_total')).toBeGreaterThan(0)
    expect(await metricValue(registry, 'peermesh_proxy_ejections_total')).toBeGreaterThanOrEqual(1)
    expect(await metricValue(registry, 'peermesh_proxy_errors_total')).toBe(0)
    const deadRecord = listener.core.pool.current.find((r) => r.endpoint.id === 'api-dead')!
    expect(deadRecord.outlier.timesEjected).toBeGreaterThanOrEqual(1)
  })

  it('answers 503 with a code when there is no endpoint, 504 on timeout, 502 when denied', async () => {
    const empty = await outbound(new StaticEndpointSource([]))
    const none = await httpGet(empty.listener.port)
    expect(none.status).toBe(503)
    expect(none.headers['x-peermesh-error']).toBe(NoHealthyEndpointError.code)

    const api = await instance('api-1')
    const slow = await outbound(new StaticEndpointSource([api.endpoint]), { requestTimeoutMs: 200 })
    const timedOut = await httpGet(slow.listener.port, '/hang')
    expect(timedOut.status).toBe(504)
    expect(timedOut.headers['x-peermesh-error']).toBe(UpstreamTimeoutError.code)
    expect(await metricValue(slow.registry, 'peermesh_proxy_errors_total', { reason: 'timeout' })).toBe(1)

    const deny = IntentionAuthorizer.from([{ source: 'web', destination: 'api', action: 'deny' }])
    const guarded = await instance('api-2', [], deny)
    const denied = await outbound(new StaticEndpointSource([guarded.endpoint]), { authorizer: deny })
    const refused = await httpGet(denied.listener.port)
    expect(refused.status).toBe(502)
    expect(refused.headers['x-peermesh-error']).toBe(UpstreamDeniedError.code)
    expect(guarded.app.hits).toBe(0)
  })

  it('rejects a malformed split', () => {
    const base = {
      sourceService: 'web',
      destinationService: 'api',
      trustDomain: TD,
      bindPort: 0,
      certificates: new StaticCertificateSource(webCert),
      endpoints: new StaticEndpointSource([]),
    }
    const bad = [
      [],
      [{ weight: -1, subset: 'v1' }],
      [{ weight: 0, subset: 'v1' }],
      [
        { weight: 50, subset: 'v1' },
        { weight: 50, subset: 'v1' },
      ],
    ]
    for (const split of bad) {
      expect(() => new HttpOutboundListener({ ...base, split })).toThrowError(
        expect.objectContaining({ code: InvalidSplitConfigError.code }),
      )
    }
  })
})
