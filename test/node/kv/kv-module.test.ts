import { describe, expect, it } from 'vitest'
import pino from 'pino'
import type { AgentContext } from '../../../src/node/agent/agent.ts'
import { Catalog } from '../../../src/node/catalog/catalog.ts'
import { KvModule } from '../../../src/node/kv/kv-module.ts'
import {
  encodePolicyCommand,
  type PolicyCommand,
  PolicyStore,
} from '../../../src/raft/policy/policy-store.ts'
import { VirtualClock } from '../../sim/virtual-clock.ts'

const S1 = '11111111-1111-4111-8111-111111111111'

/** A KV module over a policy store applied by hand (as Raft would), on a virtual clock. */
function setUp() {
  const clock = new VirtualClock()
  const store = new PolicyStore()
  let index = 0
  const apply = (cmd: unknown): void => {
    store.apply({ index: ++index, term: 1, type: 'normal', data: encodePolicyCommand(cmd as PolicyCommand) })
  }
  const writes: PolicyCommand[] = []
  const kv = new KvModule(
    {
      store,
      write: async (cmd) => {
        writes.push(cmd)
        return { index, result: { ok: true } as never }
      },
      linearizableRead: async () => undefined,
      leaderId: () => 'me',
      isLeader: () => true,
    },
    () => new Catalog(),
  )
  const ctx = {
    clock,
    log: pino({ level: 'silent' }),
    http: { route: () => {} },
    config: { name: 'me' },
  } as unknown as AgentContext
  kv.start(ctx)
  return { clock, kv, apply, writes }
}

const create = (ttlMs: number, now: number): unknown => ({
  op: 'session.create',
  id: S1,
  name: '',
  node: 'me',
  lockDelayMs: 0,
  behavior: 'release',
  ttlMs,
  checks: [],
  now,
})

describe('KvModule: the session invalidation timer', () => {
  it('runs only while the store holds a session, and still invalidates one past its TTL', () => {
    const { clock, kv, apply, writes } = setUp()
    expect(kv.invalidating).toBe(false)
    expect(clock.pending).toBe(0) // no timer at all on an agent without sessions
    apply({ op: 'kv.set', key: 'k', value: 'dg==', now: 0 })
    expect(kv.invalidating).toBe(false)
    apply(create(10_000, clock.wallNow()))
    expect(kv.invalidating).toBe(true)
    clock.advance(25_000) // past twice the TTL, counted from the first round as leader
    expect(writes.map((w) => [w.op, (w as { reason?: string }).reason])).toContainEqual([
      'session.destroy',
      'ttl',
    ])
    apply({ op: 'session.destroy', id: S1, node: 'me', now: clock.wallNow() })
    expect(kv.invalidating).toBe(false)
    expect(clock.pending).toBe(0)
    kv.stop()
  })
})
