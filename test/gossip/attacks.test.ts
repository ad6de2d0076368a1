/**
 * Issue #13 from the attacker's side: a member (or anyone holding the cluster key) sends what it
 * likes. Deterministic: seeded RNGs, the simulator's virtual clock, no sleeps.
 */
import { signerOf, verifier } from './node-keys.ts'
import { describe, expect, it } from 'vitest'
import { pack } from '../../src/common/msgpack.ts'
import { seededRng } from '../../src/common/rng.ts'
import {
  aliveSigningBytes,
  decodeMessage,
  encodeMessage,
  encodePushPull,
  encodeRecord,
  leaveSigningBytes,
} from '../../src/gossip/codec.ts'
import { lanConfig, type SwimConfig, swimConfig, testConfig } from '../../src/gossip/config.ts'
import { MAX_PLAUSIBLE_INCARNATION } from '../../src/gossip/incarnation.ts'
import type { NodeRecord, StateEntry } from '../../src/gossip/messages.ts'
import type { Verifier } from '../../src/gossip/signing.ts'
import { SimNetwork, type SimNetworkOptions } from '../../src/gossip/sim-network.ts'
import { remainingSuspicionTime, suspicionMinTimeout } from '../../src/gossip/suspicion.ts'
import { type Output, Swim, type SwimEvent } from '../../src/gossip/swim.ts'

const ed25519 = (id: string) => ({ signer: signerOf(id), verifier })

const HUGE = Number.MAX_SAFE_INTEGER // 2^53 − 1: its refutation 2^53 would not be a safe integer

function cluster(n: number, opts: Partial<SimNetworkOptions> = {}) {
  const sim = new SimNetwork({ seed: 11, config: testConfig, crypto: ed25519, ...opts })
  const ids = Array.from({ length: n }, (_, i) => `n${i}`)
  sim.join(ids[0]!, [])
  for (const id of ids.slice(1)) sim.join(id, [ids[0]!])
  expect(sim.runUntilCondition(() => converged(sim, ids), 10_000, 25)).toBeDefined()
  return { sim, ids }
}

function converged(sim: SimNetwork, ids: string[]): boolean {
  return ids.every((o) => ids.every((t) => sim.node(o).member(t)?.status === 'alive'))
}

function record(id: string, version = 1): NodeRecord {
  return { id, name: id, addresses: [`/dns/${id}`], tags: {}, meta: {}, version }
}

function entry(id: string, st: StateEntry['st'], inc: number, ri: number, sign = signerOf(id)): StateEntry {
  const rec = encodeRecord(record(id))
  return { id, st, inc, ri, rec, sig: sign(aliveSigningBytes(ri, rec)) }
}

describe('SWIM §4.2: an accuser cannot push an incarnation out of range', () => {
  it('a sealed dead and suspect at 2^53−1 about X: X stays alive everywhere, every incarnation a safe integer', () => {
    const { sim, ids } = cluster(8)
    const before = sim.node('n3').localIncarnation
    for (const to of ids) {
      sim.inject('mallory', to, encodeMessage({ t: 'dead', id: 'n3', inc: HUGE, from: 'mallory' }))
      sim.inject('n5', to, encodeMessage({ t: 'suspect', id: 'n3', inc: HUGE, from: 'n5' }))
    }
    // The same through push/pull (anti-entropy), to X and to a bystander.
    const poison = encodePushPull({ t: 'state', join: false, members: [entry('n3', 'dead', HUGE, 1)] })
    sim.act('n3', (s, now) => s.handlePushPull('mallory', poison, now))
    sim.act('n1', (s, now) => s.handlePushPull('mallory', poison, now))
    sim.runFor(5 * lanConfig.probeIntervalMs)
    for (const o of ids) {
      expect(sim.node(o).member('n3')?.status).toBe('alive')
      const inc = sim.node(o).member('n3')!.incarnation
      expect(Number.isSafeInteger(inc) && inc <= MAX_PLAUSIBLE_INCARNATION).toBe(true)
      // What every node would persist (gossip.json): its own incarnation.
      expect(sim.node(o).localIncarnation).toBeLessThanOrEqual(MAX_PLAUSIBLE_INCARNATION)
    }
    expect(sim.node('n3').localIncarnation).toBe(before) // nothing to refute
    const dropped = ids.reduce((s, id) => s + sim.node(id).stats().dropped.incarnation, 0)
    expect(dropped).toBeGreaterThanOrEqual(2 * ids.length + 2)
  })

  it('an alive about X at 2^53−1 not signed by X does not move X (push/pull self entry)', () => {
    const { sim } = cluster(4)
    const before = sim.node('n2').localIncarnation
    const forged = entry('n2', 'alive', HUGE, HUGE, signerOf('mallory'))
    sim.act('n2', (s, now) =>
      s.handlePushPull('mallory', encodePushPull({ t: 'state', join: false, members: [forged] }), now),
    )
    expect(sim.node('n2').localIncarnation).toBe(before)
    expect(sim.node('n2').stats().dropped.forged).toBe(1)
  })

  it('a legitimate accuser (within the signed incarnation + 1) is still believed and refuted with own + 1', () => {
    const { sim } = cluster(4)
    const own = sim.node('n2').localIncarnation
    sim.inject('n1', 'n2', encodeMessage({ t: 'suspect', id: 'n2', inc: own + 1, from: 'n1' }))
    sim.runFor(1)
    expect(sim.node('n2').localIncarnation).toBe(own + 2)
    sim.runFor(5 * lanConfig.probeIntervalMs)
    for (const o of ['n0', 'n1', 'n3']) expect(sim.node(o).member('n2')?.status).toBe('alive')
  })

  it('a restart with a corrupted persisted incarnation (2^53) repairs itself and rejoins alive', () => {
    const { sim, ids } = cluster(5)
    sim.crash('n4')
    const others = ids.filter((id) => id !== 'n4')
    expect(
      sim.runUntilCondition(() => others.every((o) => sim.node(o).member('n4')?.status === 'dead'), 10_000),
    ).toBeDefined()
    const n4 = sim.restart('n4', { seeds: ['n0'], lastIncarnation: 2 ** 53 })
    expect(n4.localIncarnation).toBeLessThanOrEqual(MAX_PLAUSIBLE_INCARNATION)
    expect(
      sim.runUntilCondition(() => others.every((o) => sim.node(o).member('n4')?.status === 'alive'), 5_000),
    ).toBeDefined()
    expect(Number.isSafeInteger(n4.localIncarnation) && n4.localIncarnation < 100).toBe(true)
  })
})

describe('SWIM §3.1: acks count only from the member probed or the helpers asked', () => {
  it('spoofed acks (right seq, wrong sender) do not save a crashed member from detection', () => {
    let sim!: SimNetwork
    let spoofed = 0
    const tap = (from: string, to: string, bytes: Uint8Array, now: number) => {
      if (to !== 'n4' || !sim?.isCrashed('n4')) return
      const r = decodeMessage(bytes, lanConfig.maxMessageBytes)
      if (!r.ok) return
      const parts = r.msg.t === 'compound' ? r.msg.parts : [r.msg]
      for (const p of parts) {
        if (p.t !== 'ping') continue
        // An on-path insider answers at once, from itself and claiming a live member.
        spoofed++
        sim.inject('mallory', from, encodeMessage({ t: 'ack', seq: p.seq }), now + 0.1)
      }
    }
    const c = cluster(8, { seed: 5, config: lanConfig, crypto: undefined, tap })
    sim = c.sim
    sim.crash('n4')
    const crashedAt = sim.now
    const survivors = c.ids.filter((id) => id !== 'n4')
    const at = sim.runUntilCondition(
      () => survivors.every((o) => sim.node(o).member('n4')?.status === 'dead'),
      10_000,
      5,
    )
    expect(at).toBeDefined()
    expect(at! - crashedAt).toBeLessThanOrEqual(1_750) // the same bound as without an attacker
    expect(spoofed).toBeGreaterThan(0)
    expect(survivors.reduce((s, id) => s + sim.node(id).stats().dropped.sender, 0)).toBeGreaterThan(0)
  })

  it('an ack from the member probed is accepted; the same seq from another member is not', () => {
    const a = new Swim({ self: { id: 'a', name: 'a', addresses: [] }, config: lanConfig, rng: seededRng(1) })
    a.handleMessage(
      'b',
      encodeMessage({ t: 'alive', inc: 1, rec: encodeRecord(record('b')), sig: new Uint8Array() }),
      0,
    )
    const out = a.start(0)
    let now = 0
    let ping: { to: string; seq: number } | undefined
    const scan = (o: { send: { to: string; msg: Uint8Array }[] }) => {
      for (const s of o.send) {
        const r = decodeMessage(s.msg, lanConfig.maxMessageBytes)
        if (!r.ok) continue
        for (const p of r.msg.t === 'compound' ? r.msg.parts : [r.msg])
          if (p.t === 'ping') ping = { to: s.to, seq: p.seq }
      }
    }
    scan(out)
    while (ping === undefined && now < 1_000) {
      now = a.nextDeadline()
      scan(a.tick(now))
    }
    expect(ping?.to).toBe('b')
    a.handleMessage('c', encodeMessage({ t: 'ack', seq: ping!.seq }), now + 1)
    expect(a.stats().dropped.sender).toBe(1)
    a.handleMessage('b', encodeMessage({ t: 'ack', seq: ping!.seq }), now + 2)
    expect(a.stats().dropped.sender).toBe(1)
    expect(a.stats().acksReceived).toBe(2)
    // Acked: the probe's end accuses nobody.
    const events = a.tick(now + lanConfig.probeIntervalMs).events
    expect(events.filter((e) => e.type === 'member:suspect')).toEqual([])
  })
})

describe('Lifeguard §IV-B: confirmations count per distinct authenticated sender', () => {
  // Not started: no probes of our own, only the suspicion timer runs.
  function observer() {
    const a = new Swim({ self: { id: 'a', name: 'a', addresses: [] }, config: lanConfig, rng: seededRng(3) })
    for (const id of ['m1', 'm2', 'm3', 'm4', 'm5']) {
      a.handleMessage(
        id,
        encodeMessage({ t: 'alive', inc: 1, rec: encodeRecord(record(id)), sig: new Uint8Array() }),
        0,
      )
    }
    const n = a.estimatedSize()
    const min = suspicionMinTimeout(lanConfig.suspicionMult, n, lanConfig.probeIntervalMs)
    const max = lanConfig.suspicionMaxTimeoutMult * min
    const k = lanConfig.suspicionConfirmations
    return { a, timeout: (c: number) => remainingSuspicionTime(c, k, 0, min, max) }
  }
  const suspect = (from: string) => encodeMessage({ t: 'suspect', id: 'm1', inc: 1, from })

  it('one sender claiming many accusers counts once (the first accusation only)', () => {
    const { a, timeout } = observer()
    a.handleMessage('mallory', suspect('x1'), 100)
    for (const from of ['x2', 'x3', 'x4', 'm2', 'm3']) a.handleMessage('mallory', suspect(from), 110)
    expect(a.member('m1')?.status).toBe('suspect')
    expect(a.nextDeadline()).toBe(100 + timeout(0))
    a.tick(100 + timeout(0) - 1)
    expect(a.member('m1')?.status).toBe('suspect')
    a.tick(100 + timeout(0))
    expect(a.member('m1')?.status).toBe('dead')
  })

  it('accusers speaking for themselves each count (K confirmations reach the minimum)', () => {
    const { a, timeout } = observer()
    a.handleMessage('mallory', suspect('x1'), 100)
    a.handleMessage('m2', suspect('m2'), 110)
    expect(a.nextDeadline()).toBe(100 + timeout(1))
    a.handleMessage('m2', suspect('m3'), 120) // m2 again, relaying: no new sender
    expect(a.nextDeadline()).toBe(100 + timeout(1))
    a.handleMessage('m3', suspect('m3'), 130)
    expect(a.nextDeadline()).toBe(100 + timeout(2))
  })
})

describe('push/pull caps and cached signature checks', () => {
  function countingNode(config: SwimConfig = lanConfig) {
    const calls = { n: 0 }
    const counting: Verifier = (id, bytes, sig) => {
      calls.n++
      return verifier(id, bytes, sig)
    }
    const a = new Swim({
      self: { id: 'a', name: 'a', addresses: [] },
      config,
      rng: seededRng(9),
      signer: signerOf('a'),
      verifier: counting,
    })
    return { a, calls }
  }
  const fakeSig = new Uint8Array(64).fill(7)

  it('a push/pull listing 100,000 members is refused before decoding, counted, no signature checked', () => {
    const { a, calls } = countingNode()
    const members: StateEntry[] = []
    const rec = encodeRecord(record('x'))
    for (let i = 0; i < 100_000; i++)
      members.push({ id: `x${i}`, st: 'alive', inc: 1, ri: 1, rec, sig: fakeSig })
    const bytes = encodePushPull({ t: 'state', join: true, members })
    const res = a.handlePushPull('mallory', bytes, 0)
    expect(res.reply).toBeUndefined()
    expect(a.stats().dropped.members).toBe(1)
    expect(calls.n).toBe(0)
    expect(a.estimatedSize()).toBe(1)
    // Also when the header is not ours to read (another encoder's key order): refused after decoding.
    const small = swimConfig('lan', { maxPushPullMembers: 10 })
    const b = countingNode(small)
    const other = pack({
      members: members.slice(0, 11).map((m) => [m.id, m.st, m.inc, m.ri, m.rec, m.sig]),
      join: false,
      t: 'state',
    })
    expect(b.a.handlePushPull('mallory', other, 0).reply).toBeUndefined()
    expect(b.a.stats().dropped.members).toBe(1)
  })

  it('new members and signature checks per exchange are capped; the excess is dropped and counted', () => {
    const cfg = swimConfig('lan', { maxPushPullNewMembers: 20, maxPushPullVerifications: 30 })
    const { a, calls } = countingNode(cfg)
    const members: StateEntry[] = []
    for (let i = 0; i < 300; i++) members.push(entry(`y${i}`, 'alive', 1, 1))
    const state = encodePushPull({ t: 'state', join: true, members })
    a.handlePushPull('peer', state, 0)
    expect(a.estimatedSize()).toBe(1 + 20)
    expect(a.stats().dropped.newMembers).toBe(280)
    expect(calls.n).toBe(20)
    // The next exchanges bring the next ones (a joiner to a big cluster catches up this way).
    a.handlePushPull('peer', state, 1)
    a.handlePushPull('peer', state, 2)
    expect(a.estimatedSize()).toBe(1 + 60)
    expect(calls.n).toBe(60)
    // Newer records of known members (forged here) stop at the verification budget.
    const updates = members.slice(0, 60).map((m) => ({ ...m, inc: 2, ri: 2 }))
    a.handlePushPull('peer', encodePushPull({ t: 'state', join: false, members: updates }), 3)
    expect(calls.n).toBe(60 + 30)
    expect(a.stats().dropped.verifyBudget).toBe(30)
    expect(a.stats().dropped.forged).toBe(30)
  })

  it('made-up members fill the table to maxPushPullMembers and no further, by gossip or push/pull', () => {
    const { a, calls } = countingNode(swimConfig('lan', { maxPushPullMembers: 50 }))
    // Each made-up member signs its own record with a fresh key, as a cluster-key holder can.
    const alive = (id: string, inc = 1) => {
      const rec = encodeRecord(record(id))
      return encodeMessage({ t: 'alive', inc, rec, sig: signerOf(id)(aliveSigningBytes(inc, rec)) })
    }
    for (let i = 0; i < 200; i++) a.handleMessage('mallory', alive(`fake${i}`), i)
    // Self and 49 others: the node's own push/pull state still fits in one exchange.
    expect(a.estimatedSize()).toBe(50)
    expect(a.stats().dropped.tableFull).toBe(151)
    expect(calls.n).toBe(49) // no signature checked for the ones refused
    const more = Array.from({ length: 30 }, (_, i) => entry(`pp${i}`, 'alive', 1, 1))
    a.handlePushPull('mallory', encodePushPull({ t: 'state', join: false, members: more }), 300)
    expect(a.estimatedSize()).toBe(50)
    expect(a.stats().dropped.tableFull).toBe(181)
    expect(a.member('pp0')).toBeUndefined()
    // Members already known still update: a newer record of one is taken.
    a.handleMessage('fake3', alive('fake3', 2), 400)
    expect(a.member('fake3')?.incarnation).toBe(2)
  })

  it('identical records are verified once: repeated push/pulls and a replayed forgery (counter)', () => {
    const { a, calls } = countingNode()
    const members = Array.from({ length: 40 }, (_, i) => entry(`z${i}`, 'alive', 1, 1))
    const state = encodePushPull({ t: 'state', join: false, members })
    for (let i = 0; i < 10; i++) a.handlePushPull(`peer${i}`, state, i)
    expect(calls.n).toBe(40)
    expect(a.stats().signatureChecks).toBe(40)
    const forged = encodeMessage({ t: 'alive', inc: 5, rec: encodeRecord(record('z1')), sig: fakeSig })
    for (let i = 0; i < 100; i++) a.handleMessage('mallory', forged, 100 + i)
    expect(calls.n).toBe(41)
    expect(a.stats().dropped.forged).toBe(100)
    expect(a.stats().signatureCacheHits).toBe(99)
    const leave = encodeMessage({
      t: 'leave',
      id: 'z2',
      inc: 1,
      sig: signerOf('mallory')(leaveSigningBytes('z2', 1)),
    })
    for (let i = 0; i < 100; i++) a.handleMessage('mallory', leave, 300 + i)
    expect(calls.n).toBe(42)
    expect(a.member('z2')?.status).toBe('alive')
  })
})

describe('Lifeguard §IV-A: a starved node suspects itself before it accuses others', () => {
  it('late timers raise the local health multiplier; an ack that waited in the socket still counts', () => {
    const a = new Swim({ self: { id: 'a', name: 'a', addresses: [] }, config: lanConfig, rng: seededRng(4) })
    for (const id of ['b', 'c', 'd']) {
      a.handleMessage(
        id,
        encodeMessage({ t: 'alive', inc: 1, rec: encodeRecord(record(id)), sig: new Uint8Array() }),
        0,
      )
    }
    const events: SwimEvent[] = []
    let pings: { to: string; seq: number }[] = []
    const run = (o: Output) => {
      events.push(...o.events)
      for (const s of o.send) {
        const r = decodeMessage(s.msg, lanConfig.maxMessageBytes)
        if (!r.ok) continue
        for (const p of r.msg.t === 'compound' ? r.msg.parts : [r.msg])
          if (p.t === 'ping') pings.push({ to: s.to, seq: p.seq })
      }
    }
    run(a.start(0))
    let maxHealth = 0
    for (let i = 0; i < 40; i++) {
      // This node barely runs: every timer fires 400 ms late, before the socket is read ...
      const now = a.nextDeadline() + 400
      run(a.tick(now))
      maxHealth = Math.max(maxHealth, a.stats().localHealth)
      // ... then the acks that arrived meanwhile are read.
      const answered = pings
      pings = []
      for (const p of answered) run(a.handleMessage(p.to, encodeMessage({ t: 'ack', seq: p.seq }), now))
    }
    expect(events.filter((e) => e.type === 'member:suspect')).toEqual([])
    expect(a.stats().probes).toBeGreaterThan(5)
    expect(a.stats().lateTimers).toBeGreaterThan(5)
    // Raised by each late period, lowered by each ack (the acks do arrive): never pegged.
    expect(maxHealth).toBeGreaterThan(0)
    expect(maxHealth).toBeLessThan(lanConfig.awarenessMaxMultiplier - 1)
  })

  it('a suspicion ending in a late tick waits 1 ms for the refutation in the socket; on time, it ends', () => {
    const alive = (id: string, inc: number) =>
      encodeMessage({ t: 'alive', inc, rec: encodeRecord(record(id)), sig: new Uint8Array() })
    const run = (late: boolean) => {
      const a = new Swim({
        self: { id: 'a', name: 'a', addresses: [] },
        config: lanConfig,
        rng: seededRng(5),
      })
      for (const id of ['b', 'c', 'd', 'x']) a.handleMessage(id, alive(id, 1), 0)
      const events: SwimEvent[] = []
      const take = (o: Output, now: number) => {
        events.push(...o.events)
        // Every member answers every probe: nobody else is accused.
        for (const { to, msg } of o.send) {
          const r = decodeMessage(msg, lanConfig.maxMessageBytes)
          if (!r.ok) continue
          for (const p of r.msg.t === 'compound' ? r.msg.parts : [r.msg])
            if (p.t === 'ping') take(a.handleMessage(to, encodeMessage({ t: 'ack', seq: p.seq }), now), now)
        }
      }
      take(a.start(0), 0)
      take(a.handleMessage('b', encodeMessage({ t: 'suspect', id: 'x', inc: 1, from: 'b' }), 1), 1)
      expect(a.member('x')?.status).toBe('suspect')
      // Lifeguard §IV-B: 5 members, k = 2, no confirmation: the maximum timeout.
      const minMs = suspicionMinTimeout(lanConfig.suspicionMult, 5, lanConfig.probeIntervalMs)
      const deadline = 1 + remainingSuspicionTime(0, 2, 0, minMs, lanConfig.suspicionMaxTimeoutMult * minMs)
      // Every timer on time until the suspicion's end ...
      while (a.nextDeadline() < deadline) {
        const due = a.nextDeadline()
        take(a.tick(due), due)
      }
      expect(a.member('x')?.status).toBe('suspect')
      // ... whose tick fires on time, or 400 ms late (this node was not running) ...
      const at = late ? deadline + 400 : deadline
      take(a.tick(at), at)
      // ... while x's refutation waited in the socket; the driver reads it before the next tick.
      take(a.handleMessage('x', alive('x', 2), at), at)
      take(a.tick(at + 1), at + 1)
      return { a, fails: events.filter((e) => e.type === 'member:fail').map((e) => e.member.id) }
    }
    const late = run(true)
    expect(late.fails).toEqual([])
    expect(late.a.member('x')).toMatchObject({ status: 'alive', incarnation: 2 })
    expect(run(false).fails).toEqual(['x'])
  })
})

describe('SWIM §4.4 join: a reply cut at the per-exchange caps is caught up soon', () => {
  it('a joiner learns a 3,000-member state in a few exchanges, not at the next push/pull period', () => {
    const a = new Swim({ self: { id: 'a', name: 'a', addresses: [] }, config: lanConfig, rng: seededRng(8) })
    const members: StateEntry[] = []
    const rec = (id: string) => encodeRecord(record(id))
    for (let i = 0; i < 3_000; i++)
      members.push({ id: `w${i}`, st: 'alive', inc: 1, ri: 1, rec: rec(`w${i}`), sig: new Uint8Array() })
    const state = encodePushPull({ t: 'state', join: false, members })
    let now = 0
    a.join(['seed'], now)
    let asks = 0
    let out = a.handlePushPullReply('seed', state, now)
    while (a.estimatedSize() < 1 + 3_000 && now < 10_000) {
      for (const p of out.pushPull) {
        if (p.to !== 'seed') continue
        asks++
        out = a.handlePushPullReply('seed', state, now)
        break
      }
      now = a.nextDeadline()
      out = a.tick(now)
    }
    expect(a.estimatedSize()).toBe(1 + 3_000)
    expect(asks).toBe(2) // 1,024 + 1,024 + 952
    expect(now).toBeLessThan(5_000)
  })
})
