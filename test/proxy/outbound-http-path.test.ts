/**
 * The HTTP/1.1 outbound routes on the path the destination's inbound will see: normalized
 * (`normalizeRequestPath`), so a traversal under a routed prefix (`/public/../admin`) is not sent
 * along that prefix's route; a path that cannot be normalized is refused as the inbound refuses it
 * (400 with `x-peermesh-reject: bad_path`). The same as the HTTP/2 outbound (outbound-h2-path).
 */
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { Registry } from 'prom-client'
import { afterEach, beforeAll, describe, expect, it } from 'vitest'
import { compileUpstreamPolicy } from '../../src/node/sidecars/traffic-config.ts'
import { InboundListener } from '../../src/proxy/inbound.ts'
import { HttpOutboundListener } from '../../src/proxy/outbound-http.ts'
import {
  IntentionAuthorizer,
  StaticCertificateSource,
  StaticEndpointSource,
} from '../../src/proxy/sources.ts'
import type { ServiceCertificate } from '../../src/proxy/types.ts'
import { endpoint, leafFor, makeRoot, metricValue, TD, trafficEntries } from './helpers.ts'

const certs = new Map<string, ServiceCertificate>()
const allow = IntentionAuthorizer.from([{ source: '*', destination: '*', action: 'allow' }])

beforeAll(async () => {
  const root = await makeRoot()
  for (const s of ['web', 'api', 'public-api']) certs.set(s, await leafFor(root, s))
})

const cleanups: (() => Promise<void>)[] = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

/** An HTTP/1.1 app behind an inbound sidecar of `service`; answers `<service>`. */
async function backend(service: string) {
  const paths: string[] = []
  const server = http.createServer((req, res) => {
    paths.push(String(req.url))
    req.resume()
    req.on('end', () => res.end(service))
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  cleanups.push(
    () =>
      new Promise<void>((r) => {
        server.closeAllConnections()
        server.close(() => r())
      }),
  )
  const inbound = new InboundListener({
    service,
    trustDomain: TD,
    port: 0,
    bindAddress: '127.0.0.1',
    localServicePort: (server.address() as AddressInfo).port,
    certificates: new StaticCertificateSource(certs.get(service)!),
    authorizer: allow,
    protocol: 'http',
  })
  await inbound.start()
  cleanups.push(() => inbound.stop())
  return { paths, endpoint: endpoint(`${service}-1`, inbound.port, service) }
}

/**
 * web's HTTP outbound to `api`, whose router sends `/public` (prefix) to `public-api`, and
 * `/old/` (prefix, rewritten to `/public/`) there too; everything else goes to `api`.
 */
async function routed() {
  const a = await backend('public-api')
  const b = await backend('api')
  const registry = new Registry()
  const listener = new HttpOutboundListener({
    sourceService: 'web',
    destinationService: 'api',
    trustDomain: TD,
    bindPort: 0,
    certificates: new StaticCertificateSource(certs.get('web')!),
    endpoints: new StaticEndpointSource([b.endpoint]),
    endpointsFor: (s: string) =>
      s === 'public-api' ? new StaticEndpointSource([a.endpoint]) : new StaticEndpointSource([]),
    policy: compileUpstreamPolicy(
      trafficEntries([
        {
          kind: 'service-router',
          name: 'api',
          value: {
            Routes: [
              { Match: { HTTP: { PathPrefix: '/public' } }, Destination: { Service: 'public-api' } },
              {
                Match: { HTTP: { PathPrefix: '/old/' } },
                Destination: { Service: 'public-api', PrefixRewrite: '/public/' },
              },
            ],
          },
        },
      ]),
      'web',
      'api',
    ),
    registry,
  })
  await listener.start()
  cleanups.push(() => listener.stop())
  return { a, b, registry, port: listener.port }
}

interface Reply {
  status: number
  headers: http.IncomingHttpHeaders
  body: string
}

function call(port: number, path: string): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, method: 'GET', agent: false }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (d: string) => {
        body += d
      })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }))
    })
    req.on('error', reject)
    req.end()
  })
}

describe('HTTP/1.1 outbound path routing', () => {
  it('routes a traversal out of a routed prefix by where it lands: /public/../admin is not sent to /public’s service', async () => {
    const { a, b, port } = await routed()
    for (const path of [
      '/public/../admin',
      '/public/%2e%2e/admin',
      '/public/%2E%2E/admin?x=1',
      '/public/./..//admin',
      '/public//../admin',
    ]) {
      const r = await call(port, path)
      expect(r.status, path).toBe(200)
      expect(r.body, path).toBe('api')
    }
    expect(a.paths).toEqual([])
    expect(b.paths.every((p) => p === '/admin' || p === '/admin?x=1')).toBe(true)
    expect(b.paths).toHaveLength(5)
  })

  it('routes a path that lands under the prefix to its service, sent normalized with the original query', async () => {
    const { a, b, port } = await routed()
    expect((await call(port, '/public/x')).body).toBe('public-api')
    expect((await call(port, '/other/../public/y?q=%2e%2e/z')).body).toBe('public-api')
    expect((await call(port, '/public/./b//%63/../d?k')).body).toBe('public-api')
    expect(a.paths).toEqual(['/public/x', '/public/y?q=%2e%2e/z', '/public/b/d?k'])
    // A prefix rewrite applies to the normalized path.
    expect((await call(port, '/x/../old/%61')).body).toBe('public-api')
    expect(a.paths.at(-1)).toBe('/public/a')
    expect((await call(port, '/')).body).toBe('api')
    expect((await call(port, '/publicity')).body).toBe('public-api') // a prefix, as Consul's
    expect(b.paths).toEqual(['/'])
  })

  it('refuses a path that cannot be normalized as the inbound would: 400 bad_path, never forwarded', async () => {
    const { a, b, port, registry } = await routed()
    for (const path of [
      '/public/..%2Fadmin',
      '/public/..%2fadmin?x=1',
      '/public\\..\\admin',
      '/public/%zz',
      '*',
    ]) {
      const r = await call(port, path)
      expect(r.status, path).toBe(400)
      expect(r.headers['x-peermesh-reject'], path).toBe('bad_path')
      expect(r.headers['x-peermesh-error'], path).toBe('PEERMESH_ERR_BAD_PATH')
      expect(r.headers['x-request-id'], path).toMatch(/^[0-9a-f-]{36}$/)
    }
    expect(a.paths).toEqual([])
    expect(b.paths).toEqual([])
    expect(await metricValue(registry, 'peermesh_proxy_responses_total', { code: '400' })).toBe(5)
    expect((await call(port, '/public/ok')).body).toBe('public-api')
  })
})
