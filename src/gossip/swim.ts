/**
 * SWIM membership (Das, Gupta, Motivala: "SWIM: Scalable Weakly-consistent Infection-style Process
 * Group Membership Protocol", DSN 2002) with the Lifeguard extensions (Dadgar et al., arXiv
 * 1707.00788), modelled on hashicorp/memberlist (`state.go`, `suspicion.go`, `awareness.go`).
 *
 * A pure, synchronous state machine: no I/O, no timers, no clock, no `Math.random()`. The driver
 * - calls `start(now)` or `join(seeds, now)` once,
 * - feeds every inbound datagram to `handleMessage(from, bytes, now)`,
 * - calls `tick(now)` whenever `now >= nextDeadline()`,
 * - performs every returned `send` (best-effort datagram: may be lost, duplicated or reordered)
 *   and `pushPull` (reliable request/response: the reply bytes go to `handlePushPullReply`; the
 *   responder side calls `handlePushPull` and sends back its `reply`),
 * - reacts to `events`.
 *
 * Timers are one map in the core and one armed timer in the driver (`nextDeadline`). Nothing
 * wakes a node for nothing: a gossip round is scheduled only while updates are queued, and the
 * periodic push/pull starts as a one-datagram digest check (`sync`), the full state exchange
 * running only when the two states differ (or no answer came back).
 *
 * Name conflicts: when two live members (alive or suspect) claim the same name, the one with the
 * lexicographically lowest id owns it. The rule depends on nothing that changes over time
 * (incarnations do), so every node picks the same owner and ownership never flips back and forth.
 * Each node reports the loser once, when it detects the conflict, in a `member:conflict` event
 * (`member` = loser, `winner` = owner); `members()` flags losers with `nameConflict: true`.
 */
import { LocalHealth } from './awareness.ts'
import { BroadcastQueue, retransmitLimit } from './broadcast-queue.ts'
import {
  aliveSigningBytes,
  COMPOUND_OVERHEAD,
  compoundPartOverhead,
  decodeMessage,
  decodePushPull,
  decodeRecord,
  encodeMessage,
  encodeStateEntry,
  framePushPull,
  encodeRecord,
  leaveSigningBytes,
  packParts,
  recordProblem,
  STATE_DIGEST_BYTES,
  stateEntryDigest,
  userEventSigningBytes,
} from './codec.ts'
import { lanConfig, type SwimConfig, validateConfig } from './config.ts'
import { InvalidRecordError, InvalidUserEventError, RecordTooLargeError } from './errors.ts'
import { accusationWithinSigned, refutationIncarnation, repairedIncarnation } from './incarnation.ts'
import { type MemberSnapshot, type MemberState, MemberTable } from './member-table.ts'
import type {
  DeadMessage,
  DecodedSimpleMessage,
  ForceLeaveMessage,
  LeaveMessage,
  MemberStatus,
  Message,
  NodeRecord,
  StateEntry,
  SuspectMessage,
  UserEventMessage,
} from './messages.ts'
import { ProbeOrder } from './probe-order.ts'
import { probeTiming, type RttEstimate, updateRtt } from './rtt.ts'
import { acceptAllVerifier, nullSigner, type Signer, type Verifier } from './signing.ts'
import { emptyStats, type SwimStats } from './stats.ts'
import { Suspicion, suspicionTimeouts } from './suspicion.ts'
import {
  LamportClock,
  MAX_USER_EVENT_BODY_BYTES,
  MAX_USER_EVENT_ID_LENGTH,
  MAX_USER_EVENT_LTIME,
  UserEventDedup,
  type UserEvent,
} from './user-events.ts'
import { VerifyCache } from './verify-cache.ts'

export interface SelfInfo {
  id: string
  name: string
  addresses: string[]
  tags?: Record<string, string>
  meta?: Record<string, unknown>
}

export interface SwimOptions {
  self: SelfInfo
  /** Defaults to the `lan` profile. Validated (throws `InvalidConfigError`). */
  config?: SwimConfig
  /** Uniform in [0, 1). The only source of randomness. */
  rng: () => number
  /** Signs this node's alive/leave messages. Defaults to `nullSigner` (simulations only). */
  signer?: Signer
  /** Checks other members' signatures. Defaults to `acceptAllVerifier` (simulations only). */
  verifier?: Verifier
  /**
   * After a restart: the highest incarnation used before; the node starts above it. A value that
   * is not a non-negative safe integer up to `MAX_PLAUSIBLE_INCARNATION` is ignored (treated as 0).
   */
  lastIncarnation?: number
  /** After a restart: the last record version; the node starts above it (same sanity rule). */
  lastVersion?: number
  /**
   * After a restart: the user event Lamport time (`userEventTime`); events fired afterwards are
   * ordered after it. Ignored unless a non-negative safe integer up to `MAX_USER_EVENT_LTIME`.
   */
  lastUserEventTime?: number
  /**
   * Simulations only: start already converged on this shared member list (no join traffic).
   * The snapshot is never mutated; changes go to a per-node overlay.
   */
  initialMembers?: MemberSnapshot
}

export interface MemberView {
  id: string
  name: string
  /** First address (empty if none). */
  address: string
  addresses: string[]
  status: MemberStatus
  incarnation: number
  tags: Record<string, string>
  meta: Record<string, unknown>
  version: number
  /** Another live member with the same name and a lower id owns the name. */
  nameConflict: boolean
}

export type SwimEventType =
  | 'member:join'
  | 'member:update'
  | 'member:suspect'
  | 'member:fail'
  | 'member:leave'
  | 'member:alive'
  | 'member:conflict'
  | 'member:reap'

export interface SwimEvent {
  type: SwimEventType
  member: MemberView
  /** For `member:conflict`: the member that owns the name. */
  winner?: MemberView
}

export interface Output {
  /** Best-effort datagrams (encoded; at most `maxMessageBytes` each). */
  send: { to: string; msg: Uint8Array }[]
  /** Reliable push/pull requests; deliver the peer's reply to `handlePushPullReply`. */
  pushPull: { to: string; state: Uint8Array }[]
  events: SwimEvent[]
  /** User events new to this node, its own included, each once (`fireUserEvent`). */
  userEvents: UserEvent[]
}

export interface PushPullResponse extends Output {
  /** This node's state, to send back to the requester (undefined if the request was dropped). */
  reply: Uint8Array | undefined
}

interface Timer {
  at: number
  run: (now: number) => void
}

interface Probe {
  seq: number
  target: string
  /** When the direct ping left (a direct ack gives a round-trip sample). */
  sentMs: number
  acked: boolean
  /** Judged late once already (`deferLateProbe`). */
  deferred: boolean
  /** Members asked to probe `target` for us (ping-req): the only others whose ack or nack counts. */
  helpers: string[]
  expectedNacks: number
  /** Helpers that sent a nack (a duplicated datagram counts once). */
  nackers: Set<string>
}

interface Relay {
  origin: string
  originSeq: number
  /** The member we pinged for `origin`: the only one whose ack we pass on. */
  target: string
  nack: boolean
}

/** Signature checks remembered (see `VerifyCache`): a few times a large cluster's members. */
const VERIFY_CACHE_ENTRIES = 65_536

const PUSH_PULL_SCALE_THRESHOLD = 32

/**
 * Pause before asking a peer whose reply was cut at the per-exchange caps for the rest: a joiner
 * to a 10,000-member cluster learns it in ~10 s at ≤ `maxPushPullNewMembers` verifies a second.
 */
const PUSH_PULL_CATCH_UP_MS = 1_000

/**
 * Protocol periods to wait for the answer to a digest check (`sync`) before falling back to the
 * full push/pull over the reliable path: a lost datagram must not cost the anti-entropy round,
 * and a loaded peer gets three periods to answer before it is sent a whole state.
 */
const SYNC_TIMEOUT_PERIODS = 3

/** memberlist `pushPullScale`: above 32 members, stretch the interval by ceil(log2 n − log2 32) + 1. */
export function pushPullInterval(intervalMs: number, n: number): number {
  if (n <= PUSH_PULL_SCALE_THRESHOLD) return intervalMs
  const multiplier = Math.ceil(Math.log2(n) - Math.log2(PUSH_PULL_SCALE_THRESHOLD)) + 1
  return intervalMs * multiplier
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}

function emptyOutput(): Output {
  return { send: [], pushPull: [], events: [], userEvents: [] }
}

/** Broadcast-queue key of a user event (member ids never start with it). */
const userEventKey = (id: string) => `user-event:${id}`

export class Swim {
  readonly id: string
  private readonly cfg: SwimConfig
  private readonly rng: () => number
  private readonly signer: Signer
  private readonly verifier: Verifier
  private readonly table: MemberTable
  private readonly order: ProbeOrder
  private readonly queue: BroadcastQueue
  private readonly health: LocalHealth
  private readonly suspicions = new Map<string, Suspicion>()
  /** Suspicions whose end was put off once already because it came in a late tick. */
  private readonly lateSuspicions = new WeakSet<Suspicion>()
  private readonly deadIds = new Set<string>()
  private readonly relays = new Map<number, Relay>()
  private readonly timers = new Map<string, Timer>()
  private readonly counters: SwimStats = emptyStats()
  private readonly verifyCache: VerifyCache
  /** Orders user events (Serf's event clock). */
  private readonly eventClock = new LamportClock()
  private readonly eventDedup = new UserEventDedup()
  /** True while `tick` runs timers that fired more than `lateTimerMs` late. */
  private lateTick = false
  /** When a late timer last raised the Local Health Multiplier. */
  private latePenaltyMs = Number.NEGATIVE_INFINITY
  /** Round trips of direct probes (`rtt.ts`); undefined until the first ack. */
  private rtt: RttEstimate | undefined
  /** The last probe that ended without its direct ack: a late ack still gives an RTT sample. */
  private unanswered: { seq: number; target: string; sentMs: number } | undefined

  private record: NodeRecord
  private recordBytes: Uint8Array
  private incarnation: number
  private sig: Uint8Array
  private leaveSig: Uint8Array | undefined
  private leaving = false
  private started = false
  private probe: Probe | undefined
  /** Per member: when the application last heard from it (`heardFrom`); alive members only. */
  private readonly heard = new Map<string, number>()
  /** Per member: when the application's relay last heard from it (`setRelayed`); alive members only. */
  private relayed = new Map<string, number>()
  /** Members whose last turn was skipped on relayed evidence (and not probed since). */
  private readonly skippedOnRelay = new Set<string>()
  /** Members to probe at the next turns, ahead of the order: their relayed evidence was withdrawn. */
  private readonly owed = new Set<string>()
  /**
   * The turn taken ahead (`takeTurnAhead`): at `at` the order's next member, `id`, would have been
   * skipped on relayed evidence, so the probe timer sleeps through it to the turn after.
   */
  private ahead: { id: string; at: number; intervalMs: number } | undefined
  private out: Output = emptyOutput()
  private stateCache: { version: number; join: boolean; bytes: Uint8Array } | undefined
  private digestCache: { version: number; bytes: Uint8Array } | undefined
  private stateVersion = 0
  /**
   * The `stateVersion` at which a gossip round found no member to send to (-1: none did): until
   * the member table changes, updates wait without a round every `gossipIntervalMs`.
   */
  private gossipStalledAt = -1
  /** The digest check (`sync`) waiting for its answer. */
  private pendingSync: { seq: number; to: string } | undefined
  /** Latest time passed in by the driver (for the calls that take none). */
  private lastNow = Number.NEGATIVE_INFINITY

  constructor(opts: SwimOptions) {
    this.cfg = opts.config ?? { ...lanConfig }
    validateConfig(this.cfg)
    this.rng = opts.rng
    this.signer = opts.signer ?? nullSigner
    this.verifier = opts.verifier ?? acceptAllVerifier
    this.verifyCache = new VerifyCache(this.verifier, VERIFY_CACHE_ENTRIES)
    this.id = opts.self.id
    this.record = {
      id: opts.self.id,
      name: opts.self.name,
      addresses: [...opts.self.addresses],
      tags: { ...(opts.self.tags ?? {}) },
      meta: { ...(opts.self.meta ?? {}) },
      version: repairedIncarnation(opts.lastVersion ?? 0).incarnation + 1,
    }
    this.recordBytes = this.checkedRecordBytes(this.record)
    this.incarnation = repairedIncarnation(opts.lastIncarnation ?? 0).incarnation + 1
    this.sig = this.signer(aliveSigningBytes(this.incarnation, this.recordBytes))
    this.table = new MemberTable(opts.initialMembers?.members, this.id)
    this.order = new ProbeOrder(
      this.rng,
      opts.initialMembers ? { order: opts.initialMembers.order, exclude: this.id } : undefined,
    )
    this.queue = new BroadcastQueue(this.cfg.maxBroadcastQueue)
    const lt = opts.lastUserEventTime
    if (Number.isSafeInteger(lt) && lt! >= 0 && lt! <= MAX_USER_EVENT_LTIME) this.eventClock.witness(lt!)
    this.health = new LocalHealth(this.cfg.awarenessMaxMultiplier)
  }

  // ---------------------------------------------------------------- public API

  /** Arms the protocol timers (staggered randomly) and queues our own alive message. */
  start(nowMs: number): Output {
    this.begin(nowMs)
    this.arm(nowMs)
    return this.take()
  }

  /** Starts (if needed) and asks each seed for a full state exchange (SWIM join via push/pull). */
  join(seedIds: string[], nowMs: number): Output {
    this.begin(nowMs)
    this.arm(nowMs)
    const state = this.encodeState(true)
    for (const seed of seedIds) {
      if (seed === this.id) continue
      this.emitPushPull(seed, state)
    }
    return this.take()
  }

  private arm(nowMs: number): void {
    if (this.started) return
    this.started = true
    this.setTimer('probe', nowMs + this.rng() * this.cfg.probeIntervalMs, (now) => this.probeTick(now))
    const pp = pushPullInterval(this.cfg.pushPullIntervalMs, this.estimatedSize())
    this.setTimer('push-pull', nowMs + this.rng() * pp, (now) => this.pushPullTick(now))
    this.broadcastSelf()
  }

  /**
   * Leaves gracefully: stops probing and push/pull, disseminates a signed leave. Keep calling
   * `tick` for a few gossip intervals (until `pendingBroadcasts()` is 0) before shutting down.
   */
  leave(nowMs: number): Output {
    this.begin(nowMs)
    if (!this.leaving) {
      this.leaving = true
      this.touch()
      this.leaveSig = this.signer(leaveSigningBytes(this.id, this.incarnation))
      const msg: LeaveMessage = { t: 'leave', id: this.id, inc: this.incarnation, sig: this.leaveSig }
      const bytes = encodeMessage(msg)
      this.queue.push(this.id, bytes)
      const targets = this.randomMembers(
        this.cfg.gossipNodes,
        (m) => m.status === 'alive' || m.status === 'suspect',
      )
      for (const to of targets) this.emitSend(to, bytes)
    }
    return this.take()
  }

  /**
   * Runs every timer due at `nowMs`. A timer due more than `lateTimerMs` earlier means this node
   * was not running (Lifeguard §IV-A): its Local Health Multiplier rises (at most once per probe
   * period) before it probes again, and a probe ending now is judged 1 ms later.
   */
  tick(nowMs: number): Output {
    this.begin(nowMs)
    let late = false
    for (const t of this.timers.values()) if (nowMs - t.at > this.cfg.lateTimerMs) late = true
    this.lateTick = late
    // At most one point of health per protocol period: a node that stays slow does not peg the
    // multiplier within a second, and each acked probe takes a point back.
    if (late) {
      this.counters.lateTimers++
      if (nowMs - this.latePenaltyMs >= this.cfg.probeIntervalMs) {
        this.latePenaltyMs = nowMs
        this.health.apply(1)
      }
    }
    for (;;) {
      let key: string | undefined
      let best: Timer | undefined
      for (const [k, t] of this.timers) {
        if (t.at <= nowMs && (best === undefined || t.at < best.at)) {
          key = k
          best = t
        }
      }
      if (key === undefined || best === undefined) break
      this.timers.delete(key)
      best.run(nowMs)
    }
    this.lateTick = false
    return this.take()
  }

  /** Earliest time at which `tick` has work to do (Infinity if none). */
  nextDeadline(): number {
    let min = Number.POSITIVE_INFINITY
    for (const t of this.timers.values()) if (t.at < min) min = t.at
    return min
  }

  /** Handles one inbound datagram from `fromId` (the transport-authenticated sender). */
  handleMessage(fromId: string, bytes: Uint8Array, nowMs: number): Output {
    this.begin(nowMs)
    this.counters.messagesReceived++
    this.counters.bytesReceived += bytes?.length ?? 0
    const r = decodeMessage(bytes, this.cfg.maxMessageBytes)
    if (!r.ok) {
      this.counters.dropped[r.reason]++
      return this.take()
    }
    if (r.msg.t === 'compound') {
      for (const part of r.msg.parts) this.handleSimple(fromId, part, nowMs)
    } else {
      this.handleSimple(fromId, r.msg, nowMs)
    }
    return this.take()
  }

  /**
   * Responder side of push/pull: merges the remote state and returns ours (merged) as the reply.
   * `fromId` is the stream's authenticated peer.
   */
  handlePushPull(fromId: string, remoteState: Uint8Array, nowMs: number): PushPullResponse {
    this.begin(nowMs)
    const merged = this.receiveState(fromId, remoteState, nowMs, true)
    const out = this.take()
    return { ...out, reply: merged ?? undefined }
  }

  /** Requester side of push/pull: merges the peer's reply. */
  handlePushPullReply(fromId: string, remoteState: Uint8Array, nowMs: number): Output {
    this.begin(nowMs)
    const truncatedBefore = this.counters.dropped.newMembers + this.counters.dropped.verifyBudget
    this.receiveState(fromId, remoteState, nowMs, false)
    // The peer knows more than one exchange may add (a join to a big cluster): ask it again soon
    // rather than at the next, scaled, push/pull period. One catch-up is pending at a time.
    if (
      this.counters.dropped.newMembers + this.counters.dropped.verifyBudget > truncatedBefore &&
      !this.timers.has('push-pull-catch-up') &&
      !this.leaving
    ) {
      this.setTimer('push-pull-catch-up', nowMs + PUSH_PULL_CATCH_UP_MS, () => {
        if (!this.leaving) this.emitPushPull(fromId, this.encodeState(false))
      })
    }
    return this.take()
  }

  /**
   * Changes this node's record (bumps version and incarnation, re-signs, disseminates).
   * Throws `InvalidRecordError` or `RecordTooLargeError` and changes nothing on bad input.
   * `nowMs` (default: the latest time passed in) schedules the gossip round that carries it.
   */
  updateLocalRecord(
    update: {
      tags?: Record<string, string>
      meta?: Record<string, unknown>
      addresses?: string[]
      name?: string
    },
    nowMs?: number,
  ): Output {
    this.begin(nowMs)
    const next: NodeRecord = {
      id: this.id,
      name: update.name ?? this.record.name,
      addresses: update.addresses ? [...update.addresses] : this.record.addresses,
      tags: update.tags ? { ...update.tags } : this.record.tags,
      meta: update.meta ? { ...update.meta } : this.record.meta,
      version: this.record.version + 1,
    }
    const bytes = this.checkedRecordBytes(next)
    this.record = next
    this.recordBytes = bytes
    this.incarnation++
    this.resign()
    return this.take()
  }

  /**
   * Fires a user event: stamps it with the next Lamport time, signs it, delivers it here (in
   * `userEvents` of the output) and queues it for dissemination to every member. `id` must be
   * unique (a UUID); `body` is opaque. Throws `InvalidUserEventError` and changes nothing when
   * the id is empty or too long or the body too large. `nowMs` as for `updateLocalRecord`.
   */
  fireUserEvent(id: string, body: Uint8Array, nowMs?: number): Output {
    this.begin(nowMs)
    if (id.length === 0 || id.length > MAX_USER_EVENT_ID_LENGTH)
      throw new InvalidUserEventError(`user event id must be 1-${MAX_USER_EVENT_ID_LENGTH} characters`)
    if (body.length > MAX_USER_EVENT_BODY_BYTES)
      throw new InvalidUserEventError(
        `user event is ${body.length} bytes encoded, more than ${MAX_USER_EVENT_BODY_BYTES}`,
      )
    if (this.eventDedup.has(id)) throw new InvalidUserEventError(`user event id ${id} was used already`)
    const lt = this.eventClock.increment()
    const sig = this.signer(userEventSigningBytes(this.id, lt, id, body))
    this.acceptUserEvent({ t: 'user', from: this.id, lt, id, body, sig })
    return this.take()
  }

  /** The user event Lamport time: persist it to keep ordering events after a restart. */
  get userEventTime(): number {
    return this.eventClock.time
  }

  /** All known members, self included (self first). */
  members(): MemberView[] {
    const owners = new Map<string, string>()
    const live: { id: string; name: string }[] = [{ id: this.id, name: this.record.name }]
    for (const m of this.table.values()) {
      if (m.status === 'alive' || m.status === 'suspect') live.push({ id: m.id, name: m.record.name })
    }
    for (const l of live) {
      const o = owners.get(l.name)
      if (o === undefined || l.id < o) owners.set(l.name, l.id)
    }
    const flag = (v: MemberView): MemberView => {
      const o = owners.get(v.name)
      v.nameConflict = (v.status === 'alive' || v.status === 'suspect') && o !== undefined && o !== v.id
      return v
    }
    const out = [flag(this.selfView())]
    for (const m of this.table.values()) out.push(flag(view(m)))
    return out
  }

  /** One member's view (self included), or undefined if unknown. */
  member(id: string): MemberView | undefined {
    if (id === this.id) return this.selfView()
    const m = this.table.get(id)
    return m ? view(m) : undefined
  }

  /** Id of the live member owning `name` (lowest id among live claimants), if any. */
  nameOwner(name: string): string | undefined {
    let owner: string | undefined = !this.leaving && this.record.name === name ? this.id : undefined
    for (const m of this.table.values()) {
      if ((m.status === 'alive' || m.status === 'suspect') && m.record.name === name) {
        if (owner === undefined || m.id < owner) owner = m.id
      }
    }
    return owner
  }

  /** Members known (self included), including dead/left ones not reaped yet. */
  estimatedSize(): number {
    return this.table.size + 1
  }

  /** Current own incarnation: persist it to restart above it (`lastIncarnation`). */
  get localIncarnation(): number {
    return this.incarnation
  }

  get localRecord(): Readonly<NodeRecord> {
    return this.record
  }

  /** Updates still queued for dissemination. */
  pendingBroadcasts(): number {
    return this.queue.size
  }

  stats(): SwimStats {
    const timing = this.probeTiming()
    return {
      ...this.counters,
      dropped: { ...this.counters.dropped },
      probeTimeoutMs: timing.timeoutMs,
      probeIntervalMs: timing.intervalMs,
      signatureChecks: this.verifyCache.checks,
      signatureCacheHits: this.verifyCache.hits,
      localHealth: this.health.health,
    }
  }

  // ---------------------------------------------------------------- output plumbing

  private begin(nowMs?: number): void {
    if (nowMs !== undefined && nowMs > this.lastNow) this.lastNow = nowMs
    this.out = emptyOutput()
  }

  /** The output of this call (every public method starts with `begin`, which starts the next). */
  private take(): Output {
    this.revisitAhead()
    this.armGossip()
    return this.out
  }

  /**
   * Schedules a gossip round at once when updates wait and none is scheduled (the queue was
   * empty); `gossipTick` keeps the rounds `gossipIntervalMs` apart while updates remain. An idle
   * node (nothing queued) has no gossip timer at all, instead of waking every interval for nothing.
   */
  private armGossip(): void {
    if (!this.started || this.queue.size === 0 || this.timers.has('gossip')) return
    if (this.gossipStalledAt === this.stateVersion) return
    this.setTimer('gossip', this.lastNow, (t) => this.gossipTick(t))
  }

  private emitSend(to: string, msg: Uint8Array): void {
    this.counters.messagesSent++
    this.counters.bytesSent += msg.length
    this.out.send.push({ to, msg })
  }

  private emitPushPull(to: string, state: Uint8Array): void {
    this.counters.pushPullSent++
    this.counters.pushPullBytesSent += state.length
    this.out.pushPull.push({ to, state })
  }

  private emit(type: SwimEventType, m: MemberState, winner?: MemberView): void {
    const e: SwimEvent = { type, member: view(m) }
    if (winner) e.winner = winner
    this.out.events.push(e)
  }

  private setTimer(key: string, at: number, run: (now: number) => void): void {
    this.timers.set(key, { at, run })
  }

  private touch(): void {
    this.stateVersion++
  }

  /** Sends `primary` to `to` with as many queued updates as fit (and `first` ahead of them). */
  private sendWithPiggyback(to: string, primary: Message, first: Uint8Array[] = []): void {
    const p = encodeMessage(primary)
    const parts = [p, ...first]
    let budget = this.cfg.maxMessageBytes - COMPOUND_OVERHEAD
    for (const x of parts) budget -= x.length + compoundPartOverhead(x.length)
    const extra = this.queue.take(budget, compoundPartOverhead, this.retransmitLimit())
    this.counters.updatesSent += extra.length + first.length
    this.emitSend(to, packParts(parts.concat(extra)))
  }

  private retransmitLimit(): number {
    return retransmitLimit(this.cfg.retransmitMult, this.estimatedSize())
  }

  // ---------------------------------------------------------------- probing (SWIM §3.1, §4.3)

  /**
   * The embedding application heard from member `id` at `nowMs` over a channel it authenticated
   * itself (the agent: a Raft message from that peer, over mutual TLS). A probe is evidence that a
   * member is alive now; so is this. The next probe of that member is skipped if the evidence is
   * younger than the probe interval, and then taken as usual: a member that stops sending is
   * probed within one more interval. Suspects are always probed (the buddy system tells them
   * first). Unknown ids are ignored.
   */
  heardFrom(id: string, nowMs: number): void {
    const m = this.table.get(id)
    if (m !== undefined && m.status === 'alive' && id !== this.id) this.heard.set(id, nowMs)
  }

  /**
   * Evidence of life passed on: a member this node trusts over an authenticated channel of the
   * application (the agent: the Raft leader it follows, on its heartbeats) heard from each of
   * `entries` at `heardAtMs` (on this node's clock). It replaces what the last call said: a member
   * left out is probed at its turn again. The next probe of a listed alive member is skipped while
   * the relay's contact is younger than `relayedEvidenceIntervals` probe intervals (the config
   * explains the number; 0 ignores relays). Suspects are always probed; unknown ids, this node and
   * times ahead of `nowMs` are ignored.
   */
  setRelayed(entries: readonly { id: string; heardAtMs: number }[], nowMs: number): void {
    if (nowMs > this.lastNow) this.lastNow = nowMs
    const before = this.relayed
    this.relayed = new Map()
    if (this.cfg.relayedEvidenceIntervals > 0) {
      for (const e of entries) {
        const m = this.table.get(e.id)
        if (m === undefined || m.status !== 'alive' || e.id === this.id || !(e.heardAtMs <= nowMs)) continue
        this.relayed.set(e.id, e.heardAtMs)
      }
    }
    // Left off a list that still vouches for others: the relay stopped hearing from that member.
    // An empty list (the relay changed, or says nothing) tells nothing against any one member.
    const specific = this.relayed.size > 0
    for (const id of before.keys()) if (!this.relayed.has(id)) this.withdrawRelayed(id, specific)
    this.revisitAhead()
  }

  /**
   * The relay no longer vouches for `id`. If its turn was skipped on that word and the withdrawal
   * says something of `id` itself (`owed`: left off a list, or its connections closed), it is
   * probed at the next turn, ahead of the order: otherwise a member that died just after its turn
   * was skipped would wait a whole round (n − 1 turns) for its next one, and a larger cluster's
   * survivors would each confirm its death that much later. A relay that falls silent (its lists
   * emptied at a leader change) owes nobody a probe: the next turns go on in order, to the member
   * that may have failed with it.
   */
  private withdrawRelayed(id: string, owed = true): void {
    this.relayed.delete(id)
    if (this.skippedOnRelay.delete(id) && owed) this.owed.add(id)
  }

  /**
   * A turn that would only skip costs an idle node a wake-up for nothing (an idle Raft follower's
   * turns are all skips: its leader on `heardFrom`, the other voters on the leader's relay). After
   * a turn that sent no probe, the next one is taken at once if the order's next member would be
   * skipped then on what the relay has already said (its contact still younger than
   * `relayedEvidenceIntervals` intervals at that time), and the timer sleeps to the turn after.
   * Only relayed evidence qualifies (`heardFrom` must be younger than one interval at the turn, so
   * it never covers a turn ahead), and only one turn ahead; a turn that starts a round starts it
   * (reshuffles the order) a turn early. Whatever would have changed that turn brings it back
   * (`revisitAhead`): no member is probed later than without it.
   */
  private takeTurnAhead(now: number, intervalMs: number): void {
    if (this.probe !== undefined || this.leaving || this.owed.size > 0) return
    const inTable = (x: string): boolean => this.table.get(x) !== undefined
    const id = this.order.peek(inTable)
    if (id === undefined) return
    const at = now + intervalMs
    if (!this.coveredByRelay(id, at, intervalMs)) return
    this.order.next(inTable) // the same id
    this.heard.delete(id)
    this.counters.probesSkipped++
    this.counters.probesSkippedRelayed++
    this.skippedOnRelay.add(id)
    this.ahead = { id, at, intervalMs }
    this.setTimer('probe', at + intervalMs, (t) => this.probeTick(t))
  }

  private coveredByRelay(id: string, at: number, intervalMs: number): boolean {
    const m = this.table.get(id)
    const relayed = this.relayed.get(id)
    return (
      m !== undefined &&
      m.status === 'alive' &&
      relayed !== undefined &&
      at - relayed < this.cfg.relayedEvidenceIntervals * intervalMs
    )
  }

  /**
   * The turn taken ahead is given back its time when, before that time, its member stopped being
   * covered (withdrawn, suspected, gone: a member still probeable is owed a probe then) or another
   * member became owed one: as without the lookahead, that turn probes.
   */
  private revisitAhead(): void {
    const a = this.ahead
    if (a === undefined) return
    if (a.at <= this.lastNow) {
      this.ahead = undefined // its time has passed: the turns after it go on as usual
      return
    }
    const covered = this.coveredByRelay(a.id, a.at, a.intervalMs)
    if (covered && this.owed.size === 0) return
    if (!covered) {
      const status = this.table.get(a.id)?.status
      if (status === 'alive' || status === 'suspect') this.owed.add(a.id)
      this.skippedOnRelay.delete(a.id)
    }
    this.ahead = undefined
    this.setTimer('probe', a.at, (t) => this.probeTick(t))
  }

  /**
   * The application lost its authenticated channel to `id` (its connections closed, as they do at
   * once when a process is killed): what it or its relay said of `id` no longer holds, so `id` is
   * probed at its next turn, as without `heardFrom`.
   */
  lostContact(id: string): void {
    this.heard.delete(id)
    this.withdrawRelayed(id)
    this.revisitAhead()
  }

  /** The member this turn probes: one owed a probe (`withdrawRelayed`), else the next in order. */
  private nextTarget(): MemberState | undefined {
    const probeable = (m: MemberState | undefined): m is MemberState =>
      m !== undefined && (m.status === 'alive' || m.status === 'suspect')
    for (const id of this.owed) {
      this.owed.delete(id)
      const m = this.table.get(id)
      if (probeable(m)) return m
    }
    for (let i = 0, n = this.order.length; i < n; i++) {
      const id = this.order.next((x) => this.table.get(x) !== undefined)
      if (id === undefined) return undefined
      const m = this.table.get(id)
      if (probeable(m)) return m
    }
    return undefined
  }

  /**
   * Whether this turn's probe of `target` is skipped: it is alive and the application heard from it
   * within the interval (`heardFrom`, used once), or its relay within `relayedEvidenceIntervals`.
   */
  private skipOnEvidence(target: MemberState, now: number, intervalMs: number): boolean {
    const heard = this.heard.get(target.id)
    this.heard.delete(target.id)
    const relayed = this.relayed.get(target.id)
    if (target.status === 'alive' && heard !== undefined && now - heard < intervalMs) {
      this.counters.probesSkipped++
      return true
    }
    if (
      target.status === 'alive' &&
      relayed !== undefined &&
      now - relayed < this.cfg.relayedEvidenceIntervals * intervalMs
    ) {
      this.counters.probesSkipped++
      this.counters.probesSkippedRelayed++
      this.skippedOnRelay.add(target.id)
      return true
    }
    this.skippedOnRelay.delete(target.id)
    return false
  }

  /** What this node holds as evidence of `id`'s life, forgotten (the member is reaped). */
  private forgetEvidence(id: string): void {
    this.heard.delete(id)
    this.relayed.delete(id)
    this.skippedOnRelay.delete(id)
    this.owed.delete(id)
  }

  private probeTick(now: number): void {
    this.reap(now)
    const pending = this.probe
    if (pending && this.deferLateProbe(pending, now)) {
      this.setTimer('probe', now + 1, (t) => this.probeTick(t))
      return
    }
    if (pending) this.probeEnd(now)
    const timing = this.probeTiming()
    this.setTimer('probe', now + timing.intervalMs, (t) => this.probeTick(t))
    this.ahead = undefined
    if (this.leaving) return
    const target = this.nextTarget()
    if (!target || this.skipOnEvidence(target, now, timing.intervalMs)) {
      this.takeTurnAhead(now, timing.intervalMs)
      return
    }
    const seq = this.nextSeq()
    this.probe = {
      seq,
      target: target.id,
      sentMs: now,
      acked: false,
      deferred: false,
      helpers: [],
      expectedNacks: 0,
      nackers: new Set(),
    }
    this.counters.probes++
    // Lifeguard §IV-C buddy system: a suspect learns first thing that it is suspected.
    const first: Uint8Array[] = []
    if (target.status === 'suspect') {
      first.push(encodeMessage({ t: 'suspect', id: target.id, inc: target.incarnation, from: this.id }))
    }
    this.sendWithPiggyback(target.id, { t: 'ping', seq, target: target.id }, first)
    this.setTimer('probe-timeout', now + timing.timeoutMs, (t) => this.probeTimeout(t))
    this.setTimer('probe-end', now + timing.intervalMs, (t) => this.probeEnd(t))
  }

  private probeTimeout(_now: number): void {
    const p = this.probe
    if (!p || p.acked) return
    const helpers = this.randomMembers(this.cfg.indirectChecks, (m) => m.status === 'alive', p.target)
    if (helpers.length > 0) this.counters.indirectProbes++
    const bytes = encodeMessage({ t: 'ping-req', seq: p.seq, target: p.target, nack: true })
    for (const h of helpers) this.emitSend(h, bytes)
    p.helpers = helpers
    p.expectedNacks = helpers.length
  }

  /**
   * A probe that ends while this node was not running (a late tick) is judged 1 ms later, once:
   * its ack may sit unread in our socket, and the driver reads it in between. Returns true if
   * deferred.
   */
  private deferLateProbe(p: Probe, now: number): boolean {
    if (!this.lateTick || p.acked || p.deferred) return false
    p.deferred = true
    this.setTimer('probe-end', now + 1, (t) => this.probeEnd(t))
    return true
  }

  private probeEnd(now: number): void {
    const p = this.probe
    if (p && this.deferLateProbe(p, now)) return
    this.probe = undefined
    this.timers.delete('probe-timeout')
    this.timers.delete('probe-end')
    if (!p || p.acked) return
    this.unanswered = { seq: p.seq, target: p.target, sentMs: p.sentMs }
    this.counters.probeFailures++
    // Lifeguard §IV-A: missed nacks mean *we* are the problem; with no helpers, any failure counts.
    this.health.apply(p.expectedNacks > 0 ? p.expectedNacks - p.nackers.size : 1)
    const m = this.table.get(p.target)
    if (m && (m.status === 'alive' || m.status === 'suspect')) {
      this.onSuspect({ t: 'suspect', id: m.id, inc: m.incarnation, from: this.id }, now)
    }
  }

  /**
   * An ack counts only from whom it can come (SWIM §3.1): the probed member, or a member we asked
   * to relay (ping-req); a relayed ack is passed on only if it comes from the member pinged. The
   * sequence number alone proves nothing: anyone who saw a ping knows it.
   */
  private onAck(from: string, seq: number, now: number): void {
    this.counters.acksReceived++
    const p = this.probe
    if (p && p.seq === seq && !p.acked) {
      if (from !== p.target && !p.helpers.includes(from)) {
        this.counters.dropped.sender++
        return
      }
      if (from === p.target) this.rtt = updateRtt(this.rtt, now - p.sentMs)
      p.acked = true
      this.health.apply(-1)
      this.probe = undefined
      this.timers.delete('probe-timeout')
      this.timers.delete('probe-end')
      return
    }
    const u = this.unanswered
    if (u && u.seq === seq && from === u.target) {
      // Too late for its probe, but the network is telling us how slow it is.
      this.rtt = updateRtt(this.rtt, now - u.sentMs)
      this.unanswered = undefined
      return
    }
    const r = this.relays.get(seq)
    if (r) {
      if (from !== r.target) {
        this.counters.dropped.sender++
        return
      }
      this.relays.delete(seq)
      this.timers.delete(`relay:${seq}`)
      this.emitSend(r.origin, encodeMessage({ t: 'ack', seq: r.originSeq }))
    }
  }

  private onPingReq(from: string, seq: number, target: string, nack: boolean, now: number): void {
    if (target === this.id) {
      this.sendWithPiggyback(from, { t: 'ack', seq })
      return
    }
    this.counters.pingReqsServed++
    const local = this.nextSeq()
    this.relays.set(local, { origin: from, originSeq: seq, target, nack })
    this.sendWithPiggyback(target, { t: 'ping', seq: local, target })
    // Lifeguard §IV-C: tell the requester we tried but got nothing, before its probe period ends
    // (it sent the ping-req one probe timeout into a period of about two probe timeouts).
    const timing = this.measuredTiming()
    this.setTimer(`relay:${local}`, now + Math.floor(timing.timeoutMs * 0.8), () => {
      const r = this.relays.get(local)
      if (!r) return
      if (r.nack) {
        this.counters.nacksSent++
        this.emitSend(r.origin, encodeMessage({ t: 'nack', seq: r.originSeq }))
      }
      // Keep forwarding a late ack until the end of a probe interval, then forget.
      this.setTimer(`relay:${local}`, now + timing.intervalMs, () => this.relays.delete(local))
    })
  }

  /**
   * Probe timeout and period: the larger of the profile's scaled by the Local Health Multiplier
   * (Lifeguard §IV-A) and those the measured round trips call for (`probeTiming`). Not their
   * product: a round trip measured by a slow node already includes its own slowness.
   */
  private probeTiming(): { timeoutMs: number; intervalMs: number } {
    const measured = this.measuredTiming()
    return {
      timeoutMs: Math.max(measured.timeoutMs, this.health.scale(this.cfg.probeTimeoutMs)),
      intervalMs: Math.max(measured.intervalMs, this.health.scale(this.cfg.probeIntervalMs)),
    }
  }

  /** What the measured round trips alone call for (a relay's nack deadline: the requester's view). */
  private measuredTiming(): { timeoutMs: number; intervalMs: number } {
    return probeTiming(this.rtt, {
      minTimeoutMs: this.cfg.probeTimeoutMs,
      maxTimeoutMs: this.cfg.probeTimeoutMaxMs,
      minIntervalMs: this.cfg.probeIntervalMs,
    })
  }

  /**
   * A random 32-bit sequence number (not a counter: a member that saw one of our pings could
   * otherwise predict the next and answer it first), unused by our probe and relays.
   */
  private nextSeq(): number {
    for (;;) {
      const seq = Math.floor(this.rng() * 0x1_0000_0000) >>> 0
      if (seq !== this.probe?.seq && seq !== this.pendingSync?.seq && !this.relays.has(seq)) return seq
    }
  }

  /** Up to `k` distinct random members (not self, not `exclude`) accepted by `filter`. */
  private randomMembers(k: number, filter: (m: MemberState) => boolean, exclude?: string): string[] {
    const n = this.order.length
    const out: string[] = []
    if (n === 0 || k <= 0) return out
    for (let i = 0; i < 3 * n && out.length < k; i++) {
      const id = this.order.at(Math.floor(this.rng() * n))
      if (id === this.id || id === exclude || out.includes(id)) continue
      const m = this.table.get(id)
      if (m && filter(m)) out.push(id)
    }
    return out
  }

  // ---------------------------------------------------------------- gossip, push/pull, reaping

  /** One gossip round (SWIM §4.1), and the next one `gossipIntervalMs` later while updates remain. */
  private gossipTick(now: number): void {
    if (this.queue.size === 0) return
    const targets = this.randomMembers(this.cfg.gossipNodes, (m) => {
      if (m.status === 'alive' || m.status === 'suspect') return true
      return m.status === 'dead' && now - m.stateChangeMs < this.cfg.gossipToTheDeadMs
    })
    if (targets.length === 0) {
      // Nobody to gossip to (a node alone): no rounds until the member table changes.
      this.gossipStalledAt = this.stateVersion
      return
    }
    this.gossipStalledAt = -1
    const limit = this.retransmitLimit()
    for (const to of targets) {
      const parts = this.queue.take(this.cfg.maxMessageBytes - COMPOUND_OVERHEAD, compoundPartOverhead, limit)
      if (parts.length === 0) break
      this.counters.updatesSent += parts.length
      this.emitSend(to, packParts(parts))
    }
    if (this.queue.size > 0)
      this.setTimer('gossip', now + this.cfg.gossipIntervalMs, (t) => this.gossipTick(t))
  }

  private reap(now: number): void {
    for (const id of this.deadIds) {
      const m = this.table.get(id)
      if (!m || (m.status !== 'dead' && m.status !== 'left')) {
        this.deadIds.delete(id)
      } else if (now - m.stateChangeMs >= this.cfg.reapTimeoutMs) {
        this.deadIds.delete(id)
        this.table.delete(id)
        this.forgetEvidence(id)
        this.queue.remove(id)
        this.touch()
        this.emit('member:reap', m)
      }
    }
  }

  private pushPullTick(now: number): void {
    const interval = pushPullInterval(this.cfg.pushPullIntervalMs, this.estimatedSize())
    this.setTimer('push-pull', now + interval, (t) => this.pushPullTick(t))
    if (this.leaving) return
    const [to] = this.randomMembers(1, (m) => m.status === 'alive')
    if (to !== undefined) this.startSync(to, now)
    // Serf-style reconnect: with probability dead/known, also exchange state with one member we
    // hold as dead, so the two sides of a healed partition find each other again even after
    // gossip-to-the-dead has stopped (SWIM alone never contacts dead members).
    if (this.deadIds.size === 0) return
    const dead: string[] = []
    for (const id of this.deadIds) if (this.table.get(id)?.status === 'dead') dead.push(id)
    if (dead.length > 0 && this.rng() < dead.length / this.estimatedSize()) {
      this.emitPushPull(dead[Math.floor(this.rng() * dead.length)]!, this.encodeState(false))
    }
  }

  /**
   * Anti-entropy in one datagram each way: send `to` our state digest; its `sync-ack` tells
   * whether the states differ, and only then is the full state exchanged (`onSyncAck`). Without
   * an answer within `SYNC_TIMEOUT_PERIODS` protocol periods the full exchange runs anyway, over
   * the reliable path, as it always did.
   */
  private startSync(to: string, now: number): void {
    const seq = this.nextSeq()
    this.pendingSync = { seq, to }
    this.counters.stateSyncs++
    this.sendWithPiggyback(to, { t: 'sync', seq, digest: this.stateDigest() })
    const wait = SYNC_TIMEOUT_PERIODS * this.probeTiming().intervalMs
    this.setTimer('sync-timeout', now + wait, () => {
      if (this.pendingSync?.seq !== seq) return
      this.pendingSync = undefined
      if (!this.leaving) this.emitPushPull(to, this.encodeState(false))
    })
  }

  /**
   * The answer to our `sync`, from the member asked only (a random sequence number, as acks):
   * equal digests mean the full exchange would change nothing on either side.
   */
  private onSyncAck(from: string, seq: number, digest: Uint8Array): void {
    const p = this.pendingSync
    if (p === undefined || p.seq !== seq) return
    if (from !== p.to) {
      this.counters.dropped.sender++
      return
    }
    this.pendingSync = undefined
    this.timers.delete('sync-timeout')
    if (bytesEqual(digest, this.stateDigest())) {
      this.counters.stateSyncMatches++
      return
    }
    if (!this.leaving) this.emitPushPull(from, this.encodeState(false))
  }

  /**
   * A fingerprint of everything a push/pull state carries that a merge acts on: the XOR of
   * `stateEntryDigest` over every known member and ourselves. Recomputed only after a change.
   */
  stateDigest(): Uint8Array {
    const c = this.digestCache
    if (c && c.version === this.stateVersion) return c.bytes
    const st = this.leaving ? 'left' : 'alive'
    const bytes = stateEntryDigest(this.id, st, this.incarnation, this.incarnation, this.sig)
    for (const m of this.table.values()) {
      const d = entryDigest(m)
      for (let i = 0; i < STATE_DIGEST_BYTES; i++) bytes[i]! ^= d[i]!
    }
    this.digestCache = { version: this.stateVersion, bytes }
    return bytes
  }

  private encodeState(join: boolean): Uint8Array {
    const c = this.stateCache
    if (c && c.version === this.stateVersion && c.join === join) return c.bytes
    const self: StateEntry = {
      id: this.id,
      st: this.leaving ? 'left' : 'alive',
      inc: this.incarnation,
      ri: this.incarnation,
      rec: this.recordBytes,
      sig: this.sig,
    }
    if (this.leaveSig) self.lsig = this.leaveSig
    const entries = [encodeStateEntry(self)]
    for (const m of this.table.values()) entries.push(entryBytes(m))
    const bytes = framePushPull(join, entries)
    this.stateCache = { version: this.stateVersion, join, bytes }
    return bytes
  }

  /** Decodes and merges a remote state; returns our state for a reply (if `reply`), or null. */
  private receiveState(via: string, bytes: Uint8Array, now: number, reply: boolean): Uint8Array | null {
    this.counters.pushPullReceived++
    this.counters.pushPullBytesReceived += bytes?.length ?? 0
    const r = decodePushPull(bytes, this.cfg.maxPushPullBytes, this.cfg.maxPushPullMembers)
    if (!r.ok) {
      this.counters.dropped[r.reason]++
      return null
    }
    // Unlike memberlist we merge before answering: a refutation triggered by the request (we were
    // dead on the other side of a healed partition) then travels back in the reply at once.
    this.mergeState(r.msg.members, now, via)
    if (!reply) return null
    const ours = this.encodeState(false)
    this.counters.pushPullSent++
    this.counters.pushPullBytesSent += ours.length
    return ours
  }

  /**
   * memberlist `mergeState`: alive → alive rules; suspect/dead → suspect (we verify ourselves);
   * left → leave. `via` is the exchange's authenticated peer. One exchange adds at most
   * `maxPushPullNewMembers` members and runs at most `maxPushPullVerifications` signature checks
   * (cached ones are free); entries past either are dropped, counted, and come again next time.
   */
  private mergeState(entries: StateEntry[], now: number, via: string): void {
    const checksBefore = this.verifyCache.checks
    let added = 0
    for (const e of entries) {
      if (e.id === this.id) {
        this.mergeSelfEntry(e)
        continue
      }
      const m = this.table.get(e.id)
      const newer = e.st === 'alive' && (m === undefined || e.ri > m.incarnation)
      const leaving =
        e.st === 'left' &&
        e.lsig !== undefined &&
        m !== undefined &&
        m.status !== 'dead' &&
        m.status !== 'left' &&
        e.inc >= m.incarnation
      if ((newer || leaving) && this.verifyCache.checks - checksBefore >= this.cfg.maxPushPullVerifications) {
        this.counters.dropped.verifyBudget++
        continue
      }
      if (newer && m === undefined) {
        if (added >= this.cfg.maxPushPullNewMembers) {
          this.counters.dropped.newMembers++
          continue
        }
        added++
      }
      if (newer) this.onAlive(e.id, e.ri, e.rec, e.sig, undefined, now)
      switch (e.st) {
        case 'alive':
          break
        case 'suspect':
        case 'dead':
          if (!this.accusationPlausible(e.id, e.inc)) {
            this.counters.dropped.incarnation++
            break
          }
          this.onSuspect({ t: 'suspect', id: e.id, inc: e.inc, from: this.id }, now, via)
          break
        case 'left':
          if (leaving) this.onLeave({ t: 'leave', id: e.id, inc: e.inc, sig: e.lsig! }, now)
          break
      }
    }
  }

  /**
   * What a peer holds about us. A record of ours newer than (or different from) the one we run is
   * believed only with our own signature on it (a restart that lost `gossip.json`): we jump above
   * it. An accusation is believed only within what we signed, plus one.
   */
  private mergeSelfEntry(e: StateEntry): void {
    if (this.leaving) return
    let signed = this.incarnation
    if (e.ri > this.incarnation || (e.ri === this.incarnation && !bytesEqual(e.rec, this.recordBytes))) {
      if (!this.verifyAlive(this.id, e.ri, e.rec, e.sig)) {
        this.counters.dropped.forged++
        return
      }
      if (e.st === 'alive') {
        this.refute(e.ri, false)
        return
      }
      signed = e.ri
    }
    if (e.st === 'alive') return
    if (!accusationWithinSigned(e.inc, signed)) {
      this.counters.dropped.incarnation++
      return
    }
    if (e.inc >= this.incarnation) this.refute(e.inc, e.st === 'suspect')
  }

  // ---------------------------------------------------------------- state rules (memberlist state.go)

  private handleSimple(from: string, msg: DecodedSimpleMessage, now: number): void {
    switch (msg.t) {
      case 'ping':
        if (msg.target !== this.id) return
        this.sendWithPiggyback(from, { t: 'ack', seq: msg.seq })
        return
      case 'ping-req':
        this.onPingReq(from, msg.seq, msg.target, msg.nack, now)
        return
      case 'ack':
        this.onAck(from, msg.seq, now)
        return
      case 'nack':
        this.counters.nacksReceived++
        if (this.probe && this.probe.seq === msg.seq) {
          if (this.probe.helpers.includes(from)) this.probe.nackers.add(from)
          else this.counters.dropped.sender++
        }
        return
      case 'alive':
        if (msg.record.id === this.id) {
          this.aliveAboutSelf(msg.inc, msg.rec, msg.sig)
          return
        }
        this.onAlive(msg.record.id, msg.inc, msg.rec, msg.sig, msg.record, now)
        return
      case 'suspect':
      case 'dead':
        if (!this.accusationPlausible(msg.id, msg.inc)) {
          this.counters.dropped.incarnation++
          return
        }
        if (this.answerStaleAccusation(from, msg.id, msg.inc)) return
        if (msg.t === 'suspect') this.onSuspect(msg, now, from)
        else this.onDead(msg, now)
        return
      case 'leave':
        this.onLeave(msg, now)
        return
      case 'fleave':
        this.onForceLeave(msg, now)
        return
      case 'user':
        this.onUserEvent(msg)
        return
      case 'sync':
        this.sendWithPiggyback(from, { t: 'sync-ack', seq: msg.seq, digest: this.stateDigest() })
        return
      case 'sync-ack':
        this.onSyncAck(from, msg.seq, msg.digest)
        return
    }
  }

  /**
   * A user event from the network: new ones (by id) from a known
   * member with a valid signature are delivered and passed on; copies are ignored; one whose
   * origin is unknown or whose signature does not verify is dropped as forged (never relayed).
   */
  private onUserEvent(msg: UserEventMessage): void {
    if (this.eventDedup.has(msg.id)) return
    if (msg.from !== this.id && this.table.get(msg.from) === undefined) {
      this.counters.dropped.forged++
      return
    }
    const signed = userEventSigningBytes(msg.from, msg.lt, msg.id, msg.body)
    if (!this.verifyCache.verify('user', msg.from, msg.lt, signed, msg.sig)) {
      this.counters.dropped.forged++
      return
    }
    this.eventClock.witness(msg.lt)
    this.acceptUserEvent(msg)
  }

  private acceptUserEvent(msg: UserEventMessage): void {
    this.eventDedup.remember(msg.id)
    this.queue.push(userEventKey(msg.id), encodeMessage(msg))
    this.out.userEvents.push({ origin: msg.from, ltime: msg.lt, id: msg.id, body: msg.body })
  }

  /**
   * An accusation against `id` at `inc` is believed only within what `id` itself has signed, plus
   * one (`accusationWithinSigned`): for ourselves our own incarnation, for another member the
   * incarnation of the signed alive record we hold. An unknown member is ignored later anyway.
   */
  private accusationPlausible(id: string, inc: number): boolean {
    if (id === this.id) return accusationWithinSigned(inc, this.incarnation)
    const m = this.table.get(id)
    return m === undefined || accusationWithinSigned(inc, m.recordIncarnation)
  }

  /** `id`'s signature over an alive at `inc` with record `rec`, checked once per distinct input. */
  private verifyAlive(id: string, inc: number, rec: Uint8Array, sig: Uint8Array): boolean {
    return this.verifyCache.verify('alive', id, inc, aliveSigningBytes(inc, rec), sig)
  }

  private verifyLeave(id: string, inc: number, sig: Uint8Array): boolean {
    return this.verifyCache.verify('leave', id, inc, leaveSigningBytes(id, inc), sig)
  }

  /**
   * `from` passed on an accusation against an incarnation of `id` older than the alive one we
   * hold: it missed the refutation, which nobody re-gossips once disseminated, and would declare
   * a live member dead when its suspicion times out. Send it the signed alive we hold, directly.
   * (Self-limiting: only nodes holding stale suspicions send such messages.) Returns true if stale.
   */
  private answerStaleAccusation(from: string, id: string, inc: number): boolean {
    if (id === this.id) {
      if (inc >= this.incarnation) return false
      if (!this.leaving && from !== this.id) {
        this.emitSend(
          from,
          encodeMessage({ t: 'alive', inc: this.incarnation, rec: this.recordBytes, sig: this.sig }),
        )
      }
      return true
    }
    const m = this.table.get(id)
    if (m?.status !== 'alive' || inc >= m.incarnation) return false
    if (from !== id && from !== this.id) {
      this.emitSend(
        from,
        encodeMessage({ t: 'alive', inc: m.recordIncarnation, rec: m.recordBytes, sig: m.sig }),
      )
    }
    return true
  }

  /** An alive about us that is not ours: a record from a previous run. Jump above it. */
  private aliveAboutSelf(inc: number, rec: Uint8Array, sig: Uint8Array): void {
    if (this.leaving) return
    if (inc < this.incarnation) return
    if (inc === this.incarnation && bytesEqual(rec, this.recordBytes) && bytesEqual(sig, this.sig)) return
    if (!this.verifyAlive(this.id, inc, rec, sig)) {
      this.counters.dropped.forged++
      return
    }
    this.refute(inc, false)
  }

  /** memberlist `aliveNode`. `record` may be undefined (push/pull): it is decoded only if needed. */
  private onAlive(
    id: string,
    inc: number,
    rec: Uint8Array,
    sig: Uint8Array,
    decoded: NodeRecord | undefined,
    now: number,
  ): void {
    const m = this.table.get(id)
    // Same or older incarnation: nothing new (a suspect must refute with a higher one).
    if (m && inc <= m.incarnation) return
    // The table holds at most what one push/pull state may list (self included): a cluster-key
    // holder announcing made-up members (each with a fresh key) fills it and no further, so it
    // cannot grow every agent's memory without bound. Checked before the signature, which costs.
    if (m === undefined && this.table.size + 1 >= this.cfg.maxPushPullMembers) {
      this.counters.dropped.tableFull++
      return
    }
    if (!this.verifyAlive(id, inc, rec, sig)) {
      this.counters.dropped.forged++
      return
    }
    let record = decoded
    if (!record) {
      const r = decodeRecord(rec, this.cfg.maxRecordBytes)
      if (!r.ok) {
        this.counters.dropped[r.reason]++
        return
      }
      record = r.msg
    }
    if (record.id !== id) {
      this.counters.dropped.forged++
      return
    }
    const next: MemberState = {
      id,
      record,
      recordBytes: rec,
      sig,
      recordIncarnation: inc,
      incarnation: inc,
      status: 'alive',
      stateChangeMs: m && m.status === 'alive' ? m.stateChangeMs : now,
    }
    this.table.set(next)
    this.touch()
    this.suspicions.delete(id)
    this.timers.delete(`suspect:${id}`)
    this.queue.push(id, encodeMessage({ t: 'alive', inc, rec, sig }))
    if (!m) {
      this.order.add(id)
      this.emit('member:join', next)
      this.checkNameConflict(next)
      return
    }
    if (m.status === 'dead' || m.status === 'left') {
      this.emit('member:join', next)
      this.checkNameConflict(next)
      return
    }
    if (m.status === 'suspect') this.emit('member:alive', next)
    if (m.record.version !== record.version) this.emit('member:update', next)
    if (m.record.name !== record.name) this.checkNameConflict(next)
  }

  /**
   * memberlist `suspectNode`. `via` is the authenticated sender (the datagram's or push/pull's
   * peer; ourselves for our own probes): Lifeguard §IV-B confirmations count per distinct sender.
   */
  private onSuspect(msg: SuspectMessage, now: number, via: string = msg.from): void {
    if (msg.id === this.id) {
      if (!this.leaving && msg.inc >= this.incarnation) this.refute(msg.inc, true)
      return
    }
    const m = this.table.get(msg.id)
    if (!m || msg.inc < m.incarnation) return
    const existing = this.suspicions.get(msg.id)
    if (existing) {
      // Lifeguard §IV-B: an independent accuser shortens the timeout; pass the news on.
      if (existing.confirm(msg.from, via)) {
        this.queue.push(msg.id, encodeMessage(msg))
        const s = existing
        this.setTimer(`suspect:${msg.id}`, s.deadlineMs(), (t) => this.suspicionExpired(msg.id, s, t))
      }
      return
    }
    if (m.status !== 'alive') return
    const next: MemberState = { ...m, incarnation: msg.inc, status: 'suspect', stateChangeMs: now }
    this.table.set(next)
    this.touch()
    this.counters.suspicions++
    this.queue.push(msg.id, encodeMessage({ t: 'suspect', id: msg.id, inc: msg.inc, from: msg.from }))
    this.emit('member:suspect', next)
    const n = this.estimatedSize()
    // With fewer than k other members to confirm, expect no confirmation (memberlist).
    const k = n - 2 < this.cfg.suspicionConfirmations ? 0 : this.cfg.suspicionConfirmations
    const { minMs, maxMs } = suspicionTimeouts(
      this.cfg.suspicionMult,
      this.cfg.suspicionMaxTimeoutMult,
      n,
      this.cfg.probeIntervalMs,
      // Unscaled (health 0), as in Lifeguard: a node cut off from the cluster builds up local
      // health, and with scaled timeouts its suspicions outlived the partition, so its `dead`
      // verdicts reached the healed cluster as fresh accusations (a leader declared dead after a
      // heal in the chaos suite's partition-leader). Expired during the cut, they travel only by
      // push/pull, which merges a remote `dead` as a suspicion the member refutes in time.
      0,
    )
    const s = new Suspicion({ from: msg.from, via, startMs: now, incarnation: msg.inc, k, minMs, maxMs })
    this.suspicions.set(msg.id, s)
    this.setTimer(`suspect:${msg.id}`, s.deadlineMs(), (t) => this.suspicionExpired(msg.id, s, t))
  }

  /**
   * The end of a suspicion. One that ends in a late tick (this node was not running: Lifeguard
   * §IV-A) is judged 1 ms later, once, as a late probe is: the refutation may be waiting unread
   * in our socket, and the driver reads it in between (an event loop runs due timers first).
   */
  private suspicionExpired(id: string, s: Suspicion, now: number): void {
    if (this.suspicions.get(id) !== s) return
    if (this.lateTick && !this.lateSuspicions.has(s)) {
      this.lateSuspicions.add(s)
      this.setTimer(`suspect:${id}`, now + 1, (t) => this.suspicionExpired(id, s, t))
      return
    }
    this.suspicions.delete(id)
    const m = this.table.get(id)
    if (m?.status !== 'suspect' || m.incarnation !== s.incarnation) return
    this.onDead({ t: 'dead', id, inc: m.incarnation, from: this.id }, now)
  }

  /** memberlist `deadNode` (for dead; leave is `onLeave`). */
  private onDead(msg: DeadMessage, now: number): void {
    if (msg.id === this.id) {
      if (!this.leaving && msg.inc >= this.incarnation) this.refute(msg.inc, false)
      return
    }
    const m = this.table.get(msg.id)
    if (!m || msg.inc < m.incarnation) return
    if (m.status === 'dead' || m.status === 'left') return
    this.suspicions.delete(msg.id)
    this.timers.delete(`suspect:${msg.id}`)
    const next: MemberState = { ...m, incarnation: msg.inc, status: 'dead', stateChangeMs: now }
    this.table.set(next)
    this.touch()
    this.deadIds.add(msg.id)
    this.counters.deaths++
    this.queue.push(msg.id, encodeMessage({ t: 'dead', id: msg.id, inc: msg.inc, from: msg.from }))
    this.emit('member:fail', next)
  }

  /**
   * Consul's `force-leave`, asked of this agent by an operator: a member it holds dead (failed)
   * becomes `left` here at once (its services leave the catalog) and, through gossip, on every
   * agent that also holds it dead at the same incarnation; `prune` also forgets it here now
   * instead of at the reap timeout. SWIM gives no agent the authority to end a live member (a
   * leave is signed by the member itself), so a member seen alive or suspect is refused
   * (`not-failed`), and receivers ignore a force-leave about a member they do not hold dead: at
   * worst it hastens the end of a failure, and a member that comes back refutes with a higher
   * incarnation as it would a death.
   */
  forceLeave(
    id: string,
    now: number,
    options: { prune?: boolean } = {},
  ): { result: 'left' | 'already-left' | 'not-failed' | 'unknown'; output: Output } {
    this.begin(now)
    const m = id === this.id ? undefined : this.table.get(id)
    let result: 'left' | 'already-left' | 'not-failed' | 'unknown'
    if (m === undefined) result = 'unknown'
    else if (m.status === 'left') result = 'already-left'
    else if (m.status !== 'dead') result = 'not-failed'
    else {
      this.onForceLeave({ t: 'fleave', id, inc: m.incarnation, from: this.id }, now)
      result = 'left'
    }
    if (options.prune === true && (result === 'left' || result === 'already-left')) {
      const gone = this.table.get(id)
      if (gone !== undefined) {
        this.deadIds.delete(id)
        this.table.delete(id)
        this.touch()
        this.emit('member:reap', gone)
      }
    }
    return { result, output: this.take() }
  }

  /** A force-leave from the network (or this agent's operator): see `forceLeave`. */
  private onForceLeave(msg: ForceLeaveMessage, now: number): void {
    const m = this.table.get(msg.id)
    if (m === undefined || m.status !== 'dead' || m.incarnation !== msg.inc) return
    const next: MemberState = { ...m, status: 'left', stateChangeMs: now }
    this.table.set(next)
    this.touch()
    this.deadIds.add(msg.id)
    this.queue.push(msg.id, encodeMessage({ t: 'fleave', id: msg.id, inc: msg.inc, from: msg.from }))
    this.emit('member:leave', next)
  }

  private onLeave(msg: LeaveMessage, now: number): void {
    if (msg.id === this.id) {
      if (this.leaving || msg.inc < this.incarnation) return
      if (!this.verifyLeave(this.id, msg.inc, msg.sig)) {
        this.counters.dropped.forged++
        return
      }
      this.refute(msg.inc, false)
      return
    }
    const m = this.table.get(msg.id)
    if (!m || msg.inc < m.incarnation) return
    if (m.status === 'dead' || m.status === 'left') return
    if (!this.verifyLeave(msg.id, msg.inc, msg.sig)) {
      this.counters.dropped.forged++
      return
    }
    this.suspicions.delete(msg.id)
    this.timers.delete(`suspect:${msg.id}`)
    const next: MemberState = {
      ...m,
      incarnation: msg.inc,
      status: 'left',
      stateChangeMs: now,
      leaveSig: msg.sig,
    }
    this.table.set(next)
    this.touch()
    this.deadIds.add(msg.id)
    this.queue.push(msg.id, encodeMessage(msg))
    this.emit('member:leave', next)
  }

  /**
   * SWIM §4.2: we are accused at `accusedInc` (checked against what we signed); come back with a
   * higher incarnation, never past the safe-integer range (`refutationIncarnation`).
   */
  private refute(accusedInc: number, suspected: boolean): void {
    const next = refutationIncarnation(this.incarnation, accusedInc)
    if (next <= this.incarnation) return // at the ceiling: nothing higher can be signed
    this.incarnation = next
    this.counters.refutations++
    // Lifeguard §IV-A: being accused is a sign that we were slow.
    if (suspected) this.health.apply(1)
    this.resign()
  }

  private resign(): void {
    this.sig = this.signer(aliveSigningBytes(this.incarnation, this.recordBytes))
    this.touch()
    this.broadcastSelf()
  }

  private broadcastSelf(): void {
    this.queue.push(
      this.id,
      encodeMessage({ t: 'alive', inc: this.incarnation, rec: this.recordBytes, sig: this.sig }),
    )
  }

  private checkNameConflict(m: MemberState): void {
    const name = m.record.name
    const claimants: { id: string; view: () => MemberView }[] = []
    if (!this.leaving && this.record.name === name)
      claimants.push({ id: this.id, view: () => this.selfView() })
    for (const o of this.table.named(name)) {
      if (o.status === 'alive' || o.status === 'suspect') {
        claimants.push({ id: o.id, view: () => view(o) })
      }
    }
    if (claimants.length < 2) return
    let winner = claimants[0]!
    for (const c of claimants) if (c.id < winner.id) winner = c
    const w = winner.view()
    // Report the conflict that `m` brought: `m` lost, or `m` won against the others.
    const losers =
      m.id === winner.id
        ? claimants.filter((c) => c.id !== winner.id)
        : claimants.filter((c) => c.id === m.id)
    for (const l of losers) {
      const lv = l.view()
      lv.nameConflict = true
      this.out.events.push({ type: 'member:conflict', member: lv, winner: w })
    }
  }

  private selfView(): MemberView {
    return {
      id: this.id,
      name: this.record.name,
      address: this.record.addresses[0] ?? '',
      addresses: this.record.addresses,
      status: this.leaving ? 'left' : 'alive',
      incarnation: this.incarnation,
      tags: this.record.tags,
      meta: this.record.meta,
      version: this.record.version,
      nameConflict: false,
    }
  }

  private checkedRecordBytes(rec: NodeRecord): Uint8Array {
    const problem = recordProblem(rec)
    if (problem !== undefined) throw new InvalidRecordError(`invalid node record: ${problem}`)
    const bytes = encodeRecord(rec)
    if (bytes.length > this.cfg.maxRecordBytes) {
      throw new RecordTooLargeError(
        `node record is ${bytes.length} bytes encoded, more than maxRecordBytes (${this.cfg.maxRecordBytes})`,
      )
    }
    return bytes
  }
}

/**
 * Encoded push/pull entry of a member state, memoized: states are immutable, and pre-converged
 * simulations share them between nodes, so each is encoded once.
 */
const entryCache = new WeakMap<MemberState, Uint8Array>()
function entryBytes(m: MemberState): Uint8Array {
  let b = entryCache.get(m)
  if (b === undefined) {
    const e: StateEntry = {
      id: m.id,
      st: m.status,
      inc: m.incarnation,
      ri: m.recordIncarnation,
      rec: m.recordBytes,
      sig: m.sig,
    }
    if (m.leaveSig) e.lsig = m.leaveSig
    b = encodeStateEntry(e)
    entryCache.set(m, b)
  }
  return b
}

/** `stateEntryDigest` of a member state, memoized like `entryBytes`. */
const digestCache = new WeakMap<MemberState, Uint8Array>()
function entryDigest(m: MemberState): Uint8Array {
  let d = digestCache.get(m)
  if (d === undefined) {
    d = stateEntryDigest(m.id, m.status, m.incarnation, m.recordIncarnation, m.sig)
    digestCache.set(m, d)
  }
  return d
}

function view(m: MemberState): MemberView {
  return {
    id: m.id,
    name: m.record.name,
    address: m.record.addresses[0] ?? '',
    addresses: m.record.addresses,
    status: m.status,
    incarnation: m.incarnation,
    tags: m.record.tags,
    meta: m.record.meta,
    version: m.record.version,
    nameConflict: false,
  }
}

/** Builds the state a member would be in after a verified alive (pre-converged simulations). */
export function aliveMemberState(
  record: NodeRecord,
  incarnation: number,
  signer: Signer,
  nowMs: number,
): MemberState {
  const recordBytes = encodeRecord(record)
  return {
    id: record.id,
    record,
    recordBytes,
    sig: signer(aliveSigningBytes(incarnation, recordBytes)),
    recordIncarnation: incarnation,
    incarnation,
    status: 'alive',
    stateChangeMs: nowMs,
  }
}
