import type { Clock } from '../common/clock.ts'
import { systemClock } from '../common/clock.ts'
import { TypedEmitter } from '../common/events.ts'
import { type CoalesceLimits, coalesceMessages } from './coalesce.ts'
import { decodeMessage } from './codec.ts'
import { decodeConfChange } from './conf-change.ts'
import { DEFAULT_DRIVER_CONFIG, DEFAULT_RAFT_CONFIG, type DriverConfig } from './config.ts'
import { RaftAbortedError, RaftInvariantError, RaftStoppedError } from './errors.ts'
import { type DriverLog, SnapshotBackoff } from './snapshot-backoff.ts'
import { PendingRequests, type RequestOptions } from './pending.ts'
import { Raft } from './raft.ts'
import type { StateMachine } from './state-machine.ts'
import type { RaftStorage } from './storage/storage.ts'
import type { DriverStatus, RaftNodeEvents, RaftNodeOptions, RaftTransport } from './node-options.ts'
import type { ConfChange, Entry, EntrySealer, Message, NodeId, Ready, RequestId, Role } from './types.ts'

/** RaftNodeOptions, plus what only this driver reads. */
export interface RaftNodeDriverOptions<R> extends RaftNodeOptions<R> {
  /** Where a failed snapshot is reported, once per run of failures. Unset: only counted. */
  log?: DriverLog
}

/**
 * Event-loop turns a commit notice waits for an append that would carry its commit anyway (see
 * scheduleNotices): under concurrent writes the next batch's proposals usually come in the next
 * turn, and their appends replace the notices, which were otherwise a large part of a busy
 * leader's messages (each one a send here, a receive, an apply and an answer on the follower).
 */
const NOTICE_HOLD_TURNS = 2
/** With lazy ticks, the longest sleep (a member with no vote never acts on a tick). */
const LAZY_MAX_SLEEP_TICKS = 40
/**
 * With lazy ticks, how early (clock ms) a tick still counts: a timer may fire a fraction of a
 * millisecond before its time (Node's timers count whole milliseconds), and a tick missed by that
 * much would cost a second wake-up.
 */
const LAZY_SLACK_MS = 1

/** A proposal waiting for the end of its event-loop turn, to be sealed with the others of it. */
interface QueuedProposal {
  data: Uint8Array
  requestId: RequestId | undefined
  options: RequestOptions
  resolve: (v: { index: number; result: unknown }) => void
  reject: (err: unknown) => void
}

/** A Ready whose entries are being fsynced off the event loop: what is left to do once durable. */
interface Persisting {
  rd: Ready
  done: Promise<void>
}

/**
 * Runs one Raft member: owns the core, the storage, the state machine and a transport, and turns
 * every input (timer tick, received message, local request) into Ready processing in the order
 * persist → send → apply. With a storage that fsyncs off the event loop (`appendDeferred`/`sync`)
 * and `coalesceReady`, a leader's Ready entries are written while the next inputs are handled: the core
 * then hands out what does not wait for the write (a leader's appends, committed entries), and
 * everything this node acknowledges waits for the fsync (see Raft `accept`/`appendDone`).
 *
 * Start/stop lifecycle: `start()` begins ticking; `stop()` halts, rejects everything pending with
 * RaftStoppedError and closes the storage (the driver owns it once constructed).
 */
export class RaftNode<R = unknown> {
  readonly id: NodeId
  private readonly raft: Raft
  private readonly storage: RaftStorage
  private readonly sm: StateMachine<R>
  private readonly transport: RaftTransport
  private readonly clock: Clock
  private readonly sealer: EntrySealer | undefined
  private readonly verifySnapshot: ((msg: Message) => boolean) | undefined
  private readonly opts: DriverConfig
  private readonly pending: PendingRequests
  private cancelTick: (() => void) | undefined
  /** See RaftNodeOptions `lazyTicks`. */
  private readonly lazy: boolean
  /** With lazy ticks: the clock time up to which ticks have been counted. */
  private tickedAt = 0
  /** With lazy ticks: when the pending wake-up fires (Infinity: none). */
  private wakeAt = Number.POSITIVE_INFINITY
  private cancelWake: (() => void) | undefined
  private wakeDeferred = false
  private running = false
  private stopped = false
  private appliedIndex = 0
  private readSeq = 0
  private malformed = 0
  private sendFailures = 0
  private lastLeader: NodeId | undefined
  private lastTerm = 0
  private lastRole: Role = 'follower'
  // A listener's failure must not break Ready processing.
  private readonly events = new TypedEmitter<RaftNodeEvents>(() => {})
  private draining = false
  private readonly coalesce: boolean
  private drainScheduled = false
  /** Entries are fsynced off the event loop (coalesceReady and a storage with `sync`). */
  private readonly syncOffLoop: boolean
  /** See RaftNodeOptions `followerWritesOffLoop`. */
  private readonly followerWritesOffLoop: boolean
  /**
   * The founding entries of a bootstrap are still to be written: they go to disk in one
   * synchronous step with their term. Written off the loop, a crash could keep the durable term and
   * lose the configuration, leaving a node that has state (so never bootstraps again) but no voters.
   */
  private founding = false
  /** The Ready whose fsync is pending; the storage is not touched until it settles. */
  private persisting: Persisting | undefined
  private readonly limits: CoalesceLimits
  /** The core's heartbeatTick: a leader's interval while not idle, assumed the same as ours. */
  private readonly heartbeatTick: number
  /** Index of the last snapshot saved to storage (the core's may be ahead if a save failed). */
  private savedSnapshotIndex = 0
  private readonly snapshotBackoff: SnapshotBackoff
  /** Appends without entries waiting for the end of the turn, by peer (see sendAll). */
  private readonly heldNotices = new Map<NodeId, Message>()
  private noticesScheduled = false
  /** See RaftNodeOptions `noticeHoldMs` (0: held for turns only). */
  private readonly noticeHoldMs: number
  /** Cancels the timer of held notices (noticeHoldMs), if one is set. */
  private cancelNotices: (() => void) | undefined
  /** Proposals to seal as one batch before the next Ready (only with a sealer). */
  private queued: QueuedProposal[] = []

  constructor(o: RaftNodeDriverOptions<R>) {
    this.id = o.id
    this.storage = o.storage
    this.sm = o.stateMachine
    this.transport = o.transport
    this.clock = o.clock ?? systemClock
    this.sealer = o.sealer
    this.verifySnapshot = o.verifySnapshot
    this.snapshotBackoff = new SnapshotBackoff(this.clock, o.log)
    this.opts = {
      tickMs: o.tickMs ?? DEFAULT_DRIVER_CONFIG.tickMs,
      snapshotThreshold: o.snapshotThreshold ?? DEFAULT_DRIVER_CONFIG.snapshotThreshold,
      snapshotTrailing: o.snapshotTrailing ?? DEFAULT_DRIVER_CONFIG.snapshotTrailing,
      requestTimeoutMs: o.requestTimeoutMs ?? DEFAULT_DRIVER_CONFIG.requestTimeoutMs,
    }
    this.pending = new PendingRequests({ clock: this.clock, timeoutMs: this.opts.requestTimeoutMs })
    this.coalesce = o.coalesceReady ?? false
    this.syncOffLoop =
      this.coalesce && this.storage.appendDeferred !== undefined && this.storage.sync !== undefined
    this.followerWritesOffLoop = o.followerWritesOffLoop ?? false
    this.noticeHoldMs = o.noticeHoldMs ?? 0
    this.lazy = o.lazyTicks ?? false
    const st = this.storage.initialState()
    const cfg = { ...DEFAULT_RAFT_CONFIG, ...o.config }
    this.limits = { maxEntries: cfg.maxEntriesPerMsg, maxBytes: cfg.maxBytesPerMsg }
    this.heartbeatTick = cfg.heartbeatTick
    this.raft = new Raft({ ...cfg, id: o.id, rng: o.rng ?? Math.random }, st)
    if (st.snapshot !== undefined) {
      this.sm.restore(st.snapshot.data)
      this.appliedIndex = st.snapshot.metadata.index
      this.savedSnapshotIndex = st.snapshot.metadata.index
    }
    if (
      o.bootstrap !== undefined &&
      st.snapshot === undefined &&
      st.entries.length === 0 &&
      st.hardState.term === 0
    ) {
      this.raft.bootstrap(o.bootstrap)
      this.founding = true
    }
    this.lastTerm = this.raft.term
  }

  // ---- lifecycle --------------------------------------------------------------------------------

  start(): void {
    if (this.running || this.stopped) return
    this.running = true
    if (this.lazy) this.tickedAt = this.clock.now()
    else this.cancelTick = this.clock.setInterval(() => this.tick(), this.opts.tickMs)
    this.drain()
  }

  async stop(): Promise<void> {
    if (this.stopped) return
    this.stopped = true
    this.running = false
    this.cancelTick?.()
    this.cancelWake?.()
    this.cancelNotices?.()
    this.pending.rejectAll(new RaftStoppedError('raft node stopped'))
    for (const q of this.queued.splice(0)) q.reject(new RaftStoppedError('raft node stopped'))
    // The storage's fd must outlive a pending fsync.
    await this.persisting?.done.catch(() => {})
    this.storage.close()
  }

  // ---- inputs -----------------------------------------------------------------------------------

  /** Advances logical time by one tick (called by the clock; tests may call it directly). */
  tick(): void {
    if (this.stopped) return
    this.raft.tick()
    this.drain()
  }

  /** Handles a decoded message from a peer. */
  step(msg: Message): void {
    if (this.stopped) return
    this.catchUp()
    if (msg.to !== this.id) {
      this.malformed++
      return
    }
    const committed = this.raft.committedIndex()
    this.raft.step(this.inOurTicks(msg))
    // An acknowledgement that commits entries on a leader is applied now, not at the end of the
    // turn: the replies to those writes wait for nothing else (and a sequential writer waits for
    // them). Proposals queued meanwhile still wait for the end of the turn, to be sealed together.
    if (this.coalesce && this.raft.role === 'leader' && this.raft.committedIndex() > committed)
      this.drain(false)
    else this.scheduleDrain()
  }

  /**
   * Handles raw bytes from a peer. `from`, if given, is the authenticated sender (libp2p peer id);
   * a message claiming another sender is dropped. Returns false if the message was dropped.
   */
  receive(bytes: Uint8Array, from?: NodeId): boolean {
    const r = decodeMessage(bytes)
    if (!r.ok || r.message.to !== this.id || (from !== undefined && r.message.from !== from)) {
      this.malformed++
      return false
    }
    if (r.message.type === 'snap' && this.verifySnapshot !== undefined && !this.verifySnapshot(r.message)) {
      this.malformed++
      return false
    }
    this.step(r.message)
    return true
  }

  /**
   * Replicates `data` and resolves with the state machine's result once applied here. Rejects with
   * NotLeaderError (carrying the known leader) on a non-leader, ProposalDroppedError if another
   * entry won its index, RaftAbortedError on signal/timeout.
   */
  propose(
    data: Uint8Array,
    options: RequestOptions & { requestId?: RequestId } = {},
  ): Promise<{ index: number; result: R }> {
    const requestId = options.requestId
    if (this.sealer === undefined)
      return this.track((raft) => raft.propose(data, requestId), options) as Promise<{
        index: number
        result: R
      }>
    if (this.stopped) return Promise.reject(new RaftStoppedError('raft node stopped'))
    this.catchUp()
    try {
      this.raft.proposalIndex() // throws NotLeaderError here, as an unsealed propose would
    } catch (err) {
      return Promise.reject(err)
    }
    // Sealed with the other proposals of this turn, just before the next Ready (sealQueued).
    return new Promise((resolve, reject) => {
      this.queued.push({ data, requestId, options, resolve: resolve as QueuedProposal['resolve'], reject })
      this.scheduleDrain()
    })
  }

  /**
   * Seals the queued proposals as one batch and appends them: synchronous from sealing to the
   * last `propose`, so each entry gets exactly the index it was sealed for. A failure (this node
   * stopped leading, the sealer threw) rejects the whole batch: nothing of it was appended.
   */
  private sealQueued(): void {
    if (this.queued.length === 0 || this.sealer === undefined) return
    const batch = this.queued.filter((q) => {
      if (q.options.signal?.aborted !== true) return true
      q.reject(new RaftAbortedError('request aborted', { cause: q.options.signal.reason }))
      return false
    })
    this.queued = []
    if (batch.length === 0) return
    let sealed: Uint8Array[]
    let first: number
    try {
      first = this.raft.proposalIndex()
      sealed = this.sealer(batch.map((q, i) => ({ index: first + i, requestId: q.requestId, data: q.data })))
      if (sealed.length !== batch.length)
        throw new RaftInvariantError(`sealer returned ${sealed.length} entries for ${batch.length}`)
    } catch (err) {
      for (const q of batch) q.reject(err)
      return
    }
    for (let i = 0; i < batch.length; i++) {
      const q = batch[i]!
      const pos = this.raft.propose(sealed[i]!, q.requestId)
      if (pos.index !== first + i)
        throw new RaftInvariantError(`sealed for ${first + i}, appended at ${pos.index}`)
      this.pending.addProposal(pos, q.options).then(q.resolve, q.reject)
    }
  }

  /** Proposes one membership change (thesis §4.1); resolves when it is committed and applied here. */
  changeMembership(change: ConfChange, options: RequestOptions = {}): Promise<{ index: number }> {
    return this.track((raft) => raft.proposeConfChange(change), options).then(({ index }) => ({ index }))
  }

  private track(
    start: (raft: Raft) => { index: number; term: number },
    options: RequestOptions,
  ): Promise<{ index: number; result: unknown }> {
    if (this.stopped) return Promise.reject(new RaftStoppedError('raft node stopped'))
    this.catchUp()
    let pos: { index: number; term: number }
    try {
      pos = start(this.raft)
    } catch (err) {
      return Promise.reject(err)
    }
    const p = this.pending.addProposal(pos, options)
    this.scheduleDrain()
    return p
  }

  /**
   * A linearizable read point (ReadIndex, thesis §6.4): resolves once this node has applied every
   * entry committed before the call, so reading the state machine afterwards is linearizable.
   * Works on followers (they ask the leader). Rejects with NotLeaderError if no leader is known or
   * leadership changes before confirmation.
   */
  read(options: RequestOptions = {}): Promise<{ index: number }> {
    if (this.stopped) return Promise.reject(new RaftStoppedError('raft node stopped'))
    this.catchUp()
    const ctx = `${this.id}/${++this.readSeq}`
    try {
      this.raft.readIndex(ctx)
    } catch (err) {
      return Promise.reject(err)
    }
    const p = this.pending.addRead(ctx, options)
    this.scheduleDrain()
    return p
  }

  /**
   * Founds a new cluster with these voters (see Raft.bootstrap), like the `bootstrap` option but
   * later, e.g. once enough members are known. Throws ConfChangeError if this node has any state.
   */
  bootstrap(voters: readonly NodeId[]): void {
    if (this.stopped) throw new RaftStoppedError('raft node stopped')
    this.raft.bootstrap(voters)
    this.founding = true
    this.drain()
  }

  /** Asks the leader (this node) to hand leadership to `to` (thesis §3.10). */
  transferLeadership(to: NodeId): void {
    this.catchUp()
    this.raft.transferLeadership(to)
    this.drain()
  }

  /** Starts an election now (e.g. an operator command); normally elections are timer driven. */
  campaign(): void {
    if (this.stopped) return
    this.catchUp()
    this.raft.campaign()
    this.drain()
  }

  /**
   * Forgets the current leader if this node is a follower (see Raft.forgetLeader): call it when
   * something outside Raft says the leader is gone (its connection closed, gossip declared it
   * dead), so this node grants pre-votes at once instead of after its leader lease. Affects only
   * liveness; emits `leader:change` with no leader. A no-op on leaders and candidates.
   */
  forgetLeader(): void {
    if (this.stopped) return
    this.catchUp()
    this.raft.forgetLeader()
    this.drain()
  }

  /** Ticks since a follower last heard from its leader (see Raft.ticksSinceLeaderContact). */
  ticksSinceLeaderContact(): number {
    this.catchUp()
    return this.raft.ticksSinceLeaderContact
  }

  /** Current term (changes only through Raft; a pre-vote does not change it). */
  term(): number {
    return this.raft.term
  }

  /** This node's role in its current term. */
  role(): Role {
    return this.raft.role
  }

  /** Voters of the current (latest appended) configuration. */
  voters(): NodeId[] {
    return this.raft.conf().voters
  }

  // ---- lazy ticks (RaftNodeOptions `lazyTicks`) ---------------------------------------------------

  /**
   * Counts the ticks that have passed since `tickedAt`, short of the next one that acts: those only
   * advance counters, and the input about to be handled must see them. A tick that acts is left
   * to the wake-up (it runs after this turn's I/O).
   */
  private catchUp(): void {
    if (!this.lazy || !this.running || this.stopped) return
    const elapsed = Math.floor((this.clock.now() - this.tickedAt + LAZY_SLACK_MS) / this.opts.tickMs)
    const n = Math.min(elapsed, this.raft.ticksUntilDue() - 1)
    for (let i = 0; i < n; i++) this.raft.tick()
    if (n > 0) this.tickedAt += n * this.opts.tickMs
  }

  /** Sets the wake-up for the next tick that acts, if it moved (after every Ready loop). */
  private scheduleWake(): void {
    if (!this.lazy || !this.running || this.stopped || this.wakeDeferred) return
    // A member that never acts on a tick still wakes now and then, to keep its count current.
    const due = Math.min(this.raft.ticksUntilDue(), LAZY_MAX_SLEEP_TICKS)
    const at = this.tickedAt + due * this.opts.tickMs
    if (at === this.wakeAt) return
    this.cancelWake?.()
    this.wakeAt = at
    this.cancelWake = this.clock.setTimeout(
      () => {
        this.wakeAt = Number.POSITIVE_INFINITY
        this.wakeDeferred = true
        // After the I/O already queued: heartbeats that arrived while this node was not running.
        this.clock.defer(() => {
          this.wakeDeferred = false
          this.wake()
        })
      },
      Math.max(0, at - this.clock.now()),
    )
  }

  /** The wake-up: the ticks short of the one that acts, then that one, if it is due. */
  private wake(): void {
    if (this.stopped) return
    this.catchUp()
    const now = this.clock.now()
    if (now - this.tickedAt + LAZY_SLACK_MS >= this.opts.tickMs) {
      this.raft.tick()
      this.tickedAt += this.opts.tickMs
      // Woken more than a tick late, this node was not running: that time is not counted, as a
      // timer that fires late counts one tick.
      if (now - this.tickedAt >= this.opts.tickMs) this.tickedAt = now
    }
    this.drain() // re-arms the wake-up
  }

  // ---- Ready processing -------------------------------------------------------------------------

  private scheduleDrain(): void {
    if (!this.coalesce) {
      this.drain()
      return
    }
    if (this.drainScheduled) return
    this.drainScheduled = true
    this.clock.defer(() => {
      this.drainScheduled = false
      if (!this.stopped) this.drain()
    })
  }

  /** Handles every Ready there is; `seal`: seals the queued proposals first (see sealQueued). */
  private drain(seal = true): void {
    // Re-entrancy from a listener: the outer loop picks it up.
    if (this.draining || this.stopped) return
    this.draining = true
    try {
      for (;;) {
        // Proposals made meanwhile (a listener may propose) join the next Ready.
        if (seal) this.sealQueued()
        const rd = this.raft.ready()
        if (rd === undefined) break
        this.handleReady(rd)
      }
    } finally {
      this.draining = false
    }
    this.scheduleWake()
  }

  private handleReady(rd: Ready): void {
    const deferred =
      this.syncOffLoop &&
      rd.entries.length > 0 &&
      !this.founding &&
      (this.followerWritesOffLoop || this.raft.role === 'leader')
    // What need not wait for this Ready's state (a leader's appends and heartbeats) leaves while
    // this node writes its own copy (thesis §10.2.1). Written in line, it leaves first; written off
    // the loop, right after the fsync has started, so that the fsync runs while this thread encodes,
    // encrypts and sends.
    if (!deferred) this.sendAll(rd.messages)
    // 1. persist. Term and vote are fsynced before returning; entries too, unless the storage can
    // sync them off the event loop. While a fsync is pending the core hands out nothing to persist.
    if (rd.snapshot !== undefined) {
      this.storage.installSnapshot(rd.snapshot)
      this.savedSnapshotIndex = Math.max(this.savedSnapshotIndex, rd.snapshot.metadata.index)
    }
    if (rd.entries.length > 0) this.founding = false
    if (rd.entries.length > 0) {
      if (deferred) this.storage.appendDeferred!(rd.entries)
      else this.storage.append(rd.entries)
    }
    if (rd.hardState !== undefined) {
      // A commit index on disk must name entries on disk: while this Ready's entries are still
      // being written, the commit saved with its term and vote stops before them. Otherwise a
      // crash before the fsync leaves a commit index over an older, overwritten tail, and a
      // restart applies that (State Machine Safety, §5.4.3). The higher commit is saved with the
      // next hard state; a restart re-learns it from the leader meanwhile.
      const hs = deferred
        ? { ...rd.hardState, commit: Math.min(rd.hardState.commit, rd.entries[0]!.index - 1) }
        : rd.hardState
      this.storage.setHardState(hs)
    }
    if (!deferred) {
      // 2. send, 3. apply. The state machine hears of the new entries once the acks are out.
      this.sendAll(rd.messagesAfterAppend)
      if (rd.entries.length > 0) this.sm.prepare?.(rd.entries)
      this.applyReady(rd)
      this.raft.advance(rd)
      this.afterReady(rd)
      return
    }
    const last = rd.entries.at(-1)!
    const done = this.storage.sync!().then(
      () => {
        this.persisting = undefined
        if (this.stopped) return
        this.sendAll(rd.messagesAfterAppend)
        if (rd.snapshot !== undefined) this.applyReady(rd)
        else this.pending.confirmed(rd.readStates)
        this.raft.appendDone(last.index, last.term)
        this.afterReady(rd)
        this.drain()
      },
      (err: unknown) => {
        this.persisting = undefined
        // Like etcd's panic on a failed fsync: what is on disk is unknown, so nothing may be
        // acknowledged any more. Stop, and let the error surface as an uncaught exception.
        void this.stop()
        this.clock.defer(() => {
          throw err
        })
      },
    )
    this.persisting = { rd, done }
    // 2. send what does not wait for the write (see above), 3. apply.
    this.sendAll(rd.messages)
    this.raft.accept(rd)
    this.sm.prepare?.(rd.entries)
    // Committed entries need not wait for this write (see Raft `accept`); a snapshot, and what
    // follows it, wait: the core hands out nothing to apply until the write is done.
    if (rd.snapshot === undefined) this.applyEntries(rd.committedEntries)
  }

  /** Restores a snapshot, applies committed entries and records read points, in that order. */
  private applyReady(rd: Ready): void {
    if (rd.snapshot !== undefined) {
      const index = rd.snapshot.metadata.index
      this.sm.restore(rd.snapshot.data)
      this.appliedIndex = index
      this.pending.restored(index)
      this.emit('snapshot:restore', { index })
    }
    this.applyEntries(rd.committedEntries)
    this.pending.confirmed(rd.readStates)
  }

  private applyEntries(ents: readonly Entry[]): void {
    if (ents.length === 0) return
    if (this.sm.batch !== undefined) {
      this.sm.batch(() => {
        for (const e of ents) this.apply(e)
      })
    } else for (const e of ents) this.apply(e)
    this.pending.resolveReads(this.appliedIndex)
  }

  /** What follows a Ready whose state is durable: events, reads, and a snapshot when due. */
  private afterReady(rd: Ready): void {
    if (rd.softState !== undefined) this.onSoftState()
    this.pending.resolveReads(this.appliedIndex)
    // The storage is not touched while a fsync is pending.
    if (this.persisting === undefined) this.maybeSnapshot()
  }

  /**
   * Sends a batch, merging what goes to the same peer (see coalesceMessages). With coalesceReady, an
   * append without entries (a commit notice, or a probe) waits a turn or two (scheduleNotices):
   * the replies to the writes it commits leave first, and an append sent to that peer meanwhile,
   * which carries the same commit or a later one, makes it redundant (it is dropped then; Raft
   * copes with lost messages, and the next heartbeat or append carries the commit anyway).
   */
  private sendAll(msgs: readonly Message[]): void {
    for (const m of coalesceMessages(msgs, this.limits)) {
      if (this.coalesce && m.type === 'app' && m.entries.length === 0) {
        this.holdNotice(m)
        continue
      }
      if (m.type === 'app') {
        const held = this.heldNotices.get(m.to)
        if (
          held !== undefined &&
          held.term === m.term &&
          m.commit >= held.commit &&
          held.context === m.context
        )
          this.heldNotices.delete(m.to)
      }
      this.sendOne(m)
    }
  }

  private holdNotice(m: Message): void {
    this.heldNotices.set(m.to, m)
    if (this.noticeHoldMs > 0) this.scheduleNoticesAfter(this.noticeHoldMs)
    else this.scheduleNotices(NOTICE_HOLD_TURNS)
  }

  /**
   * Sends the held notices `ms` from now (noticeHoldMs), those an append meanwhile has not made
   * redundant (see sendAll). One timer for all held notices: a notice held later waits less.
   */
  private scheduleNoticesAfter(ms: number): void {
    if (this.cancelNotices !== undefined) return
    this.cancelNotices = this.clock.setTimeout(() => {
      this.cancelNotices = undefined
      if (!this.stopped) this.sendHeldNotices()
    }, ms)
  }

  private sendHeldNotices(): void {
    const held = [...this.heldNotices.values()]
    this.heldNotices.clear()
    for (const n of held) this.sendOne(n)
  }

  /**
   * Sends the held notices `turns` event-loop turns from now, or one turn later if proposals made
   * meanwhile are still to be drained then: their appends carry the commit and replace the
   * notices (see sendAll). No timer: an idle leader sends them a turn or two later, a busy one
   * after at most `turns + 1`.
   */
  private scheduleNotices(turns: number): void {
    if (this.noticesScheduled) return
    this.noticesScheduled = true
    this.clock.defer(() => {
      this.noticesScheduled = false
      if (this.stopped || this.heldNotices.size === 0) return
      if (turns > 1 || (turns > 0 && this.drainScheduled)) {
        this.scheduleNotices(turns - 1)
        return
      }
      this.sendHeldNotices()
    })
  }

  /**
   * A heartbeat from a leader whose ticks are longer than ours, with its interval counted in our
   * ticks: as if the leader had announced that interval as idle (`idleTicks`), which stretches our
   * election timeout and check-quorum lease to match. Without it, a follower with 50 ms ticks
   * under a leader with 150 ms ticks took every gap between heartbeats for a dead leader (a real
   * 3-agent cluster: its leader forgotten and found again 169 times in 35 s). The core clamps what
   * it accepts (MAX_IDLE_HEARTBEAT_TICK), as for any leader's idleTicks.
   */
  private inOurTicks(m: Message): Message {
    if (m.type !== 'heartbeat' || m.tickMs === undefined || m.tickMs <= this.opts.tickMs) return m
    const interval = Math.ceil(((m.idleTicks ?? this.heartbeatTick) * m.tickMs) / this.opts.tickMs)
    return interval > (m.idleTicks ?? 0) ? { ...m, idleTicks: interval } : m
  }

  private sendOne(m: Message): void {
    // Heartbeats say how long our ticks are (see inOurTicks on the receiving side).
    if (m.type === 'heartbeat') m.tickMs = this.opts.tickMs
    try {
      this.transport.send(m.to, m)
    } catch {
      this.sendFailures++
    }
  }

  private apply(e: Entry): void {
    this.appliedIndex = e.index
    let result: unknown
    if (e.type === 'normal' && e.data.length > 0) result = this.sm.apply(e)
    if (e.type === 'conf') {
      const change = decodeConfChange(e.data)
      if (change !== undefined) this.emit('conf:change', { index: e.index, change, conf: this.raft.conf() })
    }
    this.pending.applied(e, result)
  }

  private onSoftState(): void {
    const { leader, role } = this.raft.softState()
    if (leader !== this.lastLeader || this.raft.term !== this.lastTerm) {
      this.pending.leaderChanged(leader)
      this.lastLeader = leader
      this.lastTerm = this.raft.term
      this.emit('leader:change', { leader, term: this.raft.term })
    }
    if (role !== this.lastRole) {
      this.lastRole = role
      this.emit('role:change', { role, term: this.raft.term })
    }
  }

  /**
   * Takes a snapshot once `snapshotThreshold` entries were applied since the last saved one. A
   * failure (the state machine or the storage threw) is never fatal: counted, logged once per run
   * of failures, tried again after a backoff; the log is compacted only behind a saved snapshot.
   */
  private maybeSnapshot(): void {
    if (this.appliedIndex - this.savedSnapshotIndex < this.opts.snapshotThreshold) return
    if (!this.snapshotBackoff.mayTry()) return
    const index = this.appliedIndex
    try {
      this.storage.saveSnapshot(this.raft.createSnapshot(index, this.sm.snapshot()))
    } catch (err) {
      this.snapshotBackoff.failed(index, err)
      return
    }
    this.snapshotBackoff.succeeded(index)
    this.savedSnapshotIndex = index
    // Applied entries may not be durable here yet (see Raft `accept`): compact only those that are. The snapshot may cover the others: they are committed, and it is durable itself.
    const to = Math.min(index - this.opts.snapshotTrailing, this.raft.stabledIndex())
    if (to > 0) {
      this.raft.compact(to)
      this.storage.compact(to)
    }
  }

  // ---- queries and events -----------------------------------------------------------------------

  isLeader(): boolean {
    return this.raft.role === 'leader'
  }

  leader(): NodeId | undefined {
    return this.raft.lead
  }

  /** Highest log index applied to the state machine on this node. */
  applied(): number {
    return this.appliedIndex
  }

  /** The core's status, with the driver's counters (`snapshotFailures`: attempts that threw). */
  status(): DriverStatus & { snapshotFailures: number } {
    return {
      ...this.raft.status(),
      malformedMessages: this.malformed,
      sendFailures: this.sendFailures,
      snapshotFailures: this.snapshotBackoff.failures,
    }
  }

  /** Subscribes to an event; returns the unsubscribe function. */
  on<K extends keyof RaftNodeEvents>(type: K, listener: (detail: RaftNodeEvents[K]) => void): () => void {
    return this.events.on(type, listener)
  }

  private emit<K extends keyof RaftNodeEvents>(type: K, detail: RaftNodeEvents[K]): void {
    this.events.emit(type, detail)
  }
}
