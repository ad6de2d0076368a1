/**
 * The inbound of an http service over real mutual TLS: each request is gated with the caller's
 * verified service (L7 intentions, rate limits); refused requests get 403/429 from the sidecar
 * and never reach the app; a policy change applies to the next request on an open keep-alive
 * connection; an L7 intention is refused at the connection where requests cannot be checked.
 */
import http from 'node:http'
import https from 'node:https'
import net, { type AddressInfo } from 'node:net'
import tls from 'node:tls'
import { Registry } from 'prom-client'
import { afterEach, beforeAll, describe, expect, it } from 'vitest'
import type { RootCa } from '../../src/identity/ca/ca.ts'
import { InboundListener } from '../../src/proxy/inbound.ts'
import { InboundGate } from '../../src/proxy/inbound-gate.ts'
import { IntentionIndex } from '../../src/proxy/intentions.ts'
import { IntentionAuthorizer, StaticCertificateSource } from '../../src/proxy/sources.ts'
import type { RequestGate } from '../../src/proxy/request-gate.ts'
import type { ServiceCertificate } from '../../src/proxy/types.ts'
import type { RateLimits } from '../../src/raft/policy/config-entries.ts'
import { leafFor, makeRoot, memoryLogger, metricValue, TD, waitFor } from './helpers.ts'

let root: RootCa
let apiCert: ServiceCertificate
let webCert: ServiceCertificate
let opsCert: ServiceCertificate

beforeAll(async () => {
  root = await makeRoot()
  ;[apiCert, webCert, opsCert] = await Promise.all([
    leafFor(root, 'api'),
    leafFor(root, 'web'),
    leafFor(root, 'ops'),
  ])
})

const cleanups: (() => Promise<void> | void)[] = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

const L7 = [
  { Action: 'allow', HTTP: { PathExact: '/public', Methods: ['GET'] } },
  { Action: 'deny', HTTP: { PathPrefix: '/admin' } },
]

/** An app that records every request it sees, and its body. */
async function recordingApp() {
  const seen: string[] = []
  const bodies: string[] = []
  let connections = 0
  const server = http.createServer((req, res) => {
    seen.push(`${req.method} ${req.url}`)
    let body = ''
    req.setEncoding('utf8')
    req.on('data', (d: string) => {
      body += d
    })
    req.on('end', () => {
      bodies.push(body)
      res.end(`app:${req.url}`)
    })
  })
  server.on('connection', () => connections++)
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  cleanups.push(
    () =>
      new Promise<void>((r) => {
        server.closeAllConnections()
        server.close(() => r())
      }),
  )
  return { seen, bodies, port: (server.address() as AddressInfo).port, connections: () => connections }
}

async function apiInbound(opts: {
  intentions: unknown[]
  protocol?: 'tcp' | 'http'
  withGate?: boolean
  rateLimits?: RateLimits
  /** The local app's port; a recording app otherwise. */
  appPort?: number
}) {
  const app = await recordingApp()
  const authorizer = IntentionAuthorizer.from(opts.intentions)
  const registry = new Registry()
  const logger = memoryLogger()
  const gate: RequestGate | undefined =
    opts.withGate === false
      ? undefined
      : new InboundGate({
          service: 'api',
          intentions: () => authorizer.current(),
          rateLimits: opts.rateLimits,
          now: () => performance.now(),
        })
  const inbound = new InboundListener({
    service: 'api',
    trustDomain: TD,
    port: 0,
    bindAddress: '127.0.0.1',
    localServicePort: opts.appPort ?? app.port,
    certificates: new StaticCertificateSource(apiCert),
    authorizer,
    registry,
    logger,
    protocol: opts.protocol ?? 'http',
    ...(gate !== undefined ? { gate } : {}),
  })
  await inbound.start()
  cleanups.push(() => inbound.stop())
  return { app, inbound, authorizer, registry, logger }
}

/** A caller presenting `cert`, keeping its connection alive. */
function caller(cert: ServiceCertificate) {
  const agent = new https.Agent({
    keepAlive: true,
    maxSockets: 1,
    cert: cert.certPem,
    key: cert.keyPem,
    ca: cert.rootsPem as string[],
    checkServerIdentity: () => undefined,
  })
  cleanups.push(() => agent.destroy())
  const sockets = new Set<unknown>()
  const send = (port: number, method: string, path: string) =>
    new Promise<{ status: number; body: string; reject: unknown }>((resolve, reject) => {
      const req = https.request({ host: '127.0.0.1', port, method, path, agent }, (res) => {
        sockets.add(res.socket)
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
      req.end(method === 'POST' ? 'payload' : undefined)
    })
  return { send, sockets }
}

/** A raw TLS connection presenting `cert`: what it receives, and whether it closed. */
async function rawCaller(port: number, cert: ServiceCertificate = webCert) {
  const socket = tls.connect({
    host: '127.0.0.1',
    port,
    cert: cert.certPem,
    key: cert.keyPem,
    ca: cert.rootsPem as string[],
    checkServerIdentity: () => undefined,
  })
  cleanups.push(() => {
    socket.destroy()
  })
  let text = ''
  let closed = false
  socket.setEncoding('utf8')
  socket.on('data', (d: string) => {
    text += d
  })
  socket.on('error', () => {}) // a write after the sidecar closed: the test checks `closed`
  socket.on('close', () => {
    closed = true
  })
  await new Promise((r) => socket.once('secureConnect', r))
  return { socket, text: () => text, closed: () => closed }
}

describe('inbound HTTP with L7 intentions', () => {
  it('same source: GET /public reaches the app, POST /admin gets 403 from the sidecar on the same connection', async () => {
    const { app, inbound, registry, logger } = await apiInbound({
      intentions: [{ source: 'web', destination: 'api', permissions: L7 }],
    })
    const web = caller(webCert)
    expect(await web.send(inbound.port, 'GET', '/public')).toEqual({
      status: 200,
      body: 'app:/public',
      reject: undefined,
    })
    const denied = await web.send(inbound.port, 'POST', '/admin')
    expect(denied.status).toBe(403)
    expect(denied.reject).toBe('intention')
    expect(denied.body).toMatch(/web -> api POST \/admin denied by intention/)
    // Paths are matched normalized: a dot segment or a doubled slash does not reach /admin either.
    expect((await web.send(inbound.port, 'GET', '/public/../admin')).status).toBe(403)
    expect((await web.send(inbound.port, 'GET', '//admin')).status).toBe(403)
    expect((await web.send(inbound.port, 'GET', '/a%2Fadmin')).status).toBe(400)
    expect((await web.send(inbound.port, 'GET', '/other')).status).toBe(403) // default deny
    expect(app.seen).toEqual(['GET /public'])
    expect(web.sockets.size).toBe(1) // one keep-alive connection throughout
    expect(await metricValue(registry, 'peermesh_proxy_inbound_denied_total', { source: 'web' })).toBe(4)
    expect(await metricValue(registry, 'peermesh_proxy_responses_total', { code: '403' })).toBe(4)
    expect(await metricValue(registry, 'peermesh_proxy_responses_total', { code: '200' })).toBe(1)
    expect(await metricValue(registry, 'peermesh_proxy_requests_total', { direction: 'inbound' })).toBe(6)
    expect(
      logger.lines.some((l) => /inbound request denied src=web dst=api POST \/admin/.test(l.message)),
    ).toBe(true)
  })

  it('a policy change applies to the next request on an open keep-alive connection; losing L4 allow closes it', async () => {
    const { app, inbound, authorizer } = await apiInbound({
      intentions: [{ source: 'web', destination: 'api', permissions: L7 }],
    })
    const web = caller(webCert)
    expect((await web.send(inbound.port, 'POST', '/admin')).status).toBe(403)
    authorizer.update(
      new IntentionIndex([
        {
          source: 'web',
          destination: 'api',
          permissions: [{ Action: 'allow', HTTP: { PathPrefix: '/admin', Methods: ['POST'] } }],
        },
      ]),
    )
    expect((await web.send(inbound.port, 'POST', '/admin')).status).toBe(200)
    expect((await web.send(inbound.port, 'GET', '/public')).status).toBe(403)
    authorizer.update(new IntentionIndex([{ source: 'web', destination: 'api', action: 'allow' }]))
    expect((await web.send(inbound.port, 'GET', '/public')).status).toBe(200)
    expect(web.sockets.size).toBe(1)
    expect(inbound.openConnections).toBe(1)
    expect(app.seen).toEqual(['POST /admin', 'GET /public'])
    // No intention at all any more: the open connection is closed (the L4 recheck).
    authorizer.update(new IntentionIndex([]))
    await waitFor(() => inbound.openConnections === 0, 5_000, 'the connection closed')
  })

  it('an L7 intention cannot be enforced on a tcp inbound, or without a gate: the connection is refused', async () => {
    for (const opts of [{ protocol: 'tcp' as const }, { withGate: false }]) {
      const { app, inbound, registry } = await apiInbound({
        intentions: [{ source: 'web', destination: 'api', permissions: L7 }],
        ...opts,
      })
      await expect(caller(webCert).send(inbound.port, 'GET', '/public')).rejects.toThrow()
      expect(app.seen).toEqual([])
      expect(await metricValue(registry, 'peermesh_proxy_inbound_denied_total', { source: 'web' })).toBe(1)
    }
  })

  it('over RequestsPerSecond a source gets 429 while another source is unaffected', async () => {
    const { app, inbound, registry } = await apiInbound({
      intentions: [{ source: '*', destination: 'api', action: 'allow' }],
      rateLimits: { InstanceLevel: { RequestsPerSecond: 0.5, RequestsMaxBurst: 3 } },
    })
    const web = caller(webCert)
    const ops = caller(opsCert)
    const statuses: number[] = []
    for (let i = 0; i < 6; i++) statuses.push((await web.send(inbound.port, 'GET', '/x')).status)
    expect(statuses).toEqual([200, 200, 200, 429, 429, 429])
    const over = await web.send(inbound.port, 'GET', '/x')
    expect(over.reject).toBe('rate-limit')
    expect((await ops.send(inbound.port, 'GET', '/y')).status).toBe(200)
    expect(app.seen.filter((s) => s === 'GET /x')).toHaveLength(3)
    expect(
      await metricValue(registry, 'peermesh_proxy_limit_rejections_total', { reason: 'rate-limit' }),
    ).toBe(4)
    expect(await metricValue(registry, 'peermesh_proxy_responses_total', { code: '429' })).toBe(4)
  })

  it('forwards to the app over a keep-alive pool; when the app is down the connection is reset (the caller retries elsewhere)', async () => {
    const { app, inbound } = await apiInbound({
      intentions: [{ source: 'web', destination: 'api', action: 'allow' }],
    })
    const web = caller(webCert)
    for (let i = 0; i < 5; i++) expect((await web.send(inbound.port, 'GET', `/n${i}`)).status).toBe(200)
    expect(app.connections()).toBe(1)
    await cleanups.shift()!() // stops the app
    await expect(web.send(inbound.port, 'GET', '/down')).rejects.toThrow(/socket hang up|ECONNRESET/)
  })
})

describe('inbound HTTP: what callers send', () => {
  it('an HTTP/1.0 request without Host reaches the app (forwarded as HTTP/1.1 with one)', async () => {
    const { app, inbound } = await apiInbound({
      intentions: [{ source: 'web', destination: 'api', action: 'allow' }],
    })
    const socket = tls.connect({
      host: '127.0.0.1',
      port: inbound.port,
      cert: webCert.certPem,
      key: webCert.keyPem,
      ca: webCert.rootsPem as string[],
      checkServerIdentity: () => undefined,
    })
    let text = ''
    socket.setEncoding('utf8')
    socket.on('data', (d: string) => {
      text += d
    })
    await new Promise((r) => socket.once('secureConnect', r))
    socket.write('GET /old HTTP/1.0\r\n\r\n')
    await new Promise((r) => socket.once('close', r))
    expect(text).toMatch(/^HTTP\/1\.[01] 200/)
    expect(text).toMatch(/app:\/old$/)
    expect(app.seen).toEqual(['GET /old'])
  })

  it('a chunked GET body is forwarded chunked: a request hidden in it never reaches the app', async () => {
    const { app, inbound } = await apiInbound({
      intentions: [{ source: 'web', destination: 'api', permissions: L7 }],
    })
    const c = await rawCaller(inbound.port)
    const inner = 'POST /admin/delete-all HTTP/1.1\r\nhost: api\r\ncontent-length: 0\r\n\r\n'
    c.socket.write(
      `GET /public HTTP/1.1\r\nhost: api\r\ntransfer-encoding: chunked\r\n\r\n${inner.length.toString(16)}\r\n${inner}\r\n0\r\n\r\n`,
    )
    await waitFor(() => c.text().endsWith('app:/public'), 5_000, 'the response')
    expect(c.text()).toMatch(/^HTTP\/1\.1 200 /)
    // The app read the hidden request as the GET's body, and as nothing else.
    expect(app.bodies).toEqual([inner])
    expect(app.seen).toEqual(['GET /public'])
  })
})

describe('inbound HTTP: what the app answers', () => {
  it('a control character in the reason phrase: the caller gets 502, and the next request is served', async () => {
    let answers = 0
    const app = net.createServer((socket) => {
      socket.on('error', () => {})
      socket.on('data', () => {
        answers++
        socket.write(
          answers === 1
            ? 'HTTP/1.1 200 O\x01K\r\ncontent-length: 2\r\n\r\nok'
            : 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok',
        )
      })
    })
    const appPort = await new Promise<number>((r) =>
      app.listen(0, '127.0.0.1', () => r((app.address() as AddressInfo).port)),
    )
    cleanups.push(() => new Promise<void>((r) => app.close(() => r())))
    const { inbound, registry } = await apiInbound({
      intentions: [{ source: 'web', destination: 'api', action: 'allow' }],
      appPort,
    })
    const web = caller(webCert)
    const bad = await web.send(inbound.port, 'GET', '/public')
    expect(bad.status).toBe(502)
    expect(await web.send(inbound.port, 'GET', '/public')).toEqual({
      status: 200,
      body: 'ok',
      reject: undefined,
    })
    expect(web.sockets.size).toBe(1) // the caller's connection survived the 502
    expect(await metricValue(registry, 'peermesh_proxy_responses_total', { code: '502' })).toBe(1)
  }, 10_000)
})

describe('inbound HTTP: upgrades', () => {
  it('an app that does not upgrade: its answer is relayed and the connection closed, later requests never reach the app', async () => {
    const { app, inbound } = await apiInbound({
      intentions: [{ source: 'web', destination: 'api', permissions: L7 }],
    })
    const upgradeReq =
      'GET /public HTTP/1.1\r\nhost: api\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n'
    const smuggled = 'POST /admin/delete HTTP/1.1\r\nhost: api\r\ncontent-length: 0\r\n\r\n'
    // A request after the app's answer, on the same connection.
    const later = await rawCaller(inbound.port)
    later.socket.write(upgradeReq)
    await waitFor(() => later.text().endsWith('app:/public'), 5_000, 'the app answer')
    later.socket.write(smuggled)
    await waitFor(() => later.closed() || app.seen.length > 1, 3_000, 'the caller connection closed')
    expect(app.seen).toEqual(['GET /public'])
    expect(later.closed()).toBe(true)
    expect(later.text()).toMatch(/^HTTP\/1\.1 200 /)
    expect(later.text()).toMatch(/\r\nconnection: close\r\n/i)
    // A request sent with the upgrade request, before any answer.
    const pipelined = await rawCaller(inbound.port)
    pipelined.socket.write(upgradeReq + smuggled)
    await waitFor(() => pipelined.closed() || app.seen.length > 2, 3_000, 'the caller connection closed')
    expect(pipelined.text()).toMatch(/^HTTP\/1\.1 200 /)
    expect(pipelined.text().match(/HTTP\/1\.1 /g)).toHaveLength(1)
    expect(app.seen).toEqual(['GET /public', 'GET /public'])
  })

  it('an upgrade (WebSocket) passes the gate with its request, then is relayed as bytes; a denied one gets 403', async () => {
    // An app that upgrades, then echoes.
    const upgrading = http.createServer()
    upgrading.on('upgrade', (req, socket) => {
      socket.write(
        `HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: upgrade\r\nx-path: ${req.url}\r\n\r\n`,
      )
      socket.pipe(socket)
    })
    await new Promise<void>((r) => upgrading.listen(0, '127.0.0.1', r))
    cleanups.push(() => new Promise<void>((r) => upgrading.close(() => r())))
    const inbound = new InboundListener({
      service: 'api',
      trustDomain: TD,
      port: 0,
      bindAddress: '127.0.0.1',
      localServicePort: (upgrading.address() as AddressInfo).port,
      certificates: new StaticCertificateSource(apiCert),
      authorizer: IntentionAuthorizer.from([{ source: 'web', destination: 'api', permissions: L7 }]),
      protocol: 'http',
      gate: new InboundGate({
        service: 'api',
        intentions: () => new IntentionIndex([{ source: 'web', destination: 'api', permissions: L7 }]),
        now: () => performance.now(),
      }),
    })
    await inbound.start()
    cleanups.push(() => inbound.stop())
    const upgrade = async (path: string) => {
      const socket = tls.connect({
        host: '127.0.0.1',
        port: inbound.port,
        cert: webCert.certPem,
        key: webCert.keyPem,
        ca: webCert.rootsPem as string[],
        checkServerIdentity: () => undefined,
      })
      cleanups.push(() => {
        socket.destroy()
      })
      let text = ''
      socket.setEncoding('utf8')
      socket.on('data', (d: string) => {
        text += d
      })
      await new Promise((r) => socket.once('secureConnect', r))
      socket.write(`GET ${path} HTTP/1.1\r\nhost: api\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\n`)
      return { socket, text: () => text }
    }
    const ok = await upgrade('/public')
    await waitFor(() => ok.text().includes('\r\n\r\n'), 5_000, 'the 101')
    expect(ok.text()).toMatch(/^HTTP\/1\.1 101 /)
    expect(ok.text()).toMatch(/x-path: \/public/)
    ok.socket.write('ping')
    await waitFor(() => ok.text().endsWith('ping'), 5_000, 'the echo')
    const no = await upgrade('/admin')
    await waitFor(() => no.text().includes('\r\n\r\n'), 5_000, 'the 403')
    expect(no.text()).toMatch(/^HTTP\/1\.1 403 /)
    expect(no.text()).toMatch(/x-peermesh-reject: intention/)
    // Node reads no body for an upgrade request: one declaring a body is refused, not relayed.
    const withBody = await rawCaller(inbound.port)
    withBody.socket.write(
      'GET /public HTTP/1.1\r\nhost: api\r\nupgrade: echo\r\nconnection: upgrade\r\ncontent-length: 4\r\n\r\nbody',
    )
    await waitFor(withBody.closed, 5_000, 'the 400')
    expect(withBody.text()).toMatch(/^HTTP\/1\.1 400 /)
  })
})
