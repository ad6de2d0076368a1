import type { MemberView, Output, Swim, SwimEvent, SwimStats, UserEvent } from '../../gossip/index.ts'
import { type Cancel, type Clock, pause } from '../../common/clock.ts'
import { GOSSIP_WIRING_DEFAULTS } from '../agent/defaults.ts'

export const {
  joinRetryMinMs: JOIN_RETRY_MIN_MS,
  joinRetryMaxMs: JOIN_RETRY_MAX_MS,
  leaveBudgetMs: LEAVE_BUDGET_MS,
} = GOSSIP_WIRING_DEFAULTS
const LEAVE_POLL_MS = GOSSIP_WIRING_DEFAULTS.leavePollMs

/**
 * How SWIM messages leave this node. `send` is best-effort (a datagram: lost, duplicated or
 * reordered without notice); `pushPull` is reliable (one stream exchange) and rejects when the
 * peer cannot be reached.
 */
export interface GossipTransport {
  send(to: string, msg: Uint8Array): void
  pushPull(to: string, state: Uint8Array): Promise<Uint8Array>
}

export interface SwimDriverInit {
  swim: Swim
  clock: Clock
  transport: GossipTransport
  /** Every event the core reports, in order. */
  onEvent(e: SwimEvent): void
  /** Every user event new to this node (its own included), once each. */
  onUserEvent?(e: UserEvent): void
  /**
   * Called after each step with the local incarnation, record version and user event Lamport
   * time (to persist them).
   */
  onLocalState?(incarnation: number, version: number, userEventTime: number): void
  log?: { info(fields: object, message: string): void }
  /** Jitter of join retries (default `Math.random`). */
  rng?: () => number
}

/**
 * Drives the pure SWIM core: feeds it inputs with the clock's time, routes its output (datagrams,
 * push/pull exchanges, events, local state), keeps one timer armed at the core's next deadline,
 * and asks the seeds again while no live member is known.
 */
export class SwimDriver {
  private readonly swim: Swim
  private readonly clock: Clock
  private cancelTick?: Cancel
  private tickAt = Number.POSITIVE_INFINITY
  private cancelJoinCheck?: Cancel
  /** Seeds this node reached (peer ids); asked again while it knows no live member. */
  private readonly seeds = new Set<string>()
  private stopped = false

  constructor(private readonly init: SwimDriverInit) {
    this.swim = init.swim
    this.clock = init.clock
  }

  get selfId(): string {
    return this.swim.localRecord.id
  }

  members(): MemberView[] {
    return this.swim.members()
  }

  member(id: string): MemberView | undefined {
    return this.swim.member(id)
  }

  /** Drop reasons counted by the core (metrics). */
  dropped(): Record<string, number> {
    return this.swim.stats().dropped as Record<string, number>
  }

  /** The core's counters (metrics). */
  stats(): SwimStats {
    return this.swim.stats()
  }

  start(): void {
    this.process(this.swim.start(this.clock.now()))
  }

  /** A datagram from `from`. */
  receive(from: string, bytes: Uint8Array): void {
    if (!this.stopped) this.process(this.swim.handleMessage(from, bytes, this.clock.now()))
  }

  /** `id` was heard from over an authenticated channel (Swim.heardFrom). */
  heardFrom(id: string): void {
    if (!this.stopped) this.swim.heardFrom(id, this.clock.now())
  }

  /** Evidence of life relayed by the Raft leader: `ageMs` before now (Swim.setRelayed). */
  setRelayed(entries: readonly { id: string; ageMs: number }[]): void {
    if (this.stopped) return
    const now = this.clock.now()
    this.swim.setRelayed(
      entries.map((e) => ({ id: e.id, heardAtMs: now - e.ageMs })),
      now,
    )
    this.schedule() // a turn taken ahead may be given back its time (Swim.takeTurnAhead)
  }

  /** The authenticated channel to `id` closed (Swim.lostContact). */
  lostContact(id: string): void {
    if (this.stopped) return
    this.swim.lostContact(id)
    this.schedule() // as setRelayed
  }

  /** A push/pull request from `from`: our state in reply, or undefined when the core dropped it. */
  answerPushPull(from: string, bytes: Uint8Array): Uint8Array | undefined {
    const res = this.swim.handlePushPull(from, bytes, this.clock.now())
    this.process(res)
    return res.reply
  }

  /** Joins through a seed this node just reached, and keeps asking the seeds while alone. */
  joinSeed(peerId: string): void {
    if (this.stopped) return
    this.seeds.add(peerId)
    this.process(this.swim.join([peerId], this.clock.now()))
    this.scheduleJoinCheck(JOIN_RETRY_MIN_MS)
  }

  /** Replaces this node's gossiped metadata; disseminated right away. */
  updateLocalMeta(meta: Record<string, unknown>): void {
    this.process(this.swim.updateLocalRecord({ meta }, this.clock.now()))
  }

  /**
   * Fires a user event to every member (`Swim.fireUserEvent`); returns it as delivered here, with
   * its Lamport time. Throws `InvalidUserEventError` (nothing sent) on a bad id or body.
   */
  fireUserEvent(id: string, body: Uint8Array): UserEvent {
    if (this.stopped) throw new Error('gossip stopped')
    const out = this.swim.fireUserEvent(id, body, this.clock.now())
    const fired = out.userEvents.find((e) => e.id === id)!
    this.process(out)
    return fired
  }

  /** Consul's force-leave of a failed member (`Swim.forceLeave`). */
  forceLeave(
    id: string,
    options: { prune?: boolean } = {},
  ): 'left' | 'already-left' | 'not-failed' | 'unknown' {
    if (this.stopped) throw new Error('gossip stopped')
    const { result, output } = this.swim.forceLeave(id, this.clock.now(), options)
    this.process(output)
    return result
  }

  /**
   * Graceful leave: disseminates a signed `left` so nobody reports this node as failed, waits up
   * to LEAVE_BUDGET_MS for the broadcasts to go out, then stops all timers.
   */
  async leave(): Promise<void> {
    if (this.stopped) return
    this.process(this.swim.leave(this.clock.now()))
    const deadline = this.clock.now() + LEAVE_BUDGET_MS
    while (this.swim.pendingBroadcasts() > 0 && this.clock.now() < deadline) {
      await pause(this.clock, LEAVE_POLL_MS)
    }
    this.stop()
  }

  /** Stops at once: no timer fires and no input is handled afterwards. */
  stop(): void {
    this.stopped = true
    this.cancelTick?.()
    this.cancelJoinCheck?.()
  }

  private process(out: Output): void {
    if (this.stopped) return
    const { transport } = this.init
    for (const { to, msg } of out.send) transport.send(to, msg)
    for (const { to, state } of out.pushPull) void this.pushPull(to, state)
    for (const e of out.events) this.init.onEvent(e)
    for (const u of out.userEvents) this.init.onUserEvent?.(u)
    this.init.onLocalState?.(
      this.swim.localIncarnation,
      this.swim.localRecord.version,
      this.swim.userEventTime,
    )
    this.schedule()
  }

  private async pushPull(to: string, state: Uint8Array): Promise<void> {
    let reply: Uint8Array
    try {
      reply = await this.init.transport.pushPull(to, state)
    } catch {
      return // the transport counts and logs failures
    }
    if (!this.stopped) this.process(this.swim.handlePushPullReply(to, reply, this.clock.now()))
  }

  /**
   * Keeps one timer armed at the core's earliest deadline, moved later too when the core dropped
   * the timer it was armed for (an acked probe's timeout): no wake-up finds nothing to do.
   */
  private schedule(): void {
    if (this.stopped) return
    const at = this.swim.nextDeadline()
    if (at === this.tickAt && this.cancelTick !== undefined) return
    this.cancelTick?.()
    this.cancelTick = undefined
    this.tickAt = at
    if (!Number.isFinite(at)) return
    this.cancelTick = this.clock.setTimeout(
      () => {
        this.cancelTick = undefined
        this.tickAt = Number.POSITIVE_INFINITY
        if (!this.stopped) this.process(this.swim.tick(this.clock.now()))
      },
      Math.max(0, at - this.clock.now()),
    )
  }

  /**
   * Reaching a seed is not joining: its push/pull can still fail (a seed flooded by a whole cluster
   * starting at once prunes connections). While this node knows no other live member it asks its
   * seeds again, backing off up to JOIN_RETRY_MAX_MS (Consul's retry_join, but until it has a
   * member rather than until a dial succeeds); it keeps checking at that pace afterwards, so a
   * node left alone (every member gone) goes back to its seeds too.
   */
  private scheduleJoinCheck(delayMs: number): void {
    if (this.stopped) return
    this.cancelJoinCheck?.()
    const rng = this.init.rng ?? Math.random
    this.cancelJoinCheck = this.clock.setTimeout(
      () => {
        if (this.stopped) return
        const self = this.selfId
        const alone = !this.swim
          .members()
          .some((m) => m.id !== self && (m.status === 'alive' || m.status === 'suspect'))
        if (!alone) return this.scheduleJoinCheck(JOIN_RETRY_MAX_MS)
        this.init.log?.info({ seeds: this.seeds.size }, 'no live member yet; asking the seeds again')
        this.process(this.swim.join([...this.seeds], this.clock.now()))
        this.scheduleJoinCheck(Math.min(delayMs * 2, JOIN_RETRY_MAX_MS))
      },
      delayMs * (0.8 + 0.4 * rng()),
    )
  }
}
