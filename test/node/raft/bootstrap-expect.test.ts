import pino from 'pino'
import { describe, expect, it } from 'vitest'
import { pack } from '../../../src/common/msgpack.ts'
import { RAFT_DEFAULTS } from '../../../src/node/agent/defaults.ts'
import { BootstrapExpect } from '../../../src/node/raft/bootstrap-expect.ts'
import { sharedIntervals } from '../../../src/common/shared-intervals.ts'
import {
  BadFoundingMessageError,
  chooseFounders,
  decodeFoundingReply,
  decodeFoundingRequest,
  encodeFoundingReply,
  encodeFoundingRequest,
  FoundingAcceptor,
  type FoundingReply,
  type FoundingRequest,
  MAX_FOUNDING_BYTES,
  MemoryFoundingRecord,
} from '../../../src/node/raft/founding.ts'
import { SeededRng } from '../../sim/rng.ts'
import { names, type SimAgent, SimCluster } from './founding-sim.ts'
import { VirtualClock } from '../../sim/virtual-clock.ts'

const log = pino({ level: 'silent' })

// ---- pure parts --------------------------------------------------------------------------------

describe('chooseFounders', () => {
  it.each([
    { alive: ['c', 'a', 'b', 'd'], n: 3, want: ['a', 'b', 'c'] },
    { alive: ['c', 'a'], n: 3, want: undefined },
    { alive: ['a', 'a', 'b'], n: 3, want: undefined },
    { alive: ['a', 'b', 'c', 'd'], n: 3, eligible: (id: string) => id !== 'a', want: ['b', 'c', 'd'] },
    { alive: ['a', 'b', 'c'], n: 3, eligible: (id: string) => id !== 'a', want: undefined },
  ])('$alive, N=$n -> $want', ({ alive, n, eligible, want }) => {
    expect(chooseFounders(alive, eligible ?? (() => true), n)).toEqual(want)
  })
})

describe('FoundingAcceptor', () => {
  function acceptor(raft: { state: boolean; leader?: string } = { state: false }) {
    const record = new MemoryFoundingRecord()
    return { record, a: new FoundingAcceptor('b', { raft: () => raft, record }, 1000) }
  }
  const S = ['a', 'b', 'c']
  const T = ['b', 'c', 'd']

  it('promises one set at a time, renews it, and frees it after promiseMs', () => {
    const { a } = acceptor()
    expect(a.handle({ op: 'prepare', set: S }, 0).promised).toEqual(S)
    expect(a.handle({ op: 'prepare', set: T }, 500).promised).toEqual(S)
    expect(a.handle({ op: 'prepare', set: S }, 900).promised).toEqual(S) // renewed until 1900
    expect(a.handle({ op: 'prepare', set: T }, 1800).promised).toEqual(S)
    expect(a.handle({ op: 'prepare', set: T }, 1900).promised).toEqual(T)
  })

  it('commits durably and forever; refuses a commit under another promise or without being a witness', () => {
    const { a, record } = acceptor()
    a.handle({ op: 'prepare', set: S }, 0)
    expect(a.handle({ op: 'commit', set: T, witnesses: ['a', 'b', 'c', 'd'] }, 10).committed).toBeUndefined()
    expect(a.handle({ op: 'commit', set: S, witnesses: ['a', 'c'] }, 10).committed).toBeUndefined()
    expect(a.handle({ op: 'commit', set: S, witnesses: S }, 10).committed).toEqual({ set: S, witnesses: S })
    expect(record.load()).toEqual({ set: S, witnesses: S })
    // Never anything else afterwards, promises included, even long after.
    expect(a.handle({ op: 'prepare', set: T }, 1e9)).toEqual({
      state: false,
      committed: { set: S, witnesses: S },
    })
    expect(a.handle({ op: 'commit', set: T, witnesses: T }, 1e9).committed?.set).toEqual(S)
  })

  it('a commit without any live promise is accepted (promises only steer liveness)', () => {
    const { a } = acceptor()
    expect(a.handle({ op: 'commit', set: S, witnesses: S }, 0).committed?.set).toEqual(S)
  })

  it('with raft state or a known leader: neither promises nor commits, and says so', () => {
    for (const raft of [{ state: true }, { state: false, leader: 'x' }]) {
      const { a, record } = acceptor(raft)
      expect(a.handle({ op: 'prepare', set: S }, 0)).toEqual(raft)
      expect(a.handle({ op: 'commit', set: S, witnesses: S }, 0)).toEqual(raft)
      expect(record.load()).toBeUndefined()
    }
  })
})

describe('founding wire format (hostile input)', () => {
  const ok: FoundingRequest[] = [
    { op: 'status' },
    { op: 'prepare', set: ['a', 'b'] },
    { op: 'commit', set: ['a', 'b'], witnesses: ['c', 'b', 'a'] },
  ]
  it('round-trips requests and replies', () => {
    for (const r of ok) expect(decodeFoundingRequest(encodeFoundingRequest(r))).toEqual(r)
    const reply: FoundingReply = {
      state: true,
      leader: 'a',
      promised: ['a', 'b'],
      committed: { set: ['a'], witnesses: ['a', 'b'] },
    }
    expect(decodeFoundingReply(encodeFoundingReply(reply))).toEqual(reply)
  })

  it.each([
    ['not msgpack', new Uint8Array([0xc1])],
    ['not a map', pack([1, 2])],
    ['no version', pack({ op: 'status' })],
    ['unknown op', pack({ v: 1, op: 'found' })],
    ['unsorted set', pack({ v: 1, op: 'prepare', set: ['b', 'a'] })],
    ['duplicate ids', pack({ v: 1, op: 'prepare', set: ['a', 'a'] })],
    ['empty set', pack({ v: 1, op: 'prepare', set: [] })],
    ['non-string id', pack({ v: 1, op: 'prepare', set: [1] })],
    ['long id', pack({ v: 1, op: 'prepare', set: ['x'.repeat(200)] })],
    ['set outside witnesses', pack({ v: 1, op: 'commit', set: ['a', 'z'], witnesses: ['a', 'b'] })],
    [
      'too many ids',
      pack({ v: 1, op: 'prepare', set: Array.from({ length: 600 }, (_, i) => `n${1000 + i}`) }),
    ],
    ['too large', new Uint8Array(MAX_FOUNDING_BYTES + 1)],
    ['extension type', new Uint8Array([0xd4, 0x01, 0x00])],
  ])('refuses a request: %s', (_what, bytes) => {
    let err: unknown
    try {
      decodeFoundingRequest(bytes)
    } catch (e) {
      err = e
    }
    expect((err as { code?: string }).code).toBe(BadFoundingMessageError.code)
  })

  it('refuses malformed replies', () => {
    for (const bytes of [
      pack({ v: 1 }),
      pack({ v: 1, state: 'yes' }),
      pack({ v: 1, state: false, committed: 'x' }),
      pack({ v: 1, state: false, committed: { set: ['b'], witnesses: ['a'] } }),
      pack({ v: 1, state: false, leader: 7 }),
    ])
      expect(() => decodeFoundingReply(bytes)).toThrow(BadFoundingMessageError)
  })
})

// ---- simulation --------------------------------------------------------------------------------

const SEEDS = Number(process.env.FOUNDING_SEEDS ?? 60)

describe('founding protocol, simulated (virtual clock, loss, reordering, late joiners)', () => {
  it(`N eligible agents starting at random times: one founder set, written by all of it (${SEEDS} seeds)`, async () => {
    for (let seed = 1; seed <= SEEDS; seed++) {
      const rng = new SeededRng(seed)
      const sim = new SimCluster(rng, { loss: 0.2, duplicate: 0.1, maxDelayMs: 400, healAt: 6_000 })
      const count = 3 + rng.int(3) // 3..5 agents, all with --bootstrap-expect 3
      const agents = names(rng, count).map((id) => sim.add(id, 3))
      for (const a of agents) {
        await sim.run(rng.int(1_500)) // started one after another: low ids may appear mid-way
        await sim.start(a)
        sim.meet(a, 1_500)
      }
      await sim.run(30_000)
      expect(sim.writtenSets.size, `seed ${seed}`).toBe(1)
      const founders = [...sim.writtenSets][0]!.split(',')
      expect(founders).toHaveLength(3)
      // Every founder wrote the same entries (all answer after the heal).
      for (const id of founders) expect(sim.agents.get(id)!.written, `seed ${seed} ${id}`).toEqual(founders)
      await sim.stopAll()
    }
  })

  const HARD_SEEDS = Math.ceil(SEEDS / 2)
  it(`never two founder sets under heavy loss, long delays and restarts that forget promises (${HARD_SEEDS} seeds)`, async () => {
    let founded = 0
    let skipped = 0
    let disjoint = 0
    for (let seed = 1; seed <= HARD_SEEDS; seed++) {
      const rng = new SeededRng(1000 + seed)
      // Round trips past the promise time: commits may find their promise gone or replaced, and
      // restarts forget promises. Safety must not care; after the heal most runs found.
      const sim = new SimCluster(rng, { loss: 0.3, duplicate: 0.3, maxDelayMs: 2_500, healAt: 20_000 })
      const agents = names(rng, 3 + rng.int(4)).map((id) => sim.add(id, 2 + rng.int(2)))
      for (const a of agents) {
        await sim.run(rng.int(3_000))
        await sim.start(a)
        sim.meet(a, 3_000, 0.25)
      }
      if (!sim.viewsOverlap()) {
        skipped++
        await sim.stopAll()
        continue
      }
      for (let i = 0; i < 10; i++) {
        await sim.run(1_000 + rng.int(3_000))
        const victim = agents[rng.int(agents.length)]!
        if (!victim.state) await sim.start(victim) // a restart: promises forgotten, commitment kept
      }
      await sim.run(20_000)
      // The premise of the safety argument is that the witness lists of two rounds share an agent,
      // i.e. the candidates' views overlapped when they founded (views only overlap in the end
      // above). Agents with different --bootstrap-expect values, and 2N agents or more, can found
      // in two groups that had not yet seen a common agent: founding.ts leaves that case out (as
      // Consul's bootstrap-expect does), and the audit after founding reports it. Such a run
      // is counted; any other run must have written at most one set.
      expect(sim.overlappingFoundings, `seed ${seed}: ${[...sim.writtenSets].join(' | ')}`).toBe(0)
      if (sim.disjointFoundings > 0) {
        disjoint++
      } else {
        expect(sim.writtenSets.size, `seed ${seed}`).toBeLessThanOrEqual(1)
        founded += sim.writtenSets.size
      }
      await sim.stopAll()
    }
    // Not a liveness test, but runs still found (so the check above is not vacuous), and runs
    // outside the premise stay rare.
    expect(founded).toBeGreaterThan(HARD_SEEDS / 4)
    expect(skipped + disjoint).toBeLessThan(HARD_SEEDS / 4)
  })

  it('3 eligible agents and a plain joiner whose id sorts first: the 3 eligible found', async () => {
    for (let seed = 1; seed <= 20; seed++) {
      const rng = new SeededRng(2000 + seed)
      const sim = new SimCluster(
        rng,
        { loss: 0.1, duplicate: 0.1, maxDelayMs: 200, healAt: 5_000 },
        (id) => id !== 'a',
      )
      const plain = sim.add('a', undefined) // no --bootstrap-expect, not voter-eligible
      const eligible = ['b', 'c', 'd'].map((id) => sim.add(id, 3))
      const order = rng.chance(0.5) ? [plain, ...eligible] : [...eligible, plain]
      for (const a of order) {
        await sim.run(rng.int(500))
        await sim.start(a)
        sim.meet(a, 1_000)
      }
      await sim.run(20_000)
      expect([...sim.writtenSets], `seed ${seed}`).toEqual(['b,c,d'])
      expect(plain.written).toBeUndefined()
      await sim.stopAll()
    }
  })

  it('a 4th and 5th agent with --bootstrap-expect 3 started after the cluster exists never found', async () => {
    for (let seed = 1; seed <= 20; seed++) {
      const rng = new SeededRng(3000 + seed)
      const sim = new SimCluster(rng, { loss: 0.1, duplicate: 0.1, maxDelayMs: 200, healAt: 5_000 })
      const first = ['m', 'n', 'o'].map((id) => sim.add(id, 3))
      for (const a of first) {
        await sim.start(a)
        sim.meet(a, 500)
      }
      await sim.run(15_000)
      expect([...sim.writtenSets]).toEqual(['m,n,o'])
      // Lower ids than every founder: under the old rule they would found {a, b, m}.
      for (const id of ['b', 'a']) {
        const late = sim.add(id, 3)
        await sim.start(late)
        sim.meet(late, 1_000)
        await sim.run(rng.int(20_000))
      }
      await sim.run(20_000)
      expect([...sim.writtenSets], `seed ${seed}`).toEqual(['m,n,o'])
      expect(sim.agents.get('a')!.written).toBeUndefined()
      expect(sim.agents.get('b')!.written).toBeUndefined()
      await sim.stopAll()
    }
  })

  it('does not found with Raft state present, nor when not among the founders, nor alone without peers', async () => {
    const clock = new VirtualClock()
    const founded: string[][] = []
    const make = (id: string, term: number, alive: string[]) =>
      new BootstrapExpect(
        {
          node: { id, status: () => ({ term, lastIndex: 0 }), bootstrap: (v) => founded.push([...v]) },
          members: {
            members: () => alive.map((m) => ({ id: m, name: m, address: '', status: 'alive' as const })),
          },
          clock,
          log,
        },
        { expect: 3, checkMs: 100 },
      )
    const stateful = make('a', 3, ['a', 'b', 'c'])
    const outsider = make('z', 0, ['a', 'b', 'c', 'z'])
    const lonely = make('a', 0, ['a', 'b', 'c']) // nobody to ask: never founds
    for (const b of [stateful, outsider, lonely]) await b.start()
    clock.advance(5_000)
    await new Promise((r) => setImmediate(r))
    clock.advance(5_000)
    expect(founded).toEqual([])
    for (const b of [stateful, outsider, lonely]) await b.stop()
  })

  it("once founded, looks for due audits on the Raft module's shared timer: no wake-up of its own", async () => {
    const clock = new VirtualClock()
    const shared = sharedIntervals(clock) // the Raft module's clock
    const stopAutopilot = shared.setInterval(() => {}, RAFT_DEFAULTS.autopilotIntervalMs)
    const record = new MemoryFoundingRecord()
    record.save({ set: ['a', 'b', 'c'], witnesses: ['a', 'b', 'c'] })
    const b = new BootstrapExpect(
      {
        node: { id: 'a', status: () => ({ term: 2, lastIndex: 3 }), bootstrap: () => {} },
        members: { members: () => [{ id: 'a', name: 'a', address: '', status: 'alive' as const }] },
        record,
        clock: shared,
        log,
      },
      { expect: 3, checkMs: 100 },
    )
    await b.start()
    clock.advance(1_000)
    await new Promise((r) => setImmediate(r))
    clock.advance(1_000)
    expect(b.commitment()?.set).toEqual(['a', 'b', 'c'])
    expect(clock.pending).toBe(1) // the one shared timer
    await b.stop()
    stopAutopilot()
  })

  it('refuses to serve when a founder it names reports another founding set', async () => {
    const sim = new SimCluster(new SeededRng(7), { loss: 0, duplicate: 0, maxDelayMs: 10, healAt: 0 })
    const [x, y, z] = ['x', 'y', 'z'].map((id) => sim.add(id, 3)) as [SimAgent, SimAgent, SimAgent]
    // y and z founded {w, y, z} (say by hand); x holds a commitment to {x, y, z} and wrote it.
    y.record.save({ set: ['w', 'y', 'z'], witnesses: ['w', 'y', 'z'] })
    z.record.save({ set: ['w', 'y', 'z'], witnesses: ['w', 'y', 'z'] })
    x.record.save({ set: ['x', 'y', 'z'], witnesses: ['x', 'y', 'z'] })
    for (const a of [x, y, z]) a.state = true
    for (const a of [x, y, z]) {
      await sim.start(a)
      sim.meet(a, 1)
    }
    await sim.run(5_000)
    expect(x.b!.refusing).toBe(true)
    expect(x.b!.stats.conflicts).toBeGreaterThan(0)
    expect(y.b!.refusing).toBe(false)
    await sim.stopAll()
  })

  it('two clusters founded apart that meet: the one whose founder set sorts after refuses to serve', async () => {
    const sim = new SimCluster(new SeededRng(8), { loss: 0, duplicate: 0, maxDelayMs: 10, healAt: 0 })
    const agents = ['p', 'q', 'r', 's'].map((id) => sim.add(id, 2))
    for (const a of agents) {
      const set = a.id < 'r' ? ['p', 'q'] : ['r', 's']
      a.record.save({ set, witnesses: set })
      a.state = true
      await sim.start(a)
      sim.meet(a, 1)
    }
    await sim.run(5_000)
    expect(agents.map((a) => a.b!.refusing)).toEqual([false, false, true, true])
    expect(agents.every((a) => a.b!.stats.conflicts > 0)).toBe(true)
    await sim.stopAll()
  })
})
