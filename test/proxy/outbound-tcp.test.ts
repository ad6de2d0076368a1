/**
 * The L4 outbound listener against real inbound listeners: a dead instance costs retries, not
 * failed connections, and gets ejected; an instance that leaves the healthy set gets no new
 * connections.
 */
import { Registry } from 'prom-client'
import { afterEach, beforeAll, describe, expect, it } from 'vitest'
import type { RootCa } from '../../src/identity/ca/ca.ts'
import { InvalidProxyConfigError, NoCertificateError } from '../../src/proxy/errors.ts'
import { OutboundListener } from '../../src/proxy/outbound-tcp.ts'
import {
  IntentionAuthorizer,
  StaticCertificateSource,
  StaticEndpointSource,
} from '../../src/proxy/sources.ts'
import type { ServiceCertificate } from '../../src/proxy/types.ts'
import {
  deadPort,
  endpoint,
  leafFor,
  makeRoot,
  memoryLogger,
  metricValue,
  startInstance,
  TD,
  type TestInstance,
  tcpRequest,
  waitFor,
} from './helpers.ts'

let root: RootCa
let apiCert: ServiceCertificate
let webCert: ServiceCertificate
const authorizer = IntentionAuthorizer.from([{ source: 'web', destination: 'api', action: 'allow' }])

beforeAll(async () => {
  root = await makeRoot()
  ;[apiCert, webCert] = await Promise.all([leafFor(root, 'api'), leafFor(root, 'web')])
})

const cleanups: (() => Promise<void>)[] = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

async function instances(n: number): Promise<TestInstance[]> {
  const list = await Promise.all(
    Array.from({ length: n }, (_, i) =>
      startInstance({ id: `api-${i + 1}`, service: 'api', cert: apiCert, authorizer, kind: 'tcp' }),
    ),
  )
  for (const x of list) cleanups.push(() => x.stop())
  return list
}

async function outbound(source: StaticEndpointSource, registry = new Registry()) {
  const logger = memoryLogger()
  const listener = new OutboundListener({
    sourceService: 'web',
    destinationService: 'api',
    trustDomain: TD,
    bindPort: 0,
    certificates: new StaticCertificateSource(webCert),
    endpoints: source,
    registry,
    logger,
    accessLog: true,
  })
  await listener.start()
  cleanups.push(() => listener.stop())
  return { listener, registry, logger }
}

describe('OutboundListener (L4)', () => {
  it('3 endpoints, one dead: no failed connection, retries hide it, and outlier ejection kicks in', async () => {
    const [a, b] = await instances(2)
    const dead = endpoint('api-dead', await deadPort())
    const source = new StaticEndpointSource([a!.endpoint, b!.endpoint, dead])
    const { listener, registry, logger } = await outbound(source)

    const replies: string[] = []
    for (let i = 0; i < 60; i++) replies.push(await tcpRequest(listener.port, `m${i}`))
    expect(replies.every((r, i) => r === `api-1:m${i}` || r === `api-2:m${i}`)).toBe(true)
    expect(a!.app.hits + b!.app.hits).toBe(60)

    expect(await metricValue(registry, 'peermesh_proxy_errors_total')).toBe(0)
    expect(await metricValue(registry, 'peermesh_proxy_retries_total')).toBeGreaterThan(0)
    expect(await metricValue(registry, 'peermesh_proxy_ejections_total')).toBeGreaterThanOrEqual(1)
    expect(logger.lines.some((l) => l.message === 'outlier ejected upstream=api endpoint=api-dead')).toBe(
      true,
    )
    // Never more than half of the endpoints out: a healthy one was never ejected.
    const records = listener.core.pool.current
    expect(
      records.filter((r) => r.endpoint.id !== 'api-dead').every((r) => r.outlier.timesEjected === 0),
    ).toBe(true)
    // Access log: one line per connection, with the endpoint that served it.
    const access = () => logger.lines.filter((l) => l.message === 'access')
    await waitFor(() => access().length === 60, 2_000, 'an access line per connection')
    expect(access().every((l) => l.fields.result === 'ok' && l.fields.endpoint !== 'api-dead')).toBe(true)
  })

  it('an endpoint removed from the healthy set gets no new connections', async () => {
    const [a, b] = await instances(2)
    const source = new StaticEndpointSource([a!.endpoint, b!.endpoint])
    const { listener } = await outbound(source)
    for (let i = 0; i < 20; i++) await tcpRequest(listener.port, 'x')
    expect(b!.app.hits).toBeGreaterThan(0)

    source.set([a!.endpoint])
    const before = { a: a!.app.hits, b: b!.app.hits }
    for (let i = 0; i < 30; i++) expect(await tcpRequest(listener.port, 'y')).toBe('api-1:y')
    expect(b!.app.hits).toBe(before.b)
    expect(a!.app.hits).toBe(before.a + 30)
    expect(listener.core.pool.current.map((r) => r.endpoint.id)).toEqual(['api-1'])
  })

  it('with no healthy endpoint the connection is closed and counted', async () => {
    const { listener, registry } = await outbound(new StaticEndpointSource([]))
    await expect(tcpRequest(listener.port, 'x')).rejects.toThrow()
    expect(await metricValue(registry, 'peermesh_proxy_errors_total', { reason: 'no_endpoint' })).toBe(1)
  })

  it('rejects bad options and refuses to start without a certificate', async () => {
    const base = {
      sourceService: 'web',
      destinationService: 'api',
      trustDomain: TD,
      bindPort: 0,
      certificates: new StaticCertificateSource(webCert),
      endpoints: new StaticEndpointSource([]),
    }
    const codeOf = (fn: () => unknown) => {
      try {
        fn()
      } catch (e) {
        return (e as { code?: string }).code
      }
      return undefined
    }
    expect(codeOf(() => new OutboundListener({ ...base, maxAttempts: 0 }))).toBe(InvalidProxyConfigError.code)
    expect(codeOf(() => new OutboundListener({ ...base, bindPort: 70000 }))).toBe(
      InvalidProxyConfigError.code,
    )
    expect(codeOf(() => new OutboundListener({ ...base, outlier: { maxEjectionPercent: 120 } }))).toBe(
      InvalidProxyConfigError.code,
    )
    const noCert = new OutboundListener({ ...base, certificates: new StaticCertificateSource() })
    await expect(noCert.start()).rejects.toMatchObject({ code: NoCertificateError.code })
  })
})
