import { VirtualClock } from '../../sim/virtual-clock.ts'
import { afterAll, describe, expect, it } from 'vitest'
import { makeTempDir, removeTempDir } from '../../temp-dir.ts'
import { Catalog, type MemberUpdate } from '../../../src/node/catalog/catalog.ts'
import { CheckRunner } from '../../../src/node/catalog/checks.ts'
import { LocalPayloadPublisher } from '../../../src/node/catalog/local-payload.ts'
import { LocalServiceRegistry } from '../../../src/node/catalog/local-services.ts'
import { encodeNodePayload, type NodePayload } from '../../../src/node/catalog/node-payload.ts'
import { type CheckStatus, parseServiceDefinition } from '../../../src/node/catalog/service-definition.ts'
import { advance, settle } from './helpers.ts'

const def = (json: object) => parseServiceDefinition(json, 'test')
const web = def({ name: 'web', port: 8080, tags: ['v1'], checks: [{ ttl: '10s' }] })
const webV2 = def({ name: 'web', id: 'web-2', port: 8081, tags: ['v2'] })
const db = def({ name: 'db', port: 5432 })

function payload(services = [web], status: CheckStatus = 'passing'): NodePayload {
  return encodeNodePayload(services, () => status)
}

function member(id: string, over: Partial<MemberUpdate> = {}): MemberUpdate {
  return {
    id,
    name: `node-${id}`,
    address: `/ip4/10.0.0.${id}/tcp/4001/p2p/peer${id}`,
    status: 'alive',
    version: 1,
    payload: payload(),
    ...over,
  }
}

describe('Catalog', () => {
  it('builds instances from member payloads, with the node address and aggregated status', () => {
    const c = new Catalog()
    c.applyMember(member('1'))
    c.applyMember(member('2', { payload: payload([web, webV2, db], 'warning') }))
    expect(c.services()).toEqual({ db: [], web: ['v1', 'v2'] })
    const entries = c.health('web')
    expect(entries.map((e) => [e.node.name, e.service.id, e.service.address, e.status])).toEqual([
      ['node-1', 'web', '10.0.0.1', 'passing'],
      ['node-2', 'web', '10.0.0.2', 'warning'],
      ['node-2', 'web-2', '10.0.0.2', 'passing'],
    ])
    expect(entries[0]!.checks.map((ch) => [ch.checkId, ch.status])).toEqual([
      ['serfHealth', 'passing'],
      ['service:web', 'passing'],
    ])
    expect(c.health('web', { minStatus: 'passing' })).toHaveLength(2)
    expect(c.health('web', { tag: 'v2' }).map((e) => e.service.id)).toEqual(['web-2'])
  })

  it('a loopback or unspecified app address means the node: other agents get the node address', () => {
    const c = new Catalog()
    const local = def({ name: 'api', id: 'api-lo', port: 9000, address: '127.0.0.1' })
    const any = def({ name: 'api', id: 'api-any', port: 9001, address: '0.0.0.0' })
    const own = def({ name: 'api', id: 'api-own', port: 9002, address: '10.9.9.9' })
    c.applyMember(member('3', { payload: payload([local, any, own]) }))
    expect(c.health('api').map((e) => [e.service.id, e.service.address])).toEqual([
      ['api-lo', '10.0.0.3'],
      ['api-any', '10.0.0.3'],
      ['api-own', '10.9.9.9'],
    ])
  })

  it('makes every instance of a dead node critical at once; suspect changes nothing', () => {
    const c = new Catalog()
    c.applyMember(member('1', { payload: payload([web, webV2]) }))
    const i = c.index
    expect(c.applyMember(member('1', { status: 'suspect' })).changed).toBe(false)
    expect(c.index).toBe(i)
    expect(c.applyMember(member('1', { status: 'dead' })).changed).toBe(true)
    expect(c.index).toBe(i + 1)
    expect(c.health('web').map((e) => e.status)).toEqual(['critical', 'critical'])
    expect(c.health('web')[0]!.checks[0]).toMatchObject({ checkId: 'serfHealth', status: 'critical' })
    expect(c.health('web', { minStatus: 'warning' })).toEqual([])
    // Still registered: the catalog lists it, health says critical.
    expect(c.services()).toEqual({ web: ['v1', 'v2'] })
    // Refuted / back: healthy again.
    c.applyMember(member('1', { status: 'alive', version: 2, payload: payload([web, webV2]) }))
    expect(c.health('web').map((e) => e.status)).toEqual(['passing', 'passing'])
  })

  it('removes the instances of a node that left or was reaped', () => {
    const c = new Catalog()
    c.applyMember(member('1'))
    c.applyMember(member('2'))
    c.applyMember(member('1', { status: 'left' }))
    expect(c.health('web').map((e) => e.node.name)).toEqual(['node-2'])
    expect(c.removeMember('2')).toBe(true)
    expect(c.services()).toEqual({})
    expect(c.hasService('web')).toBe(false)
  })

  it('ignores a payload replayed with an older version', () => {
    const c = new Catalog()
    c.applyMember(member('1', { version: 5, payload: payload([web, db]) }))
    const i = c.index
    const r = c.applyMember(member('1', { version: 4, payload: payload([web]) }))
    expect(r).toEqual({ changed: false, stale: true })
    expect(c.applyMember(member('1', { version: 3, status: 'left' })).stale).toBe(true)
    expect(c.services()).toEqual({ db: [], web: ['v1'] })
    expect(c.index).toBe(i)
    // A left node cannot be resurrected by an old alive either.
    c.applyMember(member('1', { version: 6, status: 'left' }))
    c.applyMember(member('1', { version: 5, payload: payload([web, db]) }))
    expect(c.services()).toEqual({})
  })

  it('bumps the index only when a query could see the difference', () => {
    const c = new Catalog()
    const i0 = c.index
    c.applyMember(member('1'))
    expect(c.index).toBe(i0 + 1)
    // New version, same payload (e.g. gossip tags changed): no bump.
    expect(c.applyMember(member('1', { version: 2 })).changed).toBe(false)
    expect(c.index).toBe(i0 + 1)
    // A check transition: bump.
    c.applyMember(member('1', { version: 3, payload: payload([web], 'critical') }))
    expect(c.index).toBe(i0 + 2)
    expect(c.removeMember('nobody')).toBe(false)
    expect(c.index).toBe(i0 + 2)
  })

  it('treats a hostile payload as no services and reports it', () => {
    const c = new Catalog()
    const rejects: string[] = []
    c.on('payload:reject', (r) => rejects.push(r.id))
    c.applyMember(member('1'))
    const r = c.applyMember(member('1', { version: 2, payload: { v: 1, s: [{ n: 'x', p: -1 }] } }))
    expect(r.rejected).toBeTypeOf('string')
    expect(rejects).toEqual(['1'])
    expect(c.services()).toEqual({})
  })

  it('waitForChange resolves on a change, on timeout, and on abort', async () => {
    const clock = new VirtualClock()
    const c = new Catalog({ clock })
    const i = c.index
    expect(await c.waitForChange(i - 1, 1000)).toBe(i) // already past
    const waiting = c.waitForChange(i, 60_000)
    c.applyMember(member('1'))
    expect(await waiting).toBe(i + 1)
    const timedOut = c.waitForChange(i + 1, 5000)
    await advance(clock, 5000)
    expect(await timedOut).toBe(i + 1)
    const ac = new AbortController()
    const aborted = c.waitForChange(i + 1, 60_000, ac.signal)
    ac.abort()
    expect(await aborted).toBe(i + 1)
    expect(clock.pending).toBe(0)
  })
})

describe('LocalPayloadPublisher', () => {
  const dir = makeTempDir('publisher')
  afterAll(() => removeTempDir(dir))

  it('publishes a new payload on registration and on check transitions only', async () => {
    const clock = new VirtualClock()
    const registry = LocalServiceRegistry.open({ dataDir: dir })
    const checks = new CheckRunner({ clock })
    const pub = new LocalPayloadPublisher({ registry, checks })
    const seen: NodePayload[] = []
    pub.on('payload:change', (p) => seen.push(p))
    pub.start()
    expect(pub.payload()).toEqual({ v: 1, s: [] })
    registry.register(web)
    expect(seen).toHaveLength(1)
    checks.updateTtl('service:web', 'passing', 'one')
    checks.updateTtl('service:web', 'passing', 'two') // output only: no new payload
    expect(seen).toHaveLength(2)
    await advance(clock, 10_000) // TTL expires
    expect(seen).toHaveLength(3)
    const c = new Catalog()
    c.applyMember(member('1', { payload: pub.payload() }))
    expect(c.health('web')[0]!.status).toBe('critical')
    pub.stop()
    expect(clock.pending).toBe(0)
  })
})

describe('Catalog per-service index (issue #15)', () => {
  it('a change to web moves only the indexes of the services it touched', () => {
    const c = new Catalog()
    c.applyMember(member('1', { payload: payload([web, db]) }))
    const dbAt = c.serviceIndex('db')
    const webAt = c.serviceIndex('web')
    c.applyMember(member('1', { version: 2, payload: payload([webV2, db]) }))
    expect(c.serviceIndex('db')).toBe(dbAt)
    expect(c.serviceIndex('web')).toBeGreaterThan(webAt)
    expect(c.serviceIndex('web')).toBe(c.index)
    // The node dying changes the health of everything on it.
    c.applyMember(member('1', { version: 2, status: 'dead', payload: payload([webV2, db]) }))
    expect(c.serviceIndex('db')).toBe(c.index)
    expect(c.serviceIndex('never')).toBe(1)
  })

  it('a blocking wait on db is not woken by changes to web, and ends when db changes', async () => {
    const clock = new VirtualClock()
    const c = new Catalog({ clock })
    c.applyMember(member('1', { payload: payload([web, db]) }))
    let woken: number | undefined
    void c.waitForService('db', c.serviceIndex('db'), 60_000).then((i) => {
      woken = i
    })
    c.applyMember(member('1', { version: 2, payload: payload([webV2, db]) }))
    c.applyMember(member('2', { payload: payload([web]) }))
    await settle()
    expect(woken).toBeUndefined()
    c.applyMember(member('2', { version: 2, payload: payload([web, db]) }))
    await settle()
    expect(woken).toBe(c.serviceIndex('db'))
  })
})
