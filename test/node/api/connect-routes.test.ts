import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { registerConnectRoutes } from '../../../src/node/api/connect-routes.ts'
import { HttpApi } from '../../../src/node/api/server.ts'
import { connectWithFakes, type FakeRaft, silentLog } from '../connect/connect-helpers.ts'

let http: HttpApi
let base: string
let raft: FakeRaft

beforeEach(async () => {
  const made = connectWithFakes({})
  raft = made.raft
  http = new HttpApi(silentLog)
  registerConnectRoutes(http, made.connect)
  const addr = await http.listen('127.0.0.1', 0)
  base = `http://127.0.0.1:${addr.port}`
})

afterEach(async () => {
  await http.close()
})

// biome-ignore lint/suspicious/noExplicitAny: response shapes vary per route; each test reads what it asserts
type Json = any

async function call(
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; json: Json; headers: Headers }> {
  const res = await fetch(base + path, {
    method,
    ...(body !== undefined
      ? { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } }
      : {}),
  })
  const text = await res.text()
  return { status: res.status, json: text ? JSON.parse(text) : undefined, headers: res.headers }
}

describe('connect routes: intentions', () => {
  it('creates, lists (highest precedence first), checks and deletes', async () => {
    expect(
      (await call('POST', '/v1/connect/intentions', { source: '*', destination: 'db', action: 'deny' }))
        .status,
    ).toBe(200)
    expect(
      // Consul's field names (node-consul, the Go api package).
      (
        await call('POST', '/v1/connect/intentions', {
          SourceName: 'web',
          DestinationName: 'db',
          Action: 'allow',
        })
      ).status,
    ).toBe(200)
    const list = await call('GET', '/v1/connect/intentions')
    expect(list.json.map((i: { SourceName: string }) => i.SourceName)).toEqual(['web', '*'])
    expect(list.json[0]).toMatchObject({
      DestinationName: 'db',
      Action: 'allow',
      Precedence: 4,
      SourceNS: 'default',
    })
    expect(list.headers.get('x-consul-index')).not.toBeNull()
    const match = await call('GET', '/v1/connect/intentions/match?by=destination&name=db')
    expect(match.json.db.map((i: { SourceName: string }) => i.SourceName)).toEqual(['web', '*'])
    expect((await call('GET', '/v1/connect/intentions/match?by=nothing&name=db')).status).toBe(400)
    expect((await call('GET', '/v1/connect/intentions/check?source=web&destination=db')).json.Allowed).toBe(
      true,
    )
    expect((await call('GET', '/v1/connect/intentions/check?source=api&destination=db')).json.Allowed).toBe(
      false,
    )
    expect(
      (await call('GET', '/v1/connect/intentions/check?source=api&destination=cache')).json,
    ).toMatchObject({
      Allowed: false,
      DefaultAction: 'deny',
    })
    expect((await call('DELETE', '/v1/connect/intentions?source=web&destination=db')).status).toBe(200)
    expect((await call('DELETE', '/v1/connect/intentions?source=web&destination=db')).status).toBe(404)
    expect((await call('GET', '/v1/connect/intentions')).json).toHaveLength(1)
  })

  it.each([
    [{ source: 'Web', destination: 'db', action: 'allow' }, /^source:/],
    [{ source: 'web', destination: 'db_1', action: 'allow' }, /^destination:/],
    [{ source: 'web-*', destination: 'db', action: 'allow' }, /^source: wildcard/],
    [{ source: 'web', destination: '*db', action: 'allow' }, /^destination: wildcard/],
    [{ source: 'web', destination: 'db', action: 'permit' }, /^action:/],
    [{ source: 'web', destination: 'db' }, /^action:/],
    [{ source: 'web', destination: 'db', action: 'allow', description: 7 }, /^description:/],
    [{ source: 'web', destination: 'db', action: 'allow', priority: 1 }, /^priority: unknown field/],
    [['web', 'db'], /^body:/],
  ])('rejects %j with 400 naming the field, writing nothing', async (body, message) => {
    const r = await call('POST', '/v1/connect/intentions', body)
    expect(r.status).toBe(400)
    expect(r.json.error).toMatch(message)
    expect(raft.writes).toHaveLength(0)
  })

  it('rejects a duplicate with 400 and leaves the first intention as it was', async () => {
    await call('POST', '/v1/connect/intentions', { source: 'web', destination: 'db', action: 'allow' })
    const dup = await call('POST', '/v1/connect/intentions', {
      source: 'web',
      destination: 'db',
      action: 'deny',
    })
    expect(dup.status).toBe(400)
    expect(dup.json.error).toMatch(/^source\/destination: .*already exists/)
    expect((await call('GET', '/v1/connect/intentions')).json[0].Action).toBe('allow')
    // The explicit upsert path replaces it.
    const put = await call('PUT', '/v1/connect/intentions/exact?source=web&destination=db', {
      action: 'deny',
    })
    expect(put.status).toBe(200)
    expect((await call('GET', '/v1/connect/intentions/exact?source=web&destination=db')).json.Action).toBe(
      'deny',
    )
  })

  it('checks and pair queries validate their parameters', async () => {
    expect((await call('GET', '/v1/connect/intentions/check?source=web')).status).toBe(400)
    expect((await call('GET', '/v1/connect/intentions/check?source=*&destination=db')).status).toBe(400)
    expect((await call('DELETE', '/v1/connect/intentions?source=web')).status).toBe(400)
    expect((await call('GET', '/v1/connect/intentions/exact?source=web&destination=db')).status).toBe(404)
  })

  it('the default action is a cluster-wide setting written through raft', async () => {
    expect((await call('PUT', '/v1/connect/intentions/default', { action: 'maybe' })).status).toBe(400)
    expect((await call('PUT', '/v1/connect/intentions/default', { action: 'allow' })).status).toBe(200)
    expect((await call('GET', '/v1/connect/intentions/default')).json.action).toBe('allow')
    expect((await call('GET', '/v1/connect/intentions/check?source=a&destination=b')).json.Allowed).toBe(true)
  })

  it('a blocking list query returns when the policy state passes the given index', async () => {
    const first = await fetch(`${base}/v1/connect/intentions`)
    const index = Number(first.headers.get('x-peermesh-index'))
    const blocked = call('GET', `/v1/connect/intentions?index=${index}&wait=5s`)
    await call('POST', '/v1/connect/intentions', { source: 'web', destination: 'db', action: 'allow' })
    expect((await blocked).json).toHaveLength(1)
  })
})

describe('connect routes: CA', () => {
  it('lists no roots before the CA exists and never exposes a private key', async () => {
    const r = await call('GET', '/v1/connect/ca/roots')
    expect(r.json).toMatchObject({ ActiveRootID: '', Roots: [] })
    expect(JSON.stringify(r.json)).not.toMatch(/PRIVATE KEY/)
    expect((await call('GET', '/v1/agent/connect/ca/leaf/web')).status).toBe(404)
  })
})
