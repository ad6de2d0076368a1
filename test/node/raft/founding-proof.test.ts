import { randomBytes, randomUUID } from 'node:crypto'
import pino from 'pino'
import { describe, expect, it } from 'vitest'
import { pack } from '../../../src/common/msgpack.ts'
import { BootstrapExpect } from '../../../src/node/raft/bootstrap-expect.ts'
import {
  BadFoundingMessageError,
  decodeFoundingReply,
  decodeFoundingRequest,
  encodeFoundingReply,
  encodeFoundingRequest,
  FounderCredential,
  FounderTokenMissingError,
  FoundingAcceptor,
  type FoundingReply,
  type FoundingRequest,
  founderProof,
  MemoryFoundingRecord,
  verifyFounderProof,
} from '../../../src/node/raft/founding.ts'
import { SeededRng } from '../../sim/rng.ts'
import { VirtualClock } from '../../sim/virtual-clock.ts'
import { names, SimCluster } from './founding-sim.ts'

/**
 * Issue #12: with ACLs on, founders prove they hold the initial management token
 * (founding.ts, "Who may found"); a plain joiner is never a founder, whatever its peer id.
 */

const log = pino({ level: 'silent' })
const TOKEN = randomUUID()
const OTHER_TOKEN = randomUUID()

describe('founder proofs (pure)', () => {
  const proofB = founderProof(TOKEN, 'b')
  it.each([
    { what: 'the proof of b, checked for b', token: TOKEN, id: 'b', proof: proofB, want: true },
    { what: 'replayed as the proof of a', token: TOKEN, id: 'a', proof: proofB, want: false },
    { what: 'checked with another token', token: OTHER_TOKEN, id: 'b', proof: proofB, want: false },
    {
      what: 'forged (random bytes)',
      token: TOKEN,
      id: 'b',
      proof: new Uint8Array(randomBytes(32)),
      want: false,
    },
    { what: 'one bit flipped', token: TOKEN, id: 'b', proof: flip(proofB), want: false },
    { what: 'truncated', token: TOKEN, id: 'b', proof: proofB.subarray(0, 31), want: false },
    { what: 'absent', token: TOKEN, id: 'b', proof: undefined, want: false },
  ])('$what -> $want', ({ token, id, proof, want }) => {
    expect(verifyFounderProof(token, id, proof)).toBe(want)
  })

  it('is HMAC-SHA256 over the versioned context and the peer id', () => {
    expect(founderProof(TOKEN, 'b')).toHaveLength(32)
    expect(founderProof(TOKEN, 'b')).toEqual(founderProof(TOKEN, 'b'))
    expect(founderProof(TOKEN, 'b')).not.toEqual(founderProof(OTHER_TOKEN, 'b'))
    // The NUL separator: "peermesh-founder/1\0" + id, so no id can borrow the context's bytes.
    expect(founderProof(TOKEN, 'b')).not.toEqual(founderProof(TOKEN, '\0b'))
  })

  it('an agent without a token proves nothing and verifies nothing', () => {
    const none = new FounderCredential('a', undefined)
    expect(none.own).toBeUndefined()
    expect(none.holdsToken).toBe(false)
    expect(none.verify('b', proofB)).toBe(false)
    expect(new FounderCredential('b', TOKEN).own).toEqual(proofB)
  })
})

function flip(p: Uint8Array): Uint8Array {
  const q = new Uint8Array(p)
  q[0] = (q[0] ?? 0) ^ 1
  return q
}

describe('FoundingAcceptor with ACLs on (a set naming the acceptor needs every member proved)', () => {
  const S = ['a', 'b', 'c']
  const proofs = S.map((id) => founderProof(TOKEN, id))
  function acceptor(self: string, token: string | undefined) {
    const record = new MemoryFoundingRecord()
    const credential = new FounderCredential(self, token)
    return {
      record,
      a: new FoundingAcceptor(self, { raft: () => ({ state: false }), record }, 1000, credential),
    }
  }

  it('promises and commits a set whose members all prove the token; its replies carry its proof', () => {
    const { a, record } = acceptor('b', TOKEN)
    const r = a.handle({ op: 'prepare', set: S, proofs }, 0)
    expect(r.promised).toEqual(S)
    expect(r.proof).toEqual(founderProof(TOKEN, 'b'))
    expect(a.handle({ op: 'commit', set: S, witnesses: S, proofs }, 1).committed?.set).toEqual(S)
    expect(record.load()?.set).toEqual(S)
  })

  it.each([
    ['no proofs', undefined],
    ['a forged proof for a', [new Uint8Array(randomBytes(32)), proofs[1]!, proofs[2]!]],
    ["b's proof replayed for a", [proofs[1]!, proofs[1]!, proofs[2]!]],
    ['proofs under another token', S.map((id) => founderProof(OTHER_TOKEN, id))],
  ])('refuses a set naming it with %s: no promise, no commitment', (_what, bad) => {
    const { a, record } = acceptor('b', TOKEN)
    const req = { set: S, ...(bad !== undefined ? { proofs: bad } : {}) }
    expect(a.handle({ op: 'prepare', ...req }, 0).promised).toBeUndefined()
    expect(a.handle({ op: 'commit', witnesses: S, ...req }, 1).committed).toBeUndefined()
    expect(record.load()).toBeUndefined()
  })

  it('an acceptor without the token (a plain joiner) never accepts a set naming itself', () => {
    const { a, record } = acceptor('a', undefined)
    expect(a.handle({ op: 'prepare', set: S, proofs }, 0)).toEqual({ state: false })
    expect(a.handle({ op: 'commit', set: S, witnesses: S, proofs }, 1).committed).toBeUndefined()
    expect(record.load()).toBeUndefined()
  })

  it('without the token it does not judge a set not naming itself (it cannot); with the token it does', () => {
    const T = ['b', 'c', 'd']
    const { a } = acceptor('a', undefined)
    expect(a.handle({ op: 'prepare', set: T }, 0).promised).toEqual(T)
    expect(a.handle({ op: 'commit', set: T, witnesses: ['a', ...T] }, 1).committed?.set).toEqual(T)
    // A token holder is never tied, even as a witness, to a set whose members do not all prove it.
    const { a: d, record } = acceptor('d', TOKEN)
    expect(d.handle({ op: 'prepare', set: S }, 0).promised).toBeUndefined()
    expect(d.handle({ op: 'commit', set: S, witnesses: [...S, 'd'] }, 1).committed).toBeUndefined()
    expect(d.handle({ op: 'commit', set: S, witnesses: [...S, 'd'], proofs }, 2).committed?.set).toEqual(S)
    expect(record.load()?.set).toEqual(S)
  })
})

describe('founding wire format: proofs (hostile input)', () => {
  const p = founderProof(TOKEN, 'a')
  it('round-trips proofs in requests and replies', () => {
    const reqs: FoundingRequest[] = [
      { op: 'prepare', set: ['a', 'b'], proofs: [p, p] },
      { op: 'commit', set: ['a'], witnesses: ['a', 'b'], proofs: [p] },
    ]
    for (const r of reqs) expect(decodeFoundingRequest(encodeFoundingRequest(r))).toEqual(r)
    const reply: FoundingReply = { state: false, proof: p }
    expect(decodeFoundingReply(encodeFoundingReply(reply))).toEqual(reply)
  })

  it.each([
    ['one proof short', pack({ v: 1, op: 'prepare', set: ['a', 'b'], proofs: [p] })],
    ['a short proof', pack({ v: 1, op: 'prepare', set: ['a'], proofs: [p.subarray(0, 16)] })],
    ['a string proof', pack({ v: 1, op: 'prepare', set: ['a'], proofs: ['x'.repeat(32)] })],
    ['proofs not a list', pack({ v: 1, op: 'commit', set: ['a'], witnesses: ['a'], proofs: p })],
  ])('refuses a request with %s', (_what, bytes) => {
    expect(() => decodeFoundingRequest(bytes)).toThrow(BadFoundingMessageError)
  })

  it('refuses a reply whose proof is not 32 bytes', () => {
    expect(() => decodeFoundingReply(pack({ v: 1, state: false, proof: p.subarray(1) }))).toThrow(
      BadFoundingMessageError,
    )
    expect(() => decodeFoundingReply(pack({ v: 1, state: false, proof: 'x' }))).toThrow(
      BadFoundingMessageError,
    )
  })
})

describe('BootstrapExpect with ACLs on', () => {
  const node = { id: 'a', status: () => ({ term: 0, lastIndex: 0 }), bootstrap: () => {} }
  const base = { node, members: { members: () => [] }, clock: new VirtualClock(), log }

  it('refuses --bootstrap-expect without an initial management token (it could never found)', () => {
    let err: unknown
    try {
      new BootstrapExpect(
        { ...base, founderAuth: { initialManagementToken: undefined } },
        { expect: 3, checkMs: 100 },
      )
    } catch (e) {
      err = e
    }
    expect((err as { code?: string }).code).toBe(FounderTokenMissingError.code)
    // Without --bootstrap-expect it only answers: fine.
    expect(
      () =>
        new BootstrapExpect(
          { ...base, founderAuth: { initialManagementToken: undefined } },
          { expect: undefined, checkMs: 100 },
        ),
    ).not.toThrow()
  })
})

describe('founding with ACLs on, simulated (virtual clock, loss, reordering)', () => {
  const faults = { loss: 0.1, duplicate: 0.1, maxDelayMs: 200, healAt: 5_000 }

  it('3 token holders and a plain joiner (no token) whose id sorts first: the 3 found, 20 seeds', async () => {
    for (let seed = 1; seed <= 20; seed++) {
      const rng = new SeededRng(4000 + seed)
      const sim = new SimCluster(rng, faults, () => true, true)
      const plain = sim.add('a', undefined) // ACLs on, no token: cannot use --bootstrap-expect
      const eligible = ['b', 'c', 'd'].map((id) => sim.add(id, 3, TOKEN))
      const order = rng.chance(0.5) ? [plain, ...eligible] : [...eligible, plain]
      for (const a of order) {
        await sim.run(rng.int(500))
        await sim.start(a)
        sim.meet(a, 1_000)
      }
      await sim.run(20_000)
      expect([...sim.writtenSets], `seed ${seed}`).toEqual(['b,c,d'])
      for (const a of eligible) expect(a.written, `seed ${seed} ${a.id}`).toEqual(['b', 'c', 'd'])
      expect(plain.written).toBeUndefined()
      await sim.stopAll()
    }
  })

  it('a joiner with another token and --bootstrap-expect 3, id sorting first: never a founder, never blocks', async () => {
    for (let seed = 1; seed <= 10; seed++) {
      const rng = new SeededRng(5000 + seed)
      const sim = new SimCluster(rng, faults, () => true, true)
      const other = sim.add('a', 3, OTHER_TOKEN)
      const eligible = ['b', 'c', 'd'].map((id) => sim.add(id, 3, TOKEN))
      for (const a of [other, ...eligible]) {
        await sim.run(rng.int(500))
        await sim.start(a)
        sim.meet(a, 1_000)
      }
      await sim.run(20_000)
      expect([...sim.writtenSets], `seed ${seed}`).toEqual(['b,c,d'])
      expect(other.written).toBeUndefined()
      await sim.stopAll()
    }
  })

  it('token holders starting at random times under loss and restarts (promises forgotten, proofs asked again): at most one founder set, 20 seeds', async () => {
    let founded = 0
    for (let seed = 1; seed <= 20; seed++) {
      const rng = new SeededRng(7000 + seed)
      const sim = new SimCluster(
        rng,
        { loss: 0.3, duplicate: 0.2, maxDelayMs: 800, healAt: 10_000 },
        () => true,
        true,
      )
      const agents = names(rng, 3 + rng.int(3)).map((id) => sim.add(id, 3, TOKEN))
      const plain = sim.add('a', undefined)
      for (const a of [plain, ...agents]) {
        await sim.run(rng.int(1_500))
        await sim.start(a)
        sim.meet(a, 1_500)
      }
      for (let i = 0; i < 5; i++) {
        await sim.run(500 + rng.int(2_000))
        const victim = agents[rng.int(agents.length)]!
        if (!victim.state) await sim.start(victim)
      }
      await sim.run(30_000)
      expect(sim.writtenSets.size, `seed ${seed}`).toBeLessThanOrEqual(1)
      expect(plain.written).toBeUndefined()
      for (const set of sim.writtenSets) expect(set.split(','), `seed ${seed}`).not.toContain('a')
      founded += sim.writtenSets.size
      await sim.stopAll()
    }
    expect(founded).toBeGreaterThan(15)
  })

  it('a hostile key holder with the lowest id, forging or replaying proofs, is never a founder and cannot make founders commit to it', async () => {
    for (const mode of ['forged', 'replayed'] as const) {
      const rng = new SeededRng(6000)
      const sim = new SimCluster(rng, { ...faults, loss: 0, duplicate: 0, healAt: 0 }, () => true, true)
      const eligible = ['b', 'c', 'd'].map((id) => sim.add(id, 3, TOKEN))
      // 'a' answers every request as an empty agent with a proof it cannot have made: random
      // bytes, or b's own proof (which any key holder can ask b for) passed off as its own.
      const hostileProof = mode === 'forged' ? new Uint8Array(randomBytes(32)) : founderProof(TOKEN, 'b')
      sim.serveAs('a', () => ({ state: false, proof: hostileProof }))
      const hostile = sim.add('a', undefined)
      sim.meet(hostile, 1)
      for (const a of eligible) {
        await sim.start(a)
        sim.meet(a, 100)
      }
      // Before they found, it asks b, c, d to promise and commit {a, b, c} with the proofs it has:
      // its own (forged or replayed) and b's and c's, fetched from them with a status request.
      const ask = (to: string, req: FoundingRequest) =>
        sim.channel('a').request(to, req, { signal: AbortSignal.timeout(60_000) })
      const pending: Promise<FoundingReply>[] = []
      for (const to of ['b', 'c', 'd']) {
        const set = ['a', 'b', 'c']
        const proofs = [hostileProof, founderProof(TOKEN, 'b'), founderProof(TOKEN, 'c')]
        pending.push(ask(to, { op: 'prepare', set, proofs }))
        pending.push(ask(to, { op: 'commit', set, witnesses: ['a', 'b', 'c', 'd'], proofs }))
      }
      await sim.run(100)
      const replies = await Promise.all(pending)
      for (const r of replies) expect(r.committed?.set ?? []).not.toContain('a')
      await sim.run(20_000)
      expect([...sim.writtenSets], mode).toEqual(['b,c,d'])
      await sim.stopAll()
    }
  })
})
