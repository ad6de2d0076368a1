/**
 * User events over gossip (Serf's user events, carried by SWIM piggyback, SWIM §4.1):
 * deterministic, on the simulator's virtual clock with seeded RNGs, real Ed25519 signatures.
 */
import { signerOf, verifier } from './node-keys.ts'
import { describe, expect, it } from 'vitest'
import { decodeMessage, encodeMessage, userEventSigningBytes } from '../../src/gossip/codec.ts'
import { lanConfig, testConfig } from '../../src/gossip/config.ts'
import type { UserEventMessage } from '../../src/gossip/messages.ts'
import { SimNetwork, type SimNetworkOptions } from '../../src/gossip/sim-network.ts'
import { Swim } from '../../src/gossip/swim.ts'
import { seededRng } from '../../src/common/rng.ts'
import {
  LamportClock,
  MAX_USER_EVENT_BODY_BYTES,
  UserEventDedup,
  type UserEvent,
} from '../../src/gossip/user-events.ts'

function cluster(n: number, opts: Partial<SimNetworkOptions> = {}) {
  const delivered = new Map<string, UserEvent[]>()
  const sim = new SimNetwork({
    seed: 7,
    config: testConfig,
    crypto: (id) => ({ signer: signerOf(id), verifier }),
    onUserEvent: (node, e) => {
      const list = delivered.get(node) ?? []
      list.push(e)
      delivered.set(node, list)
    },
    ...opts,
  })
  const ids = Array.from({ length: n }, (_, i) => `n${i}`)
  sim.join(ids[0]!, [])
  for (const id of ids.slice(1)) sim.join(id, [ids[0]!])
  const converged = () => ids.every((o) => ids.every((t) => sim.node(o).member(t)?.status === 'alive'))
  expect(sim.runUntilCondition(converged, 20_000, 25)).toBeDefined()
  return { sim, ids, delivered }
}

const body = (s: string) => new TextEncoder().encode(s)
const idsSeen = (list: UserEvent[] | undefined, id: string) => (list ?? []).filter((e) => e.id === id).length

describe('Lamport clock (Lamport 1978) and the dedup by id', () => {
  it('increment is strictly above everything witnessed', () => {
    const c = new LamportClock()
    expect(c.increment()).toBe(1)
    c.witness(10)
    expect(c.time).toBe(11)
    c.witness(3) // older: no change
    expect(c.time).toBe(11)
    expect(c.increment()).toBe(12)
  })

  it('remembers a bounded number of ids, forgetting the oldest', () => {
    const d = new UserEventDedup(3)
    for (const id of ['a', 'b', 'c', 'd']) d.remember(id)
    expect(['a', 'b', 'c', 'd'].map((id) => d.has(id))).toEqual([false, true, true, true])
  })
})

describe('the Lamport time across a restart', () => {
  it('a node restored with lastUserEventTime fires after it; an out-of-range one is ignored', () => {
    const make = (lastUserEventTime: number) =>
      new Swim({ self: { id: 'x', name: 'x', addresses: [] }, rng: seededRng(1), lastUserEventTime })
    const restored = make(100)
    expect(restored.fireUserEvent('e', body('')).userEvents[0]!.ltime).toBeGreaterThan(100)
    expect(restored.userEventTime).toBeGreaterThan(100)
    for (const bad of [2 ** 40 + 1, -3, 1.5, Number.NaN]) expect(make(bad).userEventTime, String(bad)).toBe(0)
  })
})

describe('user event codec', () => {
  const msg: UserEventMessage = {
    t: 'user',
    from: 'n1',
    lt: 3,
    id: 'e1',
    body: body('x'),
    sig: new Uint8Array(64),
  }

  it('round-trips', () => {
    const r = decodeMessage(encodeMessage(msg), lanConfig.maxMessageBytes)
    if (!r.ok || r.msg.t !== 'user') throw new Error(`not decoded: ${JSON.stringify(r)}`)
    const { body: b, sig, ...rest } = r.msg
    expect(rest).toEqual({ t: 'user', from: 'n1', lt: 3, id: 'e1' })
    expect([...b]).toEqual([...msg.body])
    expect([...sig]).toEqual([...msg.sig])
  })

  it.each([
    ['an empty id', { id: '' }],
    ['a long id', { id: 'x'.repeat(65) }],
    ['a negative Lamport time', { lt: -1 }],
    ['a Lamport time past 2^40 (it would stop every clock counting)', { lt: 2 ** 40 + 1 }],
    ['a body past the limit', { body: new Uint8Array(MAX_USER_EVENT_BODY_BYTES + 1) }],
    ['a string body', { body: 'x' }],
    ['a signature that is no bytes', { sig: 'sig' }],
  ])('rejects %s', (_what, patch) => {
    const bytes = encodeMessage({ ...msg, ...patch } as UserEventMessage)
    expect(decodeMessage(bytes, 4096)).toEqual({ ok: false, reason: 'shape' })
  })
})

describe('user events in a simulated cluster (SWIM §4.1 piggyback dissemination)', () => {
  it('an event fired on one node reaches all 20, each exactly once, under loss and duplication', () => {
    const { sim, ids, delivered } = cluster(20, { loss: 0.05, duplicate: 0.05, reorder: 0.05 })
    sim.act('n3', (s) => s.fireUserEvent('ev-1', body('deploy v2')))
    // The origin delivers its own event at once.
    expect(idsSeen(delivered.get('n3'), 'ev-1')).toBe(1)
    const t = sim.runUntilCondition(
      () => ids.every((id) => idsSeen(delivered.get(id), 'ev-1') === 1),
      10_000,
      10,
    )
    expect(t).toBeDefined()
    // Retransmissions die out; nobody delivers it twice.
    sim.runFor(5_000)
    for (const id of ids) {
      expect(idsSeen(delivered.get(id), 'ev-1'), id).toBe(1)
      const e = delivered.get(id)!.find((x) => x.id === 'ev-1')!
      expect([e.origin, e.ltime, new TextDecoder().decode(e.body)]).toEqual(['n3', 1, 'deploy v2'])
    }
    for (const id of ids) expect(sim.node(id).pendingBroadcasts()).toBe(0)
  })

  it('a node that saw an event orders its own next event after it (Lamport witness)', () => {
    const { sim, ids, delivered } = cluster(5)
    sim.act('n0', (s) => s.fireUserEvent('a', body('1')))
    sim.act('n0', (s) => s.fireUserEvent('b', body('2')))
    expect(sim.runUntilCondition(() => idsSeen(delivered.get('n4'), 'b') === 1, 10_000, 10)).toBeDefined()
    sim.act('n4', (s) => s.fireUserEvent('c', body('3')))
    expect(
      sim.runUntilCondition(() => ids.every((id) => idsSeen(delivered.get(id), 'c') === 1), 10_000, 10),
    ).toBeDefined()
    const lt = (id: string) => delivered.get('n1')!.find((e) => e.id === id)!.ltime
    expect(lt('c')).toBeGreaterThan(lt('b'))
    expect(lt('b')).toBeGreaterThan(lt('a'))
    // An id fired twice is refused, and the core is unchanged.
    expect(() => sim.node('n4').fireUserEvent('c', body('again'))).toThrow(
      expect.objectContaining({ code: 'PEERMESH_ERR_INVALID_USER_EVENT' }),
    )
    expect(() => sim.node('n4').fireUserEvent('d', new Uint8Array(MAX_USER_EVENT_BODY_BYTES + 1))).toThrow(
      expect.objectContaining({ code: 'PEERMESH_ERR_INVALID_USER_EVENT' }),
    )
  })

  it('a restarted member (its clock back at 0) still reaches everyone after many events', () => {
    const { sim, ids, delivered } = cluster(5)
    for (let i = 0; i < 600; i++) {
      sim.act('n0', (s) => s.fireUserEvent(`old-${i}`, body('x')))
      if (i % 50 === 49) sim.runFor(500)
    }
    expect(
      sim.runUntilCondition(() => ids.every((id) => idsSeen(delivered.get(id), 'old-599') === 1), 20_000, 50),
    ).toBeDefined()
    sim.crash('n4')
    sim.runFor(100)
    sim.restart('n4', { seeds: ['n0'], lastIncarnation: 50 })
    expect(
      sim.runUntilCondition(() => ids.every((o) => sim.node(o).member('n4')?.status === 'alive'), 20_000, 25),
    ).toBeDefined()
    sim.act('n4', (s) => s.fireUserEvent('after-restart', body('hi')))
    expect(
      sim.runUntilCondition(
        () => ids.every((id) => idsSeen(delivered.get(id), 'after-restart') === 1),
        10_000,
        10,
      ),
    ).toBeDefined()
    // Its Lamport time restarted low: ordering is per clock, not a reason to drop it.
    expect(delivered.get('n1')!.find((e) => e.id === 'after-restart')!.ltime).toBeLessThan(600)
  })

  it('a member cannot forge an event in another member name; unsigned and unknown-origin events are dropped, never relayed', () => {
    const { sim, ids, delivered } = cluster(6)
    const forgedBefore = ids.map((id) => sim.node(id).stats().dropped.forged)
    const forge = (m: Partial<UserEventMessage>) =>
      encodeMessage({
        t: 'user',
        from: 'n1',
        lt: 5,
        id: 'x',
        body: body('rm -rf'),
        sig: new Uint8Array(0),
        ...m,
      })
    // n5 signs with its own key an event claiming to come from n1.
    const claimed = { from: 'n1', lt: 5, id: 'forged', body: body('rm -rf') }
    const bySomeoneElse = signerOf('n5')(
      userEventSigningBytes(claimed.from, claimed.lt, claimed.id, claimed.body),
    )
    for (const to of ids.filter((id) => id !== 'n5')) {
      sim.inject('n5', to, forge({ ...claimed, sig: bySomeoneElse }))
      sim.inject('n5', to, forge({ id: 'unsigned' }))
      // A stranger's own key and a valid signature, but no member of the cluster.
      const stranger = { from: 'mallory', lt: 1, id: 'stranger', body: body('hi') }
      sim.inject(
        'n5',
        to,
        forge({
          ...stranger,
          sig: signerOf('mallory')(userEventSigningBytes('mallory', 1, 'stranger', stranger.body)),
        }),
      )
    }
    sim.runFor(5_000)
    for (const id of ids) {
      for (const ev of ['forged', 'unsigned', 'stranger'])
        expect(idsSeen(delivered.get(id), ev), `${id} ${ev}`).toBe(0)
    }
    const forgedAfter = ids.map((id) => sim.node(id).stats().dropped.forged)
    for (let i = 0; i < ids.length; i++) {
      if (ids[i] === 'n5') continue
      expect(forgedAfter[i]! - forgedBefore[i]!, ids[i]).toBeGreaterThanOrEqual(3)
    }
    // The real n1 still fires and everyone receives it.
    sim.act('n1', (s) => s.fireUserEvent('real', body('ok')))
    expect(
      sim.runUntilCondition(() => ids.every((id) => idsSeen(delivered.get(id), 'real') === 1), 10_000, 10),
    ).toBeDefined()
  })
})
