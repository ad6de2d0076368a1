/**
 * L7 intentions through `/v1/connect/intentions`: Consul's `Permissions` accepted in place of
 * `Action` and shown back in Consul's shape; a bad one is a 400 naming the field with nothing
 * written; and, ACLs on, from the attacker's side: no token or a token without `intentions =
 * write` on the destination gets 403 and nothing changes.
 */
import pino from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { AclResolver } from '../../../src/node/api/acl-auth.ts'
import { registerConnectRoutes } from '../../../src/node/api/connect-routes.ts'
import { HttpApi } from '../../../src/node/api/server.ts'
import { connectWithFakes, type FakeRaft } from '../connect/connect-helpers.ts'

const id = (n: number): string => `00000000-0000-4000-8000-${n.toString(16).padStart(12, '0')}`
const MGMT = id(101)
/** The service identity `web`: service:write on web, nothing on api's intentions. */
const WEB = id(11)

const PERMS = [
  { Action: 'allow', HTTP: { PathExact: '/public', Methods: ['GET'] } },
  { Action: 'deny', HTTP: { PathPrefix: '/admin' } },
]

describe('L7 intentions over the HTTP API (ACLs on)', () => {
  const http = new HttpApi(pino({ level: 'silent' }))
  let raft: FakeRaft
  let base = ''

  beforeAll(async () => {
    const made = connectWithFakes({})
    raft = made.raft
    await raft.write({ op: 'acl.bootstrap', accessorId: id(100), secretId: MGMT, createTime: 't' })
    await raft.write({
      op: 'acl.token.upsert',
      mode: 'create',
      accessorId: id(10),
      secretId: WEB,
      description: '',
      policies: [],
      serviceIdentities: [{ serviceName: 'web', datacenters: [] }],
      nodeIdentities: [],
      local: false,
      voter: false,
      createTime: 't',
    })
    http.useAcl(
      new AclResolver(raft.store.acl, { enabled: true, defaultPolicy: 'deny', anonymousRead: true }),
    )
    registerConnectRoutes(http, made.connect)
    const addr = await http.listen('127.0.0.1', 0)
    base = `http://127.0.0.1:${addr.port}`
  })
  afterAll(() => http.close())

  const call = async (method: string, path: string, body?: unknown, token?: string) => {
    const res = await fetch(base + path, {
      method,
      headers: {
        ...(token !== undefined ? { 'x-consul-token': token } : {}),
        ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
      },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    })
    const text = await res.text()
    // biome-ignore lint/suspicious/noExplicitAny: each test reads what it asserts
    let json: any
    try {
      json = text ? JSON.parse(text) : undefined
    } catch {
      json = text
    }
    return { status: res.status, json, text }
  }
  const exact = '/v1/connect/intentions/exact?source=web&destination=api'

  it('no token, or a token without intentions write on the destination: 403, nothing written', async () => {
    const writes = raft.writes.length
    for (const token of [undefined, WEB, id(999)]) {
      const r = await call('PUT', exact, { Permissions: PERMS }, token)
      expect(r.status, r.text).toBe(403)
    }
    const post = await call(
      'POST',
      '/v1/connect/intentions',
      { SourceName: 'web', DestinationName: 'api', Permissions: PERMS },
      WEB,
    )
    expect(post.status).toBe(403)
    expect(post.text).toMatch(/intention:write/)
    expect(raft.writes.length).toBe(writes)
    expect(raft.store.listIntentions()).toEqual([])
  })

  it('Permissions in place of Action: written, listed and read back in Consul’s shape', async () => {
    const w = await call('PUT', exact, { Description: 'L7', Permissions: PERMS }, MGMT)
    expect(w.status, w.text).toBe(200)
    const got = await call('GET', exact, undefined, MGMT)
    expect(got.json).toMatchObject({
      SourceName: 'web',
      DestinationName: 'api',
      Action: '',
      Permissions: PERMS,
    })
    const list = await call('GET', '/v1/connect/intentions', undefined, MGMT)
    expect(list.json[0]).toMatchObject({ Action: '', Permissions: PERMS })
    // Consul's check sees only the pair: an L7 intention is not an L4 allow.
    const check = await call(
      'GET',
      '/v1/connect/intentions/check?source=web&destination=api',
      undefined,
      MGMT,
    )
    expect(check.json.Allowed).toBe(false)
    // Back to L4 with Action: the permissions are gone.
    expect((await call('PUT', exact, { Action: 'allow' }, MGMT)).status).toBe(200)
    expect((await call('GET', exact, undefined, MGMT)).json.Permissions).toBeUndefined()
    expect((await call('DELETE', exact, undefined, MGMT)).status).toBe(200)
  })

  it.each([
    [{ Action: 'allow', Permissions: PERMS }, /^action: must not be set with Permissions/],
    [{ Permissions: [] }, /^permissions: /],
    [{ Permissions: 'all' }, /^permissions: /],
    [{ Permissions: [{ Action: 'allow', HTTP: { PathRegex: '[' } }] }, /^permissions: 0\.HTTP\.PathRegex: /],
    [
      { Permissions: [{ Action: 'allow', HTTP: { PathExact: '/', Evil: true } }] },
      /^permissions: 0\.HTTP\.Evil: unknown field/,
    ],
    [{ Permissions: [{ Action: 'allow', HTTP: { Methods: ['get'] } }] }, /^permissions: 0\.HTTP\.Methods\.0/],
    [{ Permissions: PERMS, Shiny: 1 }, /^Shiny: unknown field/],
  ])('%j is a 400 naming the field, nothing written', async (body, want) => {
    const writes = raft.writes.length
    const r = await call('PUT', exact, body, MGMT)
    expect(r.status).toBe(400)
    expect(r.json.error ?? r.text).toMatch(want)
    expect(raft.writes.length).toBe(writes)
    expect(raft.store.getIntention('web', 'api')).toBeUndefined()
  })
})
