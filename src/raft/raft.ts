import { applyConfChange, decodeConfChange, encodeConfChange, isMember, isVoter } from './conf-change.ts'
import {
  electionTimeoutTicks,
  MAX_IDLE_HEARTBEAT_TICK,
  quietTicks,
  type RaftConfig,
  validateRaftConfig,
} from './config.ts'
import { ConfChangeError, LeadershipTransferInProgressError, NotLeaderError } from './errors.ts'
import { Progress } from './progress.ts'
import { committedIndex, quorum, voteResult } from './quorum.ts'
import { RaftLog } from './raft-log.ts'
import type {
  ConfChange,
  ConfState,
  Entry,
  HardState,
  Message,
  MessageType,
  NodeId,
  ReadState,
  Ready,
  RefusalReason,
  RefusalRecord,
  RequestId,
  Role,
  Snapshot,
  SoftState,
} from './types.ts'

/**
 * Vote context marking an election forced by leadership transfer (skips pre-vote and leases).
 * Honoured only when the leader asked for it: by the leader itself from its transferee, and by a
 * follower from the transferee the leader announced (`TRANSFER_ANNOUNCE_PREFIX`) within an
 * election timeout. Otherwise the vote is handled as a normal one, inside the leader lease.
 */
export const CAMPAIGN_TRANSFER = 'transfer'

/**
 * Context of a leader's heartbeat announcing a leadership transfer: the prefix, then the
 * transferee's id. Sent to every member when the transfer starts and with each heartbeat while it
 * lasts (unless that heartbeat confirms a read). Old followers just echo it back, as any context.
 */
export const TRANSFER_ANNOUNCE_PREFIX = 'transfer-to:'

/** What a node restarts from: everything its storage holds. */
export interface RaftInitialState {
  hardState?: HardState
  snapshot?: Snapshot
  entries?: Entry[]
}

export interface RaftStatus {
  id: NodeId
  term: number
  vote: NodeId
  leader: NodeId | undefined
  role: Role
  commit: number
  applied: number
  firstIndex: number
  lastIndex: number
  conf: ConfState
  leadTransferee: NodeId | undefined
  /** Messages dropped (or, for `forced_vote_unannounced`, downgraded) per reason; see RefusalReason. */
  refused: Partial<Record<RefusalReason, RefusalRecord>>
  /**
   * The leader's view of each member's replication; empty on other nodes. `active`: the leader
   * heard from it within the last one to two election timeouts (always true for itself, and for
   * everyone during its first election timeout as leader).
   */
  progress: Record<NodeId, { match: number; next: number; state: string; learner: boolean; active: boolean }>
}

interface ReadRequest {
  context: string
  from: NodeId
  index: number
  acks: Set<NodeId>
}

type CampaignKind = 'preElection' | 'election' | 'transfer'

const EMPTY = new Uint8Array(0)

/**
 * The Raft consensus core, in the style of etcd-io/raft: a synchronous state machine that does no
 * I/O and reads no clock. The application calls `tick()` on a timer, `step(msg)` for every received
 * message, `propose()`/`readIndex()`/`proposeConfChange()` for local requests, then drains
 * `ready()`: persist `hardState`/`entries`/`snapshot`, send `messages` and `messagesAfterAppend`,
 * apply `committedEntries`, and calls `advance(ready)`.
 *
 * Asynchronous storage writes (etcd's AsyncStorageWrites, adapted to one write at a time): the
 * application may instead persist `hardState` and `snapshot`, start writing `entries`, send
 * `messages`, apply `committedEntries` and call `accept(ready)`; once the entries are durable it
 * sends `messagesAfterAppend` and reports the write with `appendDone(index, term)`. Until then
 * `ready()` hands out only what does not depend on storage: `messages` and committed entries (they
 * are durable on a quorum, so this node's own write of them need not be finished). Everything else
 * waits for the write, and the next Ready takes all of it (group commit).
 */
export class Raft {
  readonly id: NodeId
  term = 0
  vote: NodeId = ''
  lead: NodeId | undefined
  role: Role = 'follower'
  readonly log = new RaftLog()
  leadTransferee: NodeId | undefined
  /** Index of the latest conf entry appended by this leader; a new change waits until it commits. */
  pendingConfIndex = 0

  private readonly cfg: RaftConfig
  private prs = new Map<NodeId, Progress>()
  private votes = new Map<NodeId, boolean>()
  /** Messages that need not wait for this node's pending state to be durable (see `send`). */
  private msgs: Message[] = []
  /** Messages that may leave only once the state they acknowledge is durable (see `send`). */
  private msgsAfterAppend: Message[] = []
  /**
   * Set from `accept` to `appendDone`: an accepted Ready's entries are being written (one write at a
   * time). `snapshot`: that Ready installed one, so nothing is applied until the write is done.
   */
  private writing: { snapshot: boolean } | undefined
  private readStates: ReadState[] = []
  private readOnly: ReadRequest[] = []
  private pendingReads: { context: string; from: NodeId }[] = []
  private electionElapsed = 0
  private heartbeatElapsed = 0
  private learnerHeartbeatElapsed = 0
  private randomizedElectionTimeout = 0
  /** On the leader: consecutive ticks with nothing to replicate (see `idle`). */
  private quietElapsed = 0
  /** On the leader: the current check-quorum round saw idle heartbeats, so it lasts longer. */
  private roundIdle = false
  /** On a follower: the idle heartbeat interval its leader last announced (0: none). */
  private leaderIdleTicks = 0
  /** Configuration from the snapshot (or empty), and after each conf entry in the log. */
  private baseConf: ConfState = { voters: [], learners: [] }
  private confLog: { index: number; conf: ConfState }[] = []
  /** Latest snapshot: what the leader sends to a follower whose next entry is compacted. */
  private latestSnapshot: Snapshot | undefined
  private prevHardState: HardState
  private prevSoftState: SoftState
  /**
   * On a follower: the transfer its leader announced (transferee, the leader's term, ticks since).
   * Cleared on any term or leader change (`reset`).
   */
  private transferAnnounce: { to: NodeId; term: number; elapsed: number } | undefined
  private readonly refusals = new Map<RefusalReason, RefusalRecord>()

  constructor(cfg: RaftConfig, initial: RaftInitialState = {}) {
    validateRaftConfig(cfg)
    this.cfg = cfg
    this.id = cfg.id
    const snap = initial.snapshot
    if (snap !== undefined) {
      const m = snap.metadata
      this.log.offsetIndex = m.index
      this.log.offsetTerm = m.term
      this.log.committed = m.index
      this.log.applied = m.index
      this.log.stabled = m.index
      this.log.inProgress = m.index
      this.baseConf = cloneConf(m.conf)
      this.latestSnapshot = snap
    }
    const ents = (initial.entries ?? []).filter((e) => e.index > this.log.offsetIndex)
    if (ents.length > 0) {
      if (ents[0]!.index !== this.log.offsetIndex + 1) {
        throw new RangeError(`log starts at ${ents[0]!.index}, expected ${this.log.offsetIndex + 1}`)
      }
      this.appendToLog(ents)
    }
    this.log.stabled = this.log.lastIndex()
    this.log.inProgress = this.log.stabled
    const hs = initial.hardState ?? { term: 0, vote: '', commit: 0 }
    this.term = hs.term
    this.vote = hs.vote
    this.log.commitTo(hs.commit)
    this.prevHardState = { term: hs.term, vote: hs.vote, commit: this.log.committed }
    this.becomeFollower(this.term, undefined)
    this.prevSoftState = this.softState()
  }

  /**
   * Starts a brand-new cluster: appends one committed `addVoter` entry per initial voter at term 1,
   * as etcd's bootstrap does. Every founding node must bootstrap with the same list; nodes that join
   * later start empty and learn the configuration from the leader.
   */
  bootstrap(voters: readonly NodeId[]): void {
    if (this.log.lastIndex() !== 0 || this.term !== 0 || this.log.offsetIndex !== 0) {
      throw new ConfChangeError('cannot bootstrap a node that already has state')
    }
    const ids = [...new Set(voters)].sort()
    if (ids.length === 0) throw new ConfChangeError('bootstrap needs at least one voter')
    const ents: Entry[] = ids.map((node, i) => ({
      term: 1,
      index: i + 1,
      type: 'conf',
      data: encodeConfChange({ type: 'addVoter', node }),
    }))
    this.appendToLog(ents)
    this.becomeFollower(1, undefined)
    this.log.commitTo(ents.length)
  }

  // ---- configuration ----------------------------------------------------------------------------

  conf(): ConfState {
    return cloneConf(this.confLog.at(-1)?.conf ?? this.baseConf)
  }

  private confAt(index: number): ConfState {
    let c = this.baseConf
    for (const e of this.confLog) {
      if (e.index > index) break
      c = e.conf
    }
    return cloneConf(c)
  }

  private currentConf(): ConfState {
    return this.confLog.at(-1)?.conf ?? this.baseConf
  }

  private lastConfIndex(): number {
    return this.confLog.at(-1)?.index ?? this.log.offsetIndex
  }

  private promotable(): boolean {
    return isVoter(this.currentConf(), this.id)
  }

  /** Appends to the in-memory log; conf entries take effect here, when appended (thesis §4.1). */
  private appendToLog(ents: readonly Entry[]): void {
    if (ents.length === 0) return
    const first = ents[0]!.index
    const before = this.currentConf()
    if (first <= this.log.lastIndex()) this.confLog = this.confLog.filter((c) => c.index < first)
    this.log.truncateAndAppend(ents)
    for (const e of ents) {
      if (e.type !== 'conf') continue
      const cc = decodeConfChange(e.data)
      if (cc === undefined) continue
      try {
        this.confLog.push({ index: e.index, conf: applyConfChange(this.currentConf(), cc) })
      } catch {
        // A change that does not apply (e.g. duplicated) changes nothing, identically everywhere.
      }
    }
    if (this.currentConf() !== before) this.syncProgress()
  }

  /** Brings the progress map in line with the current configuration. */
  private syncProgress(): void {
    const conf = this.currentConf()
    const members = new Set([...conf.voters, ...conf.learners])
    for (const id of [...this.prs.keys()]) if (!members.has(id)) this.prs.delete(id)
    for (const id of members) {
      const learner = conf.learners.includes(id)
      const pr = this.prs.get(id)
      if (pr === undefined) {
        const np = new Progress(this.log.lastIndex() + 1, this.cfg.maxInflightMsgs, learner)
        np.recentActive = true
        // Only durable entries count for this node's own copy (see appendDone).
        if (id === this.id) np.match = Math.min(this.log.lastIndex(), this.log.stabled)
        this.prs.set(id, np)
      } else {
        pr.isLearner = learner
      }
    }
    if (this.leadTransferee !== undefined && !conf.voters.includes(this.leadTransferee)) {
      this.leadTransferee = undefined
    }
  }

  // ---- state transitions ------------------------------------------------------------------------

  private resetRandomizedElectionTimeout(): void {
    const e = this.cfg.electionTick
    this.randomizedElectionTimeout = this.timeoutBase() + Math.min(e - 1, Math.floor(this.cfg.rng() * e))
  }

  /**
   * The shortest election timeout in force (`electionTimeoutTicks`): on a follower, stretched while
   * its leader heartbeats at the idle interval; on the leader, its check-quorum round, stretched
   * while this round saw idle heartbeats. Also the length of the check-quorum lease.
   */
  private timeoutBase(): number {
    const idle =
      this.role === 'leader' ? (this.roundIdle ? this.cfg.idleHeartbeatTick : 0) : this.leaderIdleTicks
    return electionTimeoutTicks(this.cfg, idle)
  }

  /** On a follower: what the leader's last message said of its heartbeat interval. */
  private setLeaderIdle(idleTicks: number): void {
    const n = Math.min(idleTicks, MAX_IDLE_HEARTBEAT_TICK)
    if (n === this.leaderIdleTicks) return
    this.leaderIdleTicks = n
    this.resetRandomizedElectionTimeout()
  }

  /**
   * On the leader: nothing to replicate. Every member has every entry (the leader's own copy
   * durable), all committed, no read waiting for a heartbeat round and no transfer in progress.
   */
  private settled(): boolean {
    const last = this.log.lastIndex()
    if (this.log.committed !== last || this.leadTransferee !== undefined) return false
    if (this.readOnly.length > 0 || this.pendingReads.length > 0) return false
    for (const [id, pr] of this.prs) {
      if (pr.match !== last || (id !== this.id && pr.state !== 'replicate')) return false
    }
    return true
  }

  /**
   * On the leader: settled for `quietTicks` (RaftConfig.idleHeartbeatTick), so it heartbeats every
   * idleHeartbeatTick ticks and says so.
   */
  private idle(): boolean {
    return this.cfg.idleHeartbeatTick > 0 && this.quietElapsed >= quietTicks(this.cfg)
  }

  /** On the leader: something to send; heartbeats go back to every heartbeatTick at once. */
  private wake(): void {
    this.quietElapsed = 0
  }

  private reset(term: number): void {
    if (this.term !== term) {
      this.term = term
      this.vote = ''
    }
    this.lead = undefined
    this.electionElapsed = 0
    this.heartbeatElapsed = 0
    this.learnerHeartbeatElapsed = 0
    this.quietElapsed = 0
    this.roundIdle = false
    this.leaderIdleTicks = 0
    this.resetRandomizedElectionTimeout()
    this.leadTransferee = undefined
    this.transferAnnounce = undefined
    this.votes.clear()
    this.prs.clear()
    this.syncProgress()
    this.pendingConfIndex = 0
    this.readOnly = []
    this.pendingReads = []
  }

  private becomeFollower(term: number, lead: NodeId | undefined): void {
    this.reset(term)
    this.lead = lead
    this.role = 'follower'
  }

  private becomePreCandidate(): void {
    // Pre-vote (thesis §9.6) changes neither term nor vote.
    this.votes.clear()
    this.lead = undefined
    this.role = 'preCandidate'
  }

  private becomeCandidate(): void {
    this.reset(this.term + 1)
    this.vote = this.id
    this.role = 'candidate'
  }

  private becomeLeader(): void {
    this.reset(this.term)
    this.lead = this.id
    this.role = 'leader'
    for (const pr of this.prs.values()) pr.recentActive = true
    this.prs.get(this.id)?.becomeReplicate()
    // Conservatively treat any conf entry in the uncommitted tail as pending: no new change until
    // an entry of this term commits (the fix for single-server changes across leader changes).
    this.pendingConfIndex = this.log.lastIndex()
    // Raft §8: a new leader appends an empty entry so that it can commit entries of earlier terms.
    this.appendAsLeader([{ term: this.term, index: this.log.lastIndex() + 1, type: 'normal', data: EMPTY }])
  }

  // ---- inputs -----------------------------------------------------------------------------------

  /** Advances logical time by one tick. */
  tick(): void {
    if (this.role === 'leader') this.tickHeartbeat()
    else this.tickElection()
  }

  /**
   * Ticks from now until `tick()` may do more than count (at least 1): the tick at which a
   * follower or candidate campaigns, or an idle leader heartbeats or checks its quorum. A leader
   * that is not idle acts every tick; a member with no vote never acts on a tick. Until then a tick
   * only advances counters that are read when an input arrives, so a driver may let those ticks
   * pass unticked and tick them before the next input (RaftNodeOptions `lazyTicks`).
   */
  ticksUntilDue(): number {
    if (this.role === 'leader') {
      if (!this.idle()) return 1
      const heartbeat = this.cfg.idleHeartbeatTick - this.heartbeatElapsed
      return Math.max(1, Math.min(heartbeat, this.timeoutBase() - this.electionElapsed))
    }
    if (!this.promotable()) return Number.POSITIVE_INFINITY
    return Math.max(1, this.randomizedElectionTimeout - this.electionElapsed)
  }

  private tickElection(): void {
    this.electionElapsed++
    if (this.transferAnnounce !== undefined) this.transferAnnounce.elapsed++
    if (this.promotable() && this.electionElapsed >= this.randomizedElectionTimeout) {
      this.electionElapsed = 0
      this.campaign()
    }
  }

  private tickHeartbeat(): void {
    this.heartbeatElapsed++
    this.learnerHeartbeatElapsed++
    this.electionElapsed++
    for (const pr of this.prs.values()) if (pr.state === 'snapshot') pr.snapshotTicks++
    const wasIdle = this.idle()
    this.quietElapsed = this.settled() ? this.quietElapsed + 1 : 0
    const idle = this.idle()
    if (idle) this.roundIdle = true
    if (this.electionElapsed >= this.timeoutBase()) {
      this.electionElapsed = 0
      const quorumActive = this.quorumActive() // also starts a new activity round
      this.roundIdle = idle
      if (this.cfg.checkQuorum && !quorumActive) {
        // Thesis §6.2: a leader that cannot hear a quorum within an election timeout steps down.
        this.becomeFollower(this.term, undefined)
        return
      }
      // A transfer that did not finish within an election timeout is abandoned (thesis §3.10).
      this.leadTransferee = undefined
    }
    // Going idle, the first idle heartbeat goes out at once: followers learn of the longer
    // interval before the first long silence.
    const interval = idle ? this.cfg.idleHeartbeatTick : this.cfg.heartbeatTick
    if (this.heartbeatElapsed >= interval || (idle && !wasIdle)) {
      this.heartbeatElapsed = 0
      const learners = idle || this.learnerHeartbeatElapsed >= this.cfg.learnerHeartbeatTick
      if (learners) this.learnerHeartbeatElapsed = 0
      const context = this.readOnly.at(-1)?.context ?? this.transferContext()
      this.bcastHeartbeat(context, learners)
    }
  }

  private quorumActive(): boolean {
    const voters = this.currentConf().voters
    let active = 0
    for (const v of voters) {
      if (v === this.id || this.prs.get(v)?.recentActive) active++
    }
    for (const [id, pr] of this.prs) {
      if (id === this.id) continue
      pr.activeLastRound = pr.recentActive
      pr.recentActive = false
    }
    return active >= quorum(voters.length)
  }

  /**
   * Forgets the current leader (etcd's `MsgForgetLeader` / `RawNode.ForgetLeader`): a follower sets
   * its leader to none and stays a follower in the same term, its election timer running on.
   *
   * With check-quorum, a follower that heard from a leader within the last election timeout ignores
   * (pre-)vote requests: the leader lease of thesis §6.2/§4.2.3, which together with pre-vote
   * (thesis §9.6) stops one partitioned node from deposing a healthy leader. The price is liveness
   * when the leader really died: the first candidate's pre-vote is ignored by followers still inside
   * their lease, and it waits another randomized timeout. A follower with a good reason to think the
   * leader is gone (its connection to the leader closed) forgets it, so it grants pre-votes at once.
   *
   * Only liveness is affected: votes still require an up-to-date log (Raft §5.4.1) and one vote per
   * term, and a candidate still needs a quorum, so a single follower wrongly forgetting a healthy
   * leader cannot depose it while the others keep their lease. The follower takes the leader back
   * with its next heartbeat. A no-op on leaders, candidates and pre-candidates.
   */
  /**
   * Ticks since this node's election timer was last reset: on a follower, since it last heard from
   * its leader (an append, heartbeat or snapshot), granted a vote, or became a follower.
   */
  get ticksSinceLeaderContact(): number {
    return this.electionElapsed
  }

  forgetLeader(): void {
    if (this.role !== 'follower') return
    this.lead = undefined
    this.setLeaderIdle(0) // no reason to wait out a leader's idle interval any more
  }

  /** Starts an election now (with pre-vote if configured). Ignored on leaders and non-voters. */
  campaign(): void {
    if (this.role === 'leader') return
    this.startCampaign(this.cfg.preVote ? 'preElection' : 'election')
  }

  private startCampaign(kind: CampaignKind): void {
    if (!this.promotable()) return
    let voteType: MessageType
    let term: number
    if (kind === 'preElection') {
      this.becomePreCandidate()
      voteType = 'preVote'
      term = this.term + 1 // the term we would campaign for; ours is unchanged
    } else {
      this.becomeCandidate()
      voteType = 'vote'
      term = this.term
    }
    this.votes.set(this.id, true)
    if (voteResult(this.currentConf().voters, this.votes) === 'won') {
      if (kind === 'preElection') this.startCampaign('election')
      else this.becomeLeader()
      return
    }
    for (const v of this.currentConf().voters) {
      if (v === this.id) continue
      this.send({
        type: voteType,
        to: v,
        term,
        index: this.log.lastIndex(),
        logTerm: this.log.lastTerm(),
        context: kind === 'transfer' ? CAMPAIGN_TRANSFER : '',
      })
    }
  }

  /**
   * Handles one message from a peer. Never throws on a well-typed message. `m.from` must be the
   * authenticated sender (the driver's transport checks it); the core listens only to its
   * configuration (see `admit`).
   */
  step(m: Message): void {
    if (m.to !== this.id || m.from === this.id) return
    if (!this.admit(m)) return
    if (m.term > this.term) {
      if (m.type === 'vote' || m.type === 'preVote') {
        let force = false
        if (m.context === CAMPAIGN_TRANSFER) {
          force = m.type === 'vote' && this.transferRequested(m)
          if (!force) this.refuse('forced_vote_unannounced', m) // counted, then handled as a normal vote
        }
        // Check-quorum lease (thesis §6.2/§4.2.3): having heard from a leader within the minimum
        // election timeout, ignore requests to replace it.
        const inLease =
          this.cfg.checkQuorum && this.lead !== undefined && this.electionElapsed < this.timeoutBase()
        if (!force && inLease) {
          this.refuse('vote_in_lease', m)
          return
        }
      }
      if (m.type === 'preVote') {
        // Never change our term because of a pre-vote request.
      } else if (m.type === 'preVoteResp' && !m.reject) {
        // The term is bumped only when the pre-vote wins.
      } else if (m.type === 'app' || m.type === 'heartbeat' || m.type === 'snap') {
        this.becomeFollower(m.term, m.from)
      } else {
        this.becomeFollower(m.term, undefined)
      }
    } else if (m.term < this.term) {
      if ((this.cfg.checkQuorum || this.cfg.preVote) && (m.type === 'heartbeat' || m.type === 'app')) {
        // Tell a stale leader about our term: without this a node whose term ran ahead while it
        // was partitioned could never rejoin, since its pre-votes are refused.
        this.send({ type: 'appResp', to: m.from })
      } else if (m.type === 'preVote') {
        this.send({ type: 'preVoteResp', to: m.from, term: this.term, reject: true })
      }
      return
    }

    if (m.type === 'vote' || m.type === 'preVote') {
      this.handleVote(m)
      return
    }
    switch (this.role) {
      case 'leader':
        this.stepLeader(m)
        break
      case 'candidate':
      case 'preCandidate':
        this.stepCandidate(m)
        break
      case 'follower':
        this.stepFollower(m)
        break
    }
  }

  /**
   * Whether a message may be acted on: Raft listens only to its configuration. A peer holding the
   * cluster key but outside it, or a learner, must not be able to change the term, the leader or
   * the configuration. Raft's own rules decide among members; this only drops what no correct
   * member sends:
   * - nothing from outside the configuration, except appends, heartbeats and snapshots to a node
   *   whose configuration is still empty (how a new learner receives its first entries), and
   *   anything from the leader this node follows (a leader removing itself keeps replicating the
   *   removal until it commits, thesis §4.2.2);
   * - appends, heartbeats, snapshots and read answers only from the leader this node follows, or
   *   from a voter when this node knows no leader of that term: a higher term, or its own with no
   *   leader yet (only voters are elected, Raft §5.2; one leader per term);
   * - TimeoutNow only from the current leader, in its term (thesis §3.10);
   * - (pre-)votes only from voters (a learner never campaigns, thesis §4.2.1);
   * - no higher term from a learner: it would depose the leader for nothing (thesis §4.2.3);
   * - no read request whose context imitates a transfer announcement.
   * Every refusal is counted per reason (`refusedMessages`).
   */
  private admit(m: Message): boolean {
    const conf = this.currentConf()
    const voter = conf.voters.includes(m.from)
    const member = voter || conf.learners.includes(m.from)
    const fromLeader = this.lead !== undefined && m.from === this.lead
    switch (m.type) {
      case 'app':
      case 'heartbeat':
      case 'snap':
        if (fromLeader) return true
        if (!member) {
          // A fresh node, not yet added, learns its first configuration from the leader.
          if (conf.voters.length === 0 && conf.learners.length === 0) return true
          if (this.cutOffLearner() && m.term >= this.term) return true
          return this.refuse('not_member', m)
        }
        if (m.term < this.term) return true // a stale leader: told our term below
        if (!voter) {
          if (this.cutOffLearner()) return true
          return this.refuse(m.term > this.term ? 'higher_term_not_voter' : 'not_leader', m)
        }
        if (m.term === this.term && this.lead !== undefined) return this.refuse('not_leader', m)
        return true
      case 'timeoutNow':
        if (fromLeader && m.term === this.term) return true
        return this.refuse(member ? 'timeout_now_not_leader' : 'not_member', m)
      case 'readIndexResp':
        if (fromLeader) return true
        return this.refuse(member ? 'not_leader' : 'not_member', m)
      case 'vote':
      case 'preVote':
        if (!member) return this.refuse('not_member', m)
        if (!voter) return this.refuse('vote_not_voter', m)
        return true
      default:
        if (!member) return this.refuse('not_member', m)
        if (!voter && m.term > this.term) return this.refuse('higher_term_not_voter', m)
        if (m.type === 'readIndex' && m.context.startsWith(TRANSFER_ANNOUNCE_PREFIX)) {
          return this.refuse('reserved_read_context', m)
        }
        return true
    }
  }

  /**
   * A learner that has accepted nothing from a leader for two election timeouts. Its configuration
   * may be stale: it missed the entries that made the current leader a member or a voter (it was
   * down, or restarted half-way through catching up), so by its own log the real leader is
   * nobody, and it would refuse that leader for good. Such a learner takes a leader's messages
   * from any sender. What that risks is bounded: a learner has no vote and no say in commit, the
   * policy entries and snapshots it applies must carry a CA signature its trusted roots verify,
   * and only a learner already cut off from the real leader can be misled (one that hears its
   * leader never gets here). A voter never relaxes: a stale voter is caught up by a snapshot or
   * replaced by autopilot.
   */
  private cutOffLearner(): boolean {
    return !this.promotable() && this.electionElapsed >= 2 * this.timeoutBase()
  }

  /**
   * Whether a vote with the transfer context was asked for by the leader (thesis §3.10): on the
   * leader, it comes from its transferee; on a follower, from the transferee its leader announced
   * within the last election timeout, campaigning in the term after the leader's.
   */
  private transferRequested(m: Message): boolean {
    if (this.role === 'leader') return m.from === this.leadTransferee
    const a = this.transferAnnounce
    return (
      a !== undefined &&
      a.to === m.from &&
      a.term === this.term &&
      m.term === this.term + 1 &&
      a.elapsed < this.cfg.electionTick
    )
  }

  /** Counts a refused message under `reason`; returns false (the message is not admitted). */
  private refuse(reason: RefusalReason, m: Message): false {
    const r = this.refusals.get(reason)
    if (r === undefined) this.refusals.set(reason, { count: 1, from: m.from, type: m.type, term: m.term })
    else {
      r.count++
      r.from = m.from
      r.type = m.type
      r.term = m.term
    }
    return false
  }

  /** Messages refused so far, per reason, with the last one of each (a copy). */
  refusedMessages(): Partial<Record<RefusalReason, RefusalRecord>> {
    const out: Partial<Record<RefusalReason, RefusalRecord>> = {}
    for (const [reason, r] of this.refusals) out[reason] = { ...r }
    return out
  }

  private handleVote(m: Message): void {
    const respType = m.type === 'vote' ? 'voteResp' : 'preVoteResp'
    const canVote =
      this.vote === m.from ||
      (this.vote === '' && this.lead === undefined) ||
      (m.type === 'preVote' && m.term > this.term)
    // Raft §5.4.1: grant only to a candidate whose log is at least as up-to-date as ours.
    if (canVote && this.log.isUpToDate(m.index, m.logTerm)) {
      this.send({ type: respType, to: m.from, term: m.term })
      if (m.type === 'vote') {
        this.electionElapsed = 0
        this.vote = m.from
      }
    } else {
      this.send({ type: respType, to: m.from, term: this.term, reject: true })
    }
  }

  private stepLeader(m: Message): void {
    switch (m.type) {
      case 'appResp':
        this.handleAppendResponse(m)
        return
      case 'heartbeatResp':
        this.handleHeartbeatResponse(m)
        return
      case 'readIndex':
        this.handleReadIndex(m.from, m.context)
        return
      default:
        return
    }
  }

  private stepCandidate(m: Message): void {
    const myResp = this.role === 'preCandidate' ? 'preVoteResp' : 'voteResp'
    switch (m.type) {
      case 'app':
        this.becomeFollower(m.term, m.from)
        this.handleAppend(m)
        return
      case 'heartbeat':
        this.becomeFollower(m.term, m.from)
        this.handleHeartbeat(m)
        return
      case 'snap':
        this.becomeFollower(m.term, m.from)
        this.handleSnapshot(m)
        return
      default:
        if (m.type !== myResp) return
        this.votes.set(m.from, !m.reject)
        switch (voteResult(this.currentConf().voters, this.votes)) {
          case 'won':
            if (this.role === 'preCandidate') this.startCampaign('election')
            else this.becomeLeader()
            return
          case 'lost':
            this.becomeFollower(this.term, undefined)
            return
          case 'pending':
            return
        }
    }
  }

  private stepFollower(m: Message): void {
    switch (m.type) {
      case 'app':
        this.electionElapsed = 0
        this.lead = m.from
        this.handleAppend(m)
        return
      case 'heartbeat':
        this.electionElapsed = 0
        this.lead = m.from
        this.handleHeartbeat(m)
        return
      case 'snap':
        this.electionElapsed = 0
        this.lead = m.from
        this.handleSnapshot(m)
        return
      case 'timeoutNow':
        // Thesis §3.10: the leader asks us to start an election at once, skipping pre-vote.
        this.startCampaign('transfer')
        return
      case 'readIndexResp':
        this.readStates.push({ index: m.index, context: m.context })
        return
      default:
        return
    }
  }

  // ---- follower side of replication -------------------------------------------------------------

  private handleAppend(m: Message): void {
    this.setLeaderIdle(0)
    if (m.index < this.log.committed) {
      this.send({ type: 'appResp', to: m.from, index: this.log.committed })
      return
    }
    const last = this.maybeAppend(m.index, m.logTerm, m.commit, m.entries)
    if (last !== undefined) {
      this.send({ type: 'appResp', to: m.from, index: last })
      return
    }
    // Fast backtracking (thesis §5.3 note, etcd): hint the last index whose term is <= the
    // leader's prevLogTerm, so the leader skips whole conflicting terms in one round trip.
    const hint = this.log.findConflictByTerm(Math.min(m.index, this.log.lastIndex()), m.logTerm)
    this.send({
      type: 'appResp',
      to: m.from,
      index: m.index,
      reject: true,
      rejectHint: hint.index,
      logTerm: hint.term,
    })
  }

  /** Raft §5.3 AppendEntries receiver rules; returns the last new index on success. */
  private maybeAppend(
    prevIndex: number,
    prevTerm: number,
    commit: number,
    ents: Entry[],
  ): number | undefined {
    if (!this.log.matchTerm(prevIndex, prevTerm)) return undefined
    for (let i = 0; i < ents.length; i++) if (ents[i]!.index !== prevIndex + 1 + i) return undefined
    const lastNew = prevIndex + ents.length
    const ci = this.log.findConflict(ents)
    if (ci !== 0) {
      // Committed entries never conflict with a legitimate leader (Leader Completeness, §5.4).
      if (ci <= this.log.committed) return undefined
      this.appendToLog(ents.slice(ci - prevIndex - 1))
    }
    this.log.commitTo(Math.min(commit, lastNew))
    return lastNew
  }

  private handleHeartbeat(m: Message): void {
    this.setLeaderIdle(m.idleTicks ?? 0)
    this.log.commitTo(m.commit)
    if (m.context.startsWith(TRANSFER_ANNOUNCE_PREFIX)) {
      // Our leader hands over to this voter: honour its forced vote for an election timeout.
      this.transferAnnounce = {
        to: m.context.slice(TRANSFER_ANNOUNCE_PREFIX.length),
        term: m.term,
        elapsed: 0,
      }
      this.send({ type: 'heartbeatResp', to: m.from })
      return
    }
    // A plain heartbeat: the leader finished or abandoned the transfer (read confirmations keep it).
    if (m.context === '') this.transferAnnounce = undefined
    this.send({ type: 'heartbeatResp', to: m.from, context: m.context })
  }

  private handleSnapshot(m: Message): void {
    this.setLeaderIdle(0)
    const s = m.snapshot
    if (s === undefined) return
    if (this.restore(s)) {
      this.send({ type: 'appResp', to: m.from, index: this.log.lastIndex() })
    } else {
      this.send({ type: 'appResp', to: m.from, index: this.log.committed })
    }
  }

  private restore(s: Snapshot): boolean {
    if (s.metadata.index <= this.log.committed) return false
    if (this.log.matchTerm(s.metadata.index, s.metadata.term)) {
      // We already hold the snapshot's last entry: just fast-forward commit.
      this.log.commitTo(s.metadata.index)
      return false
    }
    this.log.restore(s)
    this.baseConf = cloneConf(s.metadata.conf)
    this.confLog = []
    this.latestSnapshot = s
    this.syncProgress()
    return true
  }

  // ---- leader side of replication ---------------------------------------------------------------

  /**
   * The leader's own copy counts towards commit only once `appendDone` reports it durable (thesis
   * §10.2.1: the leader writes in parallel with replication, but an entry is committed only when a
   * majority holds it in stable storage; counting a leader's unwritten copy could lose an
   * acknowledged write if the leader crashed before its fsync).
   */
  private appendAsLeader(ents: Entry[]): void {
    this.wake()
    this.appendToLog(ents)
    this.bcastAppend()
  }

  /**
   * Raft §5.4.2: the leader commits by counting replicas only for entries of its own term; earlier
   * entries commit indirectly, by the Log Matching Property.
   */
  private maybeCommit(): boolean {
    const voters = this.currentConf().voters
    const mci = committedIndex(voters.map((v) => this.prs.get(v)?.match ?? 0))
    if (mci <= this.log.committed || this.log.term(mci) !== this.term) return false
    this.log.commitTo(mci)
    this.afterLeaderCommit()
    return true
  }

  private afterLeaderCommit(): void {
    if (this.pendingReads.length > 0 && this.log.term(this.log.committed) === this.term) {
      const reads = this.pendingReads
      this.pendingReads = []
      for (const r of reads) this.handleReadIndex(r.from, r.context)
    }
    // Thesis §4.2.2: a leader removed from the configuration steps down once the change commits.
    if (!this.promotable() && this.log.committed >= this.lastConfIndex()) {
      this.bcastAppend()
      this.becomeFollower(this.term, undefined)
    }
  }

  private bcastAppend(): void {
    if (this.role !== 'leader') return
    // Voters first: the commit waits for them, learners only follow. (Progress is kept in the
    // order members joined, so a promoted learner would otherwise wait behind the others.)
    const conf = this.currentConf()
    for (const id of conf.voters) if (id !== this.id) this.sendAppend(id)
    for (const id of conf.learners) if (id !== this.id) this.sendAppend(id)
  }

  private sendAppend(to: NodeId, sendIfEmpty = true): boolean {
    const pr = this.prs.get(to)
    if (pr === undefined || pr.isPaused()) return false
    pr.next = Math.min(pr.next, this.log.lastIndex() + 1)
    const prevIndex = pr.next - 1
    const prevTerm = this.log.term(prevIndex)
    const ents =
      prevTerm === undefined
        ? undefined
        : this.log.sliceForSend(pr.next, this.cfg.maxEntriesPerMsg, this.cfg.maxBytesPerMsg)
    if (prevTerm === undefined || ents === undefined) {
      // The entries it needs are compacted: send the snapshot instead (Raft §7).
      const snap = this.latestSnapshot
      if (snap === undefined) return false
      pr.becomeSnapshot(snap.metadata.index)
      pr.sentUpTo(snap.metadata.index)
      this.send({ type: 'snap', to, snapshot: snap })
      return true
    }
    if (ents.length === 0 && !sendIfEmpty) return false
    pr.sentUpTo(prevIndex + ents.length)
    this.send({
      type: 'app',
      to,
      index: prevIndex,
      logTerm: prevTerm,
      entries: ents,
      commit: this.log.committed,
    })
    if (ents.length > 0) pr.sentEntries(ents.at(-1)!.index)
    else if (pr.state === 'probe') pr.probeSent = true
    return true
  }

  private bcastHeartbeat(context: string, learners = true): void {
    const idleTicks = this.idle() ? this.cfg.idleHeartbeatTick : undefined
    for (const [id, pr] of this.prs) {
      if (id === this.id || (!learners && pr.isLearner)) continue
      const commit = Math.min(pr.match, this.log.committed)
      this.send({
        type: 'heartbeat',
        to: id,
        commit,
        context,
        ...(idleTicks === undefined ? {} : { idleTicks }),
      })
    }
  }

  private handleAppendResponse(m: Message): void {
    const pr = this.prs.get(m.from)
    if (pr === undefined) return
    pr.recentActive = true
    if (m.reject) {
      let nextProbe = m.rejectHint
      if (m.logTerm > 0) nextProbe = this.log.findConflictByTerm(m.rejectHint, m.logTerm).index
      if (pr.maybeDecrTo(m.index, nextProbe)) {
        if (pr.state === 'replicate') pr.becomeProbe()
        this.sendAppend(m.from)
      }
      return
    }
    // A follower acknowledges what it was sent: more is forged (etcd's progress tracking assumes
    // it; here a member's message is not trusted that far).
    if (m.index > pr.sentIndex) {
      this.refuse('ack_beyond_sent', m)
      return
    }
    const oldPaused = pr.isPaused()
    const acked = Math.min(m.index, this.log.lastIndex())
    // As etcd: an acknowledgement of exactly the current match also ends a probe. A follower that
    // went back to probe with nothing new to send (a rejected stale append) otherwise stays in
    // probe until the next write, and autopilot never sees a re-added learner as caught up.
    if (!pr.maybeUpdate(acked) && !(pr.state === 'probe' && pr.match === acked)) return
    if (pr.state === 'probe') pr.becomeReplicate()
    else if (pr.state === 'snapshot' && pr.match >= pr.pendingSnapshot) pr.becomeProbe()
    else if (pr.state === 'replicate') pr.inflights.freeLE(m.index)

    if (this.maybeCommit()) {
      this.bcastAppend()
    } else if (oldPaused) {
      this.sendAppend(m.from)
    }
    if (this.role !== 'leader') return
    // Pipelining: keep sending while the window has room and there is something to send.
    while (this.sendAppend(m.from, false)) {
      if (pr.state !== 'replicate') break
    }
    if (m.from === this.leadTransferee && pr.match === this.log.lastIndex()) {
      this.send({ type: 'timeoutNow', to: m.from })
    }
  }

  private handleHeartbeatResponse(m: Message): void {
    const pr = this.prs.get(m.from)
    if (pr === undefined) return
    pr.recentActive = true
    pr.probeSent = false
    if (pr.state === 'replicate' && pr.inflights.full()) pr.inflights.freeFirst()
    // A snapshot that got no answer within an election timeout is presumed lost: send it again.
    if (pr.state === 'snapshot' && pr.snapshotTicks >= this.cfg.electionTick) pr.becomeProbe()
    if (pr.match < this.log.lastIndex()) this.sendAppend(m.from)
    if (m.context !== '') this.ackRead(m.from, m.context)
  }

  // ---- linearizable reads (thesis §6.4) ---------------------------------------------------------

  /**
   * Requests a linearizable read point. When confirmed, a ReadState `{index, context}` appears in a
   * Ready (on this node, even a follower: it asks the leader). Serve the read once applied >= index.
   */
  readIndex(context: string): void {
    if (this.role === 'leader') {
      this.handleReadIndex(this.id, context)
      return
    }
    if (this.lead === undefined) throw new NotLeaderError(undefined)
    this.send({ type: 'readIndex', to: this.lead, context })
  }

  private handleReadIndex(from: NodeId, context: string): void {
    const voters = this.currentConf().voters
    if (voters.length === 1 && voters[0] === this.id) {
      this.respondRead(from, this.log.committed, context)
      return
    }
    this.wake()
    // §6.4 step 1: until an entry of its term commits, the leader may not know the commit index.
    if (this.log.term(this.log.committed) !== this.term) {
      this.pendingReads.push({ context, from })
      return
    }
    // §6.4 step 2-3: record the commit index, then confirm leadership with a heartbeat round.
    this.readOnly.push({ context, from, index: this.log.committed, acks: new Set([this.id]) })
    this.bcastHeartbeat(context)
  }

  private ackRead(from: NodeId, context: string): void {
    const at = this.readOnly.findIndex((r) => r.context === context)
    if (at < 0) return
    const req = this.readOnly[at]!
    req.acks.add(from)
    const voters = this.currentConf().voters
    const acked = voters.filter((v) => req.acks.has(v)).length
    if (acked < quorum(voters.length)) return
    // A quorum confirmed leadership after every earlier request was registered: release them too.
    for (const r of this.readOnly.splice(0, at + 1)) this.respondRead(r.from, r.index, r.context)
  }

  private respondRead(from: NodeId, index: number, context: string): void {
    if (from === this.id) this.readStates.push({ index, context })
    else this.send({ type: 'readIndexResp', to: from, index, context })
  }

  // ---- local requests ---------------------------------------------------------------------------

  /**
   * The index the next `propose` will give its entry, so that the application can prepare the data
   * for it (the agent signs policy entries for their index). Throws as `propose` would.
   */
  proposalIndex(): number {
    this.assertLeader()
    return this.log.lastIndex() + 1
  }

  /** Appends a client entry. Returns its position; it is committed when applied with that term. */
  propose(data: Uint8Array, requestId?: RequestId): { index: number; term: number } {
    this.assertLeader()
    const e: Entry = { term: this.term, index: this.log.lastIndex() + 1, type: 'normal', data }
    if (requestId !== undefined) e.requestId = { clientId: requestId.clientId, seq: requestId.seq }
    this.appendAsLeader([e])
    return { index: e.index, term: e.term }
  }

  /**
   * Proposes one membership change (thesis §4.1); it takes effect on each node when appended.
   * Throws ConfChangeError if another change is not yet committed or the change makes no sense.
   */
  proposeConfChange(cc: ConfChange): { index: number; term: number } {
    this.assertLeader()
    if (this.pendingConfIndex > this.log.committed) {
      throw new ConfChangeError('another membership change is not committed yet')
    }
    applyConfChange(this.currentConf(), cc) // validates; throws ConfChangeError
    const e: Entry = {
      term: this.term,
      index: this.log.lastIndex() + 1,
      type: 'conf',
      data: encodeConfChange(cc),
    }
    this.pendingConfIndex = e.index
    this.appendAsLeader([e])
    return { index: e.index, term: e.term }
  }

  /**
   * Hands leadership to `to` (thesis §3.10): bring it up to date, then send TimeoutNow. Proposals are
   * refused meanwhile; abandoned after an election timeout.
   */
  transferLeadership(to: NodeId): void {
    this.assertLeader(false)
    if (to === this.id) {
      this.leadTransferee = undefined
      return
    }
    if (!isVoter(this.currentConf(), to)) throw new ConfChangeError(`${to} is not a voter`)
    if (this.leadTransferee === to) return
    this.leadTransferee = to
    this.electionElapsed = 0
    this.wake()
    // Announce the transferee first, so that followers honour its forced vote (see
    // CAMPAIGN_TRANSFER); each later heartbeat repeats it while the transfer lasts.
    this.bcastHeartbeat(this.transferContext())
    const pr = this.prs.get(to)!
    if (pr.match === this.log.lastIndex()) this.send({ type: 'timeoutNow', to })
    else this.sendAppend(to)
  }

  /** The heartbeat context announcing the current transfer, '' when none. */
  private transferContext(): string {
    return this.leadTransferee === undefined ? '' : `${TRANSFER_ANNOUNCE_PREFIX}${this.leadTransferee}`
  }

  private assertLeader(checkTransfer = true): void {
    if (this.role !== 'leader') throw new NotLeaderError(this.lead)
    if (checkTransfer && this.leadTransferee !== undefined) {
      throw new LeadershipTransferInProgressError(`leadership is being transferred to ${this.leadTransferee}`)
    }
  }

  // ---- snapshots --------------------------------------------------------------------------------

  /** Records a state-machine snapshot taken at `index` (<= applied). Persist the returned snapshot. */
  createSnapshot(index: number, data: Uint8Array): Snapshot {
    if (index > this.log.applied)
      throw new RangeError(`snapshot index ${index} > applied ${this.log.applied}`)
    const term = this.log.term(index)
    if (term === undefined) throw new RangeError(`snapshot index ${index} is compacted`)
    const snap: Snapshot = { metadata: { index, term, conf: this.confAt(index) }, data }
    if (this.latestSnapshot === undefined || index > this.latestSnapshot.metadata.index)
      this.latestSnapshot = snap
    return snap
  }

  /** Drops in-memory entries <= index (which must be covered by a snapshot). */
  compact(index: number): void {
    const snapIndex = this.latestSnapshot?.metadata.index ?? 0
    const i = Math.min(index, snapIndex)
    if (i <= this.log.offsetIndex) return
    this.baseConf = this.confAt(i)
    this.confLog = this.confLog.filter((c) => c.index > i)
    this.log.compact(i)
  }

  snapshot(): Snapshot | undefined {
    return this.latestSnapshot
  }

  // ---- output -----------------------------------------------------------------------------------

  /**
   * Queues a message. A leader whose term is durable (handed out in an accepted Ready) sends what it
   * queues at once: appends, heartbeats and read answers acknowledge nothing of its own unwritten
   * state, and its own copy of the entries counts towards commit only after `appendDone` (thesis
   * §10.2.1: the leader writes its log in parallel with replicating it). Everything else waits for
   * the write: an append response or a vote must not promise what a crash could forget (thesis
   * §3.8: term, vote and log are persisted before answering). Other roles' requests wait too,
   * which is conservative.
   */
  private send(m: Partial<Message> & { type: MessageType; to: NodeId }): void {
    const early = this.role === 'leader' && this.term === this.prevHardState.term
    ;(early ? this.msgs : this.msgsAfterAppend).push({
      type: m.type,
      from: this.id,
      to: m.to,
      term: m.term ?? this.term,
      logTerm: m.logTerm ?? 0,
      index: m.index ?? 0,
      commit: m.commit ?? 0,
      entries: m.entries ?? [],
      reject: m.reject ?? false,
      rejectHint: m.rejectHint ?? 0,
      context: m.context ?? '',
      ...(m.snapshot === undefined ? {} : { snapshot: m.snapshot }),
      ...(m.idleTicks === undefined ? {} : { idleTicks: m.idleTicks }),
    })
  }

  softState(): SoftState {
    return { leader: this.lead, role: this.role }
  }

  hardState(): HardState {
    return { term: this.term, vote: this.vote, commit: this.log.committed }
  }

  /**
   * Everything the application must do now, or undefined if there is nothing. While entries of an
   * accepted Ready are being written (until `appendDone`), only `messages` and committed entries.
   */
  ready(): Ready | undefined {
    if (this.writing !== undefined) return this.readyWhileWriting(this.writing)
    const hs = this.hardState()
    const ss = this.softState()
    const rd: Ready = {
      entries: this.log.unstableEntries(),
      messages: this.msgs.slice(),
      messagesAfterAppend: this.msgsAfterAppend.slice(),
      committedEntries: this.log.entriesToApply(),
      readStates: this.readStates.slice(),
    }
    if (!sameHardState(hs, this.prevHardState)) rd.hardState = hs
    if (ss.leader !== this.prevSoftState.leader || ss.role !== this.prevSoftState.role) rd.softState = ss
    if (this.log.pendingSnapshot !== undefined) rd.snapshot = this.log.pendingSnapshot
    const empty =
      rd.entries.length === 0 &&
      rd.messages.length === 0 &&
      rd.messagesAfterAppend.length === 0 &&
      rd.committedEntries.length === 0 &&
      rd.readStates.length === 0 &&
      rd.hardState === undefined &&
      rd.softState === undefined &&
      rd.snapshot === undefined
    return empty ? undefined : rd
  }

  /**
   * Committed entries may be applied before this node's own write of them is durable: committed
   * means durable on a quorum (a leader counts its own copy only after `appendDone`), and a
   * committed entry is never overwritten (§5.4), so applying them acknowledges nothing. After a
   * crash this node restarts from what its disk holds and the leader sends it the rest. Not while
   * a snapshot is pending or being written: it must be restored first.
   */
  private readyWhileWriting(writing: { snapshot: boolean }): Ready | undefined {
    const applyNow = !writing.snapshot && this.log.pendingSnapshot === undefined
    const rd: Ready = {
      entries: [],
      messages: this.msgs.slice(),
      messagesAfterAppend: [],
      committedEntries: applyNow ? this.log.entriesToApply() : [],
      readStates: [],
    }
    return rd.messages.length === 0 && rd.committedEntries.length === 0 ? undefined : rd
  }

  /**
   * Acknowledges that `rd` was handled in full: its state is durable, its messages were sent and
   * its committed entries applied. Call before the next `ready()`.
   */
  advance(rd: Ready): void {
    this.accept(rd)
    const last = rd.entries.at(-1)
    if (last !== undefined) this.appendDone(last.index, last.term)
  }

  /**
   * Acknowledges that `rd` is being handled with an asynchronous entry write: its `hardState` and
   * `snapshot` are durable, its `entries` are being written (report it with `appendDone`), its
   * `messages` were sent and its committed entries are applied (or will be, in order, before any
   * later ones). Call before the next `ready()`.
   */
  accept(rd: Ready): void {
    if (rd.hardState !== undefined) this.prevHardState = rd.hardState
    if (rd.softState !== undefined) this.prevSoftState = rd.softState
    if (rd.snapshot !== undefined) {
      const i = rd.snapshot.metadata.index
      if (this.log.pendingSnapshot === rd.snapshot) this.log.pendingSnapshot = undefined
      this.log.stabled = Math.max(this.log.stabled, i)
      this.log.inProgress = Math.max(this.log.inProgress, i)
      this.log.applied = Math.max(this.log.applied, i)
    }
    const lastEnt = rd.entries.at(-1)
    if (lastEnt !== undefined) {
      if (this.log.matchTerm(lastEnt.index, lastEnt.term)) {
        this.log.inProgress = Math.max(this.log.inProgress, lastEnt.index)
      }
      this.writing = { snapshot: rd.snapshot !== undefined }
    }
    const lastApplied = rd.committedEntries.at(-1)
    if (lastApplied !== undefined) this.log.applied = Math.max(this.log.applied, lastApplied.index)
    this.msgs.splice(0, rd.messages.length)
    this.msgsAfterAppend.splice(0, rd.messagesAfterAppend.length)
    this.readStates.splice(0, rd.readStates.length)
  }

  /**
   * The local storage-append-done input (etcd's MsgStorageAppendResp): the entries of the accepted
   * Ready, up to `index` with `term`, are durable. Entries replaced meanwhile (a new leader
   * overwrote them, a snapshot replaced the log) count only up to where the log still holds what
   * was written.
   */
  appendDone(index: number, term: number): void {
    this.writing = undefined
    // A truncation or a snapshot lowered `inProgress` to where the log still matches the write.
    const upTo = this.log.matchTerm(index, term) ? index : this.log.inProgress
    this.log.stabled = Math.max(this.log.stabled, Math.min(upTo, this.log.inProgress))
    // The leader's own acknowledgement: its entries are now durable (see appendAsLeader).
    if (
      this.role === 'leader' &&
      this.prs.get(this.id)?.maybeUpdate(this.log.stabled) &&
      this.maybeCommit()
    ) {
      this.bcastAppend()
    }
  }

  /** Highest index known to be committed (durable on a quorum). */
  committedIndex(): number {
    return this.log.committed
  }

  /** Highest index durable in this node's log storage (as reported through `appendDone`). */
  stabledIndex(): number {
    return this.log.stabled
  }

  status(): RaftStatus {
    const progress: RaftStatus['progress'] = {}
    if (this.role === 'leader') {
      for (const [id, pr] of this.prs) {
        progress[id] = {
          match: pr.match,
          next: pr.next,
          state: pr.state,
          learner: pr.isLearner,
          active: id === this.id || pr.recentActive || pr.activeLastRound,
        }
      }
    }
    return {
      id: this.id,
      term: this.term,
      vote: this.vote,
      leader: this.lead,
      role: this.role,
      commit: this.log.committed,
      applied: this.log.applied,
      firstIndex: this.log.firstIndex(),
      lastIndex: this.log.lastIndex(),
      conf: this.conf(),
      leadTransferee: this.leadTransferee,
      refused: this.refusedMessages(),
      progress,
    }
  }

  /** Whether `id` is a voter or learner in the current (latest appended) configuration. */
  isMember(id: NodeId): boolean {
    return isMember(this.currentConf(), id)
  }
}

function cloneConf(c: ConfState): ConfState {
  return { voters: [...c.voters], learners: [...c.learners] }
}

function sameHardState(a: HardState, b: HardState): boolean {
  return a.term === b.term && a.vote === b.vote && a.commit === b.commit
}
