import type { Logger } from 'pino'
import type { Registry } from 'prom-client'
import { type Cancel, type Clock, withTimeout } from '../../common/clock.ts'
import type { NodeId } from '../../raft/index.ts'
import { counterFrom, gaugeFrom } from '../agent/metrics.ts'
import { RAFT_DEFAULTS } from '../agent/defaults.ts'
import type { RaftMembers } from './components.ts'
import {
  chooseFounders,
  FounderCredential,
  FounderTokenMissingError,
  FoundingAcceptor,
  type FoundingCommitment,
  FoundingConflictError,
  type FoundingRecordStore,
  type FoundingReply,
  type FoundingRequest,
  MemoryFoundingRecord,
  sameSet,
} from './founding.ts'
import type { FoundingChannel } from './founding-rpc.ts'

/** What founding needs of the Raft node. */
export interface FoundingNode {
  readonly id: NodeId
  status(): { term: number; lastIndex: number; leader?: NodeId | undefined }
  bootstrap(voters: readonly NodeId[]): void
  /** Stops serving Raft: called when this agent's founding entries conflict with the cluster's. */
  stop?(): Promise<void> | void
}

export interface BootstrapExpectComponents {
  node: FoundingNode
  members: Pick<RaftMembers, 'members'>
  /**
   * Whether a member may be a voter, hence a founder. Default: every alive member. With
   * `founderAuth`, a member must also have proved the initial management token.
   */
  eligible?: (id: NodeId) => boolean
  /**
   * ACLs on (issue #12): founders are the agents that prove they hold the initial management
   * token (`acl.initialManagementToken`; founding.ts, "Who may found"). Absent: ACLs off, no
   * proofs, today's behaviour. With it and `expect` set, a missing token is refused at
   * construction (`FounderTokenMissingError`): such an agent could never be a founder.
   */
  founderAuth?: { initialManagementToken: string | undefined }
  /** Requests to other agents. Absent: nobody else can be asked (tests of a lone agent). */
  channel?: FoundingChannel
  /** Where this agent's founding commitment is kept durably. Absent: in memory (tests only). */
  record?: FoundingRecordStore
  clock: Clock
  log: Logger
}

export interface BootstrapExpectSettings {
  /** `--bootstrap-expect N`; undefined: this agent never founds but still answers the others. */
  expect: number | undefined
  /** How often a candidate looks at gossip and runs a round (one round at a time). */
  checkMs: number
  /**
   * How long a promise holds without a commit. Long against a round (a few round trips) so that
   * a commit finds its promise; short enough that a candidate that vanished frees its set soon.
   */
  promiseMs?: number
  /** Per-request deadline of a founding request. */
  requestTimeoutMs?: number
}

/** Founding defaults with their reasons. */
export const FOUNDING_DEFAULTS = {
  promiseMs: 3_000, // a round is two round trips on a LAN (milliseconds); a stale promise delays a changed view this long
  requestTimeoutMs: 1_000, // a member that does not answer in 1 s is treated as not promising (a round must fit in promiseMs / 2)
  waitLogMs: 10_000, // how often a commit round still missing answers says so
  auditMs: 2_000, // after founding, members not yet asked for their founding set are asked this often
  proofRetryMs: 1_000, // ACLs on: a member without a valid founder proof is asked again this often (it may restart with the token)
}

/**
 * How often a founded agent looks whether an audit is due (every auditMs): the period of the Raft
 * module's autopilot and voter connections, so that a shared-intervals clock runs it on their timer.
 */
const AUDIT_CHECK_MS = Math.min(RAFT_DEFAULTS.autopilotIntervalMs, FOUNDING_DEFAULTS.auditMs)

type Phase = 'idle' | 'candidate' | 'founded' | 'done' | 'refusing'

/**
 * `--bootstrap-expect N` without forking the log (issue #13): founders agree on one founder set,
 * by promise then durable commitment, before any of them writes entry 1, and nobody founds while
 * a member it sees has Raft state or a leader. The protocol and its safety argument are in
 * ./founding.ts; this is its driver (timers, requests, the Raft node, logs and counters).
 *
 * Every agent runs one (with `expect` undefined it only answers). After founding it asks each
 * alive member once for its founding set: a different one means two logs that differ at index 1;
 * the agent whose founders disagree with it, or else whose set sorts after the other, refuses to
 * serve (stops its Raft node, logs `founding:conflict` at error level, counts it).
 */
export class BootstrapExpect {
  private cancel?: Cancel
  private readonly acceptor: FoundingAcceptor
  private readonly record: FoundingRecordStore
  private readonly abort = new AbortController()
  private phase: Phase = 'idle'
  private busy = false
  private stopped = false
  private lastNotFounder = ''
  private stuckLogged = false
  private lastWaitLog = Number.NEGATIVE_INFINITY
  private readonly audited = new Set<NodeId>()
  private lastAudit = Number.NEGATIVE_INFINITY
  /** The timer runs at the audit's pace (founded). */
  private auditPace = false
  private readonly promiseMs: number
  private readonly requestTimeoutMs: number
  /** ACLs on: this agent's founder proof and the check of others'; undefined with ACLs off. */
  private readonly credential: FounderCredential | undefined
  /** ACLs on: the verified founder proof of each peer, as authenticated by the channel. */
  private readonly proven = new Map<NodeId, Uint8Array>()
  /** ACLs on: when each peer without a verified proof was last asked for one. */
  private readonly proofAsked = new Map<NodeId, number>()
  /** Peers already logged as not proving the token (logged once each). */
  private readonly unprovenLogged = new Set<NodeId>()
  /** Counters for metrics and tests. */
  readonly stats = {
    rounds: 0,
    /** Requests from peers refused as malformed (by the channel) or answered "no" here. */
    refused: 0,
    /** Founding sets seen that differ from this agent's. */
    conflicts: 0,
    /** 1 while founding cannot complete (half-committed sets). */
    stuck: 0,
    /** 1 once this agent refuses to serve a conflicting log. */
    refusing: 0,
  }

  constructor(
    private readonly components: BootstrapExpectComponents,
    private readonly settings: BootstrapExpectSettings,
  ) {
    this.record = components.record ?? new MemoryFoundingRecord()
    this.promiseMs = settings.promiseMs ?? FOUNDING_DEFAULTS.promiseMs
    this.requestTimeoutMs = settings.requestTimeoutMs ?? FOUNDING_DEFAULTS.requestTimeoutMs
    const auth = components.founderAuth
    // Second line of defence behind config validation: with ACLs on, founding needs the token.
    if (auth !== undefined && auth.initialManagementToken === undefined && settings.expect !== undefined)
      throw new FounderTokenMissingError(
        '--bootstrap-expect with ACLs on needs acl.initialManagementToken: founders prove they hold it ' +
          '(docs/SECURITY.md); give every founder the same one, or start this agent without --bootstrap-expect',
      )
    this.credential =
      auth === undefined ? undefined : new FounderCredential(components.node.id, auth.initialManagementToken)
    this.acceptor = new FoundingAcceptor(
      components.node.id,
      { raft: () => this.localRaft(), record: this.record },
      this.promiseMs,
      this.credential,
    )
  }

  /** Whether `id` may be a founder: eligible and, with ACLs on, proved the token (self: holds it). */
  private founderEligible(id: NodeId): boolean {
    if (!(this.components.eligible?.(id) ?? true)) return false
    const c = this.credential
    if (c === undefined) return true
    return id === this.components.node.id ? c.holdsToken : this.proven.has(id)
  }

  /** The proofs of `set` in its order, or undefined when one is missing (ACLs off: none needed). */
  private proofsOf(set: readonly NodeId[]): { proofs?: Uint8Array[] } | undefined {
    const c = this.credential
    if (c === undefined) return {}
    const proofs: Uint8Array[] = []
    for (const id of set) {
      const p = id === this.components.node.id ? c.own : this.proven.get(id)
      if (p === undefined) return undefined
      proofs.push(p)
    }
    return { proofs }
  }

  /**
   * ACLs on: asks the members of `ids` with no verified proof for one (a status request; the
   * replies are checked in `askAll`), each at most once per `proofRetryMs`.
   */
  private async collectProofs(ids: readonly NodeId[]): Promise<void> {
    if (this.credential === undefined) return
    const now = this.components.clock.now()
    const ask = ids.filter(
      (id) =>
        id !== this.components.node.id &&
        !this.proven.has(id) &&
        now - (this.proofAsked.get(id) ?? Number.NEGATIVE_INFINITY) >= FOUNDING_DEFAULTS.proofRetryMs,
    )
    if (ask.length === 0) return
    for (const id of ask) this.proofAsked.set(id, now)
    await this.askAll(ask, { op: 'status' })
  }

  /** Keeps the proof of `peer`'s reply if it verifies for `peer`; forgets it otherwise. */
  private noteProof(peer: NodeId, reply: FoundingReply): void {
    const c = this.credential
    if (c === undefined || peer === this.components.node.id) return
    if (c.verify(peer, reply.proof)) {
      this.proven.set(peer, reply.proof!)
      return
    }
    this.proven.delete(peer)
    if (!this.unprovenLogged.has(peer)) {
      this.unprovenLogged.add(peer)
      this.components.log.info(
        { peer, proof: reply.proof !== undefined ? 'invalid' : 'none' },
        'founding: member does not prove the initial management token; it is not a founder',
      )
    }
  }

  /** The founder set this agent committed to (and founded, or will), if any. */
  commitment(): FoundingCommitment | undefined {
    return this.record.load()
  }

  /** Founding requests refused: malformed ones (counted by the channel) and those not granted. */
  refusedRequests(): number {
    return this.stats.refused + (this.components.channel?.stats?.refused ?? 0)
  }

  /** Whether this agent refuses to serve because its log conflicts with the cluster's. */
  get refusing(): boolean {
    return this.phase === 'refusing'
  }

  async start(): Promise<void> {
    await this.components.channel?.start((from, req) => this.serve(from, req))
    if (this.stopped) return
    // The first audit waits one period: not in the middle of the first election.
    this.lastAudit = this.components.clock.now()
    this.lastWaitLog = this.lastAudit
    this.phase = 'candidate'
    this.cancel = this.components.clock.setInterval(() => this.check(), this.settings.checkMs)
    this.check()
  }

  async stop(): Promise<void> {
    this.stopped = true
    this.abort.abort(new Error('stopping'))
    this.stopTimer()
    await this.components.channel?.stop()
  }

  /** Answers a peer's request (the channel already checked its shape). */
  serve(_from: NodeId, req: FoundingRequest): FoundingReply {
    const reply = this.acceptor.handle(req, this.components.clock.now())
    const granted =
      req.op === 'status' ||
      (req.op === 'prepare' && sameSet(reply.promised, req.set)) ||
      (req.op === 'commit' && sameSet(reply.committed?.set, req.set))
    if (!granted) this.stats.refused++
    return reply
  }

  private stopTimer(): void {
    this.cancel?.()
    this.cancel = undefined
  }

  private localRaft(): { state: boolean; leader?: NodeId } {
    const st = this.components.node.status()
    return {
      state: st.term > 0 || st.lastIndex > 0,
      ...(st.leader !== undefined && st.leader !== '' ? { leader: st.leader } : {}),
    }
  }

  private check(): void {
    if (this.busy || this.stopped) return
    this.busy = true
    this.step()
      .catch((err: unknown) =>
        this.components.log.warn({ err: (err as Error).message }, 'founding round failed'),
      )
      .finally(() => {
        this.busy = false
      })
  }

  private async step(): Promise<void> {
    if (this.phase === 'candidate') await this.candidateStep()
    else if (this.phase === 'founded') await this.audit()
    else this.stopTimer()
    // Founded: only the audit is left, due every auditMs; checking every checkMs would wake the
    // agent ten times a second for nothing. Checked at the Raft module's own period, whose timer
    // the module's clock shares among its tasks (src/common/shared-intervals.ts): no wake-up of its own.
    if (this.phase === 'founded' && !this.auditPace && this.cancel !== undefined && !this.stopped) {
      this.auditPace = true
      this.stopTimer()
      this.cancel = this.components.clock.setInterval(() => this.check(), AUDIT_CHECK_MS)
    }
  }

  private async candidateStep(): Promise<void> {
    const { node, log } = this.components
    const self = node.id
    const raft = this.localRaft()
    const rec = this.record.load()
    if (rec !== undefined) {
      if (raft.state) {
        this.phase = rec.set.includes(self) ? 'founded' : 'done'
        return
      }
      if (rec.set.includes(self)) await this.commitRound(rec)
      else this.phase = 'done' // a witness only: the founders' leader adds it later
      return
    }
    if (raft.state || raft.leader !== undefined) {
      this.phase = 'done'
      return
    }
    const expect = this.settings.expect
    if (expect === undefined) {
      this.phase = 'done'
      return
    }
    const alive = this.aliveIds()
    await this.collectProofs(alive)
    if (this.stopped || this.phase !== 'candidate' || this.record.load() !== undefined) return
    const founders = chooseFounders(alive, (id) => this.founderEligible(id), expect)
    if (founders === undefined) return
    const proofs = this.proofsOf(founders)
    if (proofs === undefined) return // a proof forgotten meanwhile (a member answered without one)
    if (!founders.includes(self)) {
      const key = founders.join(',')
      if (key !== this.lastNotFounder) log.info({ founders }, 'bootstrap-expect met; not a founder, waiting')
      this.lastNotFounder = key
      return
    }
    this.stats.rounds++
    const started = this.components.clock.now()
    // Witnesses: every alive member; with ACLs on, only those that proved the token (an agent
    // without it, or with another one, is no witness: it cannot judge a set, founding.ts).
    const witnesses =
      this.credential === undefined ? alive : alive.filter((id) => id === self || this.proven.has(id))
    // Everyone alive is asked, witness or not: any of them may show that a cluster exists.
    const replies = await this.askAll(alive, { op: 'prepare', set: founders, ...proofs })
    if (this.stopped || this.phase !== 'candidate') return
    // Committed meanwhile (another founder's commit arrived): the next step drives that commitment.
    if (this.record.load() !== undefined) return
    for (const [peer, r] of replies) {
      if (r !== undefined && (r.state || r.leader !== undefined)) {
        log.info(
          { peer, leader: r.leader },
          'not founding: a member already has raft state; waiting to be added',
        )
        this.phase = 'done'
        return
      }
    }
    const allPromised = witnesses.every((id) => {
      const r = replies.get(id)
      return r !== undefined && r.committed === undefined && sameSet(r.promised, founders)
    })
    if (!allPromised || this.components.clock.now() - started >= this.promiseMs / 2) {
      log.debug({ founders }, 'founding: not every member promised this set yet')
      return
    }
    const own = this.acceptor.handle(
      { op: 'commit', set: founders, witnesses, ...proofs },
      this.components.clock.now(),
    )
    if (!sameSet(own.committed?.set, founders)) return
    log.info({ founders, witnesses: witnesses.length }, 'founding: committed to founder set')
    await this.commitRound({ set: founders, witnesses })
  }

  /** Commits every witness to `rec`; writes the founding entries once all are committed. */
  private async commitRound(rec: FoundingCommitment): Promise<void> {
    const { node, log } = this.components
    // After a restart the proofs are gone: ask the founders again (those already committed do not
    // need them, the others check them).
    await this.collectProofs(rec.set)
    if (this.stopped || this.phase !== 'candidate') return
    const proofs = this.proofsOf(rec.set) ?? {}
    const replies = await this.askAll(rec.witnesses, {
      op: 'commit',
      set: rec.set,
      witnesses: rec.witnesses,
      ...proofs,
    })
    if (this.stopped || this.phase !== 'candidate') return
    const values = [...replies.values()]
    if (values.every((r) => r !== undefined && sameSet(r.committed?.set, rec.set))) {
      if (!this.localRaft().state) {
        node.bootstrap(rec.set)
        log.info({ founders: rec.set }, 'bootstrapped raft cluster')
      }
      this.phase = 'founded'
      this.stats.stuck = 0
      return
    }
    const now = this.components.clock.now()
    if (now - this.lastWaitLog >= FOUNDING_DEFAULTS.waitLogMs) {
      this.lastWaitLog = now
      const missing = [...replies].filter(([, r]) => r === undefined).map(([id]) => id)
      if (missing.length > 0)
        log.warn(
          { founders: rec.set, missing },
          'founding: waiting for witnesses to answer the commit (a witness gone for good blocks founding: ' +
            'see raft-founding.json in founding.ts)',
        )
    }
    const blocking = [...replies].filter(
      ([, r]) =>
        r !== undefined && !sameSet(r.committed?.set, rec.set) && (r.committed !== undefined || r.state),
    )
    if (blocking.length > 0 && !this.stuckLogged) {
      this.stuckLogged = true
      this.stats.stuck = 1
      log.error(
        {
          founders: rec.set,
          blocking: blocking.map(([id, r]) => ({ id, committed: r?.committed?.set, state: r?.state })),
        },
        'founding:stuck: committed to a founder set that some witnesses will never commit to; ' +
          'no cluster is founded from here (stop these agents and remove raft-founding.json from the ' +
          'data dirs of agents without raft state)',
      )
    }
  }

  /** After founding: asks each alive member once for its founding set. */
  private async audit(): Promise<void> {
    const { node, log } = this.components
    const mine = this.record.load()
    const now = this.components.clock.now()
    if (mine === undefined || now - this.lastAudit < FOUNDING_DEFAULTS.auditMs) return
    this.lastAudit = now
    const peers = this.aliveIds().filter((id) => id !== node.id && !this.audited.has(id))
    if (peers.length === 0) return
    const replies = await this.askAll(peers, { op: 'status' })
    if (this.stopped || this.phase !== 'founded') return
    for (const [peer, r] of replies) {
      if (r === undefined) continue
      this.audited.add(peer)
      // ACLs on: only a peer that proves the token can found, so only its set can conflict; any
      // key holder could otherwise claim a low-sorting set and make the founders stop serving.
      if (this.credential !== undefined && !this.proven.has(peer)) continue
      const theirs = r.committed
      if (theirs === undefined || sameSet(theirs.set, mine.set)) continue
      this.stats.conflicts++
      const refuse = mine.set.includes(peer) || theirs.set.join(',') < mine.set.join(',')
      const err = new FoundingConflictError(
        `founding:conflict: this agent founded ${mine.set.join(',')} but ${peer} founded ` +
          `${theirs.set.join(',')}; their logs differ from index 1`,
      )
      log.error(
        { code: err.code, peer, mine: mine.set, theirs: theirs.set, refusing: refuse },
        refuse
          ? `${err.message}: refusing to serve raft here (stop this agent and empty its data dir to join the other cluster)`
          : `${err.message}: the other side refuses to serve`,
      )
      if (refuse) {
        this.phase = 'refusing'
        this.stats.refusing = 1
        this.stopTimer()
        await node.stop?.()
        return
      }
    }
  }

  private aliveIds(): NodeId[] {
    const self = this.components.node.id
    const ids = this.components.members
      .members()
      .filter((m) => m.status === 'alive')
      .map((m) => m.id)
    return [...new Set([self, ...ids])].sort()
  }

  /** Sends `req` to every id (itself answered locally); undefined where no valid answer came. */
  private async askAll(
    ids: readonly NodeId[],
    req: FoundingRequest,
  ): Promise<Map<NodeId, FoundingReply | undefined>> {
    const { channel, clock, node } = this.components
    const ask = async (id: NodeId): Promise<FoundingReply | undefined> => {
      if (id === node.id) return this.acceptor.handle(req, clock.now())
      if (channel === undefined) return undefined
      try {
        const reply = await withTimeout(clock, this.requestTimeoutMs, (timeout) =>
          channel.request(id, req, { signal: AbortSignal.any([timeout, this.abort.signal]) }),
        )
        // `id` is the peer the channel reached and authenticated (libp2p: the dialed peer id).
        this.noteProof(id, reply)
        return reply
      } catch {
        return undefined
      }
    }
    const out = await Promise.all(ids.map(async (id) => [id, await ask(id)] as const))
    return new Map(out)
  }
}

/** Registers the `peermesh_raft_founding_*` metrics. */
export function registerFoundingMetrics(
  registry: Registry,
  source: Pick<BootstrapExpect, 'stats' | 'refusedRequests'>,
): void {
  counterFrom(
    registry,
    'peermesh_raft_founding_refused_total',
    'Founding requests from peers refused (malformed, or not granted)',
    () => source.refusedRequests(),
  )
  counterFrom(
    registry,
    'peermesh_raft_founding_conflicts_total',
    'Founding sets seen that differ from this agent (logs that differ from index 1)',
    () => source.stats.conflicts,
  )
  gaugeFrom(
    registry,
    'peermesh_raft_founding_refusing',
    '1 while this agent refuses to serve raft because its founding entries conflict',
    () => source.stats.refusing,
  )
  gaugeFrom(
    registry,
    'peermesh_raft_founding_stuck',
    '1 while founding cannot complete (witnesses committed to different founder sets)',
    () => source.stats.stuck,
  )
}
