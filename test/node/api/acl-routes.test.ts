import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { ANONYMOUS_TOKEN_ID, GLOBAL_MANAGEMENT_POLICY_ID, need } from '../../../src/acl/index.ts'
import { ApiError } from '../../../src/node/agent/errors.ts'
import {
  ACL_NOT_FOUND,
  ACL_NOT_REPLICATED,
  AclResolver,
  type AclResolverConfig,
  requestSecret,
  requirePermission,
} from '../../../src/node/api/acl-auth.ts'
import { initialManagementCommand, untilApplied } from '../../../src/node/api/acl-routes.ts'
import type { HttpApi } from '../../../src/node/api/server.ts'
import { NoLeaderError } from '../../../src/node/raft/errors.ts'
import { AclState } from '../../../src/raft/policy/acl-state.ts'
import { ACL_ON, type FakeAclBackend, startAclApi } from '../../acl/fake-acl-backend.ts'

let http: HttpApi
let base: string
let backend: FakeAclBackend
const config: AclResolverConfig = ACL_ON

async function start(cfg: AclResolverConfig = config): Promise<void> {
  const made = await startAclApi(cfg)
  http = made.http
  backend = made.backend
  base = `http://${made.address}`
}

beforeEach(() => start())
afterEach(() => http.close())

// biome-ignore lint/suspicious/noExplicitAny: response shapes vary per route; each test reads what it asserts
type Json = any

async function call(
  method: string,
  path: string,
  options: { token?: string; body?: unknown; headers?: Record<string, string> } = {},
): Promise<{ status: number; json: Json }> {
  const headers: Record<string, string> = { ...options.headers }
  if (options.token !== undefined) headers['x-consul-token'] = options.token
  if (options.body !== undefined) headers['content-type'] = 'application/json'
  const res = await fetch(base + path, {
    method,
    headers,
    ...(options.body !== undefined ? { body: JSON.stringify(options.body) } : {}),
  })
  const text = await res.text()
  return { status: res.status, json: text ? JSON.parse(text) : undefined }
}

async function bootstrapped(): Promise<string> {
  const r = await call('PUT', '/v1/acl/bootstrap')
  expect(r.status).toBe(200)
  return r.json.SecretID
}

/** Creates a policy and a token linking it; returns the token's secret and accessor. */
async function tokenWith(
  root: string,
  name: string,
  rules: string,
): Promise<{ secret: string; accessor: string }> {
  expect(
    (await call('PUT', '/v1/acl/policy', { token: root, body: { Name: name, Rules: rules } })).status,
  ).toBe(200)
  const t = await call('PUT', '/v1/acl/token', { token: root, body: { Policies: [{ Name: name }] } })
  expect(t.status).toBe(200)
  return { secret: t.json.SecretID, accessor: t.json.AccessorID }
}

const denied = (accessor: string, permission: string) =>
  `Permission denied: token with AccessorID '${accessor}' lacks permission '${permission}'`

describe('PUT /v1/acl/bootstrap', () => {
  it("answers the management token in Consul's shape, once; then 403", async () => {
    const r = await call('PUT', '/v1/acl/bootstrap')
    expect(r.status).toBe(200)
    expect(r.json).toEqual({
      AccessorID: '00000000-0000-4000-8000-000000000001',
      SecretID: '00000000-0000-4000-8000-000000000002',
      Description: 'Bootstrap Token (Global Management)',
      Policies: [{ ID: GLOBAL_MANAGEMENT_POLICY_ID, Name: 'global-management' }],
      Local: false,
      Voter: true,
      CreateTime: '2026-12-04T14:00:00.000Z',
      CreateIndex: 1,
      ModifyIndex: 1,
    })
    const again = await call('PUT', '/v1/acl/bootstrap')
    expect(again.status).toBe(403)
    expect(again.json.error).toMatch(/^ACL bootstrap no longer allowed/)
  })

  it('takes a BootstrapSecret (a UUID) as Consul 1.14+', async () => {
    const secret = '6f1d4ab2-3c1e-11ee-be56-0242ac120002'
    expect((await call('PUT', '/v1/acl/bootstrap', { body: { BootstrapSecret: 'nope' } })).status).toBe(400)
    expect(
      (await call('PUT', '/v1/acl/bootstrap', { body: { BootstrapSecret: secret } })).json.SecretID,
    ).toBe(secret)
    expect((await call('GET', '/v1/acl/token/self', { token: secret })).json.Description).toMatch(/Bootstrap/)
  })

  it('initialManagementCommand applies a configured secret as the bootstrap', async () => {
    const secret = '11111111-2222-3333-4444-555555555555'
    const cmd = initialManagementCommand(secret, { newId: () => '99999999-2222-3333-4444-555555555555' })
    expect((await backend.write(cmd)).ok).toBe(true)
    expect((await call('GET', '/v1/acl/token/self', { token: secret })).json).toMatchObject({
      AccessorID: '99999999-2222-3333-4444-555555555555',
      Description: 'Initial Management Token',
    })
    expect((await call('PUT', '/v1/acl/bootstrap')).status).toBe(403)
  })
})

describe('token resolution', () => {
  it('anonymous when absent; an unknown secret is 403 "ACL not found"', async () => {
    await bootstrapped()
    const anon = await call('GET', '/v1/acl/tokens')
    expect(anon.status).toBe(403)
    expect(anon.json.error).toBe(denied(ANONYMOUS_TOKEN_ID, 'acl:read'))
    const unknown = await call('GET', '/v1/acl/tokens', { token: '12345678-1234-1234-1234-123456789012' })
    expect(unknown).toEqual({ status: 403, json: { error: ACL_NOT_FOUND } })
    expect((await call('GET', '/v1/acl/token/self')).json.AccessorID).toBe(ANONYMOUS_TOKEN_ID)
  })

  it('reads X-Consul-Token, then Authorization: Bearer, then ?token=', async () => {
    const root = await bootstrapped()
    const self = (path: string, headers: Record<string, string>) => call('GET', path, { headers })
    expect((await self('/v1/acl/token/self', { authorization: `Bearer ${root}` })).json.SecretID).toBe(root)
    expect((await self(`/v1/acl/token/self?token=${root}`, {})).json.SecretID).toBe(root)
    // Precedence: a header beats the query, X-Consul-Token beats Authorization.
    expect((await self(`/v1/acl/token/self?token=bogus`, { 'x-consul-token': root })).status).toBe(200)
    expect(
      (await self('/v1/acl/token/self', { 'x-consul-token': root, authorization: 'Bearer bogus' })).status,
    ).toBe(200)
    expect(
      (await self('/v1/acl/token/self', { 'x-consul-token': 'bogus', authorization: `Bearer ${root}` }))
        .status,
    ).toBe(403)
  })

  it.each<[string, Record<string, string>, string, string | undefined]>([
    ['nothing', {}, '', undefined],
    ['X-Consul-Token', { 'x-consul-token': ' s1 ' }, '', 's1'],
    ['Bearer, any case', { authorization: 'bEaReR   s2' }, '', 's2'],
    ['another scheme is no token', { authorization: 'Basic abc' }, '', undefined],
    ['empty header falls through to the query', { 'x-consul-token': '' }, 'token=s3', 's3'],
    ['empty query', {}, 'token=', undefined],
    ['header before query', { 'x-consul-token': 'h' }, 'token=q', 'h'],
  ])('requestSecret: %s', (_name, headers, query, want) => {
    expect(requestSecret({ headers, query: new URLSearchParams(query) })).toBe(want)
  })

  it("requirePermission throws Consul's message (with the resource) and returns the accessor", () => {
    const state = new AclState()
    state.apply(
      initialManagementCommand('11111111-2222-3333-4444-555555555555', {
        newId: () => '99999999-2222-3333-4444-555555555555',
      }),
      1,
    )
    const resolver = new AclResolver(state, { ...config, anonymousRead: false })
    const req = (h: Record<string, string>) => ({ headers: h, query: new URLSearchParams() })
    try {
      requirePermission(req({}), resolver, ...need.serviceWrite('web'))
      expect.unreachable()
    } catch (err) {
      expect(err).toBeInstanceOf(ApiError)
      expect((err as ApiError).status).toBe(403)
      expect((err as ApiError).message).toBe(
        `Permission denied: token with AccessorID '${ANONYMOUS_TOKEN_ID}' lacks permission 'service:write' on "web"`,
      )
    }
    expect(
      requirePermission(
        req({ 'x-consul-token': '11111111-2222-3333-4444-555555555555' }),
        resolver,
        ...need.serviceWrite('web'),
      ),
    ).toBe('99999999-2222-3333-4444-555555555555')
  })

  it('a request without a token is anonymous', () => {
    const state = new AclState()
    state.apply(initialManagementCommand('11111111-2222-3333-4444-555555555555'), 1)
    const resolver = new AclResolver(state, config)
    expect(resolver.resolve(undefined).accessorId).toBe(ANONYMOUS_TOKEN_ID)
    expect(resolver.resolve(undefined).authorizer.isManagement).toBe(false)
  })

  it('an unknown secret is a 503 while the ACL state has not caught up, 403 after', () => {
    let replicated = false
    const resolver = new AclResolver(new AclState(), config, { replicated: () => replicated })
    expect(() => resolver.resolve('12345678-1234-1234-1234-123456789012')).toThrow(
      expect.objectContaining({ status: 503, message: ACL_NOT_REPLICATED }),
    )
    replicated = true
    expect(() => resolver.resolve('12345678-1234-1234-1234-123456789012')).toThrow(
      expect.objectContaining({ status: 403, message: ACL_NOT_FOUND }),
    )
  })

  it('a resolved secret is reused until the ACL state changes, then resolved again', () => {
    const state = new AclState()
    const mgmt = '11111111-2222-3333-4444-555555555555'
    const other = '22222222-2222-3333-4444-555555555555'
    state.apply(initialManagementCommand(mgmt), 1)
    const resolver = new AclResolver(state, config)
    const first = resolver.resolve(mgmt)
    expect(resolver.resolve(mgmt)).toBe(first) // no new lookup while nothing changed
    expect(Object.isFrozen(first.token)).toBe(true) // shared by every request: read only
    // A token made meanwhile is found; one deleted is refused at once, not served from the cache.
    expect(() => resolver.resolve(other)).toThrow(expect.objectContaining({ status: 403 }))
    state.apply(
      {
        op: 'acl.token.upsert',
        mode: 'create',
        accessorId: '33333333-2222-3333-4444-555555555555',
        secretId: other,
        createTime: '2026-12-05T00:00:00Z',
      },
      2,
    )
    const made = resolver.resolve(other)
    expect(made.accessorId).toBe('33333333-2222-3333-4444-555555555555')
    expect(made.authorizer.aclWrite()).toBe(false)
    expect(resolver.resolve(mgmt)).not.toBe(first)
    expect(resolver.resolve(mgmt).authorizer.aclWrite()).toBe(true)
    expect(
      state.apply({ op: 'acl.token.delete', accessorId: '33333333-2222-3333-4444-555555555555' }, 3).ok,
    ).toBe(true)
    expect(() => resolver.resolve(other)).toThrow(
      expect.objectContaining({ status: 403, message: ACL_NOT_FOUND }),
    )
  })

  it('with ACLs off every request may do everything, and /v1/acl/* answers 401', async () => {
    await http.close()
    await start({ ...config, enabled: false })
    expect(await call('PUT', '/v1/acl/bootstrap')).toEqual({
      status: 401,
      json: { error: 'ACL support disabled' },
    })
    const resolver = new AclResolver(new AclState(), { ...config, enabled: false })
    expect(resolver.resolve('whatever').authorizer.aclWrite()).toBe(true)
  })
})

describe('policies', () => {
  it('creates (HCL or JSON rules), reads by ID and name, lists without Rules, updates, deletes', async () => {
    const root = await bootstrapped()
    const rules = 'service "web" { policy = "write" }'
    const c = await call('PUT', '/v1/acl/policy', {
      token: root,
      body: { Name: 'web-writer', Description: 'd', Rules: rules },
    })
    expect(c.status).toBe(200)
    expect(c.json).toEqual({
      ID: c.json.ID,
      Name: 'web-writer',
      Description: 'd',
      Rules: rules,
      CreateIndex: 2,
      ModifyIndex: 2,
    })
    expect((await call('GET', `/v1/acl/policy/${c.json.ID}`, { token: root })).json).toEqual(c.json)
    expect((await call('GET', '/v1/acl/policy/name/web-writer', { token: root })).json).toEqual(c.json)
    const list = await call('GET', '/v1/acl/policies', { token: root })
    expect(list.json.map((p: Json) => p.Name)).toEqual(['global-management', 'web-writer'])
    expect(list.json[1]).not.toHaveProperty('Rules')
    const u = await call('PUT', `/v1/acl/policy/${c.json.ID}`, {
      token: root,
      body: { ...c.json, Rules: '{"service": {"web": {"policy": "read"}}}', Datacenters: ['dc1'] },
    })
    expect(u.json).toMatchObject({ Datacenters: ['dc1'], CreateIndex: 2, ModifyIndex: 3 })
    expect((await call('DELETE', `/v1/acl/policy/${c.json.ID}`, { token: root })).json).toBe(true)
    expect((await call('GET', `/v1/acl/policy/${c.json.ID}`, { token: root })).status).toBe(404)
    expect((await call('DELETE', `/v1/acl/policy/${c.json.ID}`, { token: root })).status).toBe(404)
  })

  it.each<[string, unknown, RegExp]>([
    [
      'bad rules',
      { Name: 'p', Rules: 'service "web" { policy = "all" }' },
      /^Rules: service "web": policy: expected/,
    ],
    ['bad name', { Name: 'has space' }, /^Name: must be 1-128/],
    ['no name', { Rules: '' }, /^Name: expected string/],
    ['an ID on create', { Name: 'p', ID: '12345678-1234-1234-1234-123456789012' }, /^ID: must be empty/],
    ['unknown field', { Name: 'p', Rulez: '' }, /^Rulez: unknown field/],
    ['not an object', ['p'], /^body: expected a JSON object/],
  ])('refuses %s with 400 naming the field', async (_name, body, message) => {
    const root = await bootstrapped()
    const r = await call('PUT', '/v1/acl/policy', { token: root, body })
    expect(r.status).toBe(400)
    expect(r.json.error).toMatch(message)
  })

  it('refuses a duplicate name, and changing or deleting global-management', async () => {
    const root = await bootstrapped()
    await call('PUT', '/v1/acl/policy', { token: root, body: { Name: 'p' } })
    const dup = await call('PUT', '/v1/acl/policy', { token: root, body: { Name: 'p' } })
    expect(dup.status).toBe(400)
    expect(dup.json.error).toMatch(/already exists/)
    expect(
      (await call('DELETE', `/v1/acl/policy/${GLOBAL_MANAGEMENT_POLICY_ID}`, { token: root })).status,
    ).toBe(400)
    const rename = await call('PUT', `/v1/acl/policy/${GLOBAL_MANAGEMENT_POLICY_ID}`, {
      token: root,
      body: { Name: 'boss' },
    })
    expect(rename.status).toBe(400)
  })

  it('needs acl:read to read and acl:write to write', async () => {
    const root = await bootstrapped()
    const reader = await tokenWith(root, 'acl-reader', 'acl = "read"')
    expect((await call('GET', '/v1/acl/policies', { token: reader.secret })).status).toBe(200)
    const w = await call('PUT', '/v1/acl/policy', { token: reader.secret, body: { Name: 'x' } })
    expect(w).toEqual({ status: 403, json: { error: denied(reader.accessor, 'acl:write') } })
  })
})

describe('tokens', () => {
  it("creates with policies by name, identities and Voter, in Consul's shape", async () => {
    const root = await bootstrapped()
    await call('PUT', '/v1/acl/policy', {
      token: root,
      body: { Name: 'readers', Rules: 'service_prefix "" { policy = "read" }' },
    })
    const r = await call('PUT', '/v1/acl/token', {
      token: root,
      body: {
        Description: 'web token',
        Policies: [{ Name: 'readers' }],
        ServiceIdentities: [{ ServiceName: 'web' }],
        NodeIdentities: [{ NodeName: 'n1', Datacenter: 'dc1' }],
        Voter: true,
        // What a Consul client sends along, accepted and ignored:
        Roles: [],
        Local: false,
        CreateIndex: 0,
        Hash: null,
      },
    })
    expect(r.status).toBe(200)
    expect(r.json).toEqual({
      AccessorID: r.json.AccessorID,
      SecretID: r.json.SecretID,
      Description: 'web token',
      Policies: [{ ID: r.json.Policies[0].ID, Name: 'readers' }],
      ServiceIdentities: [{ ServiceName: 'web' }],
      NodeIdentities: [{ NodeName: 'n1', Datacenter: 'dc1' }],
      Local: false,
      Voter: true,
      CreateTime: '2026-12-04T14:00:00.000Z',
      CreateIndex: 3,
      ModifyIndex: 3,
    })
    expect(r.json.SecretID).toMatch(/^[0-9a-f-]{36}$/)
    // The service identity works: its secret may write web.
    const self = await call('GET', '/v1/acl/token/self', { token: r.json.SecretID })
    expect(self.json).toEqual(r.json)
  })

  it('shows SecretIDs only with acl:write (else <hidden>); a token always sees its own', async () => {
    const root = await bootstrapped()
    const reader = await tokenWith(root, 'acl-reader', 'acl = "read"')
    const asReader = await call('GET', `/v1/acl/token/${reader.accessor}`, { token: reader.secret })
    expect(asReader.json.SecretID).toBe('<hidden>')
    const listed = await call('GET', '/v1/acl/tokens', { token: reader.secret })
    expect(listed.json.map((t: Json) => t.SecretID)).toEqual(['<hidden>', '<hidden>', '<hidden>'])
    expect(
      (await call('GET', '/v1/acl/tokens', { token: root })).json.map((t: Json) => t.SecretID),
    ).toContain(root)
    expect((await call('GET', `/v1/acl/token/${reader.accessor}`, { token: root })).json.SecretID).toBe(
      reader.secret,
    )
    expect((await call('GET', '/v1/acl/token/self', { token: reader.secret })).json.SecretID).toBe(
      reader.secret,
    )
    // A token without acl:read cannot read even itself by accessor.
    const web = await tokenWith(root, 'web', 'service "web" { policy = "write" }')
    const r = await call('GET', `/v1/acl/token/${web.accessor}`, { token: web.secret })
    expect(r).toEqual({ status: 403, json: { error: denied(web.accessor, 'acl:read') } })
  })

  it('updates (full replace; SecretID and Local kept), refuses mismatches; 404 for unknown', async () => {
    const root = await bootstrapped()
    const c = await call('PUT', '/v1/acl/token', { token: root, body: { Description: 'a', Voter: true } })
    const path = `/v1/acl/token/${c.json.AccessorID}`
    const u = await call('PUT', path, { token: root, body: { Description: 'b' } })
    expect(u.json).toMatchObject({
      Description: 'b',
      Voter: false,
      SecretID: c.json.SecretID,
      CreateIndex: 2,
      ModifyIndex: 3,
    })
    // What a client read, sent back as it is (its secret shown or hidden), updates.
    expect(
      (await call('PUT', path, { token: root, body: { ...u.json, Description: 'c' } })).json.Description,
    ).toBe('c')
    expect(
      (await call('PUT', path, { token: root, body: { SecretID: '<hidden>', Description: 'd' } })).status,
    ).toBe(200)
    const anon = await call('GET', `/v1/acl/token/${ANONYMOUS_TOKEN_ID}`, { token: root })
    expect(
      (await call('PUT', `/v1/acl/token/${ANONYMOUS_TOKEN_ID}`, { token: root, body: anon.json })).status,
    ).toBe(200)
    expect((await call('PUT', path, { token: root, body: { AccessorID: ANONYMOUS_TOKEN_ID } })).status).toBe(
      400,
    )
    const secret = await call('PUT', path, {
      token: root,
      body: { SecretID: '12345678-1234-1234-1234-123456789012' },
    })
    expect(secret.status).toBe(400)
    expect(secret.json.error).toMatch(/SecretID is not permitted/)
    expect(
      (await call('PUT', '/v1/acl/token/12345678-1234-1234-1234-123456789012', { token: root, body: {} }))
        .status,
    ).toBe(404)
  })

  it('deletes (true), refuses deleting the caller or the anonymous token', async () => {
    const root = await bootstrapped()
    const c = await call('PUT', '/v1/acl/token', { token: root, body: {} })
    expect((await call('DELETE', `/v1/acl/token/${c.json.AccessorID}`, { token: root })).json).toBe(true)
    expect((await call('GET', `/v1/acl/token/${c.json.AccessorID}`, { token: root })).status).toBe(404)
    expect((await call('GET', '/v1/acl/token/self', { token: c.json.SecretID })).status).toBe(403)
    const self = await call('DELETE', '/v1/acl/token/00000000-0000-4000-8000-000000000001', { token: root })
    expect(self.status).toBe(400)
    expect((await call('DELETE', `/v1/acl/token/${ANONYMOUS_TOKEN_ID}`, { token: root })).status).toBe(400)
    expect((await call('DELETE', '/v1/acl/token/not-a-uuid', { token: root })).status).toBe(404)
  })

  it.each<[string, unknown, RegExp]>([
    ['an unknown policy', { Policies: [{ Name: 'nope' }] }, /^No such ACL policy with name "nope"/],
    [
      'a bad service identity',
      { ServiceIdentities: [{ ServiceName: 'Web!' }] },
      /^ServiceIdentities\[0\]\.ServiceName: /,
    ],
    [
      'a node identity with a bad name',
      { NodeIdentities: [{ NodeName: 'n 1' }] },
      /^NodeIdentities\[0\]\.NodeName: /,
    ],
    ['roles', { Roles: [{ ID: 'x' }] }, /^Roles: roles are not supported by peermesh/],
    ['expiry', { ExpirationTTL: '1h' }, /^ExpirationTTL: token expiry is not supported/],
    ['a bad AccessorID', { AccessorID: 'x' }, /^AccessorID: must be a UUID/],
    ['an unknown field', { Polices: [] }, /^Polices: unknown field/],
    ['Voter not a boolean', { Voter: 'yes' }, /^Voter: expected boolean/],
  ])('refuses %s with 400', async (_name, body, message) => {
    const root = await bootstrapped()
    const r = await call('PUT', '/v1/acl/token', { token: root, body })
    expect(r.status).toBe(400)
    expect(r.json.error).toMatch(message)
  })

  it('a node identity without a datacenter gets dc1 (peermesh has one)', async () => {
    const root = await bootstrapped()
    const r = await call('PUT', '/v1/acl/token', {
      token: root,
      body: { NodeIdentities: [{ NodeName: 'n1' }] },
    })
    expect(r.status).toBe(200)
    expect(r.json.NodeIdentities).toEqual([{ NodeName: 'n1', Datacenter: 'dc1' }])
  })

  it('a write without a leader is a 503', async () => {
    const root = await bootstrapped()
    backend.failWith = new NoLeaderError('no raft leader')
    expect((await call('PUT', '/v1/acl/token', { token: root, body: {} })).status).toBe(503)
  })
})

describe('untilApplied', () => {
  function fakeStore() {
    const listeners = new Set<(i: number) => void>()
    return {
      index: 3,
      onChange(l: (i: number) => void) {
        listeners.add(l)
        return () => listeners.delete(l)
      },
      advance(i: number) {
        this.index = i
        for (const l of listeners) l(i)
      },
      get listeners() {
        return listeners.size
      },
    }
  }

  it('resolves at once when applied, else on the change that reaches the index', async () => {
    const store = fakeStore()
    await untilApplied(store, 3, new AbortController().signal)
    let done = false
    const p = untilApplied(store, 5, new AbortController().signal).then(() => {
      done = true
    })
    store.advance(4)
    await Promise.resolve()
    expect(done).toBe(false)
    store.advance(5)
    await p
    expect(store.listeners).toBe(0)
  })

  it('rejects when the signal aborts, and unsubscribes', async () => {
    const store = fakeStore()
    const ac = new AbortController()
    const p = untilApplied(store, 9, ac.signal)
    ac.abort(new NoLeaderError('deadline'))
    await expect(p).rejects.toBeInstanceOf(NoLeaderError)
    expect(store.listeners).toBe(0)
  })
})
