import { describe, expect, it } from 'vitest'
import type { NodeHealth } from '../../../src/node/api/kv-http.ts'
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
    [
      'the gossip check by its peermesh name',
      { checks: ['peermesh:node'] },
      0,
      { alive: false, checks: new Map() },
      true,
      'node',
    ],
  ]

describe('sessionsToInvalidate', () => {
  it.each(cases)('%s', (_name, over, now, health, settled, want) => {
    const out = sessionsToInvalidate([session(over)], now, () => health, settled)
    expect(out[0]?.reason).toBe(want)
  })
})
