import { describe, expect, it } from 'vitest'
import type { NodeHealth } from '../../../src/node/api/kv-http.ts'
import { Catalog, type MemberUpdate } from '../../../src/node/catalog/catalog.ts'
import { encodeNodePayload } from '../../../src/node/catalog/node-payload.ts'
import { type CheckStatus, parseServiceDefinition } from '../../../src/node/catalog/service-definition.ts'
import { catalogHealth, nodeHealthOf } from '../../../src/node/kv/kv-module.ts'
import { sessionsToInvalidate } from '../../../src/node/kv/session-invalidation.ts'
import type { StoredSession } from '../../../src/raft/policy/kv-state.ts'

const session = (over: Partial<StoredSession>): StoredSession => ({
  id: 'id',
  name: '',
  node: 'n1',
  lockDelayMs: 15_000,
  behavior: 'release',
  ttlMs: 0,
  checks: ['serfHealth'],
  createIndex: 1,
  modifyIndex: 1,
  renewedAt: 0,
  ...over,
})

const healthy: NodeHealth = { alive: true, checks: new Map([['web', 'passing']]) }

/** Consul's rules for invalidating a session, as a table: [name, session, now, health, settled, want]. */
const cases: [string, Partial<StoredSession>, number, NodeHealth | undefined, boolean, string | undefined][] =
  [
    ['healthy, no TTL', {}, 10_000_000, healthy, true, undefined],
    ['TTL not yet twice over', { ttlMs: 10_000, renewedAt: 1000 }, 21_000, healthy, true, undefined],
    [
      'TTL twice over (Consul waits up to 2×TTL)',
      { ttlMs: 10_000, renewedAt: 1000 },
      21_001,
      healthy,
      true,
      'ttl',
    ],
    ['node failed in gossip', {}, 0, { alive: false, checks: new Map() }, true, 'node'],
    ['node gone from the catalog, catalog settled', {}, 0, undefined, true, 'node'],
    ["node gone from a new leader's catalog: not yet", {}, 0, undefined, false, undefined],
    [
      'a named check critical',
      { checks: ['serfHealth', 'web'] },
      0,
      { alive: true, checks: new Map([['web', 'critical']]) },
      true,
      'check',
    ],
    [
      'a named check warning',
      { checks: ['web'] },
      0,
      { alive: true, checks: new Map([['web', 'warning']]) },
      true,
      undefined,
    ],
    [
      'an unnamed check critical',
      { checks: [] },
      0,
      { alive: true, checks: new Map([['web', 'critical']]) },
      true,
      undefined,
    ],
    ['a named check unknown here', { checks: ['db'] }, 0, healthy, true, undefined],
  ]

describe('sessionsToInvalidate', () => {
  it.each(cases)('%s', (_name, over, now, health, settled, want) => {
    const out = sessionsToInvalidate([session(over)], now, () => health, settled)
    expect(out[0]?.reason).toBe(want)
  })
})

describe('nodeHealthOf: a node as the catalog sees it', () => {
  const web = parseServiceDefinition({ name: 'web', port: 8080, checks: [{ ttl: '10s' }] }, 'test')
  const member = (status: CheckStatus, over: Partial<MemberUpdate> = {}): MemberUpdate => ({
    id: 'p1',
    name: 'n1',
    address: '/ip4/10.0.0.1/tcp/4001/p2p/p1',
    status: 'alive',
    version: 1,
    payload: encodeNodePayload([web], () => status),
    ...over,
  })

  it('gives the gossip status and each check by its catalog id; invalidation follows them', () => {
    const c = new Catalog()
    expect(nodeHealthOf(c, 'n1')).toBeUndefined()
    c.applyMember(member('passing'))
    const h = nodeHealthOf(c, 'n1')!
    expect(h.alive).toBe(true)
    const ids = [...h.checks.keys()].filter((id) => id !== 'serfHealth')
    expect(ids).toHaveLength(1)
    const checkId = ids[0]!
    const s = session({ checks: ['serfHealth', checkId] })
    expect(sessionsToInvalidate([s], 0, (n) => nodeHealthOf(c, n), true)).toEqual([])
    c.applyMember(member('critical', { version: 2 }))
    expect(sessionsToInvalidate([s], 0, (n) => nodeHealthOf(c, n), true)[0]?.reason).toBe('check')
    // The one-pass view the leader uses says the same.
    expect(catalogHealth(c).get('n1')).toEqual(nodeHealthOf(c, 'n1'))
    c.applyMember(member('passing', { version: 3, status: 'dead' }))
    expect(nodeHealthOf(c, 'n1')?.alive).toBe(false)
    expect(sessionsToInvalidate([s], 0, (n) => nodeHealthOf(c, n), true)[0]?.reason).toBe('node')
  })
})

describe('TTLs across a change of leader', () => {
  it("a new leader gives every TTL session a full 2×TTL from when it took over (Consul's session timers)", () => {
    // No client could renew while there was no leader: a session must not be invalidated for
    // renewals that could not be committed. Consul resets every session timer on taking over.
    const s = session({ ttlMs: 10_000, renewedAt: 1000 })
    const leadingSince = 25_000
    expect(sessionsToInvalidate([s], 30_000, () => healthy, true, leadingSince)).toEqual([])
    expect(sessionsToInvalidate([s], 45_000, () => healthy, true, leadingSince)).toEqual([])
    expect(sessionsToInvalidate([s], 45_001, () => healthy, true, leadingSince)[0]?.reason).toBe('ttl')
    // Renewed after the takeover: from the renewal.
    const r = session({ ttlMs: 10_000, renewedAt: 40_000 })
    expect(sessionsToInvalidate([r], 60_000, () => healthy, true, leadingSince)).toEqual([])
    expect(sessionsToInvalidate([r], 60_001, () => healthy, true, leadingSince)[0]?.reason).toBe('ttl')
  })
})
