/**
 * Header fields that Node's view of a message and the bytes forwarded would read differently, from
 * the attacker's side, over real sockets: a field that takes one value sent twice (the L7 gate
 * would match the first, the app may read the last) gets 400; a transfer coding other than
 * `chunked` (forwarded re-chunked, the body would lose its codings) gets 501, on the inbound and
 * on the outbound HTTP/1.1 paths; a response with such a coding gets 502. Over HTTP/2 the inbound
 * forwards the header object the gate matched: the app sees the value the gate saw.
 */
import http from 'node:http'
import http2 from 'node:http2'
import net, { type AddressInfo } from 'node:net'
import tls from 'node:tls'
import { Registry } from 'prom-client'
import { afterEach, beforeAll, describe, expect, it } from 'vitest'
import type { RootCa } from '../../src/identity/ca/ca.ts'
import { hasUnsupportedTransferCoding, requestFieldProblem } from '../../src/proxy/http-field-checks.ts'
import { UpstreamProtocolError } from '../../src/proxy/http1-client.ts'
import { InboundListener } from '../../src/proxy/inbound.ts'
import { InboundGate } from '../../src/proxy/inbound-gate.ts'
import {
  DUPLICATE_HEADER_CODE,
  HttpOutboundListener,
  UNSUPPORTED_TRANSFER_CODING_CODE,
} from '../../src/proxy/outbound-http.ts'
import {
  IntentionAuthorizer,
  StaticCertificateSource,
  StaticEndpointSource,
} from '../../src/proxy/sources.ts'
import type { Endpoint, ServiceCertificate } from '../../src/proxy/types.ts'
import { endpoint, leafFor, makeRoot, metricValue, startInstance, TD } from './helpers.ts'

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

const ALLOW = [{ source: 'web', destination: 'api', action: 'allow' }]
/** GET /public with `Authorization: ok` only; everything else denied. */
const AUTH_RULE = [
  {
    source: 'web',
    destination: 'api',
    permissions: [
      {
        Action: 'allow',
        HTTP: { PathExact: '/public', Methods: ['GET'], Header: [{ Name: 'Authorization', Exact: 'ok' }] },
      },
    ],
  },
]

/** An HTTP app that records each request: its method, URL, raw headers and body. */
async function recordingApp() {
  const seen: { line: string; rawHeaders: string[]; body: string }[] = []
  const server = http.createServer((req, res) => {
    let body = ''
    req.setEncoding('utf8')
    req.on('data', (d: string) => {
      body += d
    })
    req.on('end', () => {
      seen.push({ line: `${req.method} ${req.url}`, rawHeaders: req.rawHeaders, body })
      res.end(`app:${req.url}`)
    })
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  cleanups.push(
    () =>
      new Promise<void>((r) => {
        server.closeAllConnections()
        server.close(() => r())
      }),
  )
  return { seen, port: (server.address() as AddressInfo).port }
}

/** A TCP app answering each request it reads with the next of `answers` (the last one repeats). */
async function scriptedApp(answers: string[]) {
  let n = 0
  const sockets = new Set<net.Socket>()
  const server = net.createServer((socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => {})
    let pending = ''
    socket.setEncoding('latin1')
    socket.on('data', (d: string) => {
      pending += d
      // Requests without a body: one per blank line.
      for (let end = pending.indexOf('\r\n\r\n'); end >= 0; end = pending.indexOf('\r\n\r\n')) {
        pending = pending.slice(end + 4)
        socket.write(answers[Math.min(n++, answers.length - 1)]!, 'latin1')
      }
    })
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  cleanups.push(
    () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy()
        server.close(() => r())
      }),
  )
  return { port: (server.address() as AddressInfo).port, requests: () => n }
}

async function apiInbound(intentions: unknown[], appPort: number) {
  const authorizer = IntentionAuthorizer.from(intentions)
  const registry = new Registry()
  const inbound = new InboundListener({
    service: 'api',
    trustDomain: TD,
    port: 0,
    bindAddress: '127.0.0.1',
    localServicePort: appPort,
    certificates: new StaticCertificateSource(apiCert),
    authorizer,
    registry,
    protocol: 'http',
    gate: new InboundGate({
      service: 'api',
      intentions: () => authorizer.current(),
      now: () => performance.now(),
    }),
  })
  await inbound.start()
  cleanups.push(() => inbound.stop())
  return { inbound, registry }
}

interface RawExchange {
  /** Everything received until the peer closed, or until a response that keeps it open ended. */
  text: string
  closed: boolean
}

/**
 * Whether `text` is a whole response that keeps its connection open: no `connection: close`, and
 * its body complete by its content-length or its last chunk.
 */
function endedKeepingAlive(text: string): boolean {
  const end = text.indexOf('\r\n\r\n')
  if (end < 0) return false
  const head = text.slice(0, end + 2)
  if (/\r\nconnection: *close\r\n/i.test(head)) return false
  const body = text.slice(end + 4)
  const length = /\r\ncontent-length: *(\d+)\r\n/i.exec(head)
  if (length !== null) return body.length >= Number(length[1])
  return /\r\ntransfer-encoding: *chunked\r\n/i.test(head) && /(^|\r\n)0\r\n\r\n$/.test(body)
}

/**
 * Sends `payload` on a new connection (mutual TLS as web when `tlsCert`, plain TCP otherwise) and
 * resolves with what came back once the peer closed, or once a response that keeps the connection
 * open ended (`closed` false).
 */
function rawExchange(
  port: number,
  payload: string,
  opts: { tlsCert?: ServiceCertificate } = {},
): Promise<RawExchange> {
  return new Promise((resolve, reject) => {
    const socket: net.Socket = opts.tlsCert
      ? tls.connect({
          host: '127.0.0.1',
          port,
          cert: opts.tlsCert.certPem,
          key: opts.tlsCert.keyPem,
          ca: opts.tlsCert.rootsPem as string[],
          checkServerIdentity: () => undefined,
        })
      : net.connect({ host: '127.0.0.1', port })
    cleanups.push(() => {
      socket.destroy()
    })
    let text = ''
    socket.setEncoding('latin1')
    socket.on('data', (d: string) => {
      text += d
      if (endedKeepingAlive(text)) {
        resolve({ text, closed: false })
        socket.destroy()
      }
    })
    socket.on('error', (error) => (text === '' ? reject(error) : undefined))
    socket.on('close', () => resolve({ text, closed: true }))
    socket.once(opts.tlsCert ? 'secureConnect' : 'connect', () => socket.write(payload, 'latin1'))
  })
}

const statusOf = (text: string): number => Number(/^HTTP\/1\.1 (\d{3}) /.exec(text)?.[1] ?? 0)
const headerOf = (text: string, name: string): string | undefined =>
  new RegExp(`\\r\\n${name}: *([^\\r]*)\\r\\n`, 'i').exec(text.slice(0, text.indexOf('\r\n\r\n') + 2))?.[1]

const CHUNKED_BODY = '5\r\nhello\r\n0\r\n\r\n'
const post = (framing: string) => `POST /public HTTP/1.1\r\nhost: api\r\n${framing}\r\n\r\n${CHUNKED_BODY}`

describe('inbound HTTP/1.1: header fields the gate and the app would read differently', () => {
  it('Authorization or User-Agent sent twice gets 400 and never reaches the app, even where the first value passes the rule', async () => {
    const app = await recordingApp()
    const { inbound, registry } = await apiInbound(AUTH_RULE, app.port)
    const get = (fields: string) =>
      rawExchange(inbound.port, `GET /public HTTP/1.1\r\nhost: api\r\n${fields}\r\n\r\n`, {
        tlsCert: webCert,
      })
    // The rule: `Authorization: ok` passes, anything else is denied.
    const ok = await get('Authorization: ok\r\nconnection: close')
    expect(statusOf(ok.text)).toBe(200)
    expect(statusOf((await get('Authorization: evil\r\nconnection: close')).text)).toBe(403)
    expect(app.seen).toHaveLength(1)

    for (const fields of [
      'Authorization: ok\r\nAuthorization: evil',
      'authorization: ok\r\nAUTHORIZATION: evil',
      'Authorization: ok\r\nUser-Agent: a\r\nUser-Agent: b',
      'Authorization: ok\r\nHost: other',
    ]) {
      const r = await get(fields)
      expect(statusOf(r.text), fields).toBe(400)
      expect(headerOf(r.text, 'x-peermesh-reject'), fields).toBe('duplicate_header')
      expect(headerOf(r.text, 'connection'), fields).toBe('close')
      expect(r.closed, fields).toBe(true)
    }
    expect(app.seen).toHaveLength(1) // only the first GET
    expect(await metricValue(registry, 'peermesh_proxy_errors_total', { reason: 'duplicate_header' })).toBe(4)
    expect(await metricValue(registry, 'peermesh_proxy_responses_total', { code: '400' })).toBe(4)
  })

  it('an upgrade request with Authorization twice gets 400 before the gate', async () => {
    const app = await recordingApp()
    const { inbound } = await apiInbound(AUTH_RULE, app.port)
    const r = await rawExchange(
      inbound.port,
      'GET /public HTTP/1.1\r\nhost: api\r\nupgrade: websocket\r\nconnection: upgrade\r\nAuthorization: ok\r\nAuthorization: evil\r\n\r\n',
      { tlsCert: webCert },
    )
    expect(statusOf(r.text)).toBe(400)
    expect(headerOf(r.text, 'x-peermesh-reject')).toBe('duplicate_header')
    expect(app.seen).toEqual([])
  })

  it('transfer-encoding other than chunked gets 501 and never reaches the app; chunked still does', async () => {
    const app = await recordingApp()
    const { inbound, registry } = await apiInbound(ALLOW, app.port)
    for (const framing of [
      'Transfer-Encoding: gzip, chunked',
      'Transfer-Encoding: identity, chunked',
      'Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked',
    ]) {
      const r = await rawExchange(inbound.port, post(framing), { tlsCert: webCert })
      expect(statusOf(r.text), framing).toBe(501)
      expect(headerOf(r.text, 'x-peermesh-reject'), framing).toBe('unsupported_transfer_coding')
      expect(headerOf(r.text, 'connection'), framing).toBe('close')
      expect(r.closed, framing).toBe(true)
    }
    expect(app.seen).toEqual([])
    expect(
      await metricValue(registry, 'peermesh_proxy_errors_total', { reason: 'unsupported_transfer_coding' }),
    ).toBe(3)
    expect(await metricValue(registry, 'peermesh_proxy_responses_total', { code: '501' })).toBe(3)

    for (const framing of ['Transfer-Encoding: chunked', 'Transfer-Encoding:  Chunked ']) {
      const r = await rawExchange(inbound.port, post(framing), { tlsCert: webCert })
      expect(statusOf(r.text), framing).toBe(200)
    }
    expect(app.seen.map((s) => [s.line, s.body])).toEqual([
      ['POST /public', 'hello'],
      ['POST /public', 'hello'],
    ])
  })

  it('an app response with transfer-encoding gzip, chunked gets the caller a 502; the next request is served', async () => {
    const gzipped = '\x1f\x8b\x08\x00\x00\x00\x00\x00'
    const app = await scriptedApp([
      `HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n${gzipped.length.toString(16)}\r\n${gzipped}\r\n0\r\n\r\n`,
      'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok',
    ])
    const { inbound, registry } = await apiInbound(ALLOW, app.port)
    const get = 'GET /x HTTP/1.1\r\nhost: api\r\n\r\n'
    const bad = await rawExchange(inbound.port, get, { tlsCert: webCert })
    expect(statusOf(bad.text)).toBe(502)
    expect(bad.text).not.toContain(gzipped)
    expect(await metricValue(registry, 'peermesh_proxy_errors_total', { reason: 'protocol' })).toBe(1)
    const good = await rawExchange(inbound.port, get, { tlsCert: webCert })
    expect(statusOf(good.text)).toBe(200)
    expect(app.requests()).toBe(2)
  })
})

describe('outbound HTTP/1.1: header fields routing and the upstream would read differently', () => {
  async function outbound(endpoints: Endpoint[]) {
    const registry = new Registry()
    const listener = new HttpOutboundListener({
      sourceService: 'web',
      destinationService: 'api',
      trustDomain: TD,
      bindPort: 0,
      certificates: new StaticCertificateSource(webCert),
      endpoints: new StaticEndpointSource(endpoints),
      registry,
    })
    await listener.start()
    cleanups.push(() => listener.stop())
    return { listener, registry }
  }

  it('transfer-encoding other than chunked gets 501, a field that takes one value sent twice 400: no attempt', async () => {
    const api = await startInstance({
      id: 'api-1',
      service: 'api',
      cert: apiCert,
      authorizer: IntentionAuthorizer.from(ALLOW),
      kind: 'http',
    })
    cleanups.push(() => api.stop())
    const { listener, registry } = await outbound([api.endpoint])
    for (const framing of [
      'Transfer-Encoding: gzip, chunked',
      'Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked',
    ]) {
      const r = await rawExchange(listener.port, post(framing))
      expect(statusOf(r.text), framing).toBe(501)
      expect(headerOf(r.text, 'x-peermesh-error'), framing).toBe(UNSUPPORTED_TRANSFER_CODING_CODE)
      expect(headerOf(r.text, 'connection'), framing).toBe('close')
      expect(r.closed, framing).toBe(true)
    }
    const dup = await rawExchange(
      listener.port,
      'GET /public HTTP/1.1\r\nhost: api\r\nAuthorization: ok\r\nAuthorization: evil\r\n\r\n',
    )
    expect(statusOf(dup.text)).toBe(400)
    expect(headerOf(dup.text, 'x-peermesh-error')).toBe(DUPLICATE_HEADER_CODE)
    expect(dup.closed).toBe(true)
    expect(api.app.hits).toBe(0)
    expect(
      await metricValue(registry, 'peermesh_proxy_errors_total', { reason: 'unsupported_transfer_coding' }),
    ).toBe(2)
    expect(await metricValue(registry, 'peermesh_proxy_errors_total', { reason: 'duplicate_header' })).toBe(1)
    expect(await metricValue(registry, 'peermesh_proxy_responses_total', { code: '501' })).toBe(2)

    // Plain chunked still goes through.
    const ok = await rawExchange(listener.port, post('Transfer-Encoding: chunked'))
    expect(statusOf(ok.text)).toBe(200)
    expect(api.app.hits).toBe(1)
  })

  it('an upstream response with transfer-encoding gzip, chunked is a protocol error (502)', async () => {
    const gzipped = '\x1f\x8b\x08\x00\x00\x00\x00\x00'
    const app = await scriptedApp([
      `HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n${gzipped.length.toString(16)}\r\n${gzipped}\r\n0\r\n\r\n`,
    ])
    // An instance whose inbound is in tcp mode: the app's bytes reach the outbound as they are.
    const inbound = new InboundListener({
      service: 'api',
      trustDomain: TD,
      port: 0,
      bindAddress: '127.0.0.1',
      localServicePort: app.port,
      certificates: new StaticCertificateSource(apiCert),
      authorizer: IntentionAuthorizer.from(ALLOW),
    })
    await inbound.start()
    cleanups.push(() => inbound.stop())
    const { listener, registry } = await outbound([endpoint('api-1', inbound.port)])
    const r = await rawExchange(listener.port, 'GET /x HTTP/1.1\r\nhost: api\r\n\r\n')
    expect(statusOf(r.text)).toBe(502)
    expect(headerOf(r.text, 'x-peermesh-error')).toBe(UpstreamProtocolError.code)
    expect(r.text).not.toContain(gzipped)
    expect(await metricValue(registry, 'peermesh_proxy_errors_total', { reason: 'protocol' })).toBe(1)
  })
})

describe('inbound HTTP/2: a field that takes one value sent twice', () => {
  /** An HPACK literal field without indexing, new name, no Huffman (names and values < 127 bytes). */
  const literal = (name: string, value: string) =>
    Buffer.concat([
      Buffer.from([0, name.length]),
      Buffer.from(name),
      Buffer.from([value.length]),
      Buffer.from(value),
    ])
  const frame = (type: number, flags: number, stream: number, payload: Buffer) => {
    const head = Buffer.alloc(9)
    head.writeUIntBE(payload.length, 0, 3)
    head[3] = type
    head[4] = flags
    head.writeUInt32BE(stream, 5)
    return Buffer.concat([head, payload])
  }
  /** `:status` of a response HEADERS block that starts with an indexed static `:status` (RFC 7541 App. A). */
  const STATIC_STATUS: Record<number, number> = {
    8: 200,
    9: 204,
    10: 206,
    11: 304,
    12: 400,
    13: 404,
    14: 500,
  }

  /**
   * One GET on a new h2 connection as web, with `fields` as given (Node's client refuses to send a
   * single-value field twice): resolves with the response's `:status` when it is a static one, or
   * -1 (another status), once stream 1 has its response headers or is reset (0).
   */
  function rawH2Get(port: number, fields: [string, string][]): Promise<number> {
    return new Promise((resolve, reject) => {
      const socket = tls.connect({
        host: '127.0.0.1',
        port,
        cert: webCert.certPem,
        key: webCert.keyPem,
        ca: webCert.rootsPem as string[],
        checkServerIdentity: () => undefined,
        ALPNProtocols: ['h2'],
      })
      cleanups.push(() => {
        socket.destroy()
      })
      socket.on('error', reject)
      socket.once('secureConnect', () => {
        const block = Buffer.concat(
          [[':method', 'GET'], [':scheme', 'https'], [':authority', 'api'], ...fields].map(([n, v]) =>
            literal(n!, v!),
          ),
        )
        socket.write(
          Buffer.concat([
            Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'),
            frame(4, 0, 0, Buffer.alloc(0)), // SETTINGS
            frame(1, 0x5, 1, block), // HEADERS, END_STREAM | END_HEADERS
          ]),
        )
      })
      let buf = Buffer.alloc(0)
      socket.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d])
        while (buf.length >= 9) {
          const length = buf.readUIntBE(0, 3)
          if (buf.length < 9 + length) break
          const [type, flags] = [buf[3]!, buf[4]!]
          const stream = buf.readUInt32BE(5) & 0x7fffffff
          const payload = buf.subarray(9, 9 + length)
          buf = buf.subarray(9 + length)
          if (type === 4 && (flags & 1) === 0) socket.write(frame(4, 1, 0, Buffer.alloc(0))) // SETTINGS ACK
          if (type === 1 && stream === 1) resolve(STATIC_STATUS[payload[0]! & 0x7f] ?? -1)
          if (type === 3 && stream === 1) resolve(0) // RST_STREAM
        }
      })
    })
  }

  it('the app gets the value the gate matched (the first), and only it', async () => {
    const seen: { headers: http2.IncomingHttpHeaders; rawHeaders: string[] }[] = []
    const app = http2.createServer()
    // Node passes the stream's raw fields as the 4th argument (its types stop at 3).
    app.on(
      'stream',
      (
        stream: http2.ServerHttp2Stream,
        headers: http2.IncomingHttpHeaders,
        _flags: number,
        rawHeaders: string[],
      ) => {
        seen.push({ headers, rawHeaders })
        stream.respond({ ':status': 200 })
        stream.end('ok')
      },
    )
    await new Promise<void>((r) => app.listen(0, '127.0.0.1', r))
    cleanups.push(() => new Promise<void>((r) => app.close(() => r())))
    const authorizer = IntentionAuthorizer.from(AUTH_RULE)
    const inbound = new InboundListener({
      service: 'api',
      trustDomain: TD,
      port: 0,
      bindAddress: '127.0.0.1',
      localServicePort: (app.address() as AddressInfo).port,
      certificates: new StaticCertificateSource(apiCert),
      authorizer,
      protocol: 'http2',
      gate: new InboundGate({
        service: 'api',
        intentions: () => authorizer.current(),
        now: () => performance.now(),
      }),
    })
    await inbound.start()
    cleanups.push(() => inbound.stop())

    // First value allowed by the rule: the app gets that one, not the second, in its raw fields too.
    expect(
      await rawH2Get(inbound.port, [
        [':path', '/public'],
        ['authorization', 'ok'],
        ['authorization', 'evil'],
        ['user-agent', 'a'],
        ['user-agent', 'b'],
      ]),
    ).toBe(200)
    expect(seen).toHaveLength(1)
    expect(seen[0]!.headers.authorization).toBe('ok')
    expect(seen[0]!.headers['user-agent']).toBe('a')
    const raw = seen[0]!.rawHeaders
    const values = (name: string) => raw.filter((_, i) => i % 2 === 1 && raw[i - 1] === name)
    expect(values('authorization')).toEqual(['ok'])
    expect(values('user-agent')).toEqual(['a'])

    // First value denied by the rule: denied, whatever follows it.
    expect(
      await rawH2Get(inbound.port, [
        [':path', '/public'],
        ['authorization', 'evil'],
        ['authorization', 'ok'],
      ]),
    ).not.toBe(200)
    expect(seen).toHaveLength(1)
  })
})

describe('requestFieldProblem', () => {
  it('finds a single-value field repeated in any case, and any transfer coding but one chunked', () => {
    const cases: [string[], string | undefined][] = [
      [['Host', 'a', 'Accept', 'x', 'Accept', 'y', 'Cookie', 'a', 'cookie', 'b'], undefined],
      [['Host', 'a', 'HOST', 'b'], 'duplicate_header'],
      [['Content-Type', 'a', 'content-type', 'b'], 'duplicate_header'],
      [['If-Modified-Since', 'a', 'Transfer-Encoding', 'chunked'], undefined],
      [['If-Modified-Since', 'a', 'if-modified-since', 'b'], 'duplicate_header'],
      [['X-Authorization', 'a', 'x-authorization', 'b', 'Authorizatio', 'c', 'authorizatio', 'd'], undefined],
      [['Transfer-Encoding', ' CHUNKED\t'], undefined],
      [['Transfer-Encoding', 'chunked', 'transfer-encoding', 'chunked'], 'unsupported_transfer_coding'],
      [['Transfer-Encoding', 'gzip, chunked'], 'unsupported_transfer_coding'],
      [['Transfer-Encoding', 'chunked;q=1'], 'unsupported_transfer_coding'],
      [['Transfer-Encoding', ''], 'unsupported_transfer_coding'],
    ]
    for (const [raw, problem] of cases) expect(requestFieldProblem(raw), raw.join(' ')).toBe(problem)
    expect(hasUnsupportedTransferCoding(['Transfer-Encoding', 'chunked'])).toBe(false)
    expect(hasUnsupportedTransferCoding(['content-length', '3'])).toBe(false)
    expect(hasUnsupportedTransferCoding(['Transfer-Encoding', 'gzip, chunked'])).toBe(true)
    expect(hasUnsupportedTransferCoding(['transfer-encoding', 'gzip'])).toBe(true)
  })
})
