/**
 * Inbound rate limits (Consul's RateLimits.InstanceLevel): a token bucket per (source, route) on
 * a virtual clock; the bucket table stays bounded whatever the callers do.
 */
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { RateLimiter } from '../../src/proxy/rate-limit.ts'
import { serviceDefaultsSchema } from '../../src/raft/policy/config-entries.ts'
import { configEntryProblem } from '../../src/raft/policy/config-entries.ts'
import { VirtualClock } from '../sim/virtual-clock.ts'

const count = (n: number, f: () => boolean): number => {
  let ok = 0
  for (let i = 0; i < n; i++) if (f()) ok++
  return ok
}

describe('RateLimiter', () => {
  it('a burst of RequestsPerSecond, then RequestsPerSecond a second', () => {
    const clock = new VirtualClock()
    const rl = new RateLimiter({ limits: { InstanceLevel: { RequestsPerSecond: 10 } }, now: clock.now })
    expect(count(50, () => rl.take('web', '/'))).toBe(10)
    clock.advance(500)
    expect(count(50, () => rl.take('web', '/'))).toBe(5)
    clock.advance(10_000) // refills to the burst, never past it
    expect(count(50, () => rl.take('web', '/'))).toBe(10)
    // Over 10 s at 10 rps with one try every 10 ms: 100 admitted, plus the first burst.
    let admitted = 0
    for (let t = 0; t < 1000; t++) {
      clock.advance(10)
      if (rl.take('web', '/')) admitted++
    }
    expect(admitted).toBe(100)
  })

  it('RequestsMaxBurst sets the bucket size', () => {
    const clock = new VirtualClock()
    const rl = new RateLimiter({
      limits: { InstanceLevel: { RequestsPerSecond: 1, RequestsMaxBurst: 5 } },
      now: clock.now,
    })
    expect(count(10, () => rl.take('web', '/'))).toBe(5)
    clock.advance(1000)
    expect(count(10, () => rl.take('web', '/'))).toBe(1)
  })

  it('each source has its own bucket: a noisy caller does not starve another', () => {
    const clock = new VirtualClock()
    const rl = new RateLimiter({ limits: { InstanceLevel: { RequestsPerSecond: 3 } }, now: clock.now })
    expect(count(100, () => rl.take('noisy', '/'))).toBe(3)
    expect(count(3, () => rl.take('quiet', '/'))).toBe(3)
  })

  it('the first matching route applies instead of the instance limit; unmatched paths use the instance limit', () => {
    const clock = new VirtualClock()
    const rl = new RateLimiter({
      limits: {
        InstanceLevel: {
          RequestsPerSecond: 100,
          Routes: [
            { PathPrefix: '/login', RequestsPerSecond: 1 },
            { PathRegex: '/api/v[0-9]+/.*', RequestsPerSecond: 2 },
            { PathPrefix: '/', RequestsPerSecond: 50 },
          ],
        },
      },
      now: clock.now,
    })
    expect(count(10, () => rl.take('web', '/login'))).toBe(1)
    expect(count(10, () => rl.take('web', '/api/v2/x'))).toBe(2)
    expect(count(100, () => rl.take('web', '/other'))).toBe(50)
    const routesOnly = new RateLimiter({
      limits: { InstanceLevel: { Routes: [{ PathExact: '/x', RequestsPerSecond: 1 }] } },
      now: clock.now,
    })
    expect(count(10, () => routesOnly.take('web', '/y'))).toBe(10) // no instance limit
    expect(count(10, () => routesOnly.take('web', '/x'))).toBe(1)
    expect(new RateLimiter({ limits: {}, now: clock.now }).active).toBe(false)
  })

  it('keeps at most maxBuckets buckets, dropping full ones first, then the least recently used', () => {
    const clock = new VirtualClock()
    const rl = new RateLimiter({
      limits: { InstanceLevel: { RequestsPerSecond: 1, RequestsMaxBurst: 3 } },
      now: clock.now,
      maxBuckets: 100,
    })
    // The noisy source is over its limit: its (empty) bucket must survive a flood of new sources.
    expect(count(10, () => rl.take('noisy', '/'))).toBe(3)
    for (let i = 0; i < 10_000; i++) {
      rl.take(`s${i}`, '/')
      rl.take('noisy', '/') // still used: stays recent
      expect(rl.size).toBeLessThanOrEqual(100)
    }
    expect(rl.take('noisy', '/')).toBe(false)
  })
})

describe('RateLimiter against the token-bucket bound (property)', () => {
  it('per source, any run of admitted requests fits burst + rate × its time span; waiting a full refill always admits', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 50 }),
        fc.integer({ min: 0, max: 20 }),
        fc.array(fc.tuple(fc.integer({ min: 0, max: 1 }), fc.integer({ min: 0, max: 100 })), {
          minLength: 200,
          maxLength: 500,
        }),
        (rps, extraBurst, events) => {
          const burst = rps + extraBurst
          const clock = new VirtualClock()
          const rl = new RateLimiter({
            limits: { InstanceLevel: { RequestsPerSecond: rps, RequestsMaxBurst: burst } },
            now: clock.now,
          })
          const admitted = new Map<number, number[]>()
          for (const [source, dt] of events) {
            clock.advance(dt)
            if (rl.take(`s${source}`, '/'))
              admitted.set(source, [...(admitted.get(source) ?? []), clock.now()])
          }
          let violation: string | undefined
          for (const times of admitted.values()) {
            for (let i = 0; i < times.length && violation === undefined; i++) {
              for (let j = i; j < times.length; j++) {
                const span = (times[j]! - times[i]!) / 1000
                if (j - i + 1 > Math.floor(burst + rps * span + 1e-6)) {
                  violation = `${j - i + 1} admitted in ${span} s`
                  break
                }
              }
            }
          }
          expect(violation).toBeUndefined()
          for (let source = 0; source < 2; source++) {
            clock.advance((1 / rps) * 1000 + 1)
            expect(rl.take(`s${source}`, '/')).toBe(true)
          }
        },
      ),
      { numRuns: 100 },
    )
  })
})

describe('RateLimits in service-defaults (schema)', () => {
  const problem = (RateLimits: unknown) => configEntryProblem('service-defaults', 'api', { RateLimits })
  it('accepts Consul’s shape', () => {
    const v = {
      InstanceLevel: {
        RequestsPerSecond: 100,
        RequestsMaxBurst: 200,
        Routes: [{ PathPrefix: '/login', RequestsPerSecond: 1, RequestsMaxBurst: 2 }],
      },
    }
    expect(problem(v)).toBeUndefined()
    expect(serviceDefaultsSchema.parse({ RateLimits: v }).RateLimits).toEqual(v)
  })
  it.each([
    [{ InstanceLevel: { RequestsPerSecond: 0 } }, /^RateLimits\.InstanceLevel\.RequestsPerSecond: /],
    [{ InstanceLevel: { RequestsPerSecond: -1 } }, /RequestsPerSecond/],
    [{ InstanceLevel: { RequestsPerSecond: 'fast' } }, /RequestsPerSecond/],
    [{ InstanceLevel: { RequestsPerSecond: 1e9 } }, /RequestsPerSecond/],
    [{ InstanceLevel: { RequestsPerSecond: 1, RequestsMaxBurst: 1.5 } }, /RequestsMaxBurst/],
    [{ InstanceLevel: { RequestsMaxBurst: 5 } }, /RequestsMaxBurst: needs RequestsPerSecond/],
    [{ InstanceLevel: { Routes: [{ RequestsPerSecond: 1 }] } }, /Routes\.0: needs one of PathExact/],
    [
      { InstanceLevel: { Routes: [{ PathExact: '/a', PathPrefix: '/b', RequestsPerSecond: 1 }] } },
      /Routes\.0\.PathPrefix/,
    ],
    [{ InstanceLevel: { Routes: [{ PathRegex: '[', RequestsPerSecond: 1 }] } }, /Routes\.0\.PathRegex/],
    [{ InstanceLevel: { Routes: [{ PathExact: '/a' }] } }, /Routes\.0\.RequestsPerSecond/],
    [
      { InstanceLevel: { RequestsPerSecond: 1, Burst: 3 } },
      /RateLimits\.InstanceLevel\.Burst: unknown field/,
    ],
    [{ Global: {} }, /RateLimits\.Global: unknown field/],
  ])('%j is refused naming the field', (v, want) => {
    expect(problem(v)).toMatch(want)
  })
})
