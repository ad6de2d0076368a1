import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { systemClock } from '../../../src/common/clock.ts'
import { registerEventRoutes } from '../../../src/node/api/event-routes.ts'
import { InvalidUserEventError } from '../../../src/gossip/errors.ts'
import { AclResolver } from '../../../src/node/api/acl-auth.ts'
import type { HttpApi } from '../../../src/node/api/server.ts'
import { UserEventBuffer } from '../../../src/node/events/event-buffer.ts'
import type { UserEventRecord } from '../../../src/node/events/user-event.ts'
import { ACL_ON, startAclApi } from '../../acl/fake-acl-backend.ts'

let http: HttpApi
let base: string
let root: string
let fired: UserEventRecord[]
let buffer: UserEventBuffer

beforeEach(async () => {
  const made = await startAclApi()
  http = made.http
  base = `http://${made.address}`
  root = (await call('PUT', '/v1/acl/bootstrap')).json.SecretID
  // Tokens checked on every route, as the agent does (ACLs on, default deny).
  http.useAcl(new AclResolver(made.backend.state, ACL_ON))
  fired = []
  buffer = new UserEventBuffer(systemClock)
  let n = 0
  registerEventRoutes(http, {
    events: buffer,
    // Gossip faked: the event is "delivered" here at once, as the core does for its own events.
    fire: (e) => {
      if (e.name === 'too-big-for-gossip') throw new InvalidUserEventError('body of 1100 bytes')
      n++
      const rec = { ...e, id: `00000000-0000-4000-8000-${n.toString(16).padStart(12, '0')}`, ltime: n }
      fired.push(rec)
      buffer.add(rec)
      return rec
    },
  })
})
afterEach(() => http.close())

// biome-ignore lint/suspicious/noExplicitAny: response shapes vary per route; each test reads what it asserts
type Json = any

async function call(
  method: string,
  path: string,
  options: { token?: string; body?: string; json?: unknown } = {},
): Promise<{ status: number; json: Json; headers: Headers }> {
  const headers: Record<string, string> = {}
  if (options.token !== undefined) headers['x-consul-token'] = options.token
  if (options.json !== undefined) headers['content-type'] = 'application/json'
  const body = options.json !== undefined ? JSON.stringify(options.json) : options.body
  const res = await fetch(base + path, { method, headers, ...(body !== undefined ? { body } : {}) })
  const text = await res.text()
  const json =
    res.headers.get('content-type')?.startsWith('application/json') && text ? JSON.parse(text) : text
  return { status: res.status, json, headers: res.headers }
}

async function tokenWith(rules: string): Promise<{ secret: string; accessor: string }> {
  const name = `p${Math.random().toString(36).slice(2)}`
  expect(
    (await call('PUT', '/v1/acl/policy', { token: root, json: { Name: name, Rules: rules } })).status,
  ).toBe(200)
  const t = await call('PUT', '/v1/acl/token', { token: root, json: { Policies: [{ Name: name }] } })
  return { secret: t.json.SecretID, accessor: t.json.AccessorID }
}

describe('PUT /v1/event/fire/:name', () => {
  it('without a token, or with event:read only: 403 naming event:write, nothing fired', async () => {
    const anon = await call('PUT', '/v1/event/fire/deploy', { json: { v: 2 } })
    expect(anon.status).toBe(403)
    expect(anon.json.error).toContain('lacks permission \'event:write\' on "deploy"')
    const reader = await tokenWith('event_prefix "" { policy = "read" }')
    const r = await call('PUT', '/v1/event/fire/deploy', { token: reader.secret, json: { v: 2 } })
    expect(r.status).toBe(403)
    const other = await tokenWith('event "other" { policy = "write" }')
    expect((await call('PUT', '/v1/event/fire/deploy', { token: other.secret })).status).toBe(403)
    expect(fired).toEqual([])
    expect(buffer.list()).toEqual([])
  })

  it("with event:write: fires and answers the event in Consul's shape", async () => {
    const writer = await tokenWith('event "deploy" { policy = "write" }')
    const r = await call('PUT', '/v1/event/fire/deploy?node=^web&service=api&tag=v1', {
      token: writer.secret,
      json: { version: '2' },
    })
    expect(r.status).toBe(200)
    expect(r.json).toEqual({
      ID: fired[0]!.id,
      Name: 'deploy',
      Payload: Buffer.from('{"version":"2"}').toString('base64'),
      NodeFilter: '^web',
      ServiceFilter: 'api',
      TagFilter: 'v1',
      Version: 1,
      LTime: 1,
    })
    const empty = await call('PUT', '/v1/event/fire/deploy', { token: writer.secret })
    expect(empty.json.Payload).toBeNull()
  })

  it('takes any payload byte for byte, whatever its content type (Consul: opaque)', async () => {
    const writer = await tokenWith('event_prefix "" { policy = "write" }')
    const bytes = new Uint8Array([0, 1, 0xfe, 0xff, 0x7b])
    for (const [type, body] of [
      ['text/plain', 'not json \u00ff'],
      ['application/octet-stream', bytes],
      [undefined, 'no content type'],
    ] as const) {
      const res = await fetch(`${base}/v1/event/fire/raw`, {
        method: 'PUT',
        headers: { 'x-consul-token': writer.secret, ...(type !== undefined ? { 'content-type': type } : {}) },
        body,
      })
      expect(res.status, String(type)).toBe(200)
      const sent = typeof body === 'string' ? Buffer.from(body) : Buffer.from(body)
      expect(Buffer.from(((await res.json()) as Json).Payload, 'base64').equals(sent), String(type)).toBe(
        true,
      )
    }
    expect(fired.map((e) => Buffer.from(e.payload).equals(Buffer.from(bytes)))).toEqual([false, true, false])
  })

  it('refuses bad input and fires nothing', async () => {
    const writer = await tokenWith('event_prefix "" { policy = "write" }')
    const bad = async (path: string, json?: unknown) =>
      (await call('PUT', path, { token: writer.secret, ...(json !== undefined ? { json } : {}) })).status
    expect(await bad('/v1/event/fire/deploy?tag=v1')).toBe(400)
    expect(await bad('/v1/event/fire/deploy?node=(')).toBe(400)
    // Another datacenter: the server's answer for every /v1 route (Consul's plain-text 500).
    expect(await bad('/v1/event/fire/deploy?dc=dc2')).toBe(500)
    expect(await bad('/v1/event/fire/deploy', 'x'.repeat(600))).toBe(413)
    expect(await bad('/v1/event/fire/too-big-for-gossip')).toBe(413)
    expect(fired).toEqual([])
  })
})

describe('GET /v1/event/list', () => {
  it('lists only what the token may read (event:read), filtered by name, with X-Consul-Index', async () => {
    const writer = await tokenWith('event_prefix "" { policy = "write" }')
    await call('PUT', '/v1/event/fire/deploy', { token: writer.secret, json: 1 })
    await call('PUT', '/v1/event/fire/secret', { token: writer.secret, json: 2 })
    const anon = await call('GET', '/v1/event/list')
    expect(anon.status).toBe(200)
    expect(anon.json).toEqual([])
    expect(anon.headers.get('x-consul-index')).toBe('1')
    const reader = await tokenWith('event "deploy" { policy = "read" }')
    const r = await call('GET', '/v1/event/list', { token: reader.secret })
    expect(r.json.map((e: Json) => e.Name)).toEqual(['deploy'])
    // Consul's uuidToUint64 of 00000000-0000-4000-8000-000000000001: 0x4000 ^ 0x8000000000000001.
    expect(r.headers.get('x-consul-index')).toBe((0x4000n ^ 0x8000000000000001n).toString())
    const all = await call('GET', '/v1/event/list', { token: writer.secret })
    expect(all.json.map((e: Json) => e.Name)).toEqual(['deploy', 'secret'])
    const named = await call('GET', '/v1/event/list?name=secret', { token: writer.secret })
    expect(named.json.map((e: Json) => e.Name)).toEqual(['secret'])
  })

  it('blocks while its index is unchanged: an event of another name does not end the wait, one of its name does', async () => {
    const writer = await tokenWith('event_prefix "" { policy = "write" }')
    await call('PUT', '/v1/event/fire/deploy', { token: writer.secret })
    const first = await call('GET', '/v1/event/list?name=deploy', { token: writer.secret })
    const index = first.headers.get('x-consul-index')!
    let done = false
    const blocked = call('GET', `/v1/event/list?name=deploy&index=${index}&wait=30s`, {
      token: writer.secret,
    }).then((r) => {
      done = true
      return r
    })
    await waitUntil(() => buffer.waiting === 1)
    await call('PUT', '/v1/event/fire/other', { token: writer.secret })
    await new Promise((r) => setTimeout(r, 50))
    expect(done).toBe(false)
    await call('PUT', '/v1/event/fire/deploy', { token: writer.secret, json: 'again' })
    const r = await blocked
    expect(r.json).toHaveLength(2)
    expect(r.headers.get('x-consul-index')).not.toBe(index)
    // A short wait with nothing new answers the same index.
    const t = await call(
      'GET',
      `/v1/event/list?name=other&index=${(await call('GET', '/v1/event/list?name=other', { token: writer.secret })).headers.get('x-consul-index')}&wait=100ms`,
      { token: writer.secret },
    )
    expect(t.json).toHaveLength(1)
    expect((await call('GET', '/v1/event/list?index=abc', { token: writer.secret })).status).toBe(400)
  })
})

async function waitUntil(pred: () => boolean, ms = 5_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!pred()) {
    if (Date.now() > deadline) throw new Error('condition not reached')
    await new Promise((r) => setTimeout(r, 5))
  }
}
