import { afterEach, describe, expect, it } from 'vitest'
import {
  aliveSigningBytes,
  ed25519Signer,
  encodeMessage,
  encodePushPull,
  encodeRecord,
  lanConfig,
} from '../../../src/gossip/index.ts'
import { memberUpdateOf } from '../../../src/node/catalog/gossip-glue.ts'
import {
  type Catalog,
  type CheckStatus,
  NODE_CHECK_ID,
  parseServiceDefinition,
} from '../../../src/node/catalog/index.ts'
import { SimCatalogCluster } from './sim-catalog-cluster.ts'

/**
 * Catalog propagation over SWIM in a deterministic 50-node simulation (virtual time, seeded,
 * ed25519-signed records, lan profile, 0.2–2 ms one-way latency). Each node runs what an agent
 * runs — registry, checks, publisher, and a `Catalog` fed by its own gossip events — so these
 * are the catalog's end-to-end guarantees without processes or sleeps.
 */

const N = 50
const OWNER = 'n17'
/**
 * Lan profile: a record update piggybacks on gossip every 50 ms with fan-out 3 (SWIM §4.1);
 * measured here: ~120 ms to the last of 50 nodes at the median, ~230 ms at p99.
 */
const UPDATE_BUDGET_MS = 1_000
/** A crash is first detected (SWIM §3.1, Lifeguard §IV-B), then disseminated: ≈ 1 s at n = 50. */
const FAILURE_BUDGET_MS = 2_000
/**
 * Infection-style dissemination is probabilistic (SWIM §4.1): each informed node retransmits an
 * update λ·log(n) = 8 times, so about 1 update in 70 misses one node of 50 altogether, which then
 * learns it from push/pull anti-entropy (every 20 s per node at n = 50) or the owner's next
 * update. Hence: all nodes but at most one within the budget, every node within this bound.
 */
const ANTI_ENTROPY_BOUND_MS = 30_000

const web = parseServiceDefinition(
  {
    name: 'web',
    id: 'web-1',
    port: 8080,
    tags: ['v1'],
    checks: [{ id: 'web-ttl', ttl: '1h', status: 'passing' }],
  },
  'test',
)

let cluster: SimCatalogCluster | undefined
afterEach(() => {
  cluster?.close()
  cluster = undefined
})

/** A converged, settled cluster (every node has published its initial, empty payload). */
function settledCluster(seed: number, loss = 0): SimCatalogCluster {
  const c = new SimCatalogCluster({ n: N, seed, config: lanConfig, latencyMs: { min: 0.2, max: 2 }, loss })
  cluster = c
  expect(c.sim.runUntilCondition(() => c.converged(), 10_000, 25)).toBeDefined()
  c.sim.runFor(2_000)
  return c
}

function webStatus(catalog: Catalog): CheckStatus | undefined {
  return catalog.health('web').find((e) => e.service.id === 'web-1' && e.node.name === OWNER)?.status
}

/** Registers web-1 on the owner and runs until all 50 catalogs list it as passing. */
function registerWeb(c: SimCatalogCluster): Map<string, number> {
  c.node(OWNER).registry.register(web)
  const times = spread(c, (cat) => webStatus(cat) === 'passing')
  expectPropagated(times, UPDATE_BUDGET_MS)
  return times!
}

/** Runs until every node (or `observers`) sees `seen`; per-node virtual ms, undefined if not all did. */
function spread(
  c: SimCatalogCluster,
  seen: (catalog: Catalog) => boolean,
  opts: { observers?: string[] } = {},
): Map<string, number> | undefined {
  return c.propagation(seen, { ...opts, maxMs: ANTI_ENTROPY_BOUND_MS })
}

function slowest(times: Map<string, number>): number {
  return Math.max(...times.values())
}

/** Every node saw the change, and all but at most one (see `ANTI_ENTROPY_BOUND_MS`) within `budgetMs`. */
function expectPropagated(times: Map<string, number> | undefined, budgetMs: number): void {
  expect(times, 'some node never saw the change').toBeDefined()
  const late = [...times!].filter(([, ms]) => ms > budgetMs)
  expect(late.length, `late: ${JSON.stringify(late)}`).toBeLessThanOrEqual(1)
}

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)]!
}

describe('catalog propagation over SWIM gossip (50 simulated nodes, lan profile)', () => {
  it('SWIM §4.1: a registration on one node appears on all 50 within a virtual second', () => {
    const c = settledCluster(101, 0.01)
    const times = registerWeb(c)
    expect(times.get(OWNER)).toBe(0) // the owner's own catalog is updated synchronously
    for (const id of c.ids) {
      const [entry] = c.catalog(id).health('web')
      expect(entry?.service).toMatchObject({ id: 'web-1', name: 'web', port: 8080, tags: ['v1'] })
      expect(entry?.checks.map((k) => [k.checkId, k.status])).toEqual([
        [NODE_CHECK_ID, 'passing'],
        ['web-ttl', 'passing'],
      ])
      expect(c.catalog(id).services()).toEqual({ web: ['v1'] })
    }
  })

  it('a check transition on the owner (passing -> critical -> passing, then a TTL expiry) reaches all 50', () => {
    const c = settledCluster(102, 0.01)
    registerWeb(c)
    c.sim.runFor(1_000)
    const owner = c.node(OWNER)

    owner.checks.updateTtl('web-ttl', 'critical', 'failing on purpose')
    expectPropagated(
      spread(c, (cat) => webStatus(cat) === 'critical'),
      UPDATE_BUDGET_MS,
    )

    owner.checks.updateTtl('web-ttl', 'passing')
    expectPropagated(
      spread(c, (cat) => webStatus(cat) === 'passing'),
      UPDATE_BUDGET_MS,
    )

    // A TTL check nobody heartbeats expires on the owner's (virtual) clock; only that transition
    // is gossiped. Time it from the moment the owner's own catalog shows the expiry.
    owner.registry.register(
      parseServiceDefinition(
        { name: 'api', id: 'api-1', port: 9000, checks: [{ id: 'api-ttl', ttl: '3s', status: 'passing' }] },
        'test',
      ),
    )
    const apiStatus = (cat: Catalog) => cat.health('api')[0]?.status
    expectPropagated(
      spread(c, (cat) => apiStatus(cat) === 'passing'),
      UPDATE_BUDGET_MS,
    )
    const expired = spread(c, (cat) => apiStatus(cat) === 'critical')
    expect(expired).toBeDefined()
    const expiredAt = expired!.get(OWNER)!
    expect(expiredAt).toBeGreaterThan(1_000) // it did wait for the TTL
    expectPropagated(new Map([...expired!].map(([id, ms]) => [id, ms - expiredAt])), UPDATE_BUDGET_MS)
    expect(owner.checks.get('api-ttl')?.output).toMatch(/TTL expired/)
    // The other service's status is untouched by the expiry.
    for (const id of c.ids) expect(webStatus(c.catalog(id))).toBe('passing')
  })

  it('SWIM §3.1: a crashed node is declared dead and its instances turn critical on every survivor', () => {
    const c = settledCluster(103)
    registerWeb(c)
    c.sim.runFor(1_000)
    c.crash(OWNER)
    const survivors = c.ids.filter((id) => id !== OWNER)
    const times = spread(c, (cat) => webStatus(cat) === 'critical', { observers: survivors })
    expectPropagated(times, FAILURE_BUDGET_MS)
    for (const id of survivors) {
      const [entry] = c.catalog(id).health('web')
      // Still listed (a dead node's instances stay until it is reaped), critical by the node check.
      expect(entry?.checks.find((k) => k.checkId === NODE_CHECK_ID)?.status).toBe('critical')
      expect(entry?.checks.find((k) => k.checkId === 'web-ttl')?.status).toBe('passing')
      expect(c.catalog(id).health('web', { minStatus: 'passing' })).toEqual([])
    }
  })

  it('a deregistration removes the instance everywhere; a graceful leave removes the node', () => {
    const c = settledCluster(104, 0.01)
    registerWeb(c)
    const other = 'n33'
    c.node(other).registry.register(parseServiceDefinition({ name: 'web', id: 'web-2', port: 8081 }, 'test'))
    expectPropagated(
      spread(c, (cat) => cat.health('web').length === 2),
      UPDATE_BUDGET_MS,
    )

    c.node(OWNER).registry.deregister('web-1')
    expectPropagated(
      spread(c, (cat) => webStatus(cat) === undefined),
      UPDATE_BUDGET_MS,
    )
    for (const id of c.ids) {
      expect(
        c
          .catalog(id)
          .health('web')
          .map((e) => e.service.id),
      ).toEqual(['web-2'])
    }

    // The owner of web-2 leaves (signed `left`): its instances disappear, never turn critical.
    c.sim.act(other, (swim, now) => swim.leave(now))
    const stayed = c.ids.filter((id) => id !== other)
    expectPropagated(
      spread(c, (cat) => cat.health('web').length === 0, { observers: stayed }),
      UPDATE_BUDGET_MS,
    )
    for (const id of stayed) expect(c.catalog(id).services()).toEqual({})
  })

  it('a replayed older record (validly signed by its owner) is ignored by gossip and by the catalog', () => {
    const c = settledCluster(105, 0.01)
    registerWeb(c)
    c.sim.runFor(1_000)
    // What the owner signed and gossiped while web-1 was registered.
    const owner = c.sim.node(OWNER)
    const oldInc = owner.localIncarnation
    const oldRecord = encodeRecord(owner.localRecord)
    const oldSig = ed25519Signer(c.privateKey(OWNER))(aliveSigningBytes(oldInc, oldRecord))
    const oldView = owner.member(OWNER)!

    c.node(OWNER).registry.deregister('web-1')
    expect(spread(c, (cat) => webStatus(cat) === undefined)).toBeDefined()
    c.sim.runFor(1_000)
    const indexes = new Map(c.ids.map((id) => [id, c.catalog(id).index]))
    const updatesBefore = new Map(c.ids.map((id) => [id, c.node(id).events.length]))

    // An attacker (or a slow relay) replays the old alive to every node, as a datagram and in a
    // push/pull state exchange.
    const alive = encodeMessage({ t: 'alive', inc: oldInc, rec: oldRecord, sig: oldSig })
    const state = encodePushPull({
      t: 'state',
      join: false,
      members: [{ id: OWNER, st: 'alive', inc: oldInc, ri: oldInc, rec: oldRecord, sig: oldSig }],
    })
    for (const id of c.ids.filter((x) => x !== OWNER)) {
      const relay = id === 'n0' ? 'n1' : 'n0'
      c.sim.act(id, (swim, now) => swim.handleMessage(relay, alive, now))
      c.sim.act(id, (swim, now) => swim.handlePushPull(relay, state, now))
    }
    c.sim.runFor(3_000)

    for (const id of c.ids) {
      expect(webStatus(c.catalog(id)), id).toBeUndefined()
      expect(c.catalog(id).index, id).toBe(indexes.get(id))
      const newEvents = c.node(id).events.slice(updatesBefore.get(id))
      expect(newEvents.filter((e) => e.member.id === OWNER)).toEqual([])
      expect(c.sim.node(id).stats().dropped.forged, id).toBe(0) // ignored as old, not as forged
    }

    // Fed directly, the catalog refuses the older version too.
    const catalog = c.catalog('n42')
    const result = catalog.applyMember(memberUpdateOf(oldView))
    expect(result).toEqual({ changed: false, stale: true })
    expect(webStatus(catalog)).toBeUndefined()
  })

  it('SWIM §4.1: 100 health flips — the slowest of 50 nodes sees a flip within 250 ms at p50, 1 s at p95', () => {
    const c = settledCluster(106, 0.01)
    registerWeb(c)
    const slowestTimes: number[] = []
    for (let i = 0; i < 100; i++) {
      const status: CheckStatus = i % 2 === 0 ? 'critical' : 'passing'
      c.node(OWNER).checks.updateTtl('web-ttl', status)
      const times = spread(c, (cat) => webStatus(cat) === status)
      expect(times, `flip ${i} never reached every node`).toBeDefined()
      slowestTimes.push(slowest(times!))
      c.sim.runFor(300)
    }
    expect(quantile(slowestTimes, 0.5)).toBeLessThanOrEqual(250)
    expect(quantile(slowestTimes, 0.95)).toBeLessThanOrEqual(UPDATE_BUDGET_MS)
  })
})
