/**
 * From the attacker's side: a caller allowed at L4 (valid mesh certificate, an intention allowing
 * it) of a service whose requests are gated (rate limits here). A connection that negotiates no
 * ALPN or `http/1.1` to an http2 service would be relayed as bytes, so an h2c prior-knowledge
 * session on it would reach the app past the gate: it is refused and counted as denied, while h2
 * is served and gated request by request. An HTTP/1.1 service never relays bytes: h2c prior
 * knowledge gets nothing from the app either.
 */
import http2 from 'node:http2'
import type { AddressInfo } from 'node:net'
import tls from 'node:tls'
import { Registry } from 'prom-client'
import { afterEach, beforeAll, describe, expect, it } from 'vitest'
import type { RootCa } from '../../src/identity/ca/ca.ts'
import { InboundListener } from '../../src/proxy/inbound.ts'
import { InboundGate } from '../../src/proxy/inbound-gate.ts'
import { IntentionAuthorizer, StaticCertificateSource } from '../../src/proxy/sources.ts'
import type { ServiceCertificate } from '../../src/proxy/types.ts'
import type { RateLimits } from '../../src/raft/policy/config-entries.ts'
import { leafFor, makeRoot, memoryLogger, metricValue, startHttpApp, TD } from './helpers.ts'

let root: RootCa
let apiCert: ServiceCertificate
let webCert: ServiceCertificate

beforeAll(async () => {
  root = await makeRoot()
  ;[apiCert, webCert] = await Promise.all([leafFor(root, 'api'), leafFor(root, 'web')])
})

const cleanups: (() => Promise<void> | void)[] = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

/** One request a second, no burst: the second request of a burst is refused by the gate. */
const ONE_PER_SECOND = {
  InstanceLevel: { RequestsPerSecond: 1, RequestsMaxBurst: 1 },
} as unknown as RateLimits

async function gatedInbound(protocol: 'http' | 'http2', appPort: number) {
  const authorizer = IntentionAuthorizer.from([{ source: 'web', destination: 'api', action: 'allow' }])
  const registry = new Registry()
  const logger = memoryLogger()
  const gate = new InboundGate({
    service: 'api',
    intentions: () => authorizer.current(),
    rateLimits: ONE_PER_SECOND,
    now: () => performance.now(),
  })
  const inbound = new InboundListener({
    service: 'api',
    trustDomain: TD,
    port: 0,
    bindAddress: '127.0.0.1',
    localServicePort: appPort,
    certificates: new StaticCertificateSource(apiCert),
    authorizer,
    registry,
    logger,
    protocol,
    gate,
  })
  await inbound.start()
  cleanups.push(() => inbound.stop())
  return { inbound, registry, logger }
}

async function h2App() {
  const app = { port: 0, hits: 0 }
  const server = http2.createServer((_req, res) => {
    app.hits++
    res.end('app')
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  app.port = (server.address() as AddressInfo).port
  cleanups.push(() => new Promise<void>((resolve) => server.close(() => resolve())))
  return app
}

/**
 * `n` concurrent requests on one HTTP/2 session over TLS to `port` offering `alpn` (none: h2c
 * prior knowledge on whatever the server relays); the status of each, 0 for no response.
 */
async function burst(port: number, alpn: string[] | undefined, n: number): Promise<number[]> {
  const session = http2.connect('http://api', {
    createConnection: () =>
      tls.connect({
        host: '127.0.0.1',
        port,
        cert: webCert.certPem,
        key: webCert.keyPem,
        ca: [root.certPem],
        checkServerIdentity: () => undefined,
        ...(alpn ? { ALPNProtocols: alpn } : {}),
      }),
  })
  session.on('error', () => {})
  cleanups.push(() => {
    session.destroy()
  })
  const statuses = await Promise.all(
    Array.from(
      { length: n },
      () =>
        new Promise<number>((resolve) => {
          let status = 0
          const s = session.request({ ':path': '/x' }, { endStream: true })
          s.on('response', (h) => {
            status = Number(h[':status'])
            s.resume()
          })
          s.on('error', () => {})
          s.on('close', () => resolve(status))
        }),
    ),
  )
  session.destroy()
  return statuses
}

describe('inbound with a request gate, from the attacker side', () => {
  it.each([
    ['no ALPN', undefined],
    ['ALPN http/1.1', ['http/1.1']],
  ])(
    'http2 service: a connection with %s is refused, none of its requests reaches the app; h2 is gated',
    async (_what, alpn) => {
      const app = await h2App()
      const { inbound, registry, logger } = await gatedInbound('http2', app.port)
      expect(await burst(inbound.port, alpn, 20)).toEqual(Array(20).fill(0))
      expect(app.hits).toBe(0)
      expect(await metricValue(registry, 'peermesh_proxy_inbound_denied_total', { source: 'web' })).toBe(1)
      expect(
        await metricValue(registry, 'peermesh_proxy_errors_total', {
          direction: 'inbound',
          reason: 'denied',
        }),
      ).toBe(1)
      expect(logger.lines.filter((l) => l.message === 'inbound denied src=web dst=api')).toHaveLength(1)
      // Over h2 the same caller is served, one request a second.
      const statuses = await burst(inbound.port, ['h2'], 5)
      expect(statuses.filter((s) => s === 200)).toHaveLength(1)
      expect(statuses.filter((s) => s === 429)).toHaveLength(4)
      expect(app.hits).toBe(1)
      expect(inbound.openConnections).toBeLessThanOrEqual(1)
    },
  )

  it('http service: h2c prior knowledge is parsed as HTTP/1.1 and never reaches the app', async () => {
    const app = await startHttpApp('api-app')
    cleanups.push(() => app.close())
    const { inbound } = await gatedInbound('http', app.port)
    expect(await burst(inbound.port, undefined, 5)).toEqual(Array(5).fill(0))
    expect(app.hits).toBe(0)
  })
})
