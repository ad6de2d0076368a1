/**
 * The HTTP outbound listener over its own HTTP/1.1 client (`http1-client.ts`), end to end through
 * a real inbound listener: bodies streamed both ways with back-pressure, bodiless responses,
 * keep-alive reuse, the pool limit from the policy; and against a hostile endpoint (a TLS server
 * with the right certificate that answers garbage), a 502 with a clear code and an agent that
 * keeps serving.
 */
import { createHash } from 'node:crypto'
import http from 'node:http'
import tls from 'node:tls'
import { Registry } from 'prom-client'
import { afterEach, beforeAll, describe, expect, it } from 'vitest'
import type { RootCa } from '../../src/identity/ca/ca.ts'
import { UpstreamProtocolError } from '../../src/proxy/http1-client.ts'
import { HttpOutboundListener, type HttpOutboundListenerInit } from '../../src/proxy/outbound-http.ts'
import {
  IntentionAuthorizer,
  StaticCertificateSource,
  StaticEndpointSource,
} from '../../src/proxy/sources.ts'
import type { ServiceCertificate } from '../../src/proxy/types.ts'
import {
  endpoint,
  httpGet,
  leafFor,
  listenLoopback,
  makeRoot,
  metricValue,
  runConcurrently,
  startHandlerInstance,
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

const cleanups: (() => void | Promise<void>)[] = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

/** An HTTP app behind a real inbound listener; `handler` answers its requests. */
async function appBehindInbound(id: string, handler: http.RequestListener) {
  const instance = await startHandlerInstance({ id, cert: apiCert, authorizer: allow, handler })
  cleanups.push(instance.stop)
  return instance
}

async function outbound(
  endpoints: ReturnType<typeof endpoint>[],
  extra: Partial<HttpOutboundListenerInit> = {},
) {
  const registry = new Registry()
  const listener = new HttpOutboundListener({
    sourceService: 'web',
    destinationService: 'api',
    trustDomain: TD,
    bindPort: 0,
    certificates: new StaticCertificateSource(webCert),
    endpoints: new StaticEndpointSource(endpoints),
    registry,
    ...extra,
  })
  await listener.start()
  cleanups.push(() => listener.stop())
  return { listener, registry }
}

interface Result {
  status: number
  headers: http.IncomingHttpHeaders
  body: Buffer
}

/** One request through the outbound; `body` is sent chunked in pieces when `chunked`. */
function request(
  port: number,
  opts: { method?: string; path?: string; body?: Buffer; chunked?: boolean; agent?: http.Agent } = {},
): Promise<Result> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = {}
    if (opts.body && !opts.chunked) headers['content-length'] = String(opts.body.length)
    const req = http.request(
      {
        host: '127.0.0.1',
        port,
        method: opts.method ?? 'GET',
        path: opts.path ?? '/',
        headers,
        agent: opts.agent,
      },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }),
        )
        res.on('error', reject)
      },
    )
    req.on('error', reject)
    if (opts.body && opts.chunked) {
      for (let i = 0; i < opts.body.length; i += 100_000) req.write(opts.body.subarray(i, i + 100_000))
      req.end()
    } else req.end(opts.body)
  })
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')

/** An app that answers each request with the sha256 and size of its body, and its framing. */
function digestApp(): http.RequestListener {
  return (req, res) => {
    const hash = createHash('sha256')
    let size = 0
    req.on('data', (c: Buffer) => {
      hash.update(c)
      size += c.length
    })
    req.on('end', () =>
      res.end(
        JSON.stringify({
          sha: hash.digest('hex'),
          size,
          chunked: req.headers['transfer-encoding'] === 'chunked',
          length: req.headers['content-length'],
        }),
      ),
    )
  }
}

describe('HttpOutboundListener over its HTTP/1.1 client', () => {
  it('streams request bodies upstream: 3 MiB chunked, 3 MiB with a length, a small POST', async () => {
    const api = await appBehindInbound('api-1', digestApp())
    const { listener } = await outbound([api.endpoint])
    const big = Buffer.alloc(3 * 1024 * 1024)
    for (let i = 0; i < big.length; i++) big[i] = (i * 7) % 251
    const chunked = await request(listener.port, { method: 'POST', body: big, chunked: true })
    expect(JSON.parse(chunked.body.toString())).toEqual({ sha: sha(big), size: big.length, chunked: true })
    const sized = await request(listener.port, { method: 'PUT', body: big })
    expect(JSON.parse(sized.body.toString())).toMatchObject({ sha: sha(big), length: String(big.length) })
    const small = await request(listener.port, { method: 'POST', body: Buffer.from('hi') })
    expect(JSON.parse(small.body.toString())).toMatchObject({ size: 2, length: '2' })
    const empty = await request(listener.port, { method: 'POST' })
    expect(JSON.parse(empty.body.toString())).toMatchObject({ size: 0, length: '0' })
  })

  it("expect: 100-continue: the client gets its 100, the upstream's own 100 is skipped, the body arrives", async () => {
    const api = await appBehindInbound('api-1', digestApp())
    const { listener } = await outbound([api.endpoint])
    const r = await new Promise<{ status: number; body: string; continued: boolean }>((resolve, reject) => {
      let continued = false
      const req = http.request({
        host: '127.0.0.1',
        port: listener.port,
        method: 'POST',
        path: '/',
        headers: { expect: '100-continue', 'content-length': '5' },
      })
      req.on('continue', () => {
        continued = true
        req.end('hello')
      })
      req.on('response', (res) => {
        let body = ''
        res.setEncoding('utf8')
        res.on('data', (d: string) => {
          body += d
        })
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body, continued }))
      })
      req.on('error', reject)
    })
    expect(r.continued).toBe(true)
    expect(r.status).toBe(200)
    expect(JSON.parse(r.body)).toMatchObject({ size: 5, sha: sha(Buffer.from('hello')) })
  })

  it('streams an 8 MiB response to a slow reader with back-pressure, every byte in order', async () => {
    const big = Buffer.alloc(8 * 1024 * 1024)
    for (let i = 0; i < big.length; i++) big[i] = (i * 13) % 253
    const api = await appBehindInbound('api-1', (req, res) => {
      req.resume()
      if (req.url === '/chunked') {
        for (let i = 0; i < big.length; i += 65_536) res.write(big.subarray(i, i + 65_536))
        res.end()
      } else res.end(big)
    })
    const { listener } = await outbound([api.endpoint])
    for (const path of ['/length', '/chunked']) {
      const body = await new Promise<Buffer>((resolve, reject) => {
        http.get({ host: '127.0.0.1', port: listener.port, path }, (res) => {
          const chunks: Buffer[] = []
          res.pause()
          // Read slowly: one chunk per timer turn, so the outbound has to hold back the upstream.
          const pump = () => {
            for (let n = 0; n < 2; n++) {
              const c = res.read() as Buffer | null
              if (c === null) break
              chunks.push(c)
            }
            if (res.readableEnded) return
            setTimeout(pump, 1)
          }
          res.on('readable', () => {})
          res.on('end', () => resolve(Buffer.concat(chunks)))
          res.on('error', reject)
          pump()
        })
      })
      expect(body.length).toBe(big.length)
      expect(sha(body)).toBe(sha(big))
    }
  })

  it('HEAD and 204 answers pass through bodiless, and keep-alive serves many requests on few connections', async () => {
    const api = await appBehindInbound('api-1', (req, res) => {
      req.resume()
      if (req.url === '/204') {
        res.statusCode = 204
        res.end()
      } else {
        res.setHeader('content-length', '100')
        res.end(req.method === 'HEAD' ? undefined : 'x'.repeat(100))
      }
    })
    const { listener } = await outbound([api.endpoint])
    const head = await request(listener.port, { method: 'HEAD' })
    expect(head).toMatchObject({ status: 200, headers: { 'content-length': '100' } })
    expect(head.body.length).toBe(0)
    const none = await request(listener.port, { path: '/204' })
    expect(none.status).toBe(204)
    const agent = new http.Agent({ keepAlive: true, maxSockets: 8 })
    cleanups.push(() => agent.destroy())
    const results = await runConcurrently(400, 8, () => request(listener.port, { agent }))
    expect(results.every((r) => r.status === 200 && r.body.length === 100)).toBe(true)
    expect(api.inbound.openConnections).toBeLessThanOrEqual(8)
  })

  it('holds upstream connections to the policy limit; requests beyond it wait and succeed', async () => {
    let inFlight = 0
    let most = 0
    const api = await appBehindInbound('api-1', (req, res) => {
      req.resume()
      inFlight++
      most = Math.max(most, inFlight)
      setTimeout(() => {
        inFlight--
        res.end('ok')
      }, 5)
    })
    const { listener } = await outbound([api.endpoint])
    listener.setPolicy({ ...listener.core.policy, limits: { maxConnections: 2 } })
    const results = await runConcurrently(40, 10, () => request(listener.port))
    expect(results.every((r) => r.status === 200)).toBe(true)
    expect(most).toBeLessThanOrEqual(2)
    expect(api.inbound.openConnections).toBeLessThanOrEqual(2)
  })
})

describe('HttpOutboundListener against a hostile endpoint', () => {
  /** A TLS server presenting api's certificate, answering every request with `reply`. */
  async function hostile(reply: string | ((socket: tls.TLSSocket) => void)) {
    let connections = 0
    const server = tls.createServer({ cert: apiCert.certPem, key: apiCert.keyPem }, (socket) => {
      connections++
      socket.on('error', () => {})
      socket.once('data', () => (typeof reply === 'string' ? socket.write(reply) : reply(socket)))
    })
    const { port, close } = await listenLoopback(server)
    cleanups.push(close)
    return {
      endpoint: endpoint('api-evil', port),
      get connections() {
        return connections
      },
    }
  }

  it('garbage, an oversized head, or a 101: 502 PEERMESH_ERR_UPSTREAM_PROTOCOL after the retries, and the listener keeps serving', async () => {
    const replies = [
      '\u0000\u0001garbage\r\n\r\n',
      `HTTP/1.1 200 OK\r\nx-big: ${'a'.repeat(64 * 1024)}\r\n\r\n`,
      'HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n',
      'HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!',
    ]
    for (const reply of replies) {
      const evil = await hostile(reply)
      const { listener, registry } = await outbound([evil.endpoint], { maxAttempts: 2 })
      const r = await request(listener.port)
      expect(r.status, reply.slice(0, 40)).toBe(502)
      expect(r.headers['x-peermesh-error']).toBe(UpstreamProtocolError.code)
      // GET is idempotent: tried twice, on a fresh connection each time.
      expect(evil.connections).toBe(2)
      expect(await metricValue(registry, 'peermesh_proxy_retries_total')).toBe(1)
      expect(await metricValue(registry, 'peermesh_proxy_errors_total', { reason: 'protocol' })).toBe(1)
    }
    // A POST is not retried after the request went out.
    const evil = await hostile('nonsense\r\n\r\n')
    const { listener } = await outbound([evil.endpoint])
    const post = await request(listener.port, { method: 'POST', body: Buffer.from('once') })
    expect(post.status).toBe(502)
    expect(evil.connections).toBe(1)
  })

  it('a good head then a cut body: the client sees its response cut, not a 200 with a short body', async () => {
    const evil = await hostile((s) => s.end('HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this'))
    const { listener } = await outbound([evil.endpoint])
    const outcome = await new Promise<string>((resolve) => {
      http
        .get({ host: '127.0.0.1', port: listener.port, path: '/' }, (res) => {
          res.on('data', () => {})
          res.on('end', () => resolve('complete'))
          res.on('aborted', () => resolve('aborted'))
          res.on('error', () => resolve('aborted'))
        })
        .on('error', () => resolve('aborted'))
    })
    expect(outcome).toBe('aborted')
  })

  it('an endpoint that answers garbage is ejected; the good one serves everything', async () => {
    const evil = await hostile('HTTP/1.1 2000 OK\r\n\r\n')
    const good = await appBehindInbound('api-good', (req, res) => {
      req.resume()
      res.end('good')
    })
    const { listener, registry } = await outbound([evil.endpoint, good.endpoint])
    const results = await runConcurrently(60, 4, () => httpGet(listener.port))
    expect(results.filter((r) => r.status !== 200 || r.body !== 'good')).toEqual([])
    await waitFor(async () => (await metricValue(registry, 'peermesh_proxy_ejections_total')) >= 1)
  })
})
