/**
 * The outbound's HTTP/1.1 client (`http1-client.ts`) against a raw TLS upstream that writes
 * whatever each test scripts: framing (content-length, chunked with trailers, close-delimited,
 * HEAD, 204, interim 1xx), keep-alive reuse and when a connection must not be reused, pool
 * limits, and a hostile upstream (garbage, oversized heads, early close, unsolicited bytes).
 */
import type { AddressInfo } from 'node:net'
import { PassThrough } from 'node:stream'
import tls from 'node:tls'
import { afterEach, beforeAll, describe, expect, it } from 'vitest'
import {
  encodeRequestHead,
  type Http1FailureStage,
  Http1Pool,
  type Http1PoolOptions,
  type Http1Request,
  InvalidRequestHeadError,
  keepAliveTimeoutMs,
  UpstreamProtocolError,
} from '../../src/proxy/http1-client.ts'
import type { ServiceCertificate } from '../../src/proxy/types.ts'
import { leafFor, listenLoopback, makeRoot, waitFor } from './helpers.ts'

let apiCert: ServiceCertificate
beforeAll(async () => {
  apiCert = await leafFor(await makeRoot(), 'api')
})

const cleanups: (() => void | Promise<void>)[] = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

interface UpstreamRequest {
  /** 0-based index of the connection it came on. */
  conn: number
  head: string
  body: string
  socket: tls.TLSSocket
}

/**
 * A TLS server that reads whole requests (head, then a content-length or chunked body) and hands
 * each to `onRequest`, which answers with raw bytes on `socket`.
 */
async function rawUpstream(onRequest: (req: UpstreamRequest) => void) {
  let connections = 0
  const requests: UpstreamRequest[] = []
  const server = tls.createServer({ cert: apiCert.certPem, key: apiCert.keyPem }, (socket) => {
    const conn = connections++
    socket.on('error', () => {})
    let buf = ''
    socket.setEncoding('latin1')
    socket.on('data', (d: string) => {
      buf += d
      for (;;) {
        const end = buf.indexOf('\r\n\r\n')
        if (end < 0) return
        const head = buf.slice(0, end)
        let rest = buf.slice(end + 4)
        let body = ''
        const length = /\r\ncontent-length: *(\d+)/i.exec(head)
        if (length) {
          if (rest.length < Number(length[1])) return
          body = rest.slice(0, Number(length[1]))
          rest = rest.slice(body.length)
        } else if (/\r\ntransfer-encoding: *chunked/i.test(head)) {
          const last = rest.indexOf('0\r\n\r\n')
          if (last < 0) return
          body = decodeChunked(rest.slice(0, last + 5))
          rest = rest.slice(last + 5)
        }
        buf = rest
        const req = { conn, head, body, socket }
        requests.push(req)
        onRequest(req)
      }
    })
  })
  const { port, close } = await listenLoopback(server)
  cleanups.push(close)
  return {
    port,
    requests,
    get connections() {
      return connections
    },
  }
}

function decodeChunked(text: string): string {
  let out = ''
  let rest = text
  for (;;) {
    const eol = rest.indexOf('\r\n')
    const size = Number.parseInt(rest.slice(0, eol), 16)
    if (size === 0) return out
    out += rest.slice(eol + 2, eol + 2 + size)
    rest = rest.slice(eol + 2 + size + 2)
  }
}

function pool(port: number, extra: Partial<Http1PoolOptions> = {}): Http1Pool {
  const p = new Http1Pool({
    connect: () => tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false }),
    maxIdle: 8,
    maxConnections: Number.POSITIVE_INFINITY,
    maxHeaderBytes: 16 * 1024,
    now: () => performance.now(),
    ...extra,
  })
  cleanups.push(() => p.destroy())
  return p
}

type Outcome =
  | { status: number; headers: string[]; body: string; trailers: string[] }
  | { error: Error; stage: Http1FailureStage; status?: number; body: string }

function send(p: Http1Pool, request: Partial<Http1Request> & { path?: string } = {}): Promise<Outcome> {
  const method = request.method ?? 'GET'
  const head =
    request.head ??
    encodeRequestHead(method, request.path ?? '/', ['host', 'api'], request.stream ? 'chunked' : 'none')
  return new Promise((resolve) => {
    let status: number | undefined
    let headers: string[] = []
    let body = ''
    p.request(
      {
        method,
        head,
        ...(request.body ? { body: request.body } : {}),
        ...(request.stream ? { stream: request.stream, chunked: true } : {}),
      },
      {
        onResponse(h) {
          status = h.status
          headers = h.rawHeaders
        },
        onBody(chunk) {
          body += chunk.toString('latin1')
          return true
        },
        onEnd(trailers) {
          resolve({ status: status!, headers, body, trailers })
        },
        onError(error, stage) {
          resolve({ error, stage, status, body })
        },
      },
    )
  })
}

const ok = (body: string, extra = '') =>
  `HTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\n${extra}\r\n${body}`

describe('encodeRequestHead', () => {
  it('writes the request line, the headers in order, and the framing asked for', () => {
    const head = (framing: 'none' | 'length' | 'chunked', method = 'GET') =>
      encodeRequestHead(method, '/a?b=1', ['host', 'api', 'x-a', '1'], framing).toString('latin1')
    expect(head('none')).toBe('GET /a?b=1 HTTP/1.1\r\nhost: api\r\nx-a: 1\r\n\r\n')
    expect(head('chunked', 'POST')).toBe(
      'POST /a?b=1 HTTP/1.1\r\nhost: api\r\nx-a: 1\r\nTransfer-Encoding: chunked\r\n\r\n',
    )
    // A bodiless POST says so, as Node's client does; GET does not.
    expect(head('none', 'POST')).toContain('\r\nContent-Length: 0\r\n')
    expect(head('length', 'POST')).not.toContain('Content-Length')
  })

  it('refuses header splitting in a name, a value, the target or the method', () => {
    const bad: [string, string, string[]][] = [
      ['GET', '/', ['x-a', 'v\r\nx-injected: 1']],
      ['GET', '/', ['x a', 'v']],
      ['GET', '/ HTTP/1.1\r\nx: y', []],
      ['GET', '', []],
      ['G T', '/', []],
    ]
    for (const [method, path, headers] of bad) {
      let code: string | undefined
      try {
        encodeRequestHead(method, path, headers, 'none')
      } catch (error) {
        code = (error as { code?: string }).code
      }
      expect(code).toBe(InvalidRequestHeadError.code)
    }
  })

  it('reads the keep-alive timeout hint', () => {
    expect(keepAliveTimeoutMs('timeout=5')).toBe(5000)
    expect(keepAliveTimeoutMs('max=100, timeout=2')).toBe(2000)
    expect(keepAliveTimeoutMs('max=100')).toBeUndefined()
  })
})

describe('Http1Pool framing and reuse', () => {
  it('reuses one connection for sequential content-length responses', async () => {
    const up = await rawUpstream((r) => r.socket.write(ok(`hello ${r.head.split(' ')[1]}`)))
    const p = pool(up.port)
    for (let i = 0; i < 5; i++) {
      const r = await send(p, { path: `/${i}` })
      expect(r).toMatchObject({ status: 200, body: `hello /${i}` })
    }
    expect(up.connections).toBe(1)
    expect(p.size).toEqual({ busy: 0, idle: 1, waiting: 0 })
  })

  it('decodes a chunked response with trailers, split across writes, and reuses the connection', async () => {
    const up = await rawUpstream((r) => {
      r.socket.write('HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: grpc-status\r\n\r\n5\r\nhel')
      setImmediate(() => r.socket.write('lo\r\n6\r\n world\r\n0\r\ngrpc-status: 0\r\n\r\n'))
    })
    const p = pool(up.port)
    const a = await send(p)
    expect(a).toMatchObject({ status: 200, body: 'hello world', trailers: ['grpc-status', '0'] })
    expect(await send(p)).toMatchObject({ body: 'hello world' })
    expect(up.connections).toBe(1)
  })

  it('reads a close-delimited body to the end and does not reuse that connection', async () => {
    const up = await rawUpstream((r) =>
      r.socket.end('HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end'),
    )
    const p = pool(up.port)
    expect(await send(p)).toMatchObject({ status: 200, body: 'until the end' })
    expect(await send(p)).toMatchObject({ status: 200, body: 'until the end' })
    expect(up.connections).toBe(2)
  })

  it('drops a connection after `connection: close`, even with a content-length', async () => {
    const up = await rawUpstream((r) => r.socket.write(ok('x', 'connection: close\r\n')))
    const p = pool(up.port)
    await send(p)
    await send(p)
    expect(up.connections).toBe(2)
  })

  it('HEAD, 204 and 304 have no body, and the connection carries on', async () => {
    const up = await rawUpstream((r) => {
      if (r.head.startsWith('HEAD')) r.socket.write('HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n')
      else if (r.head.includes('/204')) r.socket.write('HTTP/1.1 204 No Content\r\n\r\n')
      else if (r.head.includes('/304'))
        r.socket.write('HTTP/1.1 304 Not Modified\r\ncontent-length: 7\r\n\r\n')
      else r.socket.write(ok('after'))
    })
    const p = pool(up.port)
    expect(await send(p, { method: 'HEAD' })).toMatchObject({ status: 200, body: '' })
    expect(await send(p, { path: '/204' })).toMatchObject({ status: 204, body: '' })
    expect(await send(p, { path: '/304' })).toMatchObject({ status: 304, body: '' })
    expect(await send(p)).toMatchObject({ status: 200, body: 'after' })
    expect(up.connections).toBe(1)
  })

  it('skips interim 1xx responses and delivers the final one', async () => {
    const up = await rawUpstream((r) =>
      r.socket.write(
        `HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n${ok('final')}`,
      ),
    )
    const p = pool(up.port)
    expect(await send(p)).toMatchObject({ status: 200, body: 'final', headers: ['content-length', '5'] })
    expect(await send(p)).toMatchObject({ status: 200, body: 'final' })
    expect(up.connections).toBe(1)
  })

  it('sends a buffered body with the head, and streams a chunked one', async () => {
    const up = await rawUpstream((r) => r.socket.write(ok(`got ${r.body}`)))
    const p = pool(up.port)
    const head = encodeRequestHead('PUT', '/', ['content-length', '5'], 'length')
    expect(await send(p, { method: 'PUT', head, body: Buffer.from('12345') })).toMatchObject({
      body: 'got 12345',
    })
    const stream = new PassThrough()
    const pending = send(p, { method: 'POST', stream })
    stream.write('part one, ')
    setImmediate(() => stream.end('part two'))
    expect(await pending).toMatchObject({ body: 'got part one, part two' })
    expect(up.connections).toBe(1)
  })

  it('drops idle connections past the keep-alive hint, less a margin', async () => {
    let now = 0
    const up = await rawUpstream((r) => r.socket.write(ok('x', 'keep-alive: timeout=5\r\n')))
    const p = pool(up.port, { now: () => now })
    await send(p)
    now += 3_999 // within 5 s less 1 s
    await send(p)
    expect(up.connections).toBe(1)
    now += 4_000
    await send(p)
    expect(up.connections).toBe(2)
  })
})

describe('Http1Pool limits', () => {
  it('opens at most maxConnections; the others wait and go out in order', async () => {
    const held: UpstreamRequest[] = []
    const up = await rawUpstream((r) => held.push(r))
    const p = pool(up.port, { maxConnections: 2, maxIdle: 1 })
    const results = Array.from({ length: 5 }, (_, i) => send(p, { path: `/${i}` }))
    await waitFor(() => held.length === 2)
    expect(p.size).toEqual({ busy: 2, idle: 0, waiting: 3 })
    // Answer as requests arrive: each answer frees a connection for the next waiting request.
    let answered = 0
    await waitFor(() => {
      while (answered < held.length) {
        const r = held[answered++]!
        r.socket.write(ok(r.head.split(' ')[1]!))
      }
      return answered === 5
    })
    expect((await Promise.all(results)).map((r) => ('body' in r ? r.body : ''))).toEqual([
      '/0',
      '/1',
      '/2',
      '/3',
      '/4',
    ])
    expect(up.connections).toBe(2)
    // Two connections came back; only maxIdle = 1 is kept.
    await waitFor(() => p.size.idle === 1 && p.size.busy === 0)
  })

  it('a waiting request that is aborted never goes out', async () => {
    const held: UpstreamRequest[] = []
    const up = await rawUpstream((r) => held.push(r))
    const p = pool(up.port, { maxConnections: 1 })
    const first = send(p, { path: '/first' })
    let called = false
    const head = encodeRequestHead('GET', '/aborted', [], 'none')
    const x = p.request(
      { method: 'GET', head },
      {
        onResponse: () => (called = true),
        onBody: () => true,
        onEnd: () => (called = true),
        onError: () => (called = true),
      },
    )
    x.abort()
    expect(p.size.waiting).toBe(0)
    await waitFor(() => held.length === 1)
    held[0]!.socket.write(ok('1'))
    expect(await first).toMatchObject({ body: '1' })
    const after = send(p, { path: '/after' })
    await waitFor(() => held.length === 2)
    held[1]!.socket.write(ok('2'))
    expect(await after).toMatchObject({ body: '2' })
    expect(up.requests.map((r) => r.head.split(' ')[1])).toEqual(['/first', '/after'])
    expect(called).toBe(false)
  })
})

describe('Http1Pool against a hostile upstream', () => {
  async function failure(respond: (r: UpstreamRequest) => void, extra: Partial<Http1PoolOptions> = {}) {
    const up = await rawUpstream(respond)
    const p = pool(up.port, extra)
    const r = await send(p)
    return { r, up, p }
  }

  it('garbage instead of a status line: protocol error, connection closed', async () => {
    const { r, p } = await failure((req) => req.socket.write('SSH-2.0-OpenSSH_9.2\r\n\r\n'))
    expect(r).toMatchObject({ stage: 'protocol' })
    expect((r as { error: Error }).error).toBeInstanceOf(UpstreamProtocolError)
    await waitFor(() => p.size.busy === 0 && p.size.idle === 0)
  })

  it('a head over maxHeaderBytes: protocol error', async () => {
    const { r } = await failure((req) =>
      req.socket.write(`HTTP/1.1 200 OK\r\nx-big: ${'a'.repeat(20_000)}\r\ncontent-length: 0\r\n\r\n`),
    )
    expect(r).toMatchObject({ stage: 'protocol' })
  })

  it('a header split by a bare LF, or a bad content-length: protocol error', async () => {
    for (const head of [
      'HTTP/1.1 200 OK\r\nx-a: 1\nx-b: 2\r\ncontent-length: 0\r\n\r\n',
      'HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab',
      'HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n',
    ]) {
      const { r } = await failure((req) => req.socket.write(head))
      expect(r, head).toMatchObject({ stage: 'protocol' })
    }
  })

  it('a malformed chunk after a good head: the response is cut (aborted), the connection closed', async () => {
    const { r, p } = await failure((req) =>
      req.socket.write('HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n'),
    )
    expect(r).toMatchObject({ stage: 'aborted', status: 200, body: 'abc' })
    expect((r as { error: Error }).error).toBeInstanceOf(UpstreamProtocolError)
    await waitFor(() => p.size.busy === 0 && p.size.idle === 0)
  })

  it('an unrequested 101 or an out-of-range status: protocol error', async () => {
    const a = await failure((req) =>
      req.socket.write('HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: x\r\n\r\n'),
    )
    expect(a.r).toMatchObject({ stage: 'protocol' })
    const b = await failure((req) => req.socket.write('HTTP/1.1 099 Odd\r\ncontent-length: 0\r\n\r\n'))
    expect(b.r).toMatchObject({ stage: 'protocol' })
  })

  it('closed before the head: reset; closed in the body: aborted after the head', async () => {
    const a = await failure((req) => req.socket.end('HTTP/1.1 200 OK\r\ncontent-le'))
    expect(a.r).toMatchObject({ stage: 'reset' })
    const b = await failure((req) => req.socket.end('HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc'))
    expect(b.r).toMatchObject({ stage: 'aborted', status: 200, body: 'abc' })
  })

  it('nothing listening: connect', async () => {
    const up = await rawUpstream(() => {})
    const p = new Http1Pool({
      connect: () => tls.connect({ host: '127.0.0.1', port: 1, rejectUnauthorized: false }),
      maxIdle: 1,
      maxConnections: 1,
      maxHeaderBytes: 1024,
      now: () => 0,
    })
    cleanups.push(() => p.destroy())
    expect(await send(p)).toMatchObject({ stage: 'connect' })
    expect(up.connections).toBe(0)
  })

  it('a second response smuggled after the first: the connection is not reused', async () => {
    const up = await rawUpstream((r) => r.socket.write(ok('one') + ok('smuggled')))
    const p = pool(up.port)
    expect(await send(p)).toMatchObject({ body: 'one' })
    expect(await send(p)).toMatchObject({ body: 'one' })
    expect(up.connections).toBe(2)
  })

  it('bytes sent to an idle connection close it; the next request opens another', async () => {
    const up = await rawUpstream((r) => {
      r.socket.write(ok('one'))
      setTimeout(() => r.socket.write(ok('unsolicited')), 20)
    })
    const p = pool(up.port)
    expect(await send(p)).toMatchObject({ body: 'one' })
    await waitFor(() => p.size.idle === 0)
    expect(await send(p)).toMatchObject({ body: 'one' })
    expect(up.connections).toBe(2)
  })

  it('an answer before the whole request body: the response stands, the connection is dropped', async () => {
    // This upstream answers as soon as it sees the head, and never reads the body.
    const server = tls.createServer({ cert: apiCert.certPem, key: apiCert.keyPem }, (socket) => {
      socket.on('error', () => {})
      socket.once('data', () => socket.write(ok('early')))
    })
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    cleanups.push(() => new Promise<void>((resolve) => server.close(() => resolve())))
    const p = pool((server.address() as AddressInfo).port)
    const stream = new PassThrough()
    const pending = send(p, { method: 'POST', stream })
    stream.write('part one')
    expect(await pending).toMatchObject({ status: 200, body: 'early' })
    await waitFor(() => p.size.busy === 0 && p.size.idle === 0)
    expect(stream.listenerCount('data')).toBe(0)
  })
})
