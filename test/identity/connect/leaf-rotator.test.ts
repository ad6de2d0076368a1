import { beforeAll, describe, expect, it } from 'vitest'
import { createRootCa, type RootCa, signLeaf } from '../../../src/identity/ca/ca.ts'
import { createLeafKeyAndCsr, verifyLeaf } from '../../../src/identity/ca/leaf.ts'
import {
  LeafCertificateRotator,
  type LeafCertificateRotatorEvents,
  type LeafCertificateRotatorInit,
  type RequestLeaf,
  renewAt,
  retryDelayMs,
} from '../../../src/identity/connect/leaf-rotator.ts'
import { SeededRng } from '../../sim/rng.ts'
import { codeOf, deferred, HOUR, T0, TD } from '../helpers.ts'
import { VirtualClock } from '../../sim/virtual-clock.ts'

const MINUTE = 60_000
const LEAF_TTL = HOUR

describe('renewAt (pure)', () => {
  it.each([
    [0, 600],
    [0.5, 750],
    [0.999999, 899],
  ])('rng %d -> %d ms into a 1000 ms lifetime', (u, expected) => {
    expect(renewAt(10_000, 11_000, () => u) - 10_000).toBe(expected)
  })

  it('always lands in [60%, 90%) of the lifetime', () => {
    const rng = new SeededRng(7)
    for (let i = 0; i < 1000; i++) {
      const t = renewAt(0, 72 * HOUR, rng.next)
      expect(t).toBeGreaterThanOrEqual(0.6 * 72 * HOUR)
      expect(t).toBeLessThan(0.9 * 72 * HOUR)
    }
  })

  it('rejects an empty lifetime', async () => {
    expect(await codeOf(() => renewAt(5, 5, Math.random))).toBe('PEERMESH_ERR_INVALID_CA_OPTION')
  })
})

describe('retryDelayMs (pure)', () => {
  const backoff = { initialMs: 1000, maxMs: 60_000 }
  it.each([
    [1, 0, 500],
    [1, 0.999, 999],
    [2, 0, 1000],
    [3, 0.5, 3000],
    [7, 0, 30_000],
    [8, 0, 30_000],
    [100, 0.999, 59_970],
  ])('attempt %d with rng %d -> %d ms', (attempt, u, expected) => {
    expect(retryDelayMs(attempt, backoff, () => u)).toBe(expected)
  })
})

/** Fires timers up to `ms` ahead, letting each renewal attempt finish before the next timer. */
async function runFor(clock: VirtualClock, rotator: LeafCertificateRotator, ms: number): Promise<void> {
  const target = clock.now() + ms
  await rotator.whenIdle()
  while (clock.fireNext(target)) await rotator.whenIdle()
  clock.setNow(target)
}

function record(rotator: LeafCertificateRotator) {
  const events: { type: keyof LeafCertificateRotatorEvents; at: number; detail: unknown }[] = []
  return {
    events,
    attach(clock: VirtualClock) {
      for (const type of ['cert:rotated', 'cert:renew-failed', 'cert:expired'] as const) {
        rotator.on(type, (detail) => events.push({ type, at: clock.now(), detail }))
      }
    },
  }
}

describe('LeafCertificateRotator on a virtual clock', () => {
  let root: RootCa

  beforeAll(async () => {
    root = await createRootCa({ trustDomain: TD, keyType: 'ed25519', nowMs: T0 - HOUR })
  })

  function setup(
    overrides: Partial<LeafCertificateRotatorInit> & { caDown?: (now: number) => boolean } = {},
  ) {
    const clock = new VirtualClock(T0)
    const calls: number[] = []
    const requestLeaf: RequestLeaf =
      overrides.requestLeaf ??
      (async (csrPem) => {
        calls.push(clock.now())
        if (overrides.caDown?.(clock.now())) throw new Error('CA unavailable')
        const leaf = await signLeaf(root, csrPem, {
          service: 'web',
          trustDomain: TD,
          ttlMs: LEAF_TTL,
          nowMs: clock.now(),
        })
        return leaf.certPem
      })
    const rotator = new LeafCertificateRotator({
      service: 'web',
      trustDomain: TD,
      clock,
      rng: new SeededRng(42).next,
      retry: { initialMs: 1000, maxMs: 5 * MINUTE },
      requestTimeoutMs: 10_000,
      ...overrides,
      requestLeaf,
    })
    const rec = record(rotator)
    rec.attach(clock)
    return { clock, rotator, calls, events: rec.events }
  }

  it('gets a first certificate at start and renews each one at 60–90% of its life, before expiry', async () => {
    const { clock, rotator, events } = setup()
    expect(rotator.current()).toBeUndefined()
    rotator.start()
    await runFor(clock, rotator, 0)
    const first = rotator.current()!
    expect(first.spiffeId).toBe(`spiffe://${TD}/svc/web`)
    expect(
      await verifyLeaf(first.certPem, { roots: [root.certPem], trustDomain: TD, nowMs: clock.now() }),
    ).toMatchObject({
      ok: true,
    })

    let previous = first
    for (let i = 0; i < 6; i++) {
      // Step in one-minute increments and check we are never without a valid certificate.
      const rotationsBefore = events.filter((e) => e.type === 'cert:rotated').length
      while (events.filter((e) => e.type === 'cert:rotated').length === rotationsBefore) {
        await runFor(clock, rotator, MINUTE)
        expect(rotator.current()).toBeDefined()
      }
      const rotated = events.at(-1)!
      expect(rotated.type).toBe('cert:rotated')
      const lifetime = previous.notAfter - previous.notBefore
      expect(rotated.at).toBeGreaterThanOrEqual(previous.notBefore + 0.6 * lifetime)
      expect(rotated.at).toBeLessThanOrEqual(previous.notBefore + 0.9 * lifetime)
      expect(rotated.at).toBeLessThan(previous.notAfter)
      const current = rotator.current()!
      expect(current.serialNumber).not.toBe(previous.serialNumber)
      expect(current.keyPem).not.toBe(previous.keyPem) // a fresh key each time
      expect((rotated.detail as { previous?: { serialNumber: string } }).previous?.serialNumber).toBe(
        previous.serialNumber,
      )
      previous = current
    }
    expect(events.some((e) => e.type !== 'cert:rotated')).toBe(false)
    rotator.stop()
    expect(clock.pending).toBe(0)
  })

  it('retries with capped, jittered exponential backoff while the old certificate keeps serving until expiry', async () => {
    let down = false
    const { clock, rotator, events, calls } = setup({ caDown: () => down })
    rotator.start()
    await runFor(clock, rotator, 0)
    const first = rotator.current()!
    down = true

    // Run to just before expiry: every failure keeps the first certificate in service.
    while (clock.now() < first.notAfter - MINUTE) {
      await runFor(clock, rotator, MINUTE)
      expect(rotator.current()?.serialNumber).toBe(first.serialNumber)
    }
    const failures = events.filter((e) => e.type === 'cert:renew-failed')
    expect(failures.length).toBeGreaterThanOrEqual(3)
    failures.forEach((f, i) => {
      const d = f.detail as { attempt: number; retryInMs: number; current?: { serialNumber: string } }
      expect(d.attempt).toBe(i + 1)
      const cap = Math.min(5 * MINUTE, 1000 * 2 ** i)
      expect(d.retryInMs).toBeGreaterThanOrEqual(cap / 2)
      expect(d.retryInMs).toBeLessThanOrEqual(cap)
      expect(d.current?.serialNumber).toBe(first.serialNumber)
    })
    // Successive attempts are spaced by the announced delays.
    for (let i = 2; i < calls.length; i++) {
      const announced = (failures[i - 2]!.detail as { retryInMs: number }).retryInMs
      expect(calls[i]! - calls[i - 1]!).toBe(announced)
    }
    expect(rotator.consecutiveFailures).toBe(failures.length)

    // Past notAfter the certificate is no longer served and expiry is announced.
    await runFor(clock, rotator, 2 * MINUTE)
    expect(rotator.current()).toBeUndefined()
    expect(events.filter((e) => e.type === 'cert:expired')).toHaveLength(1)
    expect(events.find((e) => e.type === 'cert:expired')!.at).toBe(first.notAfter)

    // The CA comes back: the next retry succeeds.
    down = false
    await runFor(clock, rotator, 5 * MINUTE)
    expect(rotator.current()).toBeDefined()
    expect(rotator.consecutiveFailures).toBe(0)
    expect(events.at(-1)!.type).toBe('cert:rotated')
    rotator.stop()
  })

  it('times out a hung request on the virtual clock and retries', async () => {
    const requested = deferred<AbortSignal>()
    const { clock, rotator, events } = setup({
      requestLeaf: (_csr, { signal }) => {
        requested.resolve(signal)
        return new Promise(() => {}) // never answers, ignores the signal
      },
    })
    rotator.start()
    clock.fireNext(clock.now()) // first attempt
    const signal = await requested.promise
    expect(signal.aborted).toBe(false)
    expect(clock.fireNext(clock.now() + 10_000)).toBe(true) // the per-attempt timeout
    await rotator.whenIdle()
    expect(signal.aborted).toBe(true)
    const failed = events.find((e) => e.type === 'cert:renew-failed')!
    expect((failed.detail as { error: { code: string } }).error.code).toBe(
      'PEERMESH_ERR_LEAF_REQUEST_TIMEOUT',
    )
    expect(clock.nextDue()).toBeGreaterThan(clock.now()) // a retry is scheduled
    rotator.stop()
    expect(clock.pending).toBe(0)
  })

  it('refuses a certificate that is not for its key or its SPIFFE id', async () => {
    const { clock, rotator, events } = setup({
      requestLeaf: async () => {
        const other = await createLeafKeyAndCsr({ service: 'web', trustDomain: TD })
        return (
          await signLeaf(root, other.csrPem, {
            service: 'web',
            trustDomain: TD,
            ttlMs: HOUR,
            nowMs: clock.now(),
          })
        ).certPem
      },
    })
    rotator.start()
    await runFor(clock, rotator, 0)
    expect(rotator.current()).toBeUndefined()
    const failed = events.find((e) => e.type === 'cert:renew-failed')!
    expect((failed.detail as { error: { code: string } }).error.code).toBe(
      'PEERMESH_ERR_LEAF_RESPONSE_INVALID',
    )
    rotator.stop()
  })

  it('stop() aborts the request in flight and ignores its late answer', async () => {
    const requested = deferred<AbortSignal>()
    const answer = deferred<string>()
    const { clock, rotator, events } = setup({
      requestLeaf: (_csr, { signal }) => {
        requested.resolve(signal)
        return answer.promise
      },
    })
    rotator.start()
    clock.fireNext(clock.now())
    const signal = await requested.promise
    rotator.stop()
    expect(signal.aborted).toBe(true)
    answer.resolve('not even a certificate')
    await rotator.whenIdle()
    expect(events).toHaveLength(0)
    expect(rotator.current()).toBeUndefined()
    expect(clock.pending).toBe(0)
  })

  it('a restart while a request hangs does not stall rotation', async () => {
    let hang = true
    const firstCall = deferred<void>()
    const { clock, rotator, calls } = setup({
      requestLeaf: async (csrPem) => {
        calls.push(clock.now())
        firstCall.resolve()
        if (hang) return new Promise<string>(() => {})
        return (
          await signLeaf(root, csrPem, {
            service: 'web',
            trustDomain: TD,
            ttlMs: LEAF_TTL,
            nowMs: clock.now(),
          })
        ).certPem
      },
    })
    rotator.start()
    clock.fireNext(clock.now())
    await firstCall.promise
    rotator.stop()
    hang = false
    rotator.start()
    clock.fireNext(clock.now()) // at once, before the aborted attempt has unwound
    await runFor(clock, rotator, 0)
    expect(calls).toHaveLength(2)
    expect(rotator.current()).toBeDefined()
    rotator.stop()
  })

  it('serves an initial certificate at once and renews it on schedule; renewNow() forces a renewal', async () => {
    const clock0 = new VirtualClock(T0)
    const { keyPem, csrPem } = await createLeafKeyAndCsr({ service: 'web', trustDomain: TD })
    const initial = await signLeaf(root, csrPem, {
      service: 'web',
      trustDomain: TD,
      ttlMs: LEAF_TTL,
      nowMs: clock0.now(),
    })
    const { clock, rotator, calls } = setup({ initial: { keyPem, certPem: initial.certPem } })
    rotator.start()
    expect(rotator.current()?.serialNumber).toBe(initial.serialNumber)
    await runFor(clock, rotator, 0)
    expect(calls).toHaveLength(0) // nothing requested while the initial certificate is young
    rotator.renewNow()
    await rotator.whenIdle()
    expect(calls).toHaveLength(1)
    expect(rotator.current()?.serialNumber).not.toBe(initial.serialNumber)
    rotator.stop()
  })

  it('renewNow() during a renewal in flight renews again once it lands (its answer may predate the reason)', async () => {
    // The CA rotates its root while our request is being answered: the leaf that comes back was
    // signed by the old root, so the renewNow() that announced the rotation must not be lost.
    const next = await createRootCa({ trustDomain: TD, keyType: 'ed25519', nowMs: T0 - HOUR })
    let signer = root
    const gate = deferred<void>()
    const firstCall = deferred<void>()
    const { clock, rotator, calls } = setup({
      requestLeaf: async (csrPem) => {
        calls.push(clock.now())
        const leaf = await signLeaf(signer, csrPem, {
          service: 'web',
          trustDomain: TD,
          ttlMs: LEAF_TTL,
          nowMs: clock.now(),
        })
        if (calls.length === 1) {
          firstCall.resolve()
          await gate.promise
        }
        return leaf.certPem
      },
    })
    rotator.start()
    clock.fireNext(clock.now())
    await firstCall.promise
    signer = next
    rotator.renewNow()
    gate.resolve()
    await rotator.whenIdle()
    expect(calls).toHaveLength(2)
    const v = await verifyLeaf(rotator.current()!.certPem, {
      roots: [next.certPem],
      trustDomain: TD,
      nowMs: clock.now(),
    })
    expect(v.ok).toBe(true)
    rotator.stop()
  })

  it('refuses an initial certificate that does not belong to the given key', async () => {
    const a = await createLeafKeyAndCsr({ service: 'web', trustDomain: TD })
    const b = await createLeafKeyAndCsr({ service: 'web', trustDomain: TD })
    const cert = await signLeaf(root, a.csrPem, {
      service: 'web',
      trustDomain: TD,
      ttlMs: LEAF_TTL,
      nowMs: T0,
    })
    const code = await codeOf(() => setup({ initial: { keyPem: b.keyPem, certPem: cert.certPem } }))
    expect(code).toBe('PEERMESH_ERR_INVALID_CA_OPTION')
  })
})
