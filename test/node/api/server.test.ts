import { MANAGE_ALL } from '../../../src/acl/index.ts'
import { request, type Server, type ServerResponse } from 'node:http'
import { connect } from 'node:net'
import pino from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { need } from '../../../src/acl/index.ts'
import { ApiError } from '../../../src/node/agent/errors.ts'
import { AclResolver } from '../../../src/node/api/acl-auth.ts'
import { registerAclRoutes } from '../../../src/node/api/acl-routes.ts'
import {
  guardRefusal,
  hostOfHostHeader,
  isJsonContentType,
  isLoopbackHost,
} from '../../../src/node/api/request-guard.ts'
import { type ApiRequest, HttpApi, requestDeadline } from '../../../src/node/api/server.ts'
import { ACL_ON, FakeAclBackend } from '../../acl/fake-acl-backend.ts'

const JSON_HEADERS = { 'content-type': 'application/json' }

describe('local HTTP API router', () => {
  const api = new HttpApi(pino({ level: 'silent' }))
  let base = ''
  beforeAll(async () => {
    api.route('GET', '/v1/things/:name', (req) => ({ name: req.params['name'], q: req.query.get('q') }))
    api.route('PUT', '/v1/things/:name', (req) => {
      if (typeof req.body !== 'object' || req.body === null)
        throw new ApiError('body: expected an object', 400)
      return { ok: true }
    })
    api.route('GET', '/v1/boom', () => {
      throw new Error('secret internals')
    })
    const { port } = await api.listen('127.0.0.1', 0)
    base = `http://127.0.0.1:${port}`
  })
  afterAll(() => api.close())

  it('routes with parameters and query strings', async () => {
    const res = await fetch(`${base}/v1/things/web%2Fx?q=1`)
    expect(res.status).toBe(200)
    expect(await res.json()).toEqual({ name: 'web/x', q: '1' })
  })

  it('answers JSON errors with the right status codes', async () => {
    const cases: [string, RequestInit, number][] = [
      ['/v1/nope', {}, 404],
      ['/v1/things/a', { method: 'DELETE' }, 405],
      ['/v1/things/a', { method: 'PUT', headers: JSON_HEADERS, body: '{bad' }, 400],
      ['/v1/things/a', { method: 'PUT', headers: JSON_HEADERS, body: '"str"' }, 400],
      // 1,343 levels deep (what once reached Raft and overflowed a stack): refused up front.
      [
        '/v1/things/a',
        { method: 'PUT', headers: JSON_HEADERS, body: `{"v":${'['.repeat(1343)}${']'.repeat(1343)}}` },
        400,
      ],
      ['/v1/things/a', { method: 'PUT', headers: JSON_HEADERS, body: 'x'.repeat(2 << 20) }, 413],
      ['/v1/boom', {}, 500],
    ]
    for (const [path, init, status] of cases) {
      const res = await fetch(base + path, init)
      expect(res.status, path).toBe(status)
      const body = (await res.json()) as { error: string }
      expect(typeof body.error).toBe('string')
      expect(body.error).not.toContain('secret internals')
    }
  })
})

/** One request over a fresh connection, headers exactly as given (node adds Host unless given). */
function raw(
  port: number,
  method: string,
  path: string,
  headers: Record<string, string>,
  body?: string,
): Promise<{
  status: number
  headers: Record<string, unknown>
  json: { error?: string } & Record<string, unknown>
}> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, method, path, headers, agent: false }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          json: JSON.parse(Buffer.concat(chunks).toString('utf8') || 'null'),
        }),
      )
    })
    req.on('error', reject)
    req.end(body)
  })
}

describe('the local API as a CSRF / DNS rebinding target (#12), from the attacker side', () => {
  const api = new HttpApi(pino({ level: 'silent' }))
  /** What the fake intention routes did: nothing may change on a refused request. */
  const intentions: unknown[] = []
  let handlerRuns = 0
  let port = 0
  const allowAll = JSON.stringify({ source: '*', destination: '*', action: 'allow' })
  beforeAll(async () => {
    for (const method of ['POST', 'PUT']) {
      api.route(method, '/v1/connect/intentions', (req) => {
        handlerRuns++
        intentions.push(req.body)
        return true
      })
    }
    api.route('GET', '/v1/connect/intentions', () => {
      handlerRuns++
      return intentions
    })
    port = (await api.listen('127.0.0.1', 0)).port
  })
  afterAll(() => api.close())

  /** Asserts the request was refused with `status`, an error naming `what`, and nothing ran. */
  async function refused(
    r: Promise<{ status: number; json: { error?: string } }>,
    status: number,
    what: RegExp,
  ): Promise<void> {
    const before = { runs: handlerRuns, n: intentions.length }
    const res = await r
    expect(res.status).toBe(status)
    expect(res.json.error).toMatch(what)
    expect({ runs: handlerRuns, n: intentions.length }).toEqual(before)
  }

  it('refuses a text/plain POST or PUT (a cross-origin "simple" request) with 415', async () => {
    for (const method of ['POST', 'PUT']) {
      await refused(
        raw(port, method, '/v1/connect/intentions', { 'content-type': 'text/plain;charset=UTF-8' }, allowAll),
        415,
        /Content-Type "text\/plain;charset=UTF-8".*application\/json/,
      )
    }
    // What a browser's form post or fetch() with a string body sends.
    await refused(
      raw(
        port,
        'POST',
        '/v1/connect/intentions',
        { 'content-type': 'application/x-www-form-urlencoded' },
        'a=b',
      ),
      415,
      /x-www-form-urlencoded/,
    )
    // fetch() labels a string body text/plain: this is the exact request of the issue.
    const res = await fetch(`http://127.0.0.1:${port}/v1/connect/intentions`, {
      method: 'POST',
      body: allowAll,
    })
    expect(res.status).toBe(415)
    expect(intentions).toEqual([])
  })

  it('refuses before reading the body: the 415 comes while the body is still unsent', async () => {
    const socket = connect(port, '127.0.0.1')
    const reply = await new Promise<string>((resolve, reject) => {
      let text = ''
      socket.on('data', (d) => (text += d.toString()))
      socket.on('end', () => resolve(text))
      socket.on('error', reject)
      // Declares 1000 bytes and sends none: a handler reading the body would wait forever.
      socket.write(
        `POST /v1/connect/intentions HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n`,
      )
    })
    socket.destroy()
    expect(reply).toMatch(/^HTTP\/1\.1 415/)
    expect(reply.toLowerCase()).toContain('connection: close')
    expect(handlerRuns).toBe(0)
  })

  it('answers 400 to a request target that is not a URL, and keeps serving', async () => {
    const runs = handlerRuns
    for (const target of ['http://[/v1/connect/intentions', 'http://127.0.0.1:99999/v1/connect/intentions']) {
      const socket = connect(port, '127.0.0.1')
      const reply = await new Promise<string>((resolve, reject) => {
        let text = ''
        socket.on('data', (d) => (text += d.toString()))
        socket.on('end', () => resolve(text))
        socket.on('error', reject)
        socket.write(`GET ${target} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`)
      })
      socket.destroy()
      expect(reply).toMatch(/^HTTP\/1\.1 400/)
      expect(reply).toContain('invalid request target')
    }
    expect(handlerRuns).toBe(runs)
    expect((await fetch(`http://127.0.0.1:${port}/v1/connect/intentions`)).status).toBe(200)
  })

  it('refuses a foreign Host (DNS rebinding) with 403, reads and writes alike', async () => {
    await refused(
      raw(port, 'POST', '/v1/connect/intentions', { host: 'evil.example', ...JSON_HEADERS }, allowAll),
      403,
      /Host "evil\.example".*DNS rebinding/,
    )
    await refused(
      raw(port, 'GET', '/v1/connect/intentions', { host: `evil.example:${port}` }),
      403,
      /evil\.example/,
    )
    await refused(raw(port, 'GET', '/v1/connect/intentions', { host: 'localhost.evil.example' }), 403, /Host/)
  })

  it('refuses a foreign Origin (or Sec-Fetch-Site) with 403', async () => {
    await refused(
      raw(
        port,
        'POST',
        '/v1/connect/intentions',
        { origin: 'http://evil.example', ...JSON_HEADERS },
        allowAll,
      ),
      403,
      /Origin "http:\/\/evil\.example"/,
    )
    for (const origin of [
      'null',
      `http://127.0.0.1:${port + 1}`,
      `https://localhost:${port}`,
      `http://evil.localhost:${port}`,
    ])
      await refused(
        raw(port, 'PUT', '/v1/connect/intentions', { origin, ...JSON_HEADERS }, allowAll),
        403,
        /Origin/,
      )
    await refused(
      raw(
        port,
        'POST',
        '/v1/connect/intentions',
        { 'sec-fetch-site': 'cross-site', ...JSON_HEADERS },
        allowAll,
      ),
      403,
      /Sec-Fetch-Site "cross-site"/,
    )
  })

  it('refuses a body with no content type from a browser (a Blob with no type)', async () => {
    const blob = (): Blob => new Blob([allowAll])
    for (const headers of <Record<string, string>[]>[
      { origin: `http://127.0.0.1:${port}` },
      { 'sec-fetch-mode': 'no-cors' },
    ]) {
      const before = handlerRuns
      const res = await fetch(`http://127.0.0.1:${port}/v1/connect/intentions`, {
        method: 'POST',
        body: blob(),
        headers,
      })
      expect(res.status).toBe(415)
      expect(((await res.json()) as { error: string }).error).toMatch(/no Content-Type from a browser/)
      expect(handlerRuns).toBe(before)
    }
    expect(intentions).toEqual([])
  })

  it('accepts a JSON write from its own origin, and a python-consul-like one with no content type', async () => {
    const ok = await raw(
      port,
      'PUT',
      '/v1/connect/intentions',
      {
        'content-type': 'application/json; charset=utf-8',
        origin: `http://localhost:${port}`,
        host: `localhost:${port}`,
      },
      JSON.stringify({ n: 1 }),
    )
    expect(ok.status).toBe(200)
    // python-consul / requests: JSON body, no Content-Type, no browser headers.
    const py = await raw(
      port,
      'PUT',
      '/v1/connect/intentions',
      { 'user-agent': 'python-requests/2.31' },
      JSON.stringify({ n: 2 }),
    )
    expect(py.status).toBe(200)
    // A bodyless write needs no content type either (curl -X PUT).
    expect((await raw(port, 'PUT', '/v1/connect/intentions', {})).status).toBe(200)
    for (const host of [`127.0.0.1:${port}`, `[::1]:${port}`, `127.1.2.3:${port}`, `agent.localhost:${port}`])
      expect((await raw(port, 'GET', '/v1/connect/intentions', { host })).status, host).toBe(200)
    expect(intentions).toEqual([{ n: 1 }, { n: 2 }, undefined])
  })

  it('closes the connection after a 413, so a keep-alive client does not hang', async () => {
    const res = await raw(port, 'PUT', '/v1/connect/intentions', {
      ...JSON_HEADERS,
      'content-length': String(2 << 20),
    }).catch(() => undefined)
    // Refused on the declared length, before reading: the reply says the connection closes.
    if (res !== undefined) {
      expect(res.status).toBe(413)
      expect(res.headers['connection']).toBe('close')
    }
    const big = 'x'.repeat(2 << 20)
    const t0 = Date.now()
    const chunked = await new Promise<{ status: number; connection: unknown }>((resolve, reject) => {
      // Chunked: no declared length, the limit is hit while reading.
      const req = request(
        { host: '127.0.0.1', port, method: 'PUT', path: '/v1/connect/intentions', headers: JSON_HEADERS },
        (r) => {
          r.resume()
          r.on('end', () => resolve({ status: r.statusCode ?? 0, connection: r.headers['connection'] }))
        },
      )
      req.on('error', reject)
      req.write(big.slice(0, 1 << 20))
      req.end(big.slice(1 << 20))
    })
    expect(chunked).toEqual({ status: 413, connection: 'close' })
    expect(Date.now() - t0).toBeLessThan(5_000)
  })
})

describe('HTTP API server limits', () => {
  it('drops a client that never finishes its headers (slowloris), within the bound', async () => {
    const api = new HttpApi(pino({ level: 'silent' }), {
      headersTimeoutMs: 300,
      requestTimeoutMs: 600,
      checkIntervalMs: 100,
    })
    const { port } = await api.listen('127.0.0.1', 0)
    try {
      const t0 = Date.now()
      const socket = connect(port, '127.0.0.1')
      const reply = await new Promise<string>((resolve) => {
        let text = ''
        socket.on('data', (d) => (text += d.toString()))
        socket.on('close', () => resolve(text))
        socket.on('error', () => {})
        socket.write('GET /v1/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ')
      })
      expect(reply).toMatch(/^HTTP\/1\.1 408/)
      expect(Date.now() - t0).toBeLessThan(3_000)
    } finally {
      await api.close()
    }
  })

  it('does not bound the response: a handler slower than the request timeout still answers', async () => {
    const api = new HttpApi(pino({ level: 'silent' }), {
      headersTimeoutMs: 200,
      requestTimeoutMs: 300,
      checkIntervalMs: 50,
    })
    api.route('GET', '/v1/slow', async () => {
      await new Promise((r) => setTimeout(r, 800)) // a blocking query waiting for a change
      return 'late'
    })
    const { port } = await api.listen('127.0.0.1', 0)
    try {
      const res = await raw(port, 'GET', '/v1/slow', {})
      expect(res).toMatchObject({ status: 200, json: 'late' })
    } finally {
      await api.close()
    }
  })

  it('warns when bound to a non-loopback address, and answers to its own addresses there', async () => {
    const warnings: string[] = []
    const log = pino({ level: 'warn' }, { write: (line: string) => void warnings.push(line) })
    const api = new HttpApi(log)
    api.route('GET', '/v1/x', () => 1)
    const { port } = await api.listen('0.0.0.0', 0)
    try {
      expect(warnings.join('')).toMatch(/non-loopback address: every request there needs a token/)
      expect((await raw(port, 'GET', '/v1/x', { host: `0.0.0.0:${port}` })).status).toBe(200)
      expect((await raw(port, 'GET', '/v1/x', { host: 'evil.example' })).status).toBe(403)
    } finally {
      await api.close()
    }
    const quiet: string[] = []
    const loop = new HttpApi(pino({ level: 'warn' }, { write: (line: string) => void quiet.push(line) }))
    await loop.listen('127.0.0.1', 0)
    await loop.close()
    expect(quiet).toEqual([])
  })
})

describe('request guard (pure)', () => {
  const api = { port: 8500, hosts: new Set(['10.0.0.5']) }
  it.each([
    ['localhost', true],
    ['LOCALHOST', true],
    ['a.b.localhost', true],
    ['127.0.0.1', true],
    ['127.255.0.9', true],
    ['[::1]', true],
    ['::1', true],
    ['::ffff:127.0.0.1', true],
    ['localhost.evil.example', false],
    ['128.0.0.1', false],
    ['0.0.0.0', false],
    ['evil.example', false],
    ['127.0.0.1.nip.io', false],
  ])('isLoopbackHost(%s) = %s', (host, want) => {
    expect(isLoopbackHost(host)).toBe(want)
  })

  it('reads the host of a Host header', () => {
    expect(hostOfHostHeader('Localhost:8500')).toBe('localhost')
    expect(hostOfHostHeader('[::1]:8500')).toBe('::1')
    expect(hostOfHostHeader('10.0.0.5')).toBe('10.0.0.5')
    expect(hostOfHostHeader('a:b:c')).toBeUndefined()
    expect(hostOfHostHeader('')).toBeUndefined()
  })

  it('takes application/json with parameters, case-insensitively, and nothing else', () => {
    expect(isJsonContentType('application/json')).toBe(true)
    expect(isJsonContentType('Application/JSON; charset=utf-8')).toBe(true)
    expect(isJsonContentType('text/plain')).toBe(false)
    expect(isJsonContentType('application/json-patch+json')).toBe(false)
    expect(isJsonContentType('multipart/form-data; boundary=x')).toBe(false)
  })

  it.each([
    ['GET', { host: 'localhost:8500' }, undefined],
    ['GET', { host: '10.0.0.5:8500' }, undefined],
    ['GET', { host: '10.0.0.6:8500' }, 403],
    ['GET', {}, undefined],
    ['GET', { host: 'localhost', origin: 'http://10.0.0.5:8500' }, undefined],
    ['GET', { host: 'localhost', origin: 'http://10.0.0.5:8501' }, 403],
    ['GET', { host: 'localhost', 'sec-fetch-site': 'same-origin' }, undefined],
    ['GET', { host: 'localhost', 'sec-fetch-site': 'same-site' }, 403],
    ['GET', { host: 'localhost', 'content-type': 'text/plain' }, undefined],
    ['DELETE', { host: 'localhost' }, undefined],
    ['DELETE', { host: 'localhost', 'content-type': 'text/plain' }, 415],
    ['POST', { host: 'localhost', 'content-length': '2' }, undefined],
    ['POST', { host: 'localhost', 'content-length': '2', 'sec-fetch-dest': 'empty' }, 415],
    ['POST', { host: 'localhost', 'transfer-encoding': 'chunked', origin: 'http://localhost:8500' }, 415],
    ['POST', { host: 'localhost', 'content-length': '0', origin: 'http://localhost:8500' }, undefined],
    ['PUT', { host: 'localhost', 'content-length': '2', 'content-type': 'application/json' }, undefined],
    // Types a browser cannot send cross-origin without a preflight pass (Consul clients' KV bodies).
    [
      'PUT',
      { host: 'localhost', 'content-length': '2', 'content-type': 'application/octet-stream' },
      undefined,
    ],
    [
      'PUT',
      { host: 'localhost', 'content-length': '2', 'content-type': 'application/json-patch+json' },
      undefined,
    ],
    // The CORS-safelisted ones are refused whatever their spelling or parameters.
    ['POST', { host: 'localhost', 'content-length': '2', 'content-type': 'TEXT/Plain ; charset=utf-8' }, 415],
    [
      'POST',
      { host: 'localhost', 'content-length': '2', 'content-type': 'application/x-www-form-urlencoded' },
      415,
    ],
    [
      'POST',
      { host: 'localhost', 'content-length': '2', 'content-type': 'multipart/form-data; boundary=x' },
      415,
    ],
    // A foreign page is refused by its Origin whatever the type.
    [
      'PUT',
      { host: 'localhost', origin: 'http://evil.example', 'content-type': 'application/octet-stream' },
      403,
    ],
    // python-consul: a JSON body with no type, no browser headers.
    ['PUT', { host: '127.0.0.1:8500', 'content-length': '40' }, undefined],
  ] as [string, Record<string, string>, number | undefined][])('%s %j -> %s', (method, headers, status) => {
    expect(guardRefusal({ method, headers }, api)?.status).toBe(status)
  })
})

describe('requestDeadline (?timeout=)', () => {
  const req = (timeout?: string): ApiRequest => ({
    method: 'PUT',
    path: '/',
    params: {},
    query: new URLSearchParams(timeout === undefined ? '' : { timeout }),
    body: undefined,
    headers: {},
    signal: new AbortController().signal,
    auth: { require: () => '', authorizer: () => MANAGE_ALL, secret: () => undefined },
  })
  const limits = { defaultMs: 5_000, maxMs: 60_000, maxDigits: 6 }

  it('takes milliseconds from 1 to the maximum, or the default', () => {
    expect(requestDeadline(req(), limits).aborted).toBe(false)
    expect(requestDeadline(req('1'), limits).aborted).toBe(false)
    expect(requestDeadline(req('60000'), limits).aborted).toBe(false)
  })

  it('refuses anything else with a 400 naming the range', () => {
    for (const t of ['0', '60001', '-5', '1.5', 'abc', '', '0000001']) {
      expect(() => requestDeadline(req(t), limits)).toThrow(ApiError)
      expect(() => requestDeadline(req(t), limits)).toThrow('timeout: expected milliseconds from 1 to 60000')
    }
    expect(() =>
      requestDeadline(req('99999'), { defaultMs: 5_000, maxMs: 99_999, maxDigits: 5 }),
    ).not.toThrow()
    expect(() => requestDeadline(req('100000'), { defaultMs: 5_000, maxMs: 99_999, maxDigits: 5 })).toThrow(
      'from 1 to 99999',
    )
  })

  it('aborts with TimeoutError at the deadline, or with the request when it ends first', async () => {
    const timed = requestDeadline(req('20'), limits)
    const reason = await new Promise<unknown>((resolve) =>
      timed.addEventListener('abort', () => resolve(timed.reason), { once: true }),
    )
    expect((reason as Error).name).toBe('TimeoutError')

    const client = new AbortController()
    const r = { ...req('60000'), signal: client.signal }
    const deadline = requestDeadline(r, limits)
    expect(deadline.aborted).toBe(false)
    client.abort(new Error('response closed'))
    expect(deadline.aborted).toBe(true)
    expect((deadline.reason as Error).message).toBe('response closed')
    // A request already over has an aborted deadline at once.
    expect(requestDeadline(r, limits).aborted).toBe(true)
  })
})

/** An API with ACLs on (the ACL routes over `backend`), logging to `log`. */
function aclApi(log: pino.Logger, backend: FakeAclBackend): HttpApi {
  let ids = 0
  const api = new HttpApi(log)
  registerAclRoutes(api, {
    backend,
    resolver: new AclResolver(backend.state, ACL_ON),
    newId: () => `00000000-0000-4000-8000-${(++ids).toString(16).padStart(12, '0')}`,
    now: () => new Date('2026-12-04T14:00:00Z'),
  })
  return api
}

describe('audit line of an authorized write', () => {
  it('is written once the reply has been handed to the socket, not before', async () => {
    const backend = new FakeAclBackend()
    let lastResponse: ServerResponse | undefined
    const audit: { path: string; replied: boolean }[] = []
    const log = pino(
      { level: 'info' },
      {
        write: (line: string) => {
          const rec = JSON.parse(line) as { msg: string; path: string }
          if (rec.msg === 'authorized write')
            audit.push({ path: rec.path, replied: lastResponse?.writableEnded === true })
        },
      },
    )
    const api = aclApi(log, backend)
    api.route('PUT', '/v1/op/thing', (req) => {
      req.auth.require(...need.operatorWrite())
      return { index: 7 }
    })
    const { port } = await api.listen('127.0.0.1', 0)
    try {
      ;(api as unknown as { server: Server }).server.prependListener('request', (_req, res) => {
        lastResponse = res
      })
      const base = `http://127.0.0.1:${port}`
      const boot = (await (await fetch(`${base}/v1/acl/bootstrap`, { method: 'PUT' })).json()) as {
        SecretID: string
      }
      api.useAcl(new AclResolver(backend.state, ACL_ON))
      audit.length = 0
      const res = await fetch(`${base}/v1/op/thing`, {
        method: 'PUT',
        headers: { 'x-consul-token': boot.SecretID },
      })
      expect(res.status).toBe(200)
      expect(await res.json()).toEqual({ index: 7 })
      expect(audit).toEqual([{ path: '/v1/op/thing', replied: true }])
      // Refused: no audit line.
      const denied = await fetch(`${base}/v1/op/thing`, { method: 'PUT' })
      expect(denied.status).toBe(403)
      expect(audit).toHaveLength(1)
    } finally {
      await api.close()
    }
  })
})

describe('audit lines of concurrent authorized writes', () => {
  it('names every write exactly once, however they were grouped into lines', async () => {
    const backend = new FakeAclBackend()
    const written: string[] = []
    const log = pino(
      { level: 'info' },
      {
        write: (line: string) => {
          const rec = JSON.parse(line) as { msg: string; path?: string; writes?: { path: string }[] }
          if (rec.msg === 'authorized write') written.push(rec.path!)
          if (rec.msg === 'authorized writes') {
            expect(rec.writes!.length).toBeGreaterThan(1)
            for (const w of rec.writes!) written.push(w.path)
          }
        },
      },
    )
    const api = aclApi(log, backend)
    api.route('PUT', '/v1/op/:n', (req) => {
      req.auth.require(...need.operatorWrite())
      return { index: Number(req.params['n']) }
    })
    const { port } = await api.listen('127.0.0.1', 0)
    try {
      const base = `http://127.0.0.1:${port}`
      const boot = (await (await fetch(`${base}/v1/acl/bootstrap`, { method: 'PUT' })).json()) as {
        SecretID: string
      }
      api.useAcl(new AclResolver(backend.state, ACL_ON))
      written.length = 0
      const paths = Array.from({ length: 40 }, (_, i) => `/v1/op/${i}`)
      const codes = await Promise.all(
        paths.map(
          (p) =>
            new Promise<number>((resolve, reject) => {
              // One connection per request, so that several arrive in one event-loop turn.
              const r = request(`${base}${p}`, {
                method: 'PUT',
                agent: false,
                headers: { 'x-consul-token': boot.SecretID },
              })
              r.on('response', (res) => {
                res.resume()
                res.on('end', () => resolve(res.statusCode ?? 0))
              })
              r.on('error', reject)
              r.end()
            }),
        ),
      )
      expect(codes.every((c) => c === 200)).toBe(true)
      // A line still pending when the server closes is written then.
      await api.close()
      expect(written.sort()).toEqual([...paths].sort())
    } finally {
      await api.close()
    }
  })
})

describe("a write's deadline on a request of the server", () => {
  it('aborts with TimeoutError at ?timeout=, and with the response when the client goes away', async () => {
    const api = new HttpApi(pino({ level: 'silent' }))
    // Each call of the route: a promise of its deadline's abort reason, made when it starts.
    const calls: Promise<unknown>[] = []
    let started: () => void = () => {}
    api.route('PUT', '/v1/slow', async (req) => {
      const signal = requestDeadline(req, { defaultMs: 5_000, maxMs: 60_000, maxDigits: 6 })
      const aborted = new Promise((resolve) => signal.addEventListener('abort', () => resolve(signal.reason)))
      calls.push(aborted)
      started()
      await aborted
      throw new ApiError('too slow', 503)
    })
    const { port } = await api.listen('127.0.0.1', 0)
    try {
      const res = await fetch(`http://127.0.0.1:${port}/v1/slow?timeout=20`, { method: 'PUT' })
      expect(res.status).toBe(503)
      expect(((await calls[0]) as DOMException).name).toBe('TimeoutError')
      const gone = new AbortController()
      const inHandler = new Promise<void>((resolve) => {
        started = resolve
      })
      const pending = fetch(`http://127.0.0.1:${port}/v1/slow`, { method: 'PUT', signal: gone.signal })
      await inHandler
      gone.abort()
      await expect(pending).rejects.toThrow()
      expect(((await calls[1]) as DOMException).name).toBe('AbortError')
    } finally {
      await api.close()
    }
  })
})
