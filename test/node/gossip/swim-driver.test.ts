import { describe, expect, it } from 'vitest'
import { seededRng } from '../../../src/common/rng.ts'
import { lanConfig } from '../../../src/gossip/config.ts'
import { Swim, type SwimEvent } from '../../../src/gossip/swim.ts'
import {
  type GossipTransport,
  JOIN_RETRY_MAX_MS,
  JOIN_RETRY_MIN_MS,
  SwimDriver,
} from '../../../src/node/gossip/swim-driver.ts'
import { VirtualClock } from '../../sim/virtual-clock.ts'

/** Lets promise continuations (a push/pull reply reaching the driver) run; no time passes. */
const drain = (): Promise<void> => new Promise((resolve) => setImmediate(resolve))

/**
 * The production driver (`SwimDriver`, what `GossipModule` runs) over a fake in-memory transport
 * on the virtual clock: datagrams arrive 1 ms later, push/pull replies 2 ms later, and a node can
 * be cut off. No sockets, no sleeps.
 */
class FakeNet {
  readonly clock = new VirtualClock(1_000)
  readonly drivers = new Map<string, SwimDriver>()
  readonly events: { node: string; e: SwimEvent }[] = []
  readonly cut = new Set<string>()
  readonly pushPulls: { from: string; to: string; at: number }[] = []
  readonly localState = new Map<string, { incarnation: number; version: number }>()
  /** Times each node's driver ran the core's timers (`Swim.tick`): its wake-ups. */
  readonly ticks = new Map<string, number>()
  private readonly rng = seededRng(7)

  add(id: string): SwimDriver {
    const swim = new Swim({
      self: { id, name: id, addresses: [`sim://${id}`] },
      config: lanConfig,
      rng: seededRng(Math.floor(this.rng() * 2 ** 32)),
    })
    const tick = swim.tick.bind(swim)
    swim.tick = (now) => {
      this.ticks.set(id, (this.ticks.get(id) ?? 0) + 1)
      return tick(now)
    }
    const driver = new SwimDriver({
      swim,
      clock: this.clock,
      transport: this.transport(id),
      onEvent: (e) => this.events.push({ node: id, e }),
      onLocalState: (incarnation, version) => this.localState.set(id, { incarnation, version }),
      rng: () => 0.5,
    })
    this.drivers.set(id, driver)
    return driver
  }

  private transport(from: string): GossipTransport {
    const linked = (to: string) => !this.cut.has(from) && !this.cut.has(to) && this.drivers.has(to)
    return {
      send: (to, msg) => {
        if (linked(to)) this.clock.setTimeout(() => this.drivers.get(to)?.receive(from, msg), 1)
      },
      pushPull: (to, state) => {
        this.pushPulls.push({ from, to, at: this.clock.now() })
        return new Promise((resolve, reject) => {
          this.clock.setTimeout(() => {
            const reply = linked(to) ? this.drivers.get(to)?.answerPushPull(from, state) : undefined
            if (reply === undefined) reject(new Error('unreachable'))
            else resolve(reply)
          }, 2)
        })
      },
    }
  }

  /** Moves virtual time by `ms` in 5 ms steps, letting push/pull continuations run in between. */
  async run(ms: number): Promise<void> {
    for (let t = 0; t < ms; t += 5) {
      this.clock.advance(5)
      await drain()
    }
  }

  statusSeenBy(observer: string, target: string): string | undefined {
    return this.drivers.get(observer)?.member(target)?.status
  }
}

describe('SwimDriver (the gossip module production driver) on a virtual clock', () => {
  it('joins through a seed, converges, and detects a cut-off member as failed (SWIM §4)', async () => {
    const net = new FakeNet()
    const ids = ['a', 'b', 'c']
    for (const id of ids) net.add(id).start()
    net.drivers.get('b')!.joinSeed('a')
    net.drivers.get('c')!.joinSeed('a')
    await net.run(3_000)
    for (const o of ids) for (const t of ids) expect(net.statusSeenBy(o, t)).toBe('alive')
    expect(net.localState.get('a')?.incarnation).toBeGreaterThanOrEqual(0)

    net.cut.add('c')
    await net.run(15_000)
    expect(net.statusSeenBy('a', 'c')).toBe('dead')
    expect(net.statusSeenBy('b', 'c')).toBe('dead')
    expect(
      net.events.some(({ node, e }) => node === 'a' && e.type === 'member:fail' && e.member.id === 'c'),
    ).toBe(true)
    for (const d of net.drivers.values()) d.stop()
  })

  it('asks its seeds again, backing off, while it knows no live member', async () => {
    const net = new FakeNet()
    net.add('a').start()
    const b = net.add('b')
    b.start()
    net.cut.add('a')
    b.joinSeed('a')
    await net.run(JOIN_RETRY_MIN_MS * 4)
    const attempts = net.pushPulls.filter((p) => p.from === 'b' && p.to === 'a').map((p) => p.at - 1_000)
    // The join itself, then retries after 2 s and 2 + 4 s (jitter fixed at its midpoint).
    expect(attempts.slice(0, 3)).toEqual([0, JOIN_RETRY_MIN_MS, 3 * JOIN_RETRY_MIN_MS])

    net.cut.delete('a')
    await net.run(JOIN_RETRY_MAX_MS)
    expect(net.statusSeenBy('b', 'a')).toBe('alive')
    expect(net.statusSeenBy('a', 'b')).toBe('alive')
    for (const d of net.drivers.values()) d.stop()
  })

  it('an idle, converged member wakes about once per probe period and sends no state', async () => {
    const net = new FakeNet()
    const ids = ['a', 'b', 'c', 'd', 'e']
    for (const id of ids) net.add(id).start()
    for (const id of ids.slice(1)) net.drivers.get(id)!.joinSeed('a')
    await net.run(5_000)
    for (const o of ids) for (const t of ids) expect(net.statusSeenBy(o, t)).toBe('alive')
    const ticks = new Map(net.ticks)
    const pushPulls = net.pushPulls.length
    const idleMs = 60_000
    await net.run(idleMs)
    const periods = idleMs / lanConfig.probeIntervalMs
    for (const id of ids) {
      const wakes = net.ticks.get(id)! - ticks.get(id)!
      // One probe per period; no gossip round without updates, no wake for an acked probe's timeout.
      expect(wakes).toBeGreaterThanOrEqual(periods - 1)
      expect(wakes).toBeLessThanOrEqual(periods * 1.1)
      const s = net.drivers.get(id)!.stats()
      expect(s.stateSyncs).toBeGreaterThan(0)
      expect(s.stateSyncMatches).toBe(s.stateSyncs)
    }
    // Anti-entropy ran as digest checks only: no state exchanged while nothing differs.
    expect(net.pushPulls.length).toBe(pushPulls)
    for (const d of net.drivers.values()) d.stop()
  })

  it('leaves gracefully within the virtual leave budget; the others see it left', async () => {
    const net = new FakeNet()
    for (const id of ['a', 'b']) net.add(id).start()
    net.drivers.get('b')!.joinSeed('a')
    await net.run(2_000)
    expect(net.statusSeenBy('a', 'b')).toBe('alive')
    const leaving = net.drivers.get('b')!.leave()
    await net.run(1_000)
    await leaving
    expect(net.statusSeenBy('a', 'b')).toBe('left')
    // Stopped: its timers are cancelled and input is ignored.
    net.drivers.get('a')!.stop()
    const seen = net.events.length
    net.drivers.get('b')!.receive('a', new Uint8Array([1, 2, 3]))
    await net.run(30_000)
    expect(net.events.length).toBe(seen)
    expect(net.clock.pending).toBe(0)
  })
})
