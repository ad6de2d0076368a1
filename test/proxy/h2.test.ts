/**
 * The HTTP/2 outbound listener and the HTTP/2 inbound path against h2c apps: per-request
 * balancing over one client session, headers, bodies and trailers end to end, retries on a gRPC
 * status, on a session that dies and on a refused stream, the trailers-only answers of the proxy
 * itself, and the inbound request gate.
 */
import http2 from 'node:http2'
import net, { type AddressInfo } from 'node:net'
import tls from 'node:tls'
import { Registry } from 'prom-client'
import { afterEach, beforeAll, describe, expect, it } from 'vitest'
import type { RootCa } from '../../src/identity/ca/ca.ts'
import { InboundListener } from '../../src/proxy/inbound.ts'
import { InboundGate } from '../../src/proxy/inbound-gate.ts'
import { IntentionIndex } from '../../src/proxy/intentions.ts'
import { H2OutboundListener, type H2OutboundListenerInit } from '../../src/proxy/outbound-h2.ts'
import type { RequestGate } from '../../src/proxy/request-gate.ts'
import {
  IntentionAuthorizer,
  StaticCertificateSource,
  StaticEndpointSource,
} from '../../src/proxy/sources.ts'
import { compileRetryOn, EMPTY_POLICY, type TrafficPolicy } from '../../src/proxy/traffic.ts'
import type { Endpoint, ServiceCertificate } from '../../src/proxy/types.ts'
import {
  deadPort,
  endpoint,
  leafFor,
  makeRoot,
  metricValue,
  runConcurrently,
  TD,
  waitFor,
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

type Handler = (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => void

interface H2App {
  port: number
  hits: number
  sessions: number
  lastHeaders: http2.IncomingHttpHeaders | undefined
  close(): Promise<void>
}

/**
 * An h2c app. By default a gRPC-shaped answer: 200, `content-type: application/grpc`, the body
 * `<name>:<request body>`, trailers `grpc-status: 0` and `x-served-by: <name>`.
 */
async function h2App(name: string, handler?: Handler): Promise<H2App> {
  const server = http2.createServer()
  const sessions = new Set<http2.Http2Session>()
  const app: H2App = { port: 0, hits: 0, sessions: 0, lastHeaders: undefined, close: async () => {} }
  server.on('session', (s) => {
    app.sessions++
    sessions.add(s)
    s.on('close', () => sessions.delete(s))
  })
  server.on('stream', (stream, headers) => {
    app.hits++
    app.lastHeaders = headers
    stream.on('error', () => {})
    if (handler) return handler(stream, headers)
    const chunks: Buffer[] = []
    stream.on('data', (c: Buffer) => chunks.push(c))
    stream.on('end', () => {
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true })
      stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0', 'x-served-by': name }))
      stream.end(`${name}:${Buffer.concat(chunks).toString()}`)
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  app.port = (server.address() as AddressInfo).port
  app.close = () =>
    new Promise<void>((resolve) => {
      for (const s of sessions) s.destroy()
      server.close(() => resolve())
    })
  cleanups.push(() => app.close())
  return app
}

async function inbound(
  app: { port: number },
  id: string,
  gate?: RequestGate,
  extra: { authorizer?: IntentionAuthorizer; registry?: Registry } = {},
) {
  const listener = new InboundListener({
    service: 'api',
    trustDomain: TD,
    port: 0,
    bindAddress: '127.0.0.1',
    localServicePort: app.port,
    certificates: new StaticCertificateSource(apiCert),
    authorizer: extra.authorizer ?? allow,
    protocol: 'grpc',
    ...(gate ? { gate } : {}),
    ...(extra.registry ? { registry: extra.registry } : {}),
  })
  await listener.start()
  cleanups.push(() => listener.stop())
  return { listener, endpoint: endpoint(id, listener.port) }
}

async function outbound(endpoints: Endpoint[], extra: Partial<H2OutboundListenerInit> = {}) {
  const registry = new Registry()
  const source = new StaticEndpointSource(endpoints)
  const listener = new H2OutboundListener({
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
  return { listener, registry, source }
}

/** web's sidecar in L4 mode (no ALPN h2) to `to`. */
async function l4Outbound(to: Endpoint) {
  const { OutboundListener } = await import('../../src/proxy/outbound-tcp.ts')
  const l4 = new OutboundListener({
    sourceService: 'web',
    destinationService: 'api',
    trustDomain: TD,
    bindPort: 0,
    certificates: new StaticCertificateSource(webCert),
    endpoints: new StaticEndpointSource([to]),
  })
  await l4.start()
  cleanups.push(() => l4.stop())
  return l4
}

function client(port: number): http2.ClientHttp2Session {
  const session = http2.connect(`http://127.0.0.1:${port}`)
  session.on('error', () => {})
  cleanups.push(async () => {
    session.destroy()
  })
  return session
}

interface Reply {
  status: number
  headers: http2.IncomingHttpHeaders
  body: string
  trailers: http2.IncomingHttpHeaders
  /** Non-zero: the stream was reset with this code. */
  rstCode: number
}

/** One request on `session`; `grpc` sets gRPC's content-type and `te: trailers`. */
function call(
  session: http2.ClientHttp2Session,
  opts: { path?: string; body?: string; grpc?: boolean; headers?: http2.OutgoingHttpHeaders } = {},
): Promise<Reply> {
  return new Promise((resolve) => {
    const req = session.request({
      ':method': 'POST',
      ':path': opts.path ?? '/pkg.Svc/Call',
      ...(opts.grpc !== false ? { 'content-type': 'application/grpc', te: 'trailers' } : {}),
      ...opts.headers,
    })
    const reply: Reply = { status: 0, headers: {}, body: '', trailers: {}, rstCode: 0 }
    req.on('response', (h) => {
      reply.status = Number(h[':status'])
      reply.headers = h
    })
    req.on('trailers', (t) => {
      reply.trailers = t
    })
    req.setEncoding('utf8')
    req.on('data', (d: string) => {
      reply.body += d
    })
    req.on('error', () => {})
    req.on('close', () => {
      reply.rstCode = req.rstCode ?? 0
      resolve(reply)
    })
    req.end(opts.body ?? 'hi')
  })
}

/** The gRPC status of a reply: from the trailers, or the headers of a trailers-only response. */
const grpcStatusOf = (r: Reply): string | undefined =>
  (r.trailers['grpc-status'] ?? r.headers['grpc-status']) as string | undefined

function policyWithRoute(destination: TrafficPolicy['routes'][number]['destination']): TrafficPolicy {
  return { ...EMPTY_POLICY, routes: [{ match: () => true, destination }] }
}

describe('H2OutboundListener', () => {
  it('balances each request over 3 instances on one client session, one session per instance', async () => {
    const apps = await Promise.all(['api-1', 'api-2', 'api-3'].map((n) => h2App(n)))
    const ins = await Promise.all(apps.map((a, i) => inbound(a, `api-${i + 1}`)))
    const { listener, registry } = await outbound(ins.map((x) => x.endpoint))
    const session = client(listener.port)
    const replies = await runConcurrently(600, 16, (i) => call(session, { body: `n${i}` }))
    expect(replies.every((r) => r.status === 200 && grpcStatusOf(r) === '0')).toBe(true)
    expect(replies[7]!.body).toMatch(/^api-\d:n7$/)
    for (const app of apps) {
      expect(app.hits).toBeGreaterThanOrEqual(600 / 3 - 60)
      expect(app.hits).toBeLessThanOrEqual(600 / 3 + 60)
      // One HTTP/2 session from the inbound to the app, one from the outbound to each inbound.
      expect(app.sessions).toBe(1)
    }
    expect(await metricValue(registry, 'peermesh_proxy_connections_total')).toBe(1)
    expect(await metricValue(registry, 'peermesh_proxy_requests_total')).toBe(600)
    expect(await metricValue(registry, 'peermesh_proxy_responses_total', { code: '200' })).toBe(600)
    expect(await metricValue(registry, 'peermesh_proxy_responses_total', { grpc_status: '0' })).toBe(600)
  })

  it('passes request and response headers, bodies and trailers; adds x-request-id', async () => {
    const app = await h2App('api-1', (stream, headers) => {
      const chunks: Buffer[] = []
      stream.on('data', (c: Buffer) => chunks.push(c))
      stream.on('end', () => {
        stream.respond(
          { ':status': 200, 'content-type': 'application/grpc', 'x-reply': String(headers['x-ask']) },
          { waitForTrailers: true },
        )
        stream.on('wantTrailers', () =>
          stream.sendTrailers({ 'grpc-status': '5', 'grpc-message': 'not%20found', 'x-t': 'end' }),
        )
        stream.end(Buffer.concat(chunks))
      })
    })
    const x = await inbound(app, 'api-1')
    const { listener, registry } = await outbound([x.endpoint])
    const big = 'y'.repeat(200_000) // larger than the replay buffer: streamed, not kept
    const r = await call(client(listener.port), { body: big, headers: { 'x-ask': 'q' } })
    expect(r.status).toBe(200)
    expect(r.headers['x-reply']).toBe('q')
    expect(r.body).toBe(big)
    expect(r.trailers['grpc-status']).toBe('5')
    expect(r.trailers['grpc-message']).toBe('not%20found')
    expect(r.trailers['x-t']).toBe('end')
    expect(app.lastHeaders?.te).toBe('trailers')
    expect(app.lastHeaders?.['x-request-id']).toMatch(/^[0-9a-f-]{36}$/)
    const grpc5 = () => metricValue(registry, 'peermesh_proxy_responses_total', { grpc_status: '5' })
    await waitFor(async () => (await grpc5()) === 1, 5_000, 'the call counted by grpc-status')
  })

  it('a grpc-status outside 0-16 from an endpoint is counted as UNKNOWN (2), not as a new label', async () => {
    const app = await h2App('api-1', (stream) => {
      stream.resume()
      stream.respond(
        { ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '7777777' },
        { endStream: true },
      )
    })
    const x = await inbound(app, 'api-1')
    const { listener, registry } = await outbound([x.endpoint])
    const r = await call(client(listener.port))
    expect(r.headers['grpc-status']).toBe('7777777') // passed through unchanged
    const count = (s: string) => metricValue(registry, 'peermesh_proxy_responses_total', { grpc_status: s })
    await waitFor(async () => (await count('2')) === 1, 5_000, 'the call counted as UNKNOWN')
    expect(await count('7777777')).toBe(0)
  })

  it('a plain HTTP/2 GET (headers only) gets its body; trailers only when it said te: trailers', async () => {
    const app = await h2App('api-1', (stream) => {
      stream.respond({ ':status': 200 }, { waitForTrailers: true })
      stream.on('wantTrailers', () => stream.sendTrailers({ 'x-t': 'end' }))
      stream.end('body')
    })
    const x = await inbound(app, 'api-1')
    const { listener } = await outbound([x.endpoint])
    const session = client(listener.port)
    const get = (headers: http2.OutgoingHttpHeaders) =>
      new Promise<Reply>((resolve) => {
        const req = session.request({ ':path': '/x', ...headers }, { endStream: true })
        const reply: Reply = { status: 0, headers: {}, body: '', trailers: {}, rstCode: 0 }
        req.on('response', (h) => {
          reply.status = Number(h[':status'])
        })
        req.on('trailers', (t) => {
          reply.trailers = t
        })
        req.setEncoding('utf8')
        req.on('data', (d: string) => {
          reply.body += d
        })
        req.on('close', () => resolve({ ...reply, rstCode: req.rstCode ?? 0 }))
      })
    const plain = await get({})
    expect([plain.status, plain.body, plain.rstCode, plain.trailers['x-t']]).toEqual([
      200,
      'body',
      0,
      undefined,
    ])
    const withTe = await get({ te: 'trailers' })
    expect([withTe.status, withTe.body, withTe.trailers['x-t']]).toEqual([200, 'body', 'end'])
    expect(app.lastHeaders?.[':method']).toBe('GET')
  })

  it('retries a trailers-only UNAVAILABLE when the route says RetryOn unavailable, not otherwise', async () => {
    const failing = await h2App('api-bad', (stream) => {
      stream.resume()
      stream.respond(
        { ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '14' },
        { endStream: true },
      )
    })
    const good = await h2App('api-good')
    const [a, b] = [await inbound(failing, 'api-bad'), await inbound(good, 'api-good')]
    const retrying = await outbound([a.endpoint, b.endpoint], {
      policy: policyWithRoute({ numRetries: 2, retryOn: compileRetryOn(['unavailable']) }),
    })
    const s1 = client(retrying.listener.port)
    const ok = await runConcurrently(60, 4, () => call(s1))
    expect(ok.map(grpcStatusOf)).toEqual(ok.map(() => '0'))
    expect(failing.hits).toBeGreaterThan(0)
    expect(await metricValue(retrying.registry, 'peermesh_proxy_retries_total')).toBe(failing.hits)

    const plain = await outbound([a.endpoint, b.endpoint])
    const s2 = client(plain.listener.port)
    const mixed = await runConcurrently(60, 4, () => call(s2))
    expect(mixed.some((r) => grpcStatusOf(r) === '14')).toBe(true)
  })

  it('a session that dies under pending calls: they are retried on another instance', async () => {
    let held = 0
    const hanging = await h2App('api-hang', (stream) => {
      held++
      stream.resume() // never answers
    })
    const good = await h2App('api-good')
    const h = await inbound(hanging, 'api-hang')
    const g = await inbound(good, 'api-good')
    const { listener, registry } = await outbound([h.endpoint, g.endpoint])
    const session = client(listener.port)
    const pending = Array.from({ length: 20 }, () => call(session))
    await waitFor(() => held > 0 && held + good.hits === 20, 5_000, 'calls spread over both')
    await h.listener.stop() // the instance goes away: its session to us dies
    const replies = await Promise.all(pending)
    expect(replies.map(grpcStatusOf)).toEqual(replies.map(() => '0'))
    expect(replies.every((r) => r.body.startsWith('api-good:'))).toBe(true)
    expect(await metricValue(registry, 'peermesh_proxy_retries_total')).toBe(held)
  })

  it('an app that dies under a call (its sidecar alive): the call goes to another instance', async () => {
    const crashing = await h2App('api-crash', (stream) => {
      stream.resume()
      stream.session?.destroy() // the app's connection dies with the request in
    })
    const good = await h2App('api-good')
    const c = await inbound(crashing, 'api-crash')
    const g = await inbound(good, 'api-good')
    const { listener, registry } = await outbound([c.endpoint, g.endpoint])
    const session = client(listener.port)
    const replies = await runConcurrently(40, 4, () => call(session))
    expect(replies.map(grpcStatusOf)).toEqual(replies.map(() => '0'))
    expect(crashing.hits).toBeGreaterThan(0)
    expect(good.hits).toBe(40)
    // Every call the crashing instance took (and any refused while its app reconnected) was retried.
    expect(await metricValue(registry, 'peermesh_proxy_retries_total')).toBeGreaterThanOrEqual(crashing.hits)
  })

  it('an app shut down after its response headers, before its trailers (as grpc-js forceShutdown): the call goes to another instance', async () => {
    // GOAWAY(NO_ERROR) then a destroy with CANCEL: the inbound's stream to the app can end
    // cleanly (code 0, no trailers), which must not reach the caller as a call without status.
    const dying = await h2App('api-dying', (stream) => {
      stream.resume()
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true })
      stream.write('partial')
      const session = stream.session!
      setTimeout(() => {
        session.close()
        session.destroy(http2.constants.NGHTTP2_CANCEL as unknown as Error)
      }, 5)
    })
    const good = await h2App('api-good')
    const d = await inbound(dying, 'api-dying')
    const g = await inbound(good, 'api-good')
    const { listener } = await outbound([d.endpoint, g.endpoint])
    const session = client(listener.port)
    const replies = await runConcurrently(40, 4, () => call(session))
    expect(replies.map(grpcStatusOf)).toEqual(replies.map(() => '0'))
    expect(dying.hits).toBeGreaterThan(0)
    expect(good.hits).toBe(40)
  })

  it('an instance lost while its gRPC response streams: the call ends with a status or a reset, never clean without one', async () => {
    let answering = 0
    const app = await h2App('api-big', (stream) => {
      stream.resume()
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true })
      stream.write(Buffer.alloc(96 * 1024)) // past the inbound's hold: the headers go out at once
      answering++
    })
    const h = await inbound(app, 'api-big')
    const { listener } = await outbound([h.endpoint])
    const session = client(listener.port)
    const pending = Array.from({ length: 4 }, () => call(session))
    await waitFor(() => answering === 4, 5_000, 'responses streaming')
    await h.listener.stop() // the instance's sidecar goes away mid-response
    for (const r of await Promise.all(pending)) {
      expect(r.status).toBe(200)
      if (r.rstCode === 0) expect(grpcStatusOf(r)).toBe('14')
    }
  })

  it('an instance whose app is down refuses the stream, and the call goes to another', async () => {
    const good = await h2App('api-good')
    const down = await inbound({ port: await deadPort() }, 'api-down')
    const g = await inbound(good, 'api-good')
    const { listener } = await outbound([down.endpoint, g.endpoint])
    const session = client(listener.port)
    const replies = await runConcurrently(40, 4, () => call(session))
    expect(replies.map(grpcStatusOf)).toEqual(replies.map(() => '0'))
    expect(good.hits).toBe(40)
  })

  it('answers gRPC clients with trailers-only statuses: 14 no endpoint, 4 timeout, 8 concurrency limit', async () => {
    const none = await outbound([])
    const r14 = await call(client(none.listener.port))
    expect(r14.status).toBe(200)
    expect(r14.headers['grpc-status']).toBe('14')
    expect(r14.headers['x-peermesh-error']).toBe('PEERMESH_ERR_NO_HEALTHY_ENDPOINT')

    const slow = await h2App('api-slow', (stream) => stream.resume())
    const s = await inbound(slow, 'api-slow')
    const timed = await outbound([s.endpoint], { requestTimeoutMs: 200 })
    const r4 = await call(client(timed.listener.port))
    expect(r4.headers['grpc-status']).toBe('4')

    const limited = await outbound([s.endpoint], {
      requestTimeoutMs: 5_000,
      policy: { ...EMPTY_POLICY, limits: { maxConcurrentRequests: 1, maxPendingRequests: 0 } },
    })
    const session = client(limited.listener.port)
    const first = call(session) // holds the only slot: the app never answers
    await waitFor(() => slow.hits >= 2, 5_000, 'the first call at the app')
    const r8 = await call(session)
    expect(r8.headers['grpc-status']).toBe('8')
    expect(r8.headers['x-peermesh-reject']).toBe('concurrency-limit')
    session.destroy()
    await first

    // A plain HTTP/2 client gets the HTTP status instead.
    const plain = await call(client(none.listener.port), { grpc: false })
    expect(plain.status).toBe(503)
    expect(plain.headers['grpc-status']).toBeUndefined()
  })
})

describe('HTTP/2 inbound', () => {
  it('a request the gate denies never reaches the app: grpc-status for gRPC, the status otherwise', async () => {
    const app = await h2App('api-1')
    const seen: string[] = []
    const gate: RequestGate = {
      check: (r) => {
        seen.push(`${r.source} ${r.method} ${r.path}`)
        return r.path.startsWith('/admin')
          ? { allow: false, reason: 'intention', status: 403, grpcStatus: 7 }
          : { allow: true }
      },
    }
    const x = await inbound(app, 'api-1', gate)
    const { listener } = await outbound([x.endpoint])
    const session = client(listener.port)
    const denied = await call(session, { path: '/admin.Svc/Drop' })
    expect(denied.status).toBe(200)
    expect(denied.headers['grpc-status']).toBe('7')
    const deniedPlain = await call(session, { path: '/admin?x=1', grpc: false })
    expect(deniedPlain.status).toBe(403)
    expect(app.hits).toBe(0)
    const ok = await call(session, { path: '/pkg.Svc/Call' })
    expect(grpcStatusOf(ok)).toBe('0')
    expect(app.hits).toBe(1)
    expect(seen).toEqual(['web POST /admin.Svc/Drop', 'web POST /admin', 'web POST /pkg.Svc/Call'])
  })

  it('intentions that turn to deny close open h2 connections; the app gets no further request', async () => {
    const app = await h2App('api-1')
    const authorizer = IntentionAuthorizer.from([{ source: 'web', destination: 'api', action: 'allow' }])
    const listener = new InboundListener({
      service: 'api',
      trustDomain: TD,
      port: 0,
      bindAddress: '127.0.0.1',
      localServicePort: app.port,
      certificates: new StaticCertificateSource(apiCert),
      authorizer,
      protocol: 'http2',
    })
    await listener.start()
    cleanups.push(() => listener.stop())
    const { listener: out } = await outbound([endpoint('api-1', listener.port)])
    const session = client(out.port)
    expect(grpcStatusOf(await call(session))).toBe('0')
    authorizer.update(new IntentionIndex([]))
    const after = await call(session)
    expect(grpcStatusOf(after)).toBe('14')
    expect(after.headers['x-peermesh-error']).toMatch(/^PEERMESH_ERR_UPSTREAM_(RESET|CONNECT)$/)
    expect(app.hits).toBe(1)
  })

  it('an h2 outbound to an inbound still in tcp mode (no ALPN) works through its L4 relay', async () => {
    const app = await h2App('api-1')
    const l4 = new InboundListener({
      service: 'api',
      trustDomain: TD,
      port: 0,
      bindAddress: '127.0.0.1',
      localServicePort: app.port,
      certificates: new StaticCertificateSource(apiCert),
      authorizer: allow,
    })
    await l4.start()
    cleanups.push(() => l4.stop())
    const { listener } = await outbound([endpoint('api-1', l4.port)])
    const r = await call(client(listener.port))
    expect([r.body, grpcStatusOf(r)]).toEqual(['api-1:hi', '0'])
  })

  it('an L7 source without ALPN h2 (bytes that would be relayed unchecked) is refused; over h2 each request is gated', async () => {
    const app = await h2App('api-1')
    const intentions = [
      {
        source: 'web',
        destination: 'api',
        permissions: [{ Action: 'allow' as const, HTTP: { PathPrefix: '/pkg.Svc/' } }],
      },
    ]
    const registry = new Registry()
    const gate = new InboundGate({
      service: 'api',
      intentions: () => new IntentionIndex(intentions),
      now: () => performance.now(),
    })
    const { listener } = await inbound(app, 'api-1', gate, {
      authorizer: IntentionAuthorizer.from(intentions),
      registry,
    })

    // Attacker's side: web's own valid leaf, but no ALPN h2, then an HTTP/2 request to a path the
    // intention does not allow. Relayed as bytes, no rule would see it: the connection is closed
    // unanswered.
    const raw = tls.connect({
      host: '127.0.0.1',
      port: listener.port,
      cert: webCert.certPem,
      key: webCert.keyPem,
      ca: webCert.rootsPem as string[],
      checkServerIdentity: () => undefined,
    })
    cleanups.push(async () => {
      raw.destroy()
    })
    raw.on('error', () => {})
    raw.on('secureConnect', () => raw.write('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'))
    let received = 0
    raw.on('data', (d: Buffer) => {
      received += d.length
    })
    await new Promise<void>((resolve) => raw.on('close', () => resolve()))
    expect(received).toBe(0)
    expect(await metricValue(registry, 'peermesh_proxy_inbound_denied_total', { source: 'web' })).toBe(1)
    // An L4 sidecar (no ALPN) of the same source is refused the same way.
    const l4 = await l4Outbound(endpoint('api-1', listener.port))
    const viaL4 = await call(client(l4.port), { path: '/admin.Svc/Drop' })
    expect(viaL4.status).toBe(0) // no response: the connection was refused
    expect(app.hits).toBe(0)
    // Each of the L4 sidecar's connection attempts was refused and counted.
    expect(
      await metricValue(registry, 'peermesh_proxy_inbound_denied_total', { source: 'web' }),
    ).toBeGreaterThan(1)

    // Over h2, the same source is served request by request under the intention's permissions.
    const { listener: out } = await outbound([endpoint('api-1', listener.port)])
    const session = client(out.port)
    expect(grpcStatusOf(await call(session, { path: '/pkg.Svc/Call' }))).toBe('0')
    expect(grpcStatusOf(await call(session, { path: '/admin.Svc/Drop' }))).toBe('7')
    expect(app.hits).toBe(1)
  })

  it('a caller without ALPN h2 (an L4 sidecar) is still relayed byte for byte', async () => {
    const app = await h2App('api-1')
    const x = await inbound(app, 'api-1')
    const l4 = await l4Outbound(x.endpoint)
    const r = await call(client(l4.port))
    expect(r.body).toBe('api-1:hi')
    expect(grpcStatusOf(r)).toBe('0')
  })
})

interface RawH2App {
  port: number
  /** The `:status` (any three digits) the next responses carry. */
  status: string
  /** Request HEADERS frames received. */
  requests: number
}

/**
 * A hostile HTTP/2 peer written in frames, as nghttp2 accepts them but Node's own server would
 * never send them: each request gets HEADERS `:status: <app.status>` with END_STREAM. Over TLS
 * (ALPN h2, with `tlsCert`) it plays an inbound sidecar, else an h2c app.
 */
async function rawH2App(status: string, tlsCert?: ServiceCertificate): Promise<RawH2App> {
  const app: RawH2App = { port: 0, status, requests: 0 }
  const frame = (type: number, flags: number, id: number, payload: Buffer): Buffer => {
    const h = Buffer.alloc(9)
    h.writeUIntBE(payload.length, 0, 3)
    h[3] = type
    h[4] = flags
    h.writeUInt32BE(id, 5)
    return Buffer.concat([h, payload])
  }
  const sockets = new Set<net.Socket>()
  const onSocket = (s: net.Socket): void => {
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
    s.on('error', () => {})
    let buf = Buffer.alloc(0)
    let prefaced = false
    s.write(frame(4, 0, 0, Buffer.alloc(0))) // SETTINGS
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d])
      if (!prefaced) {
        if (buf.length < 24) return
        buf = buf.subarray(24)
        prefaced = true
      }
      while (buf.length >= 9) {
        const len = buf.readUIntBE(0, 3)
        const [type, flags] = [buf[3]!, buf[4]!]
        const id = buf.readUInt32BE(5) & 0x7fffffff
        if (buf.length < 9 + len) return
        buf = buf.subarray(9 + len)
        if (type === 4 && (flags & 1) === 0) s.write(frame(4, 1, 0, Buffer.alloc(0))) // SETTINGS ack
        if (type === 1) {
          app.requests++
          // HPACK literal without indexing, name `:status` (static index 8), then the value.
          const block = Buffer.concat([Buffer.from([0x08, app.status.length]), Buffer.from(app.status)])
          s.write(frame(1, 0x4 | 0x1, id, block)) // HEADERS, END_HEADERS | END_STREAM
        }
      }
    })
  }
  const server =
    tlsCert === undefined
      ? net.createServer(onSocket)
      : tls.createServer(
          {
            key: tlsCert.keyPem,
            cert: tlsCert.certPem,
            ca: tlsCert.rootsPem as string[],
            requestCert: true,
            ALPNProtocols: ['h2'],
          },
          onSocket,
        )
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  app.port = (server.address() as AddressInfo).port
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy()
        server.close(() => resolve())
      }),
  )
  return app
}

/** A caller holding web's valid leaf, straight to an inbound over TLS with ALPN h2. */
function callerSession(port: number): http2.ClientHttp2Session {
  const session = http2.connect(`https://127.0.0.1:${port}`, {
    createConnection: () =>
      tls.connect({
        host: '127.0.0.1',
        port,
        cert: webCert.certPem,
        key: webCert.keyPem,
        ca: webCert.rootsPem as string[],
        checkServerIdentity: () => undefined,
        ALPNProtocols: ['h2'],
      }),
  })
  session.on('error', () => {})
  cleanups.push(async () => {
    session.destroy()
  })
  return session
}

describe('HTTP/2 responses Node cannot send', () => {
  it('inbound: an h2c app answering :status 600 gets its caller a 502 (gRPC: 14), and the sidecar keeps serving', async () => {
    const app = await rawH2App('600')
    const x = await inbound(app, 'api-1')
    const session = callerSession(x.listener.port)
    const plain = await call(session, { path: '/x', grpc: false })
    expect(plain.status).toBe(502)
    const grpc = await call(session, { path: '/pkg.Svc/Call' })
    expect(grpc.status).toBe(200)
    expect(grpc.headers['grpc-status']).toBe('14')
    app.status = '999'
    expect((await call(session, { path: '/x', grpc: false })).status).toBe(502)
    app.status = '200'
    expect((await call(session, { path: '/x', grpc: false })).status).toBe(200)
    expect(app.requests).toBe(4)
  })

  it('outbound: a peer with a valid leaf answering :status 600 gets the local app a 502 (gRPC: 14), and the listener keeps serving', async () => {
    const evil = await rawH2App('600', apiCert)
    const { listener } = await outbound([endpoint('api-1', evil.port)])
    const session = client(listener.port)
    const plain = await call(session, { path: '/x', grpc: false })
    expect(plain.status).toBe(502)
    expect(plain.headers['x-peermesh-error']).toBe('PEERMESH_ERR_UPSTREAM_RESET')
    const grpc = await call(session, { path: '/pkg.Svc/Call' })
    expect(grpc.headers['grpc-status']).toBe('14')
    evil.status = '200'
    expect((await call(session, { path: '/x', grpc: false })).status).toBe(200)
  })
})

describe('HTTP/2 inbound :path', () => {
  const intentions = [
    {
      source: 'web',
      destination: 'api',
      permissions: [
        { Action: 'allow' as const, HTTP: { PathPrefix: '/public' } },
        { Action: 'deny' as const, HTTP: { PathPrefix: '/admin' } },
      ],
    },
  ]
  async function gated() {
    const app = await h2App('api-1')
    const gate = new InboundGate({
      service: 'api',
      intentions: () => new IntentionIndex(intentions),
      now: () => performance.now(),
    })
    const x = await inbound(app, 'api-1', gate, { authorizer: IntentionAuthorizer.from(intentions) })
    return { app, session: callerSession(x.listener.port) }
  }

  it('is gated and forwarded normalized, as over HTTP/1.1: traversals 403, an escaped / 400, never at the app', async () => {
    const { app, session } = await gated()
    for (const path of [
      '/public/../admin/delete',
      '/public/%2e%2e/admin/delete',
      '/public/./..//admin/delete',
    ])
      expect((await call(session, { path, grpc: false })).status, path).toBe(403)
    for (const path of ['/public/..%2Fadmin', '/public/..%2fadmin?x=1', '/public\\..\\admin']) {
      const r = await call(session, { path, grpc: false })
      expect(r.status, path).toBe(400)
      expect(r.headers['x-peermesh-reject']).toBe('bad_path')
    }
    // gRPC: a traversal is PERMISSION_DENIED, a path that cannot be matched INTERNAL (HTTP 400's mapping).
    expect(grpcStatusOf(await call(session, { path: '/public/%2e%2e/admin.Svc/Drop' }))).toBe('7')
    expect(grpcStatusOf(await call(session, { path: '/public/..%2Fadmin.Svc/Drop' }))).toBe('13')
    expect(app.hits).toBe(0)
  })

  it('the app receives the path the gate saw, with the original query', async () => {
    const { app, session } = await gated()
    expect(grpcStatusOf(await call(session, { path: '/public/a' }))).toBe('0')
    expect(app.lastHeaders?.[':path']).toBe('/public/a')
    expect(grpcStatusOf(await call(session, { path: '/public/a?q=%2e%2e/x&b=1' }))).toBe('0')
    expect(app.lastHeaders?.[':path']).toBe('/public/a?q=%2e%2e/x&b=1')
    expect(grpcStatusOf(await call(session, { path: '/public/./b//%63/../d?x' }))).toBe('0')
    expect(app.lastHeaders?.[':path']).toBe('/public/b/d?x')
    expect(app.hits).toBe(3)
  })

  it('refuses CONNECT (no :path to gate), even where / is allowed', async () => {
    const app = await h2App('api-1')
    const x = await inbound(app, 'api-1')
    const session = callerSession(x.listener.port)
    const reply = await new Promise<{ status: number; rstCode: number }>((resolve) => {
      const req = session.request({ ':method': 'CONNECT', ':authority': 'internal-db:5432' })
      let status = 0
      req.on('response', (h) => {
        status = Number(h[':status'])
      })
      req.on('error', () => {})
      req.resume()
      req.on('close', () => resolve({ status, rstCode: req.rstCode ?? 0 }))
      req.end()
    })
    expect(reply.status).toBe(405)
    expect(app.hits).toBe(0)
    // The sidecar still serves the same connection.
    expect(grpcStatusOf(await call(session))).toBe('0')
  })
})
