import { request as httpRequest } from 'node:http'
import pino from 'pino'
import { afterEach, describe, expect, it } from 'vitest'
import { AclResolver } from '../../../src/node/api/acl-auth.ts'
import type { KvApi, NodeHealth } from '../../../src/node/api/kv-http.ts'
import { registerKvRoutes } from '../../../src/node/api/kv-routes.ts'
import { registerSessionRoutes } from '../../../src/node/api/session-routes.ts'
import { HttpApi } from '../../../src/node/api/server.ts'
import { registerTxnRoutes } from '../../../src/node/api/txn-routes.ts'
import type { PolicyCommand } from '../../../src/raft/index.ts'
import { encodePolicyCommand, PolicyStore } from '../../../src/raft/policy/policy-store.ts'

/**
 * The KV, session and txn routes over a real policy store, with writes applied in-process as the
 * leader would (no Raft), ACLs on. Talks HTTP to the routes as a client does.
 */

const MGMT = '11111111-1111-4111-8111-111111111111'
const READER = '22222222-2222-4222-8222-222222222222'
const N1_WRITER = '77777777-7777-4777-8777-777777777777'

let http: HttpApi | undefined
afterEach(async () => {
  await http?.close()
  http = undefined
})

interface Setup {
  base: string
  store: PolicyStore
  clock: { now: number }
  nodes: Map<string, NodeHealth>
}

async function setup(): Promise<Setup> {
  const store = new PolicyStore()
  let index = 0
  const apply = (cmd: PolicyCommand) =>
    store.apply({ index: ++index, term: 1, type: 'normal', data: encodePolicyCommand(cmd) })
  apply({
    op: 'acl.bootstrap',
    secretId: MGMT,
    accessorId: '00000000-0000-4000-8000-000000000001',
    createTime: '2026-01-01T00:00:00Z',
  })
  const clock = { now: 1_000_000 }
  const nodes = new Map<string, NodeHealth>([
    ['n1', { alive: true, checks: new Map([['web-check', 'passing']]) }],
    ['n2', { alive: true, checks: new Map() }],
  ])
  const waiters = new Set<() => void>()
  store.onChange(() => {
    for (const w of waiters) w()
  })
  const api: KvApi = {
    kv: store.kv,
    get stateIndex() {
      return store.index
    },
    waitForChange: (after, waitMs, signal) =>
      new Promise((resolve) => {
        if (store.index > after) return resolve(store.index)
        const done = (): void => {
          waiters.delete(done)
          clearTimeout(t)
          resolve(store.index)
        }
        const t = setTimeout(done, waitMs)
        signal?.addEventListener('abort', done, { once: true })
        waiters.add(done)
      }),
    write: async (cmd) => {
      const at = index + 1
      const result = apply(cmd)
      return { index: at, result }
    },
    linearizableRead: async () => ({ index: store.index }),
    knownLeader: () => true,
    wallNow: () => clock.now,
    nodeName: 'n1',
    nodeHealth: (n) => nodes.get(n),
  }
  http = new HttpApi(pino({ level: 'silent' }))
  http.useAcl(new AclResolver(store.acl, { enabled: true, defaultPolicy: 'deny', anonymousRead: true }))
  registerKvRoutes(http, api)
  registerSessionRoutes(http, api)
  registerTxnRoutes(http, api)
  const addr = await http.listen('127.0.0.1', 0)
  const base = `http://127.0.0.1:${addr.port}`
  // A read-only token: key_prefix "app/" read, session_prefix "" read.
  const policyId = '33333333-3333-4333-8333-333333333333'
  const r1 = apply({
    op: 'acl.policy.upsert',
    mode: 'create',
    id: policyId,
    name: 'reader',
    description: '',
    rules: 'key_prefix "app/" { policy = "read" }\nsession_prefix "" { policy = "read" }',
    datacenters: [],
  })
  const r2 = apply({
    op: 'acl.token.upsert',
    mode: 'create',
    accessorId: '44444444-4444-4444-8444-444444444444',
    secretId: READER,
    description: 'reader',
    policies: [{ id: policyId }],
    serviceIdentities: [],
    nodeIdentities: [],
    local: false,
    voter: false,
    createTime: '2026-01-01T00:00:00Z',
  } as PolicyCommand)
  // A token that writes sessions on n1 only (and keys under app/n1/).
  const r3 = apply({
    op: 'acl.policy.upsert',
    mode: 'create',
    id: '55555555-5555-4555-8555-555555555555',
    name: 'n1-sessions',
    description: '',
    rules: 'session "n1" { policy = "write" }\nkey_prefix "app/n1/" { policy = "write" }',
    datacenters: [],
  })
  const r4 = apply({
    op: 'acl.token.upsert',
    mode: 'create',
    accessorId: '66666666-6666-4666-8666-666666666666',
    secretId: N1_WRITER,
    description: 'n1 sessions',
    policies: [{ id: '55555555-5555-4555-8555-555555555555' }],
    serviceIdentities: [],
    nodeIdentities: [],
    local: false,
    voter: false,
    createTime: '2026-01-01T00:00:00Z',
  } as PolicyCommand)
  if (!r1.ok || !r2.ok || !r3.ok || !r4.ok) throw new Error(`setup: ${JSON.stringify([r1, r2, r3, r4])}`)
  return { base, store, clock, nodes }
}

async function call(
  base: string,
  method: string,
  path: string,
  token: string | undefined,
  body?: string | unknown[] | Record<string, unknown>,
): Promise<{ status: number; text: string; json: unknown; headers: Headers }> {
  const res = await fetch(base + path, {
    method,
    headers: {
      ...(token !== undefined ? { 'x-consul-token': token } : {}),
      ...(typeof body === 'string'
        ? { 'content-type': 'text/plain' }
        : body !== undefined
          ? { 'content-type': 'application/json' }
          : {}),
    },
    ...(body !== undefined ? { body: typeof body === 'string' ? body : JSON.stringify(body) } : {}),
  })
  const text = await res.text()
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch {
    json = undefined
  }
  return { status: res.status, text, json, headers: res.headers }
}

/** A request with its path sent as is (fetch resolves `..` and `\\` before sending). */
function rawCall(base: string, method: string, path: string, token: string): Promise<number> {
  const u = new URL(base)
  return new Promise((resolve, reject) => {
    const r = httpRequest(
      { host: u.hostname, port: u.port, method, path, headers: { 'x-consul-token': token } },
      (res) => {
        res.resume()
        res.on('end', () => resolve(res.statusCode ?? 0))
      },
    )
    r.on('error', reject)
    r.end()
  })
}

describe('KV routes', () => {
  it('put/get/raw/keys/recurse/delete with Consul shapes, cas answering true/false', async () => {
    const { base } = await setup()
    expect((await call(base, 'PUT', '/v1/kv/app/a', MGMT, 'one')).json).toBe(true)
    expect((await call(base, 'PUT', '/v1/kv/app/b/c?flags=7', MGMT, 'two')).json).toBe(true)
    const got = await call(base, 'GET', '/v1/kv/app/a', MGMT)
    expect(got.status).toBe(200)
    const [e] = got.json as Record<string, unknown>[]
    expect(e).toEqual({
      LockIndex: 0,
      Key: 'app/a',
      Flags: 0,
      Value: Buffer.from('one').toString('base64'),
      CreateIndex: e!['ModifyIndex'],
      ModifyIndex: e!['ModifyIndex'],
    })
    expect(got.headers.get('x-consul-index')).toBe(String(e!['ModifyIndex']))
    expect(got.headers.get('x-consul-knownleader')).toBe('true')
    expect((await call(base, 'GET', '/v1/kv/app/a?raw', MGMT)).text).toBe('one')
    // Flags are a uint64, exact past 2^53 (the Go client's lock flag), as a JSON number.
    expect((await call(base, 'PUT', '/v1/kv/lock?flags=3304740253564472344', MGMT, '')).json).toBe(true)
    expect((await call(base, 'GET', '/v1/kv/lock', MGMT)).text).toContain(
      '"Flags":3304740253564472344,"Value":null',
    )
    expect((await call(base, 'GET', '/v1/kv/app/missing', MGMT)).status).toBe(404)
    expect((await call(base, 'GET', '/v1/kv/app/?keys', MGMT)).json).toEqual(['app/a', 'app/b/c'])
    expect((await call(base, 'GET', '/v1/kv/app/?keys&separator=/', MGMT)).json).toEqual(['app/a', 'app/b/'])
    expect(
      ((await call(base, 'GET', '/v1/kv/app?recurse', MGMT)).json as { Key: string }[]).map((x) => x.Key),
    ).toEqual(['app/a', 'app/b/c'])
    // cas: a stale index answers false and changes nothing; the current one answers true.
    const mi = e!['ModifyIndex'] as number
    expect((await call(base, 'PUT', `/v1/kv/app/a?cas=${mi - 1}`, MGMT, 'stale')).json).toBe(false)
    expect((await call(base, 'PUT', '/v1/kv/app/a?cas=0', MGMT, 'stale')).json).toBe(false)
    expect((await call(base, 'PUT', `/v1/kv/app/a?cas=${mi}`, MGMT, 'new')).json).toBe(true)
    expect((await call(base, 'GET', '/v1/kv/app/a?raw', MGMT)).text).toBe('new')
    expect((await call(base, 'DELETE', '/v1/kv/app/a?cas=1', MGMT)).json).toBe(false)
    expect((await call(base, 'DELETE', '/v1/kv/app/?recurse', MGMT)).json).toBe(true)
    expect((await call(base, 'GET', '/v1/kv/app/?recurse', MGMT)).status).toBe(404)
  })

  it('blocking query wakes on a change to its key, not on another key', async () => {
    const { base } = await setup()
    await call(base, 'PUT', '/v1/kv/watched', MGMT, 'a')
    const idx = Number((await call(base, 'GET', '/v1/kv/watched', MGMT)).headers.get('x-consul-index'))
    const blocked = call(base, 'GET', `/v1/kv/watched?index=${idx}&wait=10s`, MGMT)
    await call(base, 'PUT', '/v1/kv/other', MGMT, 'x')
    await call(base, 'PUT', '/v1/kv/watched', MGMT, 'b')
    const woke = await blocked
    expect((woke.json as { Value: string }[])[0]!.Value).toBe(Buffer.from('b').toString('base64'))
    expect(Number(woke.headers.get('x-consul-index'))).toBe(idx + 2)
    // A deleted key's blocking query wakes too (its tombstone's index), answering 404.
    const blocked2 = call(base, 'GET', `/v1/kv/watched?index=${idx + 2}&wait=10s`, MGMT)
    await call(base, 'DELETE', '/v1/kv/watched', MGMT)
    const gone = await blocked2
    expect(gone.status).toBe(404)
    expect(Number(gone.headers.get('x-consul-index'))).toBe(idx + 3)
  })

  it('hostile input: 400/413 and nothing applied', async () => {
    const { base, store } = await setup()
    const before = store.index
    expect((await call(base, 'PUT', '/v1/kv/', MGMT, 'x')).status).toBe(400)
    expect((await call(base, 'PUT', `/v1/kv/${'k'.repeat(1025)}`, MGMT, 'x')).status).toBe(400)
    expect((await call(base, 'PUT', '/v1/kv/a?cas=-1', MGMT, 'x')).status).toBe(400)
    expect((await call(base, 'PUT', '/v1/kv/a?flags=1e3', MGMT, 'x')).status).toBe(400)
    expect((await call(base, 'PUT', '/v1/kv/a?flags=18446744073709551616', MGMT, 'x')).status).toBe(400)
    expect((await call(base, 'PUT', '/v1/kv/a?acquire=x&release=y', MGMT, 'x')).status).toBe(400)
    expect((await call(base, 'PUT', '/v1/kv/a?acquire=not-a-uuid', MGMT, 'x')).status).toBe(400)
    expect((await call(base, 'PUT', '/v1/kv/a', MGMT, 'x'.repeat(512 * 1024 + 1))).status).toBe(413)
    expect((await call(base, 'PUT', '/v1/kv/%E0%A4%A', MGMT, 'x')).status).toBe(400)
    expect((await call(base, 'GET', '/v1/kv/a?index=abc', MGMT)).status).toBe(400)
    expect((await call(base, 'DELETE', '/v1/kv/', MGMT)).status).toBe(400)
    // A KV PUT takes any content type, but not from another origin (a web page's fetch).
    const foreign: Record<string, string>[] = [
      { origin: 'http://evil.example' },
      { 'sec-fetch-site': 'cross-site' },
    ]
    for (const h of foreign) {
      const r = await fetch(`${base}/v1/kv/a`, {
        method: 'PUT',
        headers: { 'x-consul-token': MGMT, 'content-type': 'text/plain', ...h },
        body: 'x',
      })
      expect(r.status).toBe(403)
    }
    // Other routes still want JSON: the raw body is only for the KV routes.
    const form = await fetch(`${base}/v1/session/create`, {
      method: 'PUT',
      headers: { 'x-consul-token': MGMT, 'content-type': 'text/plain' },
      body: '{}',
    })
    expect(form.status).toBe(415)
    expect(store.index).toBe(before)
  })

  it('a path with dot segments or backslashes is refused, not resolved to another key', async () => {
    const { base, store } = await setup()
    await call(base, 'PUT', '/v1/kv/x/a', MGMT, 'v')
    await call(base, 'PUT', '/v1/kv/y/b', MGMT, 'v')
    const before = store.index
    // Resolved, `x/..` would be the empty prefix: the whole store.
    for (const path of [
      '/v1/kv/x/..?recurse',
      '/v1/kv/x/%2e%2E?recurse',
      '/v1/kv/x/.?recurse',
      '/v1/kv/x\\..\\y/b',
    ])
      expect(await rawCall(base, 'DELETE', path, MGMT), path).toBe(400)
    expect(await rawCall(base, 'PUT', '/v1/kv/x/../y/b', MGMT)).toBe(400)
    expect(store.index).toBe(before)
    expect(store.kv.list('').map((e) => e.key)).toEqual(['x/a', 'y/b'])
    // Dots inside a segment, and an encoded slash, are ordinary key characters.
    expect(await rawCall(base, 'PUT', '/v1/kv/x/..b', MGMT)).toBe(200)
    expect(await rawCall(base, 'PUT', '/v1/kv/x%2F..%2Fc', MGMT)).toBe(200)
    expect(store.kv.get('x/..b')).toBeDefined()
    expect(store.kv.get('x/../c')).toBeDefined()
  })

  it('a key or name with a lone surrogate is a 400: it would be checked as one string and stored as another', async () => {
    // Raft entries are msgpack: a lone surrogate is encoded as U+FFFD, so the ACL check on the
    // request's key and the key written would differ (`key "secret\uFFFD" { policy = "deny" }`).
    const { base, store } = await setup()
    const before = store.index
    for (const body of [
      [{ KV: { Verb: 'set', Key: 'secret\ud800', Value: 'eA==' } }],
      [{ KV: { Verb: 'delete-tree', Key: 'secret\udfff' } }],
    ]) {
      const r = await call(base, 'PUT', '/v1/txn', MGMT, body)
      expect(r.status, r.text).toBe(400)
    }
    for (const body of [{ Name: 'x\ud800' }, { Checks: ['serfHealth', 'c\udc00'] }]) {
      const r = await call(base, 'PUT', '/v1/session/create', MGMT, body)
      expect(r.status, r.text).toBe(400)
    }
    expect(store.index).toBe(before)
    expect(store.kv.list('')).toEqual([])
    expect(store.kv.listSessions()).toEqual([])
  })

  it('conflicting flags (Consul: recurse with cas, cas with acquire or release) are a 400, nothing changed', async () => {
    const { base, store } = await setup()
    await call(base, 'PUT', '/v1/kv/x/a', MGMT, 'v')
    await call(base, 'PUT', '/v1/kv/x/b', MGMT, 'v')
    const sid = ((await call(base, 'PUT', '/v1/session/create', MGMT, {})).json as { ID: string }).ID
    const before = store.index
    // A recursive delete that meant to be conditional must not delete the tree unconditionally.
    expect((await call(base, 'DELETE', '/v1/kv/x/?recurse&cas=999', MGMT)).status).toBe(400)
    expect((await call(base, 'PUT', `/v1/kv/x/a?cas=0&acquire=${sid}`, MGMT, 'w')).status).toBe(400)
    expect((await call(base, 'PUT', `/v1/kv/x/a?cas=0&release=${sid}`, MGMT, 'w')).status).toBe(400)
    expect(store.index).toBe(before)
    expect(store.kv.list('x/').map((e) => e.key)).toEqual(['x/a', 'x/b'])
  })

  it('ACLs: no token and a read-only token cannot write or take a lock; nothing changes', async () => {
    const { base, store } = await setup()
    await call(base, 'PUT', '/v1/kv/app/a', MGMT, 'v')
    const sid = ((await call(base, 'PUT', '/v1/session/create', MGMT, {})).json as { ID: string }).ID
    const before = store.index
    expect((await call(base, 'GET', '/v1/kv/app/a', READER)).status).toBe(200)
    expect((await call(base, 'GET', '/v1/kv/app/a', undefined)).status).toBe(403)
    for (const token of [undefined, READER]) {
      const put = await call(base, 'PUT', '/v1/kv/app/a', token, 'pwned')
      expect(put.status).toBe(403)
      expect(put.text).toMatch(/key:write/)
      expect((await call(base, 'PUT', `/v1/kv/app/a?acquire=${sid}`, token, 'x')).status).toBe(403)
      expect((await call(base, 'DELETE', '/v1/kv/app/?recurse', token)).status).toBe(403)
      expect((await call(base, 'PUT', '/v1/session/create', token, {})).status).toBe(403)
      expect((await call(base, 'PUT', `/v1/session/destroy/${sid}`, token)).status).toBe(403)
      expect(
        (await call(base, 'PUT', '/v1/txn', token, [{ KV: { Verb: 'set', Key: 'app/a', Value: 'eA==' } }]))
          .status,
      ).toBe(403)
    }
    // Recursive reads leave out what the token may not read.
    await call(base, 'PUT', '/v1/kv/secret/x', MGMT, 's')
    expect(
      ((await call(base, 'GET', '/v1/kv/?recurse', READER)).json as { Key: string }[]).map((e) => e.Key),
    ).toEqual(['app/a'])
    expect(store.index).toBe(before + 1)
    expect(store.kv.get('app/a')?.value).toBe(Buffer.from('v').toString('base64'))
    expect(store.kv.get('app/a')?.session).toBeUndefined()
  })
})

describe('session routes', () => {
  it('create/info/list/node/renew/destroy with Consul shapes and bounds', async () => {
    const { base, clock, store } = await setup()
    const created = await call(base, 'PUT', '/v1/session/create', MGMT, {
      Name: 'lock',
      TTL: '15s',
      LockDelay: '5s',
      Behavior: 'delete',
    })
    expect(created.status, created.text).toBe(200)
    const id = (created.json as { ID: string }).ID
    const info = (await call(base, 'GET', `/v1/session/info/${id}`, MGMT)).json as Record<string, unknown>[]
    expect(info[0]).toMatchObject({
      ID: id,
      Name: 'lock',
      Node: 'n1',
      LockDelay: 5e9,
      Behavior: 'delete',
      TTL: '15s',
      NodeChecks: ['serfHealth'],
    })
    expect((await call(base, 'GET', '/v1/session/list', MGMT)).json).toHaveLength(1)
    expect((await call(base, 'GET', '/v1/session/node/n1', MGMT)).json).toHaveLength(1)
    expect((await call(base, 'GET', '/v1/session/node/n2', MGMT)).json).toEqual([])
    clock.now += 10_000
    const renewed = await call(base, 'PUT', `/v1/session/renew/${id}`, MGMT)
    expect(renewed.status).toBe(200)
    expect(store.kv.session(id)?.renewedAt).toBe(clock.now)
    expect(
      (await call(base, 'PUT', '/v1/session/renew/00000000-0000-4000-8000-000000000000', MGMT)).status,
    ).toBe(404)
    expect((await call(base, 'PUT', `/v1/session/destroy/${id}`, MGMT)).json).toBe(true)
    expect((await call(base, 'GET', `/v1/session/info/${id}`, MGMT)).json).toEqual([])
    // Bounds: TTL 10s..86400s, known node, known and non-critical checks, known fields.
    for (const body of [
      { TTL: '5s' },
      { TTL: '86401s' },
      { TTL: 'soon' },
      { LockDelay: '61s' },
      { Behavior: 'explode' },
      { Node: 'nowhere' },
      { Checks: ['nope'] },
      { Checks: 'serfHealth' },
      { Bogus: 1 },
    ]) {
      const r = await call(base, 'PUT', '/v1/session/create', MGMT, body)
      expect(r.status, JSON.stringify(body)).toBe(400)
    }
    expect(store.kv.listSessions()).toEqual([])
  })
})

describe('session routes: ACLs on the node', () => {
  it("session:write on n1 creates, renews and destroys n1's sessions only; nothing changes for n2's", async () => {
    const { base, store } = await setup()
    const theirs = (
      (await call(base, 'PUT', '/v1/session/create', MGMT, { Node: 'n2' })).json as { ID: string }
    ).ID
    const before = store.index
    expect((await call(base, 'PUT', '/v1/session/create', N1_WRITER, { Node: 'n2' })).status).toBe(403)
    expect((await call(base, 'PUT', `/v1/session/renew/${theirs}`, N1_WRITER)).status).toBe(403)
    expect((await call(base, 'PUT', `/v1/session/destroy/${theirs}`, N1_WRITER)).status).toBe(403)
    expect(store.index).toBe(before)
    expect(store.kv.listSessions().map((s) => s.node)).toEqual(['n2'])
    const mine = await call(base, 'PUT', '/v1/session/create', N1_WRITER, { Node: 'n1' })
    expect(mine.status, mine.text).toBe(200)
    const id = (mine.json as { ID: string }).ID
    // A lock under its write prefix with its own session; the list leaves out n2's session.
    expect((await call(base, 'PUT', `/v1/kv/app/n1/lock?acquire=${id}`, N1_WRITER, 'x')).json).toBe(true)
    const list = (await call(base, 'GET', '/v1/session/list', N1_WRITER)).json as { ID: string }[]
    expect(list.map((s) => s.ID)).toEqual([id])
    expect((await call(base, 'PUT', `/v1/session/destroy/${id}`, N1_WRITER)).json).toBe(true)
    expect(store.kv.get('app/n1/lock')?.session).toBeUndefined()
  })
})

describe('txn route', () => {
  it('a reply past MAX_TXN_REPLY_BYTES is a 413, before anything is written', async () => {
    // 64 get-tree operations on the whole store would answer 64 copies of it (hundreds of MB).
    const { base, store } = await setup()
    const value = 'v'.repeat(512 * 1024)
    for (let i = 0; i < 4; i++) await call(base, 'PUT', `/v1/kv/big/${i}`, MGMT, value)
    const before = store.index
    const trees = Array.from({ length: 8 }, () => ({ KV: { Verb: 'get-tree', Key: '' } }))
    const read = await call(base, 'PUT', '/v1/txn', MGMT, trees)
    expect(read.status).toBe(413)
    const write = await call(base, 'PUT', '/v1/txn', MGMT, [
      { KV: { Verb: 'set', Key: 'new', Value: 'eA==' } },
      ...trees,
    ])
    expect(write.status).toBe(413)
    expect(store.index).toBe(before)
    expect(store.kv.get('new')).toBeUndefined()
    // One copy is fine.
    expect((await call(base, 'PUT', '/v1/txn', MGMT, trees.slice(0, 1))).status).toBe(200)
  })

  it('applies all or nothing; 409 with Consul errors; read-only txns read locally', async () => {
    const { base, store } = await setup()
    await call(base, 'PUT', '/v1/kv/a', MGMT, 'one')
    const before = store.index
    const fail = await call(base, 'PUT', '/v1/txn', MGMT, [
      { KV: { Verb: 'set', Key: 'b', Value: 'Mg==' } },
      { KV: { Verb: 'check-index', Key: 'a', Index: 999 } },
    ])
    expect(fail.status).toBe(409)
    expect(fail.json).toMatchObject({ Results: null, Errors: [{ OpIndex: 1 }] })
    expect(store.kv.get('b')).toBeUndefined()
    const ok = await call(base, 'PUT', '/v1/txn', MGMT, [
      { KV: { Verb: 'set', Key: 'b', Value: 'Mg==', Flags: 3 } },
      { KV: { Verb: 'get', Key: 'a' } },
      { KV: { Verb: 'delete', Key: 'a' } },
    ])
    expect(ok.status, ok.text).toBe(200)
    const results = (ok.json as { Results: { KV: { Key: string; Value: string | null; Flags: number } }[] })
      .Results
    expect(results.map((r) => r.KV.Key)).toEqual(['b', 'a'])
    expect(results[0]!.KV).toMatchObject({ Value: null, Flags: 3 })
    expect(store.kv.get('a')).toBeUndefined()
    expect(store.index).toBe(before + 2)
    const readOnly = await call(base, 'PUT', '/v1/txn', MGMT, [{ KV: { Verb: 'get', Key: 'b' } }])
    expect((readOnly.json as { Results: { KV: { Value: string } }[] }).Results[0]!.KV.Value).toBe('Mg==')
    expect(store.index).toBe(before + 2)
    // Hostile bodies: 400/413, nothing applied.
    const ops65 = Array.from({ length: 65 }, (_, i) => ({ KV: { Verb: 'set', Key: `k${i}`, Value: '' } }))
    for (const body of [
      ops65,
      [],
      { KV: {} },
      [{ Node: { Verb: 'set' } }],
      [{ KV: { Verb: 'explode', Key: 'a' } }],
      [{ KV: { Verb: 'set', Key: 'a', Value: 'not base64!' } }],
      [{ KV: { Verb: 'set', Key: 'a', Flags: -1 } }],
      [{ KV: { Verb: 'set', Key: 'a', Extra: 1 } }],
    ]) {
      const r = await call(base, 'PUT', '/v1/txn', MGMT, body as unknown[])
      expect([400, 413], JSON.stringify(body).slice(0, 80)).toContain(r.status)
    }
    expect(store.index).toBe(before + 2)
  })
})
