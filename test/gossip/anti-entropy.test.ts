/**
 * Push/pull anti-entropy (SWIM §4.2 repair, memberlist `pushPull`) as a digest check first: one
 * `sync` datagram each way, the full state exchange only when the states differ or no answer
 * comes. And an idle node schedules no gossip round when nothing is queued. Deterministic:
 * seeded RNGs, virtual time, every datagram routed by hand.
 */
import { describe, expect, it } from 'vitest'
import { seededRng } from '../../src/common/rng.ts'
import { decodeMessage, encodeMessage, packParts } from '../../src/gossip/codec.ts'
import { lanConfig } from '../../src/gossip/config.ts'
import type { DecodedSimpleMessage } from '../../src/gossip/messages.ts'
import { SimNetwork } from '../../src/gossip/sim-network.ts'
import { type Output, Swim } from '../../src/gossip/swim.ts'
import { signerOf, verifier } from './node-keys.ts'

const PUSH_PULL_MS = lanConfig.pushPullIntervalMs

/**
 * A few `Swim` cores with instant, lossless datagrams; push/pull requests are recorded and run
 * only when the test says so, and `keep` decides which messages of a datagram arrive.
 */
class Hand {
  readonly nodes = new Map<string, Swim>()
  readonly pushPulls: { from: string; to: string; state: Uint8Array }[] = []
  readonly syncs: { from: string; to: string; msg: DecodedSimpleMessage }[] = []
  keep: (from: string, to: string, part: DecodedSimpleMessage) => boolean = () => true
  now = 0

  add(id: string): Swim {
    const swim = new Swim({
      self: { id, name: id, addresses: [`sim://${id}`] },
      config: lanConfig,
      rng: seededRng(id.charCodeAt(0)),
      signer: signerOf(id),
      verifier,
    })
    this.nodes.set(id, swim)
    return swim
  }

  route(from: string, out: Output): void {
    for (const { to, msg } of out.send) {
      const r = decodeMessage(msg, lanConfig.maxMessageBytes)
      if (!r.ok) throw new Error(`undecodable datagram: ${r.reason}`)
      const parts = r.msg.t === 'compound' ? r.msg.parts : [r.msg]
      for (const p of parts) if (p.t === 'sync' || p.t === 'sync-ack') this.syncs.push({ from, to, msg: p })
      const kept = parts.filter((p) => this.keep(from, to, p))
      const node = this.nodes.get(to)
      if (node && kept.length > 0)
        this.route(to, node.handleMessage(from, packParts(kept.map(encodeMessage)), this.now))
    }
    for (const { to, state } of out.pushPull) this.pushPulls.push({ from, to, state })
  }

  /** Runs one recorded push/pull exchange to its end. */
  exchange(i: number): void {
    const { from, to, state } = this.pushPulls[i]!
    const res = this.nodes.get(to)!.handlePushPull(from, state, this.now)
    this.route(to, res)
    this.route(from, this.nodes.get(from)!.handlePushPullReply(to, res.reply!, this.now))
  }

  /** Advances virtual time in 1 ms steps, ticking every node at its deadline. */
  run(ms: number): void {
    for (const end = this.now + ms; this.now < end; this.now++) {
      for (const [id, n] of this.nodes) if (n.nextDeadline() <= this.now) this.route(id, n.tick(this.now))
    }
  }
}

/** Three members, joined through `a` with every exchange run, then quiet. */
function joined(): Hand {
  const h = new Hand()
  for (const id of ['a', 'b', 'c']) h.add(id)
  h.route('a', h.nodes.get('a')!.start(0))
  for (const id of ['b', 'c']) {
    h.route(id, h.nodes.get(id)!.join(['a'], 0))
    h.exchange(h.pushPulls.length - 1)
  }
  h.run(1_000)
  while (h.pushPulls.length > 0) {
    h.exchange(0)
    h.pushPulls.shift()
  }
  h.run(1_000)
  return h
}

describe('push/pull as a digest check first (anti-entropy)', () => {
  it('members holding the same states have equal digests; any change of status or record flips it', () => {
    const h = joined()
    const [a, b, c] = ['a', 'b', 'c'].map((id) => h.nodes.get(id)!)
    for (const o of [a!, b!, c!]) for (const t of ['a', 'b', 'c']) expect(o.member(t)?.status).toBe('alive')
    expect(a!.stateDigest()).toEqual(b!.stateDigest())
    expect(b!.stateDigest()).toEqual(c!.stateDigest())
    const before = c!.stateDigest().slice()
    h.route('c', c!.updateLocalRecord({ meta: { v: 2 } }, h.now))
    expect(c!.stateDigest()).not.toEqual(before)
  })

  it('an idle cluster exchanges digests only: every check matches, no state is sent', () => {
    const h = joined()
    h.pushPulls.length = 0
    h.syncs.length = 0
    const ids = ['a', 'b', 'c']
    const before = ids.map((id) => h.nodes.get(id)!.stats())
    h.run(6 * PUSH_PULL_MS)
    const stats = ids.map((id, i) => {
      const s = h.nodes.get(id)!.stats()
      return {
        syncs: s.stateSyncs - before[i]!.stateSyncs,
        matches: s.stateSyncMatches - before[i]!.stateSyncMatches,
      }
    })
    // Each member starts one check per push/pull period.
    for (const s of stats) expect(s.syncs).toBeGreaterThanOrEqual(5)
    const syncs = stats.reduce((x, s) => x + s.syncs, 0)
    const matched = stats.reduce((x, s) => x + s.matches, 0)
    expect(matched).toBe(syncs)
    expect(h.syncs.filter((s) => s.msg.t === 'sync')).toHaveLength(syncs)
    expect(h.syncs.filter((s) => s.msg.t === 'sync-ack')).toHaveLength(syncs)
    expect(h.pushPulls).toEqual([])
  })

  it('states that differ are exchanged in full over the reliable path, after which the digests agree', () => {
    const h = joined()
    // `d` joined through `a`; gossip about d never reaches b and c (and d answers probes).
    h.keep = (_from, to, p) => to === 'a' || to === 'd' || p.t !== 'alive' || p.record.id !== 'd'
    const d = h.add('d')
    h.route('d', d.join(['a'], h.now))
    h.exchange(h.pushPulls.length - 1)
    h.pushPulls.length = 0
    const a = h.nodes.get('a')!
    expect(a.member('d')?.status).toBe('alive')
    expect(h.nodes.get('b')!.member('d')).toBeUndefined()
    expect(a.stateDigest()).not.toEqual(h.nodes.get('b')!.stateDigest())
    // Run until a's periodic check goes out (to b, c or d) and its answer comes back.
    const checksBefore = a.stats().stateSyncs
    while (a.stats().stateSyncs === checksBefore) h.run(10)
    const from = h.pushPulls[0]?.from
    const to = h.pushPulls[0]?.to
    expect(h.pushPulls).toHaveLength(1)
    expect(from).toBe('a')
    h.exchange(0)
    expect(h.nodes.get(to!)!.member('d')?.status).toBe('alive')
    expect(h.nodes.get(to!)!.stateDigest()).toEqual(a.stateDigest())
  })

  it('without an answer the full exchange runs after three protocol periods; an answer from another sender does not count', () => {
    const h = joined()
    const a = h.nodes.get('a')!
    h.pushPulls.length = 0
    let asked: string | undefined
    // Every answer to a's check is lost; a copy claims to come from the third member.
    h.keep = (from, to, p) => {
      if (p.t !== 'sync-ack' || to !== 'a') return true
      const other = ['b', 'c'].find((x) => x !== from)!
      const forged = a.handleMessage(other, encodeMessage(p), h.now)
      expect(forged.pushPull).toEqual([])
      asked = from
      return false
    }
    const senderDrops = a.stats().dropped.sender
    while (asked === undefined) h.run(10)
    expect(a.stats().dropped.sender).toBe(senderDrops + 1)
    expect(h.pushPulls).toEqual([])
    h.run(3 * lanConfig.probeIntervalMs - 20)
    expect(h.pushPulls).toEqual([])
    h.run(40)
    expect(h.pushPulls.map((p) => [p.from, p.to])).toEqual([['a', asked]])
    expect(a.stats().stateSyncMatches).toBe(0)
  })
})

describe('an idle cluster', () => {
  it('a converged, quiet 20-member cluster gossips nothing and sends only probes and digest checks', () => {
    const sim = new SimNetwork({ seed: 21, config: lanConfig })
    const ids = Array.from({ length: 20 }, (_, i) => `n${i}`)
    sim.bootstrapConverged(ids)
    sim.runFor(2_000) // the start's own alive messages are disseminated
    const before = ids.map((id) => sim.node(id).stats())
    for (const id of ids) expect(sim.node(id).pendingBroadcasts()).toBe(0)
    const pushPulls = sim.totals.pushPulls
    sim.runFor(60_000)
    for (const [i, id] of ids.entries()) {
      const s = sim.node(id).stats()
      // Nothing to disseminate: no update piggybacked or gossiped, and no full state sent.
      expect(s.updatesSent - before[i]!.updatesSent).toBe(0)
      expect(s.probeFailures - before[i]!.probeFailures).toBe(0)
      // Datagrams: each probe's ping and ack (its own and those it answers) and the digest checks.
      const sent = s.messagesSent - before[i]!.messagesSent
      const probes = s.probes - before[i]!.probes
      expect(sent).toBeLessThanOrEqual(3 * probes)
    }
    expect(sim.totals.pushPulls).toBe(pushPulls)
  })
})

describe('a node alone', () => {
  it('does not wake for gossip rounds while it has nobody to gossip to, and gossips once a member comes', () => {
    const hand = new Hand()
    const a = hand.add('a')
    hand.route('a', a.start(0)) // its own alive message is queued, with no member to send it to
    expect(a.pendingBroadcasts()).toBeGreaterThan(0)
    // Every wake-up for 10 s: only the probe timer (and anti-entropy's, about once), not a gossip
    // round every gossipIntervalMs as well (269 wake-ups before; 69 now).
    let wakeUps = 0
    for (;;) {
      const at = a.nextDeadline()
      if (at > 10_000) break
      hand.now = at
      hand.route('a', a.tick(at))
      wakeUps++
    }
    expect(wakeUps).toBeLessThanOrEqual(Math.ceil(10_000 / lanConfig.probeIntervalMs) + 5)
    // A member joins: the queued updates go out again.
    const b = hand.add('b')
    hand.now = 10_000
    hand.route('b', b.join(['a'], hand.now))
    hand.exchange(hand.pushPulls.length - 1) // b's join: a learns of b
    expect(a.pendingBroadcasts()).toBeGreaterThan(0)
    expect(a.nextDeadline()).toBe(hand.now) // a gossip round at once
  })
})
