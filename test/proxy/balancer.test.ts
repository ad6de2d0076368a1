/**
 * Pure parts of the data plane: weighted choice, P2C (Mitzenmacher 2001), outlier ejection
 * arithmetic (Envoy's consecutive-failure detector), the retry budget, split choice.
 */
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { loadScore, p2cPick, weightedPick } from '../../src/proxy/balancer.ts'
import { InvalidProxyConfigError } from '../../src/proxy/errors.ts'
import {
  DEFAULT_OUTLIER_CONFIG,
  ejectionDurationMs,
  isEjected,
  maxEjected,
  newOutlierState,
  recordFailure,
  recordSuccess,
  validateOutlierConfig,
} from '../../src/proxy/outlier.ts'
import { RetryBudget } from '../../src/proxy/retry-budget.ts'
import { pickSplit, validateSplitConfig } from '../../src/proxy/split.ts'

interface Item {
  name: string
  weight: number
  outstanding: number
}
const item = (name: string, weight: number, outstanding = 0): Item => ({ name, weight, outstanding })

const itemsArb = fc
  .array(
    fc.record({ weight: fc.integer({ min: 0, max: 20 }), outstanding: fc.integer({ min: 0, max: 50 }) }),
    {
      minLength: 0,
      maxLength: 12,
    },
  )
  .map((xs) => xs.map((x, i) => ({ name: `e${i}`, ...x })))
const unit = fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true })

describe('weightedPick', () => {
  const items = [item('a', 1), item('b', 3), item('c', 0), item('d', 6)]
  it.each([
    [0, 'a'],
    [0.099, 'a'],
    [0.1, 'b'],
    [0.399, 'b'],
    [0.4, 'd'],
    [0.999999, 'd'],
  ])('r=%s picks %s (spans a:[0,.1) b:[.1,.4) d:[.4,1); weight 0 never)', (r, name) => {
    expect(weightedPick(items, r)?.name).toBe(name)
  })

  it('skips `skip` and ineligible items, and returns undefined when nothing qualifies', () => {
    expect(weightedPick(items, 0, undefined, items[0])?.name).toBe('b')
    expect(weightedPick(items, 0.99, (x) => x.name !== 'd')?.name).toBe('b')
    expect(weightedPick([item('z', 0)], 0.5)).toBeUndefined()
    expect(weightedPick([], 0.5)).toBeUndefined()
  })

  it('property: the result is eligible, has weight > 0, and exists iff some item qualifies', () => {
    fc.assert(
      fc.property(itemsArb, unit, fc.integer({ min: 0, max: 3 }), (xs, r, mod) => {
        const eligible = (x: Item) => Number(x.name.slice(1)) % 4 !== mod
        const picked = weightedPick(xs, r, eligible)
        const any = xs.some((x) => x.weight > 0 && eligible(x))
        if (!any) return picked === undefined
        return picked !== undefined && picked.weight > 0 && eligible(picked)
      }),
    )
  })

  it('property: over an even grid of r, each item is chosen in proportion to its weight', () => {
    fc.assert(
      fc.property(itemsArb, (xs) => {
        const total = xs.reduce((s, x) => s + x.weight, 0)
        if (total === 0) return true
        const n = 2_000
        const counts = new Map<string, number>()
        for (let i = 0; i < n; i++) {
          const p = weightedPick(xs, (i + 0.5) / n)!
          counts.set(p.name, (counts.get(p.name) ?? 0) + 1)
        }
        // A deterministic grid: off by at most one cell per boundary.
        return xs.every((x) => Math.abs((counts.get(x.name) ?? 0) - (n * x.weight) / total) <= 1)
      }),
    )
  })
})

describe('p2cPick', () => {
  it.each([
    // [loads a, b], r1 draws a, r2 draws b (weights equal): the less loaded wins; tie -> first
    [[0, 0], 'a'],
    [[5, 1], 'b'],
    [[1, 5], 'a'],
    [[3, 3], 'a'],
  ])('loads %j -> %s', (loads, want) => {
    const xs = [item('a', 1, loads[0]), item('b', 1, loads[1])]
    expect(p2cPick(xs, 0.1, 0.1)?.name).toBe(want)
  })

  it('compares load per unit of weight', () => {
    // heavy: (8+1)/9 = 1 ; light: (0+1)/1 = 1 -> tie, first drawn wins; one more request tips it
    const heavy = item('heavy', 9, 8)
    const light = item('light', 1, 0)
    expect(p2cPick([heavy, light], 0.1, 0.5)?.name).toBe('heavy')
    expect(p2cPick([item('heavy', 9, 9), light], 0.1, 0.5)?.name).toBe('light')
  })

  it('property: never returns an ineligible item, and never the strictly more loaded of its two candidates', () => {
    fc.assert(
      fc.property(itemsArb, unit, unit, (xs, r1, r2) => {
        const eligible = (x: Item) => x.outstanding < 45
        const a = weightedPick(xs, r1, eligible)
        const b = a && weightedPick(xs, r2, eligible, a)
        const picked = p2cPick(xs, r1, r2, eligible)
        if (a === undefined) return picked === undefined
        if (!picked || !eligible(picked)) return false
        if (b === undefined) return picked === a
        return (picked === a || picked === b) && loadScore(picked) <= Math.min(loadScore(a), loadScore(b))
      }),
    )
  })

  it('with a single eligible item, returns it', () => {
    expect(p2cPick([item('only', 2, 100)], 0.7, 0.2)?.name).toBe('only')
  })
})

describe('outlier detection', () => {
  const config = DEFAULT_OUTLIER_CONFIG
  it.each([
    [1, 1_000],
    [2, 2_000],
    [5, 5_000],
    [30, 30_000],
    [100, 30_000],
  ])('ejection #%i lasts %i ms (base × n, capped)', (n, ms) => {
    expect(ejectionDurationMs(n, config)).toBe(ms)
  })

  it.each([
    [1, 0],
    [2, 1],
    [3, 1],
    [4, 2],
    [10, 5],
  ])('of %i endpoints at most %i may be ejected at 50%%', (total, max) => {
    expect(maxEjected(total, 50)).toBe(max)
  })

  it('ejects after 3 consecutive failures, for a growing time; a success resets the count', () => {
    const s = newOutlierState()
    expect(recordFailure(s, 0, config, 0, 3)).toBe(false)
    recordSuccess(s, 1, config)
    expect(recordFailure(s, 2, config, 0, 3)).toBe(false)
    expect(recordFailure(s, 3, config, 0, 3)).toBe(false)
    expect(recordFailure(s, 4, config, 0, 3)).toBe(true)
    expect(isEjected(s, 1_003)).toBe(true)
    expect(isEjected(s, 1_004)).toBe(false)
    // Back, and failing again: the second ejection lasts twice as long.
    for (const t of [2_000, 2_001]) expect(recordFailure(s, t, config, 0, 3)).toBe(false)
    expect(recordFailure(s, 2_002, config, 0, 3)).toBe(true)
    expect(s.ejectedUntil).toBe(4_002)
  })

  it('does not eject past the cap on the share of endpoints ejected', () => {
    const s = newOutlierState()
    for (let i = 0; i < 10; i++) expect(recordFailure(s, i, config, 1, 3)).toBe(false)
    expect(recordFailure(newOutlierState(), 0, { ...config, consecutiveFailures: 1 }, 0, 1)).toBe(false)
  })

  it('validates its configuration', () => {
    for (const bad of [
      { consecutiveFailures: 0 },
      { baseEjectionMs: 0 },
      { maxEjectionMs: 10 },
      { maxEjectionPercent: -1 },
    ]) {
      expect(() => validateOutlierConfig(bad)).toThrowError(
        expect.objectContaining({ code: InvalidProxyConfigError.code }),
      )
    }
  })
})

describe('RetryBudget', () => {
  it('allows minPerSecond × window plus ratio × requests, over a sliding window', () => {
    const budget = new RetryBudget({ ratio: 0.2, minPerSecond: 1, windowMs: 2_000 })
    for (let i = 0; i < 50; i++) budget.recordRequest(0)
    // 0.2 × 50 + 1 × 2 = 12 retries
    let granted = 0
    while (budget.tryAcquire(10)) granted++
    expect(granted).toBe(12)
    // Two seconds later the window has slid past all of it.
    expect(budget.counts(2_100)).toEqual({ requests: 0, retries: 0 })
    expect(budget.tryAcquire(2_100)).toBe(true)
  })

  it('property: a granted retry never takes the window past its allowance', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ dt: fc.integer({ min: 0, max: 700 }), retry: fc.boolean() }), {
          maxLength: 300,
        }),
        (ops) => {
          const budget = new RetryBudget({ ratio: 0.2, minPerSecond: 2, windowMs: 3_000 })
          let now = 0
          for (const op of ops) {
            now += op.dt
            if (!op.retry) {
              budget.recordRequest(now)
              continue
            }
            if (!budget.tryAcquire(now)) continue
            const c = budget.counts(now)
            if (c.retries > 0.2 * c.requests + 6) return false
          }
          return true
        },
      ),
    )
  })
})

describe('splits', () => {
  it.each([
    [0, 0],
    [0.899, 0],
    [0.9, 1],
    [0.999, 1],
  ])('90/10: r=%s -> entry %i', (r, i) => {
    expect(
      pickSplit(
        validateSplitConfig([
          { weight: 90, subset: 'v1' },
          { weight: 10, subset: 'v2' },
        ]),
        r,
      ),
    ).toBe(i)
  })

  it('skips zero-weight entries', () => {
    const split = validateSplitConfig([
      { weight: 0, subset: 'v0' },
      { weight: 1, subset: 'v1' },
    ])
    expect(pickSplit(split, 0)).toBe(1)
  })
})
