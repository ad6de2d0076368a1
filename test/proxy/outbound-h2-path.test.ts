/**
 * The HTTP/2 outbound routes on the `:path` the destination's inbound will see: normalized
 * (`normalizeRequestPath`), so a traversal under a routed prefix (`/public/../admin`) is not sent
 * along that prefix's route; a path that cannot be normalized is refused as the inbound refuses
 * it (400 with `x-peermesh-reject: bad_path`, gRPC INTERNAL).
 */
import http2 from 'node:http2'
import type { AddressInfo } from 'node:net'
import { Registry } from 'prom-client'
import { afterEach, beforeAll, describe, expect, it } from 'vitest'
import { compileUpstreamPolicy } from '../../src/node/sidecars/traffic-config.ts'
import { InboundListener } from '../../src/proxy/inbound.ts'
import { H2OutboundListener } from '../../src/proxy/outbound-h2.ts'
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

/** An h2c app behind an inbound sidecar of `service`; answers `<service>` (gRPC-shaped). */
async function backend(service: string) {
  const paths: string[] = []
  const server = http2.createServer()
  const sessions = new Set<http2.Http2Session>()
  server.on('session', (s) => {
    sessions.add(s)
    s.on('close', () => sessions.delete(s))
  })
  server.on('stream', (stream, headers) => {
    paths.push(String(headers[':path']))
    stream.on('error', () => {})
    stream.resume()
    stream.on('end', () => {
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true })
      stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }))
      stream.end(service)
    })
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  cleanups.push(
    () =>
      new Promise<void>((r) => {
        for (const s of sessions) s.destroy()
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
    protocol: 'grpc',
  })
  await inbound.start()
  cleanups.push(() => inbound.stop())
  return { paths, endpoint: endpoint(`${service}-1`, inbound.port, service) }
}

/**
 * web's h2 outbound to `api`, whose router sends `/public` (prefix) to `public-api`, and
 * `/old/` (prefix, rewritten to `/public/`) there too; everything else goes to `api`.
 */
async function routed() {
  const a = await backend('public-api')
  const b = await backend('api')
  const registry = new Registry()
  const listener = new H2OutboundListener({
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
  const session = http2.connect(`http://127.0.0.1:${listener.port}`)
  session.on('error', () => {})
  cleanups.push(async () => {
    session.destroy()
  })
  return { a, b, session, registry }
}

interface Reply {
  status: number
  headers: http2.IncomingHttpHeaders
  body: string
  grpcStatus: string | undefined
}

function call(session: http2.ClientHttp2Session, path: string, grpc = true): Promise<Reply> {
  return new Promise((resolve) => {
    const req = session.request({
      ':method': 'POST',
      ':path': path,
      ...(grpc ? { 'content-type': 'application/grpc', te: 'trailers' } : {}),
    })
    const reply: Reply = { status: 0, headers: {}, body: '', grpcStatus: undefined }
    req.on('response', (h) => {
      reply.status = Number(h[':status'])
      reply.headers = h
      if (typeof h['grpc-status'] === 'string') reply.grpcStatus = h['grpc-status']
    })
    req.on('trailers', (t) => {
      if (typeof t['grpc-status'] === 'string') reply.grpcStatus = t['grpc-status']
    })
    req.setEncoding('utf8')
    req.on('data', (d: string) => {
      reply.body += d
    })
    req.on('error', () => {})
    req.on('close', () => resolve(reply))
    req.end('x')
  })
}

describe('HTTP/2 outbound :path routing', () => {
  it('routes a traversal out of a routed prefix by where it lands: /public/../admin is not sent to /public’s service', async () => {
    const { a, b, session } = await routed()
    for (const path of [
      '/public/../admin',
      '/public/%2e%2e/admin',
      '/public/%2E%2E/admin?x=1',
      '/public/./..//admin',
      '/public//../admin',
    ]) {
      for (const grpc of [true, false]) {
        const r = await call(session, path, grpc)
        expect(r.status, path).toBe(200)
        expect(r.body, path).toBe('api')
      }
    }
    expect(a.paths).toEqual([])
    expect(b.paths.every((p) => p === '/admin' || p === '/admin?x=1')).toBe(true)
    expect(b.paths).toHaveLength(10)
  })

  it('routes a path that lands under the prefix to its service, sent normalized with the original query', async () => {
    const { a, b, session } = await routed()
    expect((await call(session, '/public/x')).body).toBe('public-api')
    expect((await call(session, '/other/../public/y?q=%2e%2e/z')).body).toBe('public-api')
    expect((await call(session, '/public/./b//%63/../d?k')).body).toBe('public-api')
    expect(a.paths).toEqual(['/public/x', '/public/y?q=%2e%2e/z', '/public/b/d?k'])
    // A prefix rewrite applies to the normalized path.
    expect((await call(session, '/x/../old/%61')).body).toBe('public-api')
    expect(a.paths.at(-1)).toBe('/public/a')
    expect((await call(session, '/')).body).toBe('api')
    expect((await call(session, '/publicity')).body).toBe('public-api') // a prefix, as Consul's
    expect((await call(session, '/pkg.Svc/Call')).body).toBe('api')
    expect(b.paths).toEqual(['/', '/pkg.Svc/Call'])
  })

  it('refuses a path that cannot be normalized as the inbound would: 400 bad_path, gRPC INTERNAL; never forwarded', async () => {
    const { a, b, session, registry } = await routed()
    for (const path of [
      '/public/..%2Fadmin',
      '/public/..%2fadmin?x=1',
      '/public\\..\\admin',
      '/public/%zz',
    ]) {
      const r = await call(session, path, false)
      expect(r.status, path).toBe(400)
      expect(r.headers['x-peermesh-reject'], path).toBe('bad_path')
      expect(r.headers['x-request-id'], path).toMatch(/^[0-9a-f-]{36}$/)
      const g = await call(session, path)
      expect(g.status, path).toBe(200)
      expect(g.grpcStatus, path).toBe('13')
      expect(g.headers['x-peermesh-reject'], path).toBe('bad_path')
    }
    expect(a.paths).toEqual([])
    expect(b.paths).toEqual([])
    expect(await metricValue(registry, 'peermesh_proxy_responses_total', { code: '400' })).toBe(4)
    expect(await metricValue(registry, 'peermesh_proxy_responses_total', { grpc_status: '13' })).toBe(4)
    // The session still serves.
    expect((await call(session, '/public/ok')).body).toBe('public-api')
  })
})
