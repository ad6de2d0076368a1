import Consul from 'consul'
import { afterAll, describe, expect, it } from 'vitest'
import { type AgentProcess, apiCall, errorOf, MANAGEMENT_TOKEN, TestCluster, waitFor } from './harness.ts'
import { startRaftCluster, waitForLeader } from './raft-helpers.ts'

/** node-consul (the npm `consul` package) against one agent, with `token`. */
function client(a: AgentProcess, token: string = MANAGEMENT_TOKEN): Consul {
  const [host, port] = a.http.split(':')
  return new Consul({ host: host!, port: Number(port), defaults: { token } })
}

interface KvPair {
  Key: string
  Value: string | null
  Flags: number
  Session?: string
  LockIndex: number
  CreateIndex: number
  ModifyIndex: number
}

describe('Consul KV, sessions and txn with node-consul (end to end, 3 agent processes)', () => {
  const cluster = new TestCluster()
  afterAll(() => cluster.close())

  it('kv get/set/keys/del, cas, blocking, ACLs, a lock with sessions, invalidation (node failure, critical check, TTL), txn', async () => {
    const agents = await startRaftCluster(cluster, 3, { prefix: 'kv' })
    const leader = await waitForLeader(agents)
    const [f1, f2] = agents.filter((a) => a !== leader) as [AgentProcess, AgentProcess]
    const c = client(f1)
    // Consul's read headers: the leader has contact by definition (0); a follower says how long
    // ago it last heard from the leader (heartbeats: well under a second).
    const lastContact = async (a: AgentProcess) =>
      (
        await fetch(`http://${a.http}/v1/catalog/services`, {
          headers: { 'x-consul-token': MANAGEMENT_TOKEN },
        })
      ).headers.get('x-consul-lastcontact')
    expect(await lastContact(leader)).toBe('0')
    const followerContact = await waitFor('a follower heard from its leader', async () => {
      const v = await lastContact(f1)
      return v !== null && Number(v) > 0 ? Number(v) : undefined
    })
    expect(followerContact).toBeLessThan(5_000)

    // A session with a TTL that nobody renews (checked at the end: gone after twice its TTL).
    const ttlSession: string = (await c.session.create({ name: 'ttl', ttl: '10s', lockdelay: '0s' })).ID
    expect(await c.kv.set({ key: 'ttl/key', value: 'x', acquire: ttlSession })).toBe(true)
    expect(((await c.session.renew(ttlSession)) as unknown as { TTL: string }[])[0]!.TTL).toBe('10s')

    // ---- KV: set/get/keys/del through a follower (writes forwarded to the leader) ----
    expect(await c.kv.set('app/config/db', 'postgres://db:5432')).toBe(true)
    expect(await c.kv.set({ key: 'app/config/mode', value: 'blue', flags: 42 })).toBe(true)
    expect(await c.kv.set('app/other', '')).toBe(true)
    const got = (await c.kv.get('app/config/db')) as unknown as KvPair
    expect(got).toMatchObject({ Key: 'app/config/db', Value: 'postgres://db:5432', Flags: 0, LockIndex: 0 })
    expect(got.ModifyIndex).toBeGreaterThan(0)
    expect(((await c.kv.get('app/config/mode')) as unknown as KvPair).Flags).toBe(42)
    // Missing key: 404, which node-consul turns into undefined.
    expect(await c.kv.get('app/missing')).toBeUndefined()
    expect(await c.kv.keys('app/')).toEqual(['app/config/db', 'app/config/mode', 'app/other'])
    expect(await c.kv.keys({ key: 'app/', separator: '/' })).toEqual(['app/config/', 'app/other'])
    const tree = (await c.kv.get({ key: 'app/config/', recurse: true })) as unknown as KvPair[]
    expect(tree.map((e) => e.Key)).toEqual(['app/config/db', 'app/config/mode'])
    // raw: the bytes themselves.
    const raw = await fetch(`http://${f2.http}/v1/kv/app/config/mode?raw`, {
      headers: { 'x-consul-token': MANAGEMENT_TOKEN },
    })
    expect(await raw.text()).toBe('blue')
    expect(raw.headers.get('x-consul-index')).toMatch(/^\d+$/)

    // ---- cas ----
    const cur = (await c.kv.get('app/config/db')) as unknown as KvPair
    // Consul answers `false`; node-consul resolves a `false` body as undefined.
    expect(await c.kv.set({ key: 'app/config/db', value: 'stale', cas: cur.ModifyIndex - 1 })).toBeFalsy()
    expect(await c.kv.set({ key: 'app/config/db', value: 'new', cas: cur.ModifyIndex })).toBe(true)
    expect(((await c.kv.get('app/config/db')) as unknown as KvPair).Value).toBe('new')
    expect(await c.kv.set({ key: 'app/config/db', value: 'again', cas: 0 })).toBeFalsy()

    // ---- blocking query: a write elsewhere does not wake it; a write to its key does ----
    const before = (await c.kv.get('app/config/mode')) as unknown as KvPair
    const blocked = fetch(`http://${f2.http}/v1/kv/app/config/mode?index=${before.ModifyIndex}&wait=20s`, {
      headers: { 'x-consul-token': MANAGEMENT_TOKEN },
    })
    expect(await c.kv.set('unrelated/key', 'x')).toBe(true)
    expect(await c.kv.set('app/config/mode', 'green')).toBe(true)
    const woke = await blocked
    const after = (await woke.json()) as KvPair[]
    expect(after[0]!.Value).toBe(Buffer.from('green').toString('base64'))
    expect(Number(woke.headers.get('x-consul-index'))).toBe(after[0]!.ModifyIndex)

    // ---- del ----
    expect(await c.kv.del('app/other')).toBe(true)
    expect(await c.kv.get('app/other')).toBeUndefined()

    // ---- ACLs from the attacker's side: no token, a read-only token ----
    const policy = await apiCall(f1, 'PUT', '/v1/acl/policy', {
      token: MANAGEMENT_TOKEN,
      body: {
        Name: 'kv-reader',
        Rules: 'key_prefix "app/" { policy = "read" }\nsession_prefix "" { policy = "read" }',
      },
    })
    expect(policy.status, errorOf(policy)).toBe(200)
    const created = await apiCall(f1, 'PUT', '/v1/acl/token', {
      token: MANAGEMENT_TOKEN,
      body: { Description: 'reader', Policies: [{ Name: 'kv-reader' }] },
    })
    const reader = (created.json as { SecretID: string }).SecretID
    // Made through f1, used on f2: f2 knows the token once it has applied its creation (until
    // then it answers "ACL not found", as a Consul server behind its leader does).
    await waitFor('f2 knows the new token', async () =>
      (await apiCall(f2, 'GET', '/v1/acl/token/self', { token: reader })).status === 200 ? true : undefined,
    )
    const readerClient = client(f2, reader)
    expect(((await readerClient.kv.get('app/config/db')) as unknown as KvPair).Value).toBe('new')
    await expect(readerClient.kv.set('app/config/db', 'pwned')).rejects.toMatchObject({ statusCode: 403 })
    await expect(readerClient.kv.del({ key: 'app/', recurse: true })).rejects.toMatchObject({
      statusCode: 403,
    })
    await expect(readerClient.session.create()).rejects.toMatchObject({ statusCode: 403 })
    const anon = await fetch(`http://${f2.http}/v1/kv/app/config/db`, { method: 'PUT', body: 'pwned' })
    expect(anon.status).toBe(403)
    expect((await fetch(`http://${f2.http}/v1/kv/app/config/db`)).status).toBe(403)
    expect(((await c.kv.get('app/config/db')) as unknown as KvPair).Value).toBe('new')

    // ---- a lock with sessions: the second acquirer is refused until the first releases ----
    const c2 = client(f2)
    const s1: string = (await c.session.create({ name: 'one', lockdelay: '15s' })).ID
    const s2: string = (await c2.session.create({ name: 'two', lockdelay: '15s' })).ID
    // node-consul's session.info resolves the first session of the list. Read where it was
    // created: a default read answers from the local state, which another agent may not have yet.
    const info = (await c2.session.info(s2)) as unknown as {
      Node: string
      LockDelay: number
      Behavior: string
    }
    expect(info).toMatchObject({ Node: f2.name, LockDelay: 15e9, Behavior: 'release' })
    // The reader may not take the lock with someone's session.
    const stolen = await apiCall(f2, 'PUT', `/v1/kv/service/leader?acquire=${s1}`, { token: reader })
    expect(stolen.status).toBe(403)
    expect(await c.kv.set({ key: 'service/leader', value: 'one', acquire: s1 })).toBe(true)
    expect(await c2.kv.set({ key: 'service/leader', value: 'two', acquire: s2 })).toBeFalsy()
    const held = (await c.kv.get('service/leader')) as unknown as KvPair
    expect(held).toMatchObject({ Value: 'one', Session: s1, LockIndex: 1 })
    expect(await c.kv.set({ key: 'service/leader', value: 'one', release: s1 })).toBe(true)
    expect(await c2.kv.set({ key: 'service/leader', value: 'two', acquire: s2 })).toBe(true)
    // Written through f2, read through f1: a default read answers from f1's applied state, so
    // read-after-write across agents asks for ?consistent (README: reads and consistency).
    expect(
      (await c.kv.get({ key: 'service/leader', consistent: true } as never)) as unknown as KvPair,
    ).toMatchObject({
      Session: s2,
      LockIndex: 2,
    })

    // ---- the holder's node fails in gossip: the leader invalidates its session, the lock is
    // released, and lock-delay keeps the other contender out for a while ----
    await f2.stop('SIGKILL')
    await waitFor(
      'session of the killed node invalidated',
      async () => ((await c.session.info(s2)) === undefined ? true : undefined),
      60_000,
      250,
    )
    const released = (await c.kv.get('service/leader')) as unknown as KvPair
    expect(released.Session).toBeUndefined()
    expect(await c.kv.set({ key: 'service/leader', value: 'one', acquire: s1 })).toBeFalsy()
    expect(((await c.kv.get('service/leader')) as unknown as KvPair).Session).toBeUndefined()

    // ---- force-leave (Consul's agent.forceLeave): the failed node becomes left on the survivors;
    // a live node is refused, and a token without operator:write changes nothing ----
    type ConsulMember = { Name: string; Status: number; State: string }
    const stateOn = async (a: AgentProcess, name: string) =>
      (await a.api<ConsulMember[]>('/v1/agent/members'))?.find((m) => m.Name === name)
    const survivors = [leader, f1]
    await waitFor(`${f2.name} failed on the survivors`, async () =>
      (await Promise.all(survivors.map((a) => stateOn(a, f2.name)))).every((m) => m?.State === 'dead')
        ? true
        : undefined,
    )
    const denied = await apiCall(f1, 'PUT', `/v1/agent/force-leave/${f2.name}`, { token: reader })
    expect(denied.status).toBe(403)
    expect((await stateOn(f1, f2.name))?.State).toBe('dead')
    const live = await apiCall(f1, 'PUT', `/v1/agent/force-leave/${leader.name}`, { token: MANAGEMENT_TOKEN })
    expect(live.status).toBe(400)
    expect((await stateOn(f1, leader.name))?.State).toBe('alive')
    await c.agent.forceLeave(f2.name)
    await waitFor(`${f2.name} left on every survivor`, async () =>
      (await Promise.all(survivors.map((a) => stateOn(a, f2.name)))).every(
        (m) => m?.State === 'left' && m.Status === 3,
      )
        ? true
        : undefined,
    )

    // ---- txn: all or nothing ----
    const b64 = (s: string): string => Buffer.from(s).toString('base64')
    const failedTxn = await apiCall(f1, 'PUT', '/v1/txn', {
      token: MANAGEMENT_TOKEN,
      body: [
        { KV: { Verb: 'set', Key: 'txn/a', Value: b64('1') } },
        { KV: { Verb: 'cas', Key: 'app/config/db', Value: b64('x'), Index: 1 } },
      ],
    })
    expect(failedTxn.status).toBe(409)
    expect(failedTxn.json).toMatchObject({ Results: null, Errors: [{ OpIndex: 1 }] })
    expect(await c.kv.get('txn/a')).toBeUndefined()
    // node-consul's create(operations) (its .d.ts says an options object; the code takes the list).
    const ops = [
      { KV: { Verb: 'set', Key: 'txn/a', Value: b64('1') } },
      { KV: { Verb: 'set', Key: 'txn/b', Value: b64('2') } },
      { KV: { Verb: 'get', Key: 'app/config/db' } },
    ]
    const ok = (await c.transaction.create(ops as never)) as unknown as {
      Results: { KV: KvPair }[]
      Errors: unknown
    }
    expect(ok.Errors).toBeNull()
    expect(ok.Results.map((r) => r.KV.Key)).toEqual(['txn/a', 'txn/b', 'app/config/db'])
    expect(ok.Results[2]!.KV.Value).toBe(b64('new'))
    expect(await c.kv.keys('txn/')).toEqual(['txn/a', 'txn/b'])

    // ---- a session tied to a health check: invalidated when the check goes critical ----
    const reg = await apiCall(f1, 'PUT', '/v1/agent/service/register', {
      token: MANAGEMENT_TOKEN,
      body: { name: 'web', port: 8080, checks: [{ ttl: '300s' }] },
    })
    expect(reg.status, errorOf(reg)).toBe(200)
    expect(
      (await apiCall(f1, 'PUT', '/v1/agent/check/pass/service:web', { token: MANAGEMENT_TOKEN })).status,
    ).toBe(200)
    // The leader judges the check by its catalog: wait until gossip brought it there passing.
    await waitFor("web passing in the leader's catalog", async () => {
      const r = await apiCall(leader, 'GET', '/v1/health/service/web?passing', { token: MANAGEMENT_TOKEN })
      return Array.isArray(r.json) && r.json.length === 1 ? true : undefined
    })
    const checked: string = (
      await c.session.create({ name: 'checked', checks: ['serfHealth', 'service:web'] })
    ).ID
    expect(await c.kv.set({ key: 'checked/key', value: 'x', acquire: checked })).toBe(true)
    expect(
      (await apiCall(f1, 'PUT', '/v1/agent/check/fail/service:web', { token: MANAGEMENT_TOKEN })).status,
    ).toBe(200)
    await waitFor('session of the critical check invalidated', async () =>
      (await c.session.info(checked)) === undefined ? true : undefined,
    )
    expect(((await c.kv.get('checked/key')) as unknown as KvPair).Session).toBeUndefined()

    // ---- the unrenewed TTL session expired (Consul: within twice its TTL) ----
    await waitFor(
      'TTL session invalidated',
      async () => ((await c.session.info(ttlSession)) === undefined ? true : undefined),
      40_000,
      250,
    )
    expect(((await c.kv.get('ttl/key')) as unknown as KvPair).Session).toBeUndefined()
  }, 180_000)
})
