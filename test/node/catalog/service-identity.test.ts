/**
 * Issue #12, "service identity is granted", from the attacker's side: a node enrolled for `web`
 * lists `api` in its gossip record. Every other agent's catalog ignores it (catalog, health, DNS,
 * sidecar endpoint pools) until a grant covers it; the attacker's own agent still sees it.
 */
import dnsPacket from 'dns-packet'
import pino from 'pino'
import { afterAll, describe, expect, it } from 'vitest'
import { makeTempDir, removeTempDir } from '../../temp-dir.ts'
import { AclPublishEntitlement } from '../../../src/acl/entitlement.ts'
import { HttpApi } from '../../../src/node/api/server.ts'
import { registerCatalogRoutes } from '../../../src/node/api/catalog-routes.ts'
import { Catalog, type MemberUpdate } from '../../../src/node/catalog/catalog.ts'
import { CheckRunner } from '../../../src/node/catalog/checks.ts'
import { DnsServer } from '../../../src/node/catalog/dns.ts'
import { LocalServiceRegistry } from '../../../src/node/catalog/local-services.ts'
import { CATALOG_META_KEY, encodeNodePayload } from '../../../src/node/catalog/node-payload.ts'
import { parseServiceDefinition } from '../../../src/node/catalog/service-definition.ts'
import { ServiceGrants } from '../../../src/node/catalog/service-grants.ts'
import { CatalogEndpointSource } from '../../../src/node/sidecars/sidecar-module.ts'
import { createToken, FakeEnrollmentState, putPolicy } from '../../acl/enrollment-fakes.ts'
import { VirtualClock } from '../../sim/virtual-clock.ts'
import { advance, settle } from './helpers.ts'

const ATTACKER = 'peer-attacker'
const HONEST = ['peer-a', 'peer-b', 'peer-c']
const def = (json: object) => parseServiceDefinition(json, 'test')

/** The ACL state every agent has applied: the attacker enrolled with a `web` service identity. */
function cluster() {
  const state = new FakeEnrollmentState()
  for (const [i, id] of HONEST.entries())
    state.enroll(id, `n${i}`, createToken(state, { services: ['web'] }).accessorId)
  state.enroll(ATTACKER, 'evil', createToken(state, { services: ['web'], nodes: ['evil'] }).accessorId)
  const listeners = new Set<() => void>()
  const entitlement = new AclPublishEntitlement(state, { enabled: true, defaultPolicy: 'deny' }, (l) => {
    listeners.add(l)
    return () => listeners.delete(l)
  })
  /** Each agent's catalog, as the catalog module builds it: its own instances always count. */
  const catalogs = new Map(
    [...HONEST, ATTACKER].map((self) => {
      const c = new Catalog({
        entitled: (peerId, service) => peerId === self || entitlement.mayPublish(peerId, service),
      })
      entitlement.onChange(() => c.refilter())
      return [self, c] as const
    }),
  )
  const aclChanged = () => {
    for (const l of listeners) l()
  }
  return { state, catalogs, aclChanged }
}

function attackerRecord(version = 1): MemberUpdate {
  return {
    id: ATTACKER,
    name: 'evil',
    address: '/ip4/10.0.0.66/tcp/4001',
    status: 'alive',
    version,
    payload: encodeNodePayload(
      [
        def({ name: 'web', port: 8080, connect: { sidecarService: { port: 21000 } } }),
        def({ name: 'api', port: 9090, connect: { sidecarService: { port: 21001 } } }),
      ],
      () => 'passing',
    ),
  }
}

function dnsAnswers(dns: DnsServer, name: string): { rcode: string | undefined; answers: number } {
  const q = dnsPacket.encode({ type: 'query', id: 1, questions: [{ type: 'A', name }] })
  const reply = dnsPacket.decode(dns.handle(q, 'udp')!)
  return { rcode: (reply as { rcode?: string }).rcode, answers: reply.answers?.length ?? 0 }
}

describe('catalog: instances a member may not publish are ignored (issue #12)', () => {
  it('a record listing `api` from a node enrolled for `web` is ignored by every other catalog', () => {
    const { catalogs } = cluster()
    for (const c of catalogs.values()) c.applyMember(attackerRecord())
    for (const id of HONEST) {
      const c = catalogs.get(id)!
      expect(c.services()).toEqual({ web: [] })
      expect(c.hasService('api')).toBe(false)
      expect(c.health('api')).toEqual([])
      expect(c.health('web').map((e) => e.node.peerId)).toEqual([ATTACKER])
      expect(new CatalogEndpointSource(c, 'api').current()).toEqual([])
      expect(new CatalogEndpointSource(c, 'web').current()).toHaveLength(1)
      expect(c.ignoredInstances()).toEqual([
        { peerId: ATTACKER, node: 'evil', serviceId: 'api', service: 'api' },
      ])
      const dns = new DnsServer({ catalog: c })
      expect(dnsAnswers(dns, 'api.service.peermesh')).toEqual({ rcode: 'NXDOMAIN', answers: 0 })
      expect(dnsAnswers(dns, 'web.service.peermesh').answers).toBe(1)
    }
    // Its own agent keeps its own registrations in view (the leader refuses their leaves).
    expect(catalogs.get(ATTACKER)!.hasService('api')).toBe(true)
  })

  it('a grant arriving later makes the instance appear everywhere; deleting its token hides it again', () => {
    const { state, catalogs, aclChanged } = cluster()
    for (const c of catalogs.values()) c.applyMember(attackerRecord())
    const c = catalogs.get('peer-a')!
    const pool = new CatalogEndpointSource(c, 'api')
    const pools: number[] = []
    pool.on('endpoints:change', (e) => pools.push(e.length))
    const before = c.index
    const token = createToken(state, { services: ['api'] }).accessorId
    aclChanged()
    expect(c.hasService('api')).toBe(false)
    expect(c.index).toBe(before) // nothing a query sees changed: no bump
    state.grant(ATTACKER, 'api', token)
    aclChanged()
    for (const id of HONEST)
      expect(
        catalogs
          .get(id)!
          .health('api')
          .map((e) => e.node.peerId),
      ).toEqual([ATTACKER])
    expect(c.index).toBeGreaterThan(before)
    expect(c.ignoredInstances()).toEqual([])
    expect(pools).toEqual([1])
    state.run({ op: 'acl.token.delete', accessorId: token })
    aclChanged()
    expect(c.hasService('api')).toBe(false)
    expect(pools).toEqual([1, 0])
  })

  it('a policy edit that takes service:write away hides the granted instance', () => {
    const { state, catalogs, aclChanged } = cluster()
    const id = putPolicy(state, 'api-w', JSON.stringify({ service: { api: { policy: 'write' } } }))
    state.grant(ATTACKER, 'api', createToken(state, { policies: ['api-w'] }).accessorId)
    const c = catalogs.get('peer-b')!
    c.applyMember(attackerRecord())
    expect(c.hasService('api')).toBe(true)
    putPolicy(state, 'api-w', JSON.stringify({ service: { api: { policy: 'read' } } }), id)
    aclChanged()
    expect(c.hasService('api')).toBe(false)
  })

  it('a newer record keeps being filtered; the member leaving clears the ignored count', () => {
    const { catalogs } = cluster()
    const c = catalogs.get('peer-c')!
    c.applyMember(attackerRecord(1))
    c.applyMember(attackerRecord(2))
    expect(c.hasService('api')).toBe(false)
    expect(c.ignoredInstances()).toHaveLength(1)
    c.applyMember({ ...attackerRecord(3), status: 'left' })
    expect(c.ignoredInstances()).toEqual([])
  })

  it('without an entitlement check (ACLs off) every instance counts', () => {
    const c = new Catalog()
    c.applyMember(attackerRecord())
    expect(c.hasService('api')).toBe(true)
    expect(c.refilter()).toBe(false)
  })
})

describe('registration grants (PUT /v1/agent/service/register)', () => {
  const silent = pino({ level: 'silent' })

  function grants(opts: {
    entitled?: Set<string>
    registered?: Set<string>
    request: (s: string, t: string | undefined) => Promise<void>
  }) {
    const clock = new VirtualClock()
    const entitled = opts.entitled ?? new Set<string>()
    const registered = opts.registered ?? new Set(['api'])
    const calls: { service: string; token: string | undefined }[] = []
    const g = new ServiceGrants(
      {
        request: async (service, token) => {
          calls.push({ service, token })
          await opts.request(service, token)
          entitled.add(service)
        },
        entitled: (s) => entitled.has(s),
        registered: (s) => registered.has(s),
        clock,
        log: silent,
        rng: () => 0.5,
      },
      { waitMs: 1_000, retry: { initialMs: 100, maxMs: 400 } },
    )
    return { g, clock, calls, entitled, registered }
  }

  it('asks once with the registering token and resolves when committed', async () => {
    const { g, calls } = grants({ request: async () => {} })
    expect(await g.ensure('api', 'secret-1')).toBe(true)
    expect(calls).toEqual([{ service: 'api', token: 'secret-1' }])
    expect(g.asking).toEqual([])
  })

  it('asks nothing when the enrollment already covers the service', async () => {
    const { g, calls } = grants({ entitled: new Set(['web']), request: async () => {} })
    expect(await g.ensure('web', 'secret-1')).toBe(true)
    expect(calls).toEqual([])
  })

  it('a refusal answers false at once, then keeps asking with backoff until granted', async () => {
    let refuse = 2
    const { g, clock, calls } = grants({
      request: async () => {
        if (refuse-- > 0)
          throw Object.assign(new Error('not enrolled yet'), { code: 'PEERMESH_ERR_PERMISSION_DENIED' })
      },
    })
    expect(await g.ensure('api', 'secret-1')).toBe(false)
    expect(g.asking).toEqual(['api'])
    await advance(clock, 75) // 100 ms * [1/2, 1] jitter: 75 at rng 0.5
    expect(calls).toHaveLength(2)
    await advance(clock, 150)
    expect(calls).toHaveLength(3)
    expect(g.asking).toEqual([])
    g.stop()
  })

  it('a grant that takes longer than the wait answers false; it completes in the background', async () => {
    let release!: () => void
    const { g, clock, entitled } = grants({ request: () => new Promise<void>((r) => (release = r)) })
    const answer = g.ensure('api', 'secret-1')
    await advance(clock, 1_000)
    expect(await answer).toBe(false)
    release()
    await settle()
    expect(entitled.has('api')).toBe(true)
    expect(g.asking).toEqual([])
  })

  it('stops asking once the service is deregistered, and on stop', async () => {
    const { g, clock, calls, registered } = grants({
      request: async () => {
        throw new Error('no leader')
      },
    })
    await g.ensure('api', 'secret-1')
    registered.delete('api')
    await advance(clock, 10_000)
    expect(calls).toHaveLength(1)
    expect(g.asking).toEqual([])
    registered.add('api')
    await g.ensure('api', 'secret-2')
    g.stop()
    await advance(clock, 10_000)
    expect(calls).toHaveLength(2)
  })

  describe('the route', () => {
    const dir = makeTempDir('grants')
    const api = new HttpApi(silent)
    const local = LocalServiceRegistry.open({ dataDir: dir })
    const asked: { service: string; token: string | undefined }[] = []
    let base = ''
    afterAll(async () => {
      await api.close()
      removeTempDir(dir)
    })

    it('registers, then asks for the grant with the request token (else the default token); kept on refusal', async () => {
      registerCatalogRoutes(api, {
        catalog: new Catalog(),
        local,
        checks: new CheckRunner(),
        nodeAddress: () => '127.0.0.1',
        defaultToken: 'agent-token',
        grants: {
          ensure: async (service, token) => {
            asked.push({ service, token })
            return false
          },
        },
      })
      const { port } = await api.listen('127.0.0.1', 0)
      base = `http://127.0.0.1:${port}`
      const put = (body: object, headers: Record<string, string> = {}) =>
        fetch(`${base}/v1/agent/service/register`, {
          method: 'PUT',
          body: JSON.stringify(body),
          headers: { 'content-type': 'application/json', ...headers },
        })
      expect((await put({ name: 'api', port: 9090 }, { 'x-consul-token': 'registering-token' })).status).toBe(
        200,
      )
      expect((await put({ name: 'db', port: 5432 })).status).toBe(200)
      expect(asked).toEqual([
        { service: 'api', token: 'registering-token' },
        { service: 'db', token: 'agent-token' },
      ])
      expect(
        local
          .list()
          .map((d) => d.name)
          .sort(),
      ).toEqual(['api', 'db'])
    })
  })
})

describe('CatalogModule with an entitlement (as create-agent wires it)', () => {
  it("ignores a remote member's `api`, keeps its own, counts it in a metric, logs once per interval, and asks for a grant on registration", async () => {
    const { Registry } = await import('prom-client')
    const { CatalogModule, IGNORED_INSTANCES_LOG_INTERVAL_MS } = await import(
      '../../../src/node/catalog/catalog-module.ts'
    )
    const { state } = cluster()
    const listeners = new Set<() => void>()
    const entitlement = new AclPublishEntitlement(state, { enabled: true, defaultPolicy: 'deny' }, (l) => {
      listeners.add(l)
      return () => listeners.delete(l)
    })
    const lines: { msg: string; count?: number }[] = []
    const log = pino({ level: 'info' }, { write: (s: string) => lines.push(JSON.parse(s)) })
    const clock = new VirtualClock()
    const dir = makeTempDir('catmod')
    const view = (m: MemberUpdate) => ({
      ...m,
      addresses: [m.address],
      incarnation: 1,
      tags: {},
      meta: { [CATALOG_META_KEY]: m.payload },
      nameConflict: false,
    })
    let selfMeta: Record<string, unknown> = {}
    let selfVersion = 1
    const grantsAsked: string[] = []
    const module = new CatalogModule({
      gossip: {
        members: () => [view(attackerRecord())],
        self: () =>
          view({
            id: 'peer-a',
            name: 'n0',
            address: '/ip4/10.0.0.1/tcp/4001',
            status: 'alive',
            version: selfVersion++,
            payload: selfMeta[CATALOG_META_KEY],
          }),
        updateLocalMeta: (meta) => {
          selfMeta = meta
        },
        onEvent: () => () => {},
      },
      entitlement,
      requestServiceGrant: async (service) => {
        grantsAsked.push(service)
      },
    })
    const metrics = new Registry()
    const http = new HttpApi(silentLog())
    const ctx = {
      config: { dataDir: dir, services: [{ name: 'api', port: 7000 }], acl: { enabled: true } },
      identity: { id: 'peer-a' },
      host: { getMultiaddrs: () => [] },
      http,
      metrics,
      clock,
      log,
    } as unknown as Parameters<InstanceType<typeof CatalogModule>['start']>[0]
    await module.start(ctx)
    try {
      const c = module.catalog
      // Its own config-file `api` counts here (and asks for no grant); the attacker's does not.
      expect(c.health('api').map((e) => e.node.peerId)).toEqual(['peer-a'])
      expect(c.health('web').map((e) => e.node.peerId)).toEqual([ATTACKER])
      expect(grantsAsked).toEqual([])
      const gauge = async () =>
        (await metrics.getSingleMetric('peermesh_catalog_instances_ignored')!.get()).values[0]!.value
      expect(await gauge()).toBe(1)
      await advance(clock, IGNORED_INSTANCES_LOG_INTERVAL_MS)
      await advance(clock, IGNORED_INSTANCES_LOG_INTERVAL_MS)
      const warned = lines.filter((l) => l.msg.startsWith('ignoring service instances'))
      expect(warned.map((l) => l.count)).toEqual([1])
      // A grant later: the instance appears, the gauge drops.
      state.grant(ATTACKER, 'api', createToken(state, { services: ['api'] }).accessorId)
      for (const l of listeners) l()
      expect(
        c
          .health('api')
          .map((e) => e.node.peerId)
          .sort(),
      ).toEqual([ATTACKER, 'peer-a'].sort())
      expect(await gauge()).toBe(0)
      // A registration through the API with a token its enrollment (web) does not cover asks for a grant.
      const { port } = await http.listen('127.0.0.1', 0)
      const res = await fetch(`http://127.0.0.1:${port}/v1/agent/service/register`, {
        method: 'PUT',
        body: JSON.stringify({ name: 'db', port: 5432 }),
        headers: { 'content-type': 'application/json', 'x-consul-token': 'registering-secret' },
      })
      expect(res.status).toBe(200)
      expect(grantsAsked).toEqual(['db'])
    } finally {
      await module.stop()
      await http.close()
      removeTempDir(dir)
    }
  })
})

function silentLog() {
  return pino({ level: 'silent' })
}
