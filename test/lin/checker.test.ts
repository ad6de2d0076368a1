import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { SeededRng } from '../sim/rng.ts'
import {
  type CheckResult,
  checkLinearizable,
  type KvInput,
  type KvOutput,
  kvModel,
  type Model,
  type Operation,
} from './checker.ts'

type KvOp = Operation<KvInput, KvOutput>
const PENDING = Number.POSITIVE_INFINITY

const put = (clientId: number, key: string, value: string, call: number, ret: number): KvOp => ({
  clientId,
  input: { op: 'put', key, value },
  output: 'ok',
  call,
  return: ret,
})
const get = (clientId: number, key: string, output: string | null, call: number, ret: number): KvOp => ({
  clientId,
  input: { op: 'get', key },
  output,
  call,
  return: ret,
})
const cas = (
  clientId: number,
  key: string,
  expected: string | null,
  value: string,
  output: boolean,
  call: number,
  ret: number,
): KvOp => ({ clientId, input: { op: 'cas', key, expected, value }, output, call, return: ret })

const check = (history: KvOp[]): CheckResult<KvInput, KvOutput> => checkLinearizable(kvModel, history)

/** The model with partitioning turned off, to check whole histories as one search. */
const kvUnpartitioned: Model<Record<string, string>, KvInput, KvOutput> = { ...kvModel, partition: undefined }

describe('linearizability checker, key-value register (Wing & Gong, Porcupine)', () => {
  it('accepts the empty history and a sequential one', () => {
    expect(check([]).ok).toBe(true)
    const history = [
      get(1, 'x', null, 0, 1),
      put(1, 'x', 'a', 2, 3),
      get(2, 'x', 'a', 4, 5),
      put(2, 'x', 'b', 6, 7),
      get(1, 'x', 'b', 8, 9),
      cas(1, 'x', 'b', 'c', true, 10, 11),
      cas(2, 'x', 'b', 'd', false, 12, 13),
      get(2, 'x', 'c', 14, 15),
    ]
    expect(check(history).ok).toBe(true)
    expect(checkLinearizable(kvUnpartitioned, history).ok).toBe(true)
  })

  it('accepts a read overlapping two concurrent writes seeing either value', () => {
    for (const seen of ['a', 'b']) {
      const history = [put(1, 'x', 'a', 0, 10), put(2, 'x', 'b', 2, 12), get(3, 'x', seen, 5, 15)]
      expect(check(history).ok).toBe(true)
    }
    // A read overlapping only the first write may also see the initial state.
    expect(check([put(1, 'x', 'a', 0, 10), get(3, 'x', null, 1, 2)]).ok).toBe(true)
  })

  it('accepts two reads that disagree while a write is in flight, in the right order only', () => {
    // Reads strictly ordered in time; the write overlaps both.
    expect(check([put(1, 'x', 'a', 0, 100), get(2, 'x', null, 10, 20), get(3, 'x', 'a', 30, 40)]).ok).toBe(
      true,
    )
    // Once a later read saw the new value, an even later read may not see the old one.
    const r = check([put(1, 'x', 'a', 0, 100), get(2, 'x', 'a', 10, 20), get(3, 'x', null, 30, 40)])
    expect(r.ok).toBe(false)
  })

  it('rejects a stale read after a completed write', () => {
    const history = [put(1, 'x', 'a', 0, 1), put(1, 'x', 'b', 2, 3), get(2, 'x', 'a', 4, 5)]
    const r = check(history)
    expect(r.ok).toBe(false)
    if (r.ok !== false) return
    expect(r.stuck).toBe(history[2])
    expect(r.partialLinearization).toEqual([history[0], history[1]])
    expect(r.explanation).toContain('get(x) -> "a"')
  })

  it('rejects a read of a value that was never written', () => {
    const r = check([put(1, 'x', 'a', 0, 10), put(2, 'x', 'b', 0, 10), get(3, 'x', 'zzz', 0, 10)])
    expect(r.ok).toBe(false)
    if (r.ok !== false) return
    expect(r.stuck.input).toEqual({ op: 'get', key: 'x' })
  })

  it('rejects a compare-and-swap that succeeded twice from the same value', () => {
    const history = [
      put(1, 'x', 'a', 0, 1),
      cas(2, 'x', 'a', 'b', true, 2, 10),
      cas(3, 'x', 'a', 'c', true, 2, 10),
    ]
    expect(check(history).ok).toBe(false)
    history[2] = cas(3, 'x', 'a', 'c', false, 2, 10)
    expect(check(history).ok).toBe(true)
  })

  it('lets a write that never returned take effect at any later point, or never', () => {
    const lost = put(1, 'x', 'b', 5, PENDING)
    const base = [put(1, 'x', 'a', 0, 1), lost]
    // Never observed: fine.
    expect(check([...base, get(2, 'x', 'a', 10, 11)]).ok).toBe(true)
    // Observed long after the client gave up on it: fine.
    expect(check([...base, get(2, 'x', 'a', 10, 11), get(2, 'x', 'b', 1000, 1001)]).ok).toBe(true)
    // But once seen it stays applied; it cannot be seen before it was sent.
    expect(check([...base, get(2, 'x', 'b', 10, 11), get(2, 'x', 'a', 20, 21)]).ok).toBe(false)
    expect(check([...base, get(2, 'x', 'b', 2, 3)]).ok).toBe(false)
    // A pending read tells nothing, whatever output it carries.
    expect(check([...base, { ...get(3, 'x', 'nonsense', 2, PENDING) }]).ok).toBe(true)
  })

  it('applies a pending compare-and-swap only if it would have succeeded', () => {
    const base = [put(1, 'x', 'a', 0, 1), { ...cas(2, 'x', 'a', 'b', false, 2, PENDING), output: undefined }]
    expect(check([...base, get(3, 'x', 'b', 10, 11)]).ok).toBe(true)
    const failing = [put(1, 'x', 'z', 0, 1), cas(2, 'x', 'a', 'b', true, 2, PENDING)]
    expect(check([...failing, get(3, 'x', 'b', 10, 11)]).ok).toBe(false)
  })

  it('rejects an operation that returns before it is called', () => {
    expect(() => check([put(1, 'x', 'a', 5, 4)])).toThrow(RangeError)
  })

  it('checks 1,000 operations over 10 keys in well under a second (P-compositionality)', () => {
    const rng = new SeededRng(42)
    const history = execute(Array.from({ length: 1000 }, () => randomStep(rng, 10, 60)))
    const started = performance.now()
    const r = check(history)
    const elapsed = performance.now() - started
    expect(r).toMatchObject({ ok: true, partitions: 10 })
    expect(elapsed).toBeLessThan(500)
    // The same history with one read corrupted is rejected as fast.
    const i = history.findLastIndex((op) => op.input.op === 'get' && op.return !== PENDING)
    history[i] = { ...history[i]!, output: 'never-written' }
    const t2 = performance.now()
    expect(check(history).ok).toBe(false)
    expect(performance.now() - t2).toBeLessThan(500)
  })

  it("returns 'unknown' instead of hanging when the budget runs out", () => {
    // 20 concurrent writes and a read of a value none wrote: proving that needs every subset.
    const history = Array.from({ length: 20 }, (_, i) => put(i, 'x', `v${i}`, 0, 100))
    history.push(get(99, 'x', 'never', 0, 100))
    expect(checkLinearizable(kvModel, history, { maxSteps: 1000 })).toMatchObject({
      ok: 'unknown',
      reason: 'steps',
    })
    const started = performance.now()
    expect(checkLinearizable(kvModel, history, { timeoutMs: 50 })).toMatchObject({
      ok: 'unknown',
      reason: 'timeout',
    })
    expect(performance.now() - started).toBeLessThan(1000)
  })

  it('property: agrees with a brute-force search over all orders on small random histories', () => {
    const value = fc.constantFrom('a', 'b', 'c')
    const opArb = fc
      .record({
        key: fc.constantFrom('x', 'y'),
        kind: fc.constantFrom('put', 'get', 'cas'),
        value,
        expected: fc.option(value, { nil: null }),
        read: fc.option(value, { nil: null }),
        swapped: fc.boolean(),
        call: fc.nat({ max: 20 }),
        length: fc.nat({ max: 10 }),
        pending: fc.constantFrom(false, false, false, true),
      })
      .map((r): KvOp => {
        const ret = r.pending ? PENDING : r.call + r.length
        if (r.kind === 'put') return put(1, r.key, r.value, r.call, ret)
        if (r.kind === 'get') return get(1, r.key, r.read, r.call, ret)
        return cas(1, r.key, r.expected, r.value, r.swapped, r.call, ret)
      })
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 7 }), (history) => {
        expect(check(history).ok).toBe(bruteForce(history))
      }),
      { numRuns: 1000 },
    )
  })

  it('property: real executions with random overlaps are linearizable; a read of a never-written value is not', () => {
    const stepArb = fc.record({
      key: fc.constantFrom('a', 'b', 'c'),
      kind: fc.constantFrom('put', 'get', 'cas'),
      value: fc.integer({ min: 0, max: 3 }),
      expected: fc.option(fc.integer({ min: 0, max: 3 }), { nil: null }),
      before: fc.nat({ max: 40 }),
      after: fc.nat({ max: 40 }),
      // A pending operation may or may not have taken effect.
      pending: fc.constantFrom('no', 'no', 'no', 'no', 'applied', 'lost'),
    })
    fc.assert(
      fc.property(fc.array(stepArb, { minLength: 1, maxLength: 40 }), fc.nat(), (steps, pick) => {
        const history = execute(steps)
        const ok = checkLinearizable(kvModel, history, { timeoutMs: 2000 })
        expect(ok.ok).toBe(true)
        // Also without partitioning, as one search.
        expect(checkLinearizable(kvUnpartitioned, history, { timeoutMs: 2000 }).ok).toBe(true)

        const reads = history.flatMap((op, i) => (op.input.op === 'get' && op.return !== PENDING ? [i] : []))
        fc.pre(reads.length > 0)
        const i = reads[pick % reads.length]!
        const flipped = history.slice()
        flipped[i] = { ...history[i]!, output: 'never-written' }
        const bad = checkLinearizable(kvModel, flipped, { timeoutMs: 2000 })
        expect(bad.ok).toBe(false)
      }),
      { numRuns: 300 },
    )
  })
})

/**
 * The definition, naively: some order of all operations that respects real time (a before b
 * whenever a returned before b was called) and in which the model accepts every output.
 */
function bruteForce(history: KvOp[]): boolean {
  const ops = history.map((op) => (op.return === PENDING ? { ...op, output: undefined } : op))
  const used = new Array<boolean>(ops.length).fill(false)
  const search = (state: Record<string, string>, placed: number): boolean => {
    if (placed === ops.length) return true
    for (let i = 0; i < ops.length; i++) {
      if (used[i]) continue
      const op = ops[i]!
      // Every unplaced operation that returned before op was called must come first.
      if (ops.some((other, j) => !used[j] && j !== i && other.return < op.call)) continue
      const [ok, next] = kvModel.step(state, op.input, op.output)
      if (!ok) continue
      used[i] = true
      const found = search(next, placed + 1)
      used[i] = false
      if (found) return true
    }
    return false
  }
  return search({}, 0)
}

interface Step {
  key: string
  kind: 'put' | 'get' | 'cas'
  value: number
  expected: number | null
  before: number
  after: number
  pending: 'no' | 'applied' | 'lost'
}

/**
 * Runs steps against a real map, one every 10 time units, and gives each operation an interval
 * around the moment it took effect: a history that is linearizable by construction.
 */
function execute(steps: Step[]): KvOp[] {
  const store = new Map<string, string>()
  const history: KvOp[] = []
  steps.forEach((s, i) => {
    const at = 10 * (i + 1)
    const call = at - s.before
    const ret = s.pending === 'no' ? at + s.after : PENDING
    const apply = s.pending !== 'lost'
    const value = `v${s.value}`
    let op: KvOp
    switch (s.kind) {
      case 'put':
        if (apply) store.set(s.key, value)
        op = put(i, s.key, value, call, ret)
        break
      case 'get':
        op = get(i, s.key, store.get(s.key) ?? null, call, ret)
        break
      case 'cas': {
        const expected = s.expected === null ? null : `v${s.expected}`
        const swapped = (store.get(s.key) ?? null) === expected
        if (swapped && apply) store.set(s.key, value)
        op = cas(i, s.key, expected, value, swapped, call, ret)
        break
      }
    }
    history.push(op)
  })
  return history
}

function randomStep(rng: SeededRng, keys: number, maxOverlap: number): Step {
  const kinds = ['put', 'get', 'get', 'cas'] as const
  return {
    key: `k${rng.int(keys)}`,
    kind: kinds[rng.int(kinds.length)]!,
    value: rng.int(5),
    expected: rng.chance(1 / 6) ? null : rng.int(5),
    before: rng.int(maxOverlap),
    after: rng.int(maxOverlap),
    pending: rng.chance(0.02) ? 'lost' : 'no',
  }
}
