import pino from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ApiError } from '../../../src/node/agent/errors.ts'
import { type ApiRequest, HttpApi, requestDeadline } from '../../../src/node/api/server.ts'

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
      ['/v1/things/a', { method: 'PUT', body: '{bad' }, 400],
      ['/v1/things/a', { method: 'PUT', body: '"str"' }, 400],
      // 1,343 levels deep (what once reached Raft and overflowed a stack): refused up front.
      ['/v1/things/a', { method: 'PUT', body: `{"v":${'['.repeat(1343)}${']'.repeat(1343)}}` }, 400],
      ['/v1/things/a', { method: 'PUT', body: 'x'.repeat(2 << 20) }, 413],
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

describe('requestDeadline (?timeout=)', () => {
  const req = (timeout?: string): ApiRequest => ({
    method: 'PUT',
    path: '/',
    params: {},
    query: new URLSearchParams(timeout === undefined ? '' : { timeout }),
    body: undefined,
    headers: {},
    signal: new AbortController().signal,
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
})
