import type { RaftClock } from './clock.ts'
import { systemClock } from './clock.ts'
import { decodeMessage } from './codec.ts'
import { DEFAULT_RAFT_CONFIG, type RaftConfig } from './config.ts'
import {
  NotLeaderError,
  ProposalDroppedError,
  ProposalOutcomeUnknownError,
  RaftAbortedError,
  RaftStoppedError,
} from './errors.ts'
import { type EntrySealer, Raft, type RaftStatus } from './raft.ts'
import type { StateMachine } from './state-machine.ts'
import type { RaftStorage } from './storage/storage.ts'
import type { ConfChange, ConfState, Entry, Message, NodeId, Ready, RequestId, Role } from './types.ts'
import { decodeConfChange } from './conf-change.ts'
import { type CoalesceLimits, coalesceMessages } from './coalesce.ts'

/**
 * How the driver sends messages. Best-effort: a message may be lost, delayed, duplicated or
 * reordered, and Raft copes (it retries on heartbeats). `send` must not block, should not throw (a
 * throw is caught and counted as a lost message) and must not deliver synchronously into another
 * node's `receive` within the call: queue the bytes and write them from the event loop. Encode with
 * `encodeMessage` from ./codec.ts; the receiver calls `receive(bytes, authenticatedPeerId)`.
 */
export interface RaftTransport {
  send(to: NodeId, msg: Message): void
}

export interface RaftNodeEvents {
  /** The known leader or the term changed. */
  'leader:change': { leader: NodeId | undefined; term: number }
  /** This node's role changed. */
  'role:change': { role: Role; term: number }
  /** A membership change committed; `conf` is the configuration after it. */
  'conf:change': { index: number; change: ConfChange; conf: ConfState }
  /** The state machine was replaced by a snapshot from the leader. */
  'snapshot:restore': { index: number }
}

export interface RaftNodeOptions<R> {
  id: NodeId
  storage: RaftStorage
  stateMachine: StateMachine<R>
  transport: RaftTransport
  /** Real timers by default; tests pass a virtual clock. */
  clock?: RaftClock
  /** Uniform [0, 1) source for election timeouts; Math.random by default (the core never calls it). */
  rng?: () => number
  /** Core settings (ticks); see RaftConfig. */
  config?: Partial<Omit<RaftConfig, 'id' | 'rng'>>
  /** Milliseconds per tick: 100 ms with electionTick 10 gives 1-2 s elections. */
  tickMs?: number
  /** Founding voters of a new cluster; ignored when storage already holds state. */
  bootstrap?: NodeId[]
  /** Snapshot the state machine after this many applied entries (bounds log size and replay). */
  snapshotThreshold?: number
  /** Entries kept behind a compaction so slightly lagging followers need no snapshot. */
  snapshotTrailing?: number
  /** Default time limit for propose/read/changeMembership when no signal is given. */
  requestTimeoutMs?: number
  /**
   * Process Ready on the next `setImmediate` instead of synchronously after each step/propose, so
   * that every message and request handled in one event-loop turn shares one Ready, hence one
   * fsync (group commit). With a storage offering `appendDeferred`/`sync`, entries are also fsynced
   * off the event loop: the leader's appends leave while its disk writes, and input keeps arriving
   * meanwhile (the next Ready takes all of it). Off by default: virtual-clock tests expect
   * synchronous processing.
   */
  coalesceReady?: boolean
}

export interface RequestOptions {
  signal?: AbortSignal
}

export interface DriverStatus extends RaftStatus {
  /** Peer messages dropped because they did not decode or were misaddressed. */
  malformedMessages: number
  /** Messages the transport threw on. */
  sendFailures: number
}

interface PendingProposal {
  term: number
  resolve: (v: { index: number; result: unknown }) => void
  reject: (err: Error) => void
}

interface PendingRead {
  index: number | undefined
  resolve: (v: { index: number }) => void
  reject: (err: Error) => void
}

const DEFAULTS = {
  tickMs: 100, // with electionTick 10: heartbeats every 100 ms, elections after 1-2 s
  snapshotThreshold: 1024, // policy entries are small: a snapshot every ~1k writes keeps replay short
  snapshotTrailing: 128, // a follower lagging < 128 entries catches up from the log
  requestTimeoutMs: 10_000, // longer than several elections; a caller wanting less passes a signal
}

/**
 * Runs one Raft member: owns the core, the storage, the state machine and a transport, and turns
 * every input (timer tick, received message, local request) into Ready processing in the order
 * persist → send → apply (storage calls are synchronous and fsync before returning). With an
 * off-loop fsync, committed entries are applied without waiting for this node's own write of them
 * (see drainWhilePersisting); everything this node acknowledges still waits for its fsync.
 *
 * Start/stop lifecycle: `start()` begins ticking; `stop()` halts, rejects everything pending with
 * RaftStoppedError and closes the storage (the driver owns it once constructed).
 */
export class RaftNode<R = unknown> {
  readonly id: NodeId
  /**
   * Applied to each proposal made here while leading, once its index is known (the agent sets it
   * to sign policy entries; see policy-signing.ts). Unset: entries are stored as proposed.
   */
  sealEntry?: EntrySealer
  /**
   * Checks a snapshot message before it is stepped (the agent verifies the leader's CA signature
   * carried in its `context`); false drops it as malformed. Unset: every snapshot is accepted.
   */
  acceptSnapshot?: (msg: Message) => boolean
  private readonly raft: Raft
  private readonly storage: RaftStorage
  private readonly sm: StateMachine<R>
  private readonly transport: RaftTransport
  private readonly clock: RaftClock
  private readonly opts: Required<
    Pick<RaftNodeOptions<R>, 'tickMs' | 'snapshotThreshold' | 'snapshotTrailing' | 'requestTimeoutMs'>
  >
  private cancelTick: (() => void) | undefined
  private running = false
  private stopped = false
  private appliedIndex = 0
  private readonly proposals = new Map<number, PendingProposal>()
  private readonly reads = new Map<string, PendingRead>()
  private readSeq = 0
  private malformed = 0
  private sendFailures = 0
  private lastLeader: NodeId | undefined
  private lastTerm = 0
  private lastRole: Role = 'follower'
  private readonly listeners = new Map<keyof RaftNodeEvents, Set<(d: never) => void>>()
  private draining = false
  private readonly coalesce: boolean
  private drainScheduled = false
  /** Term of the last hard state written to storage. */
  private durableTerm = 0
  /** Entries are fsynced off the event loop (coalesceReady and a storage with `sync`). */
  private readonly syncOffLoop: boolean
  /** The pending fsync of a Ready's entries; no Ready is processed until it settles. */
  private persisting: Promise<void> | undefined
  /** The Ready whose fsync is pending (its messages are still at the head of the core's queue). */
  private pendingReady: Ready | undefined
  /** It installs a snapshot: nothing may be applied before its fsync. */
  private pendingReadyApplyLate = false
  private readonly limits: CoalesceLimits

  constructor(o: RaftNodeOptions<R>) {
    this.id = o.id
    this.storage = o.storage
    this.sm = o.stateMachine
    this.transport = o.transport
    this.clock = o.clock ?? systemClock
    this.opts = {
      tickMs: o.tickMs ?? DEFAULTS.tickMs,
      snapshotThreshold: o.snapshotThreshold ?? DEFAULTS.snapshotThreshold,
      snapshotTrailing: o.snapshotTrailing ?? DEFAULTS.snapshotTrailing,
      requestTimeoutMs: o.requestTimeoutMs ?? DEFAULTS.requestTimeoutMs,
    }
    this.coalesce = o.coalesceReady ?? false
    this.syncOffLoop =
      this.coalesce && this.storage.appendDeferred !== undefined && this.storage.sync !== undefined
    const st = this.storage.initialState()
    const cfg = { ...DEFAULT_RAFT_CONFIG, ...o.config }
    this.limits = { maxEntries: cfg.maxEntriesPerMsg, maxBytes: cfg.maxBytesPerMsg }
    this.raft = new Raft({ ...cfg, id: o.id, rng: o.rng ?? Math.random }, st)
    if (st.snapshot !== undefined) {
      this.sm.restore(st.snapshot.data)
      this.appliedIndex = st.snapshot.metadata.index
    }
    if (
      o.bootstrap !== undefined &&
      st.snapshot === undefined &&
      st.entries.length === 0 &&
      st.hardState.term === 0
    ) {
      this.raft.bootstrap(o.bootstrap)
    }
    this.lastTerm = this.raft.term
    this.durableTerm = st.hardState.term
  }

  // ---- lifecycle --------------------------------------------------------------------------------

  start(): void {
    if (this.running || this.stopped) return
    this.running = true
    this.cancelTick = this.clock.setInterval(() => this.tick(), this.opts.tickMs)
    this.drain()
  }

  async stop(): Promise<void> {
    if (this.stopped) return
    this.stopped = true
    this.running = false
    this.cancelTick?.()
    const err = new RaftStoppedError('raft node stopped')
    for (const p of this.proposals.values()) p.reject(err)
    for (const r of this.reads.values()) r.reject(err)
    this.proposals.clear()
    this.reads.clear()
    // The storage's fd must outlive a pending fsync.
    await this.persisting?.catch(() => {})
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
    if (msg.to !== this.id) {
      this.malformed++
      return
    }
    this.raft.step(msg)
    this.scheduleDrain()
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
    if (r.message.type === 'snap' && this.acceptSnapshot !== undefined && !this.acceptSnapshot(r.message)) {
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
    return this.track((raft) => raft.propose(data, options.requestId, this.sealEntry), options) as Promise<{
      index: number
      result: R
    }>
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
    let pos: { index: number; term: number }
    try {
      pos = start(this.raft)
    } catch (err) {
      return Promise.reject(err)
    }
    const p = new Promise<{ index: number; result: unknown }>((resolve, reject) => {
      const done = this.withDeadline(options, reject, () => this.proposals.delete(pos.index))
      this.proposals.set(pos.index, {
        term: pos.term,
        resolve: (v) => {
          done()
          resolve(v)
        },
        reject: (e) => {
          done()
          reject(e)
        },
      })
    })
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
    const ctx = `${this.id}/${++this.readSeq}`
    try {
      this.raft.readIndex(ctx)
    } catch (err) {
      return Promise.reject(err)
    }
    const p = new Promise<{ index: number }>((resolve, reject) => {
      const done = this.withDeadline(options, reject, () => this.reads.delete(ctx))
      this.reads.set(ctx, {
        index: undefined,
        resolve: (v) => {
          done()
          resolve(v)
        },
        reject: (e) => {
          done()
          reject(e)
        },
      })
    })
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
    this.drain()
  }

  /** Asks the leader (this node) to hand leadership to `to` (thesis §3.10). */
  transferLeadership(to: NodeId): void {
    this.raft.transferLeadership(to)
    this.drain()
  }

  /** Starts an election now (e.g. an operator command); normally elections are timer driven. */
  campaign(): void {
    if (this.stopped) return
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
    this.raft.forgetLeader()
    this.drain()
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

  private withDeadline(options: RequestOptions, reject: (e: Error) => void, remove: () => void): () => void {
    const signal = options.signal
    const abort = () => {
      remove()
      reject(new RaftAbortedError('request aborted', { cause: signal?.reason }))
    }
    if (signal?.aborted) {
      queueMicrotask(abort)
      return () => {}
    }
    signal?.addEventListener('abort', abort, { once: true })
    const cancelTimer =
      signal === undefined
        ? this.clock.setTimeout(() => {
            remove()
            reject(new RaftAbortedError(`request timed out after ${this.opts.requestTimeoutMs} ms`))
          }, this.opts.requestTimeoutMs)
        : () => {}
    return () => {
      signal?.removeEventListener('abort', abort)
      cancelTimer()
    }
  }

  // ---- Ready processing -------------------------------------------------------------------------

  private scheduleDrain(): void {
    if (!this.coalesce) {
      this.drain()
      return
    }
    if (this.drainScheduled) return
    this.drainScheduled = true
    setImmediate(() => {
      this.drainScheduled = false
      if (!this.stopped) this.drain()
    })
  }

  private drain(): void {
    // Re-entrancy from a listener: the outer loop picks it up. While a Ready's entries are being
    // fsynced, the core keeps taking input; the next Ready collects all of it (group commit).
    if (this.draining) return
    if (this.persisting !== undefined) {
      this.drainWhilePersisting()
      return
    }
    this.draining = true
    try {
      for (let rd = this.raft.ready(); rd !== undefined; rd = this.raft.ready()) {
        if (this.handleReady(rd)) break
      }
    } finally {
      this.draining = false
    }
  }

  /**
   * While a Ready's entries are being fsynced, do what does not depend on that write, so that a
   * commit learnt meanwhile costs no extra fsync of latency:
   * - apply committed entries, and answer their proposals, even those whose write here is still
   *   under way: they are on a durable majority and never change (see Raft.committedAfter). A
   *   learner or follower whose disk is slow then shows a write as soon as it learns the commit,
   *   instead of after its own fsync (seen: 170 ms fsyncs with 20 agents on one disk). After a
   *   crash this node restarts from what it has on disk, as with any committed entry not yet
   *   written here, and the leader sends it the rest;
   * - on a leader whose term and vote are durable, send what the core queued since (appends carrying
   *   the new commit index, so followers and learners apply at once, heartbeats, read answers).
   * Nothing that acknowledges the entries being written (a follower's appResp) leaves early: other
   * roles' messages wait for their Ready, after the fsync.
   */
  private drainWhilePersisting(): void {
    if (this.stopped || this.pendingReady === undefined || this.pendingReadyApplyLate) return
    this.draining = true
    try {
      if (this.raft.term === this.durableTerm) {
        this.sendAll(this.raft.takeLeaderMessages(this.pendingReady.messages.length))
      }
      const ents = this.raft.committedAfter(this.appliedIndex)
      if (ents.length === 0) return
      for (const e of ents) this.apply(e)
      this.raft.appliedTo(ents.at(-1)!.index)
      this.resolveReads()
    } finally {
      this.draining = false
    }
  }

  /** Returns true if the Ready waits for an asynchronous fsync (it finishes when that settles). */
  private handleReady(rd: Ready): boolean {
    // A leader whose term is already durable sends its appends before writing them itself (thesis
    // §10.2.1: the leader's disk write runs in parallel with replication). Safe: the core counts
    // its own copy only in `advance`, after the write is durable.
    const early =
      this.raft.role === 'leader' && (rd.hardState === undefined || rd.hardState.term === this.durableTerm)
    const sent = new Set<Message>()
    if (early) {
      for (const m of rd.messages) if (m.type === 'app' || m.type === 'heartbeat') sent.add(m)
      this.sendAll([...sent])
    }
    // 1. persist. Term and vote are fsynced before returning; entries too, unless the storage can
    // sync them off the event loop, in which case everything after waits for that fsync.
    if (rd.snapshot !== undefined) this.storage.installSnapshot(rd.snapshot)
    const deferred = this.syncOffLoop && rd.entries.length > 0
    if (rd.entries.length > 0) {
      if (deferred) this.storage.appendDeferred!(rd.entries)
      else this.storage.append(rd.entries)
    }
    if (rd.hardState !== undefined) {
      this.storage.setHardState(rd.hardState)
      this.durableTerm = rd.hardState.term
    }
    if (!deferred) {
      this.finishReady(rd, sent)
      return false
    }
    // Committed entries need not wait for this write: apply them now (see drainWhilePersisting);
    // a snapshot, and what follows it, after the fsync.
    let late = rd.committedEntries
    if (rd.snapshot === undefined) {
      late = []
      for (const e of rd.committedEntries) this.apply(e)
      if (rd.committedEntries.length > 0) {
        this.raft.appliedTo(rd.committedEntries.at(-1)!.index)
        this.resolveReads()
      }
    }
    this.pendingReady = rd
    this.pendingReadyApplyLate = rd.snapshot !== undefined
    const rest: Ready = late === rd.committedEntries ? rd : { ...rd, committedEntries: late }
    this.persisting = this.storage.sync!().then(
      () => {
        this.persisting = undefined
        this.pendingReady = undefined
        if (this.stopped) return
        this.finishReady(rest, sent)
        this.drain()
      },
      (err: unknown) => {
        this.persisting = undefined
        this.pendingReady = undefined
        // Like etcd's panic on a failed fsync: what is on disk is unknown, so nothing may be
        // acknowledged any more. Stop, and let the error surface as an uncaught exception.
        void this.stop()
        setImmediate(() => {
          throw err
        })
      },
    )
    return true
  }

  /** Steps 2 and 3 of a Ready whose state is durable: send, then apply. */
  private finishReady(rd: Ready, sent: ReadonlySet<Message>): void {
    this.sendAll(sent.size === 0 ? rd.messages : rd.messages.filter((m) => !sent.has(m)))
    if (rd.snapshot !== undefined) {
      const index = rd.snapshot.metadata.index
      this.sm.restore(rd.snapshot.data)
      this.appliedIndex = index
      for (const [i, p] of this.proposals) {
        if (i > index) continue
        this.proposals.delete(i)
        p.reject(new ProposalOutcomeUnknownError(`entry ${i} was replaced by a snapshot at ${index}`))
      }
      this.emit('snapshot:restore', { index })
    }
    for (const e of rd.committedEntries) this.apply(e)
    for (const rs of rd.readStates) {
      const r = this.reads.get(rs.context)
      if (r !== undefined) r.index = rs.index
    }
    this.raft.advance(rd)
    if (rd.softState !== undefined) this.onSoftState()
    this.resolveReads()
    this.maybeSnapshot()
  }

  /** Sends a batch, merging what goes to the same peer (see coalesceMessages). */
  private sendAll(msgs: readonly Message[]): void {
    for (const m of coalesceMessages(msgs, this.limits)) this.sendOne(m)
  }

  private sendOne(m: Message): void {
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
    const p = this.proposals.get(e.index)
    if (p === undefined) return
    this.proposals.delete(e.index)
    if (p.term === e.term) p.resolve({ index: e.index, result })
    else p.reject(new ProposalDroppedError(`entry ${e.index} was overwritten by a new leader`))
  }

  private resolveReads(): void {
    for (const [ctx, r] of this.reads) {
      if (r.index !== undefined && r.index <= this.appliedIndex) {
        this.reads.delete(ctx)
        r.resolve({ index: r.index })
      }
    }
  }

  private onSoftState(): void {
    const { leader, role } = this.raft.softState()
    if (leader !== this.lastLeader || this.raft.term !== this.lastTerm) {
      // Reads not yet confirmed were tied to the old leadership and may never be answered.
      for (const [ctx, r] of this.reads) {
        if (r.index !== undefined) continue
        this.reads.delete(ctx)
        r.reject(new NotLeaderError(leader))
      }
      this.lastLeader = leader
      this.lastTerm = this.raft.term
      this.emit('leader:change', { leader, term: this.raft.term })
    }
    if (role !== this.lastRole) {
      this.lastRole = role
      this.emit('role:change', { role, term: this.raft.term })
    }
  }

  private maybeSnapshot(): void {
    const last = this.raft.snapshot()?.metadata.index ?? 0
    if (this.appliedIndex - last < this.opts.snapshotThreshold) return
    const snap = this.raft.createSnapshot(this.appliedIndex, this.sm.snapshot())
    this.storage.saveSnapshot(snap)
    // Applied entries may not be durable here yet (see drainWhilePersisting): compact only those
    // that are. The snapshot may cover the others: they are committed, and it is durable itself.
    const to = Math.min(this.appliedIndex - this.opts.snapshotTrailing, this.raft.stabledIndex())
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

  status(): DriverStatus {
    return { ...this.raft.status(), malformedMessages: this.malformed, sendFailures: this.sendFailures }
  }

  /** Subscribes to an event; returns the unsubscribe function. */
  on<K extends keyof RaftNodeEvents>(type: K, listener: (detail: RaftNodeEvents[K]) => void): () => void {
    let set = this.listeners.get(type)
    if (set === undefined) {
      set = new Set()
      this.listeners.set(type, set)
    }
    set.add(listener as (d: never) => void)
    return () => set.delete(listener as (d: never) => void)
  }

  private emit<K extends keyof RaftNodeEvents>(type: K, detail: RaftNodeEvents[K]): void {
    for (const l of this.listeners.get(type) ?? []) {
      try {
        ;(l as (d: RaftNodeEvents[K]) => void)(detail)
      } catch {
        // A listener's failure must not break Ready processing.
      }
    }
  }
}
