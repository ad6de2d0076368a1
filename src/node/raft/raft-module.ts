import { randomBytes } from 'node:crypto'
import { peerIdFromString } from '@libp2p/peer-id'
import { join } from 'node:path'
import type { Logger } from 'pino'
import { Gauge } from 'prom-client'
import {
  encodeMessage,
  type EntrySealer,
  type Message,
  encodePolicyCommand,
  FileStorage,
  type NodeId,
  NotLeaderError,
  type PolicyCommand,
  type PolicyResult,
  type PolicySigningRoot,
  PolicyStore,
  RaftNode,
  snapshotMessageTrusted,
  withSnapshotSignature,
  type RequestId,
} from '../../raft/index.ts'
import { pack, unpack } from '../../raft/msgpack.ts'
import type { AgentContext, AgentModule } from '../agent/agent.ts'
import { counterFrom, gaugeFrom } from '../agent/metrics.ts'
import type { GossipModule } from '../gossip/gossip-module.ts'
import { type AutopilotSettings, DEFAULT_AUTOPILOT, planAutopilot, trackDown } from './autopilot.ts'
import { registerRaftRoutes } from '../api/raft-routes.ts'
import { StreamMessenger } from '../transport/stream-messenger.ts'

/** Best-effort Raft messages between members (appends, votes, heartbeats, snapshots). */
export const RAFT_PROTOCOL = '/peermesh/raft/1'
/**
 * Reliable request/response: writes forwarded to the leader, many at once on one long-lived
 * stream per peer (`/1` opened a stream per write: a round trip more each, see StreamMessenger).
 */
export const RAFT_RPC_PROTOCOL = '/peermesh/raft/rpc/2'
/** Sub-directory of the data dir holding the Raft log, hard state and snapshot. */
export const RAFT_DIR = 'raft'

/** Largest Raft message: a snapshot of the policy store travels in one message. */
const MAX_MESSAGE_BYTES = 16 * 1024 * 1024
/** Times a write refused for its CA signature is sent again (see `write`). */
const WRITE_SIGNATURE_RETRIES = 5
/** Largest forwarded command (the HTTP API takes bodies up to 1 MiB). */
const MAX_COMMAND_BYTES = 1024 * 1024

export interface RaftModuleOptions {
  /**
   * Milliseconds per Raft tick. 25 ms with electionTick 6 gives election timeouts of 150–300 ms
   * (Raft §9.3's range): a dead leader is replaced in ~0.2 s on a LAN, while a heartbeat every
   * tick keeps followers far from expiry even with an event loop stalled for 100 ms.
   */
  tickMs?: number
  /** Ticks without a leader before an election (randomized up to twice that). */
  electionTick?: number
  /** Ticks between leader heartbeats. */
  heartbeatTick?: number
  /** Ticks between heartbeats to learners (see RaftConfig.learnerHeartbeatTick). */
  learnerHeartbeatTick?: number
  /** How often the leader's autopilot looks at gossip and the configuration. */
  autopilotIntervalMs?: number
  autopilot?: Partial<Omit<AutopilotSettings, 'targetVoters'>>
  /** Snapshot after this many applied entries. */
  snapshotThreshold?: number
  /**
   * When the leader's connection closes, the surviving voters forget it and campaign in the order
   * of their peer ids, this many ms apart: the first at once, the next only if no election reached
   * it meanwhile (so they do not split the vote). 0 turns the fast failover off.
   */
  failoverStaggerMs?: number
}

const DEFAULTS = {
  tickMs: 25,
  electionTick: 6,
  heartbeatTick: 1,
  // 100 ms: with 3 voters and 17 learners, heartbeats to learners every 25 ms tick and their
  // answers were 1,360 of the leader's 1,520 messages a second at rest. Learners need none to stay
  // in sync (appends and commit notices go out at once), only to resend a lost append and to look
  // active to autopilot.
  learnerHeartbeatTick: 4,
  autopilotIntervalMs: 200, // membership reacts within a fraction of the dead threshold
  snapshotThreshold: 8192, // a snapshot holds the dedupe table (up to 10k clients): not too often
  // 4 ticks: the first survivor repeats its pre-vote every tick (a follower that has not yet seen
  // the connection close ignores it), so it wins within a tick or two of everyone noticing; the
  // next one starts only if the first cannot win (its log is behind), without racing it.
  failoverStaggerMs: 100,
  /** One forwarding attempt: a dead leader's connection resets at once on a LAN; a hung one is cut. */
  attemptTimeoutMs: 1_000,
  /** Pause before retrying when no leader is known (or it just refused), unless one is elected. */
  retryPauseMs: 20,
}

/** No Raft leader was known (or reachable) before the deadline. */
export class NoLeaderError extends Error {
  override readonly name = 'NoLeaderError'
  readonly code = 'PEERMESH_ERR_NO_LEADER'
}

/** A write was sent but not confirmed before the deadline; it may still be applied (once). */
export class WriteTimeoutError extends Error {
  override readonly name = 'WriteTimeoutError'
  readonly code = 'PEERMESH_ERR_WRITE_TIMEOUT'
}

/** The Raft layer is not running (agent starting or stopping). */
export class RaftNotRunningError extends Error {
  override readonly name = 'RaftNotRunningError'
  readonly code = 'PEERMESH_ERR_RAFT_NOT_RUNNING'
}

/** One server of `GET /v1/operator/raft/configuration` (Consul's shape). */
export interface RaftServerJson {
  /** libp2p peer id. */
  id: string
  /** Agent name (from gossip). */
  node: string
  /** libp2p address ending in /p2p/<id>, "" if unknown. */
  address: string
  leader: boolean
  voter: boolean
}

export interface RaftConfigurationJson {
  servers: RaftServerJson[]
  /** Raft index of the configuration (latest membership change applied here). */
  index: number
}

interface ForwardRequest {
  t: 'propose'
  data: Uint8Array
  clientId: string
  seq: number
}

type ForwardReply =
  | { ok: true; index: number; result: PolicyResult }
  | { ok: false; code: string; message: string; leader?: string }

const isAbort = (err: unknown): boolean =>
  err instanceof Error && (err.name === 'AbortError' || err.name === 'TimeoutError')

/**
 * Runs this agent's Raft member and connects it to the rest of the agent:
 * - storage in `<dataDir>/raft` (FileStorage; a corrupted log stops the agent), the policy store
 *   as state machine, libp2p streams as transport;
 * - bootstrap from `--bootstrap` or `--bootstrap-expect N` (the N lowest alive peer ids);
 * - on the leader, autopilot driven by gossip (./raft-autopilot.ts);
 * - writes from any agent forwarded to the leader with a request id, retried across leader
 *   changes (applied once); reads local, or linearizable through ReadIndex.
 */
export class RaftModule implements AgentModule {
  readonly name = 'raft'
  /** Verifies the CA signature of every policy entry once the CA exists (policy-signing.ts). */
  readonly store = new PolicyStore(undefined, { verifySignatures: true })
  /** The root that signs snapshots sent from here (set by the connect module; a voter's key). */
  private snapshotSigner?: () => PolicySigningRoot | undefined
  /** Signs the policy entries this agent appends as leader (set by the connect module). */
  private entrySealer?: EntrySealer
  /** Awaited before autopilot makes `peerId` a voter (the connect module seals the CA key to it). */
  private voterGate?: (peerId: string, signal: AbortSignal) => Promise<void>
  private node?: RaftNode<PolicyResult>
  private messenger?: StreamMessenger
  private ctx?: AgentContext
  private log?: Logger
  private autopilotTimer?: NodeJS.Timeout
  private bootstrapTimer?: NodeJS.Timeout
  private autopilotBusy = false
  private readonly downSince = new Map<NodeId, number>()
  /** When this agent last received a Raft message from each peer (performance.now()). */
  private readonly lastHeard = new Map<NodeId, number>()
  private confIndex = 0
  private clientPrefix = ''
  private writeSeq = 0
  private stopped = false
  private failoverTimer?: NodeJS.Timeout
  private unsubscribeHost?: () => void
  private readonly opts: typeof DEFAULTS & { autopilot: AutopilotSettings }
  readonly stats = {
    proposals: 0,
    forwardedWrites: 0,
    leaderChanges: 0,
    confChanges: 0,
    snapshotsRejected: 0,
    signatureRetries: 0,
  }

  constructor(
    private readonly gossip: GossipModule,
    options: RaftModuleOptions = {},
  ) {
    this.opts = {
      ...DEFAULTS,
      ...stripUndefined(options),
      autopilot: { ...DEFAULT_AUTOPILOT, ...stripUndefined(options.autopilot ?? {}) },
    }
  }

  /** The running Raft node (for tests and other modules). */
  get raft(): RaftNode<PolicyResult> | undefined {
    return this.node
  }

  async start(ctx: AgentContext): Promise<void> {
    this.ctx = ctx
    const log = ctx.log.child({ component: 'raft' })
    this.log = log
    this.opts.autopilot.targetVoters = ctx.config.raftVoters
    const self = ctx.identity.id
    this.writeSeq = 0
    // Client ids are unique per agent run: a restarted agent must not hit its old dedupe records.
    this.clientPrefix = `${self}.${randomBytes(6).toString('hex')}.`

    // A corrupted record is thrown from here and stops the agent with one line (see cli.ts).
    const { storage, warnings } = FileStorage.open(join(ctx.config.dataDir, RAFT_DIR))
    for (const w of warnings) log.warn({ warning: w }, 'raft log repaired')
    const messenger = new StreamMessenger({
      host: ctx.host,
      protocol: RAFT_PROTOCOL,
      requestProtocol: RAFT_RPC_PROTOCOL,
      requestMode: 'multiplexed',
      log,
      maxMessageBytes: MAX_MESSAGE_BYTES,
      maxRequestBytes: MAX_COMMAND_BYTES + 4096,
      maxQueuedPerPeer: 1024,
      // Messages to a peer whose dial failed are dropped for this long. Short, two ticks: a member
      // that just restarted cannot reach peers whose addresses it has not learnt yet, and a longer
      // silence costs a failover round (its pre-vote answers would be lost).
      dialBackoffMs: 50,
    })
    this.messenger = messenger
    let node: RaftNode<PolicyResult>
    try {
      node = new RaftNode<PolicyResult>({
        id: self,
        storage,
        stateMachine: this.store,
        transport: {
          send: (to, msg) => {
            const signed = msg.type === 'snap' ? withSnapshotSignature(msg, this.snapshotSigner?.()) : msg
            messenger.send(to, encodeMessage(signed))
          },
        },
        config: {
          electionTick: this.opts.electionTick,
          heartbeatTick: this.opts.heartbeatTick,
          learnerHeartbeatTick: this.opts.learnerHeartbeatTick,
        },
        tickMs: this.opts.tickMs,
        snapshotThreshold: this.opts.snapshotThreshold,
        coalesceReady: true,
        sealer: (index, requestId, data) => this.entrySealer?.(index, requestId, data) ?? data,
        verifySnapshot: (msg) => this.verifySnapshotMessage(msg),
        ...(ctx.config.bootstrap ? { bootstrap: [self] } : {}),
      })
    } catch (err) {
      storage.close()
      throw err
    }
    this.node = node
    const st = node.status()
    this.confIndex = Math.max(0, st.firstIndex - 1) // the snapshot's index, a lower bound
    node.on('leader:change', ({ leader, term }) => {
      this.stats.leaderChanges++
      log.info({ leader, term, self: leader === self }, 'leader:change')
      ctx.events.emit('leader:change', { leader, term })
    })
    node.on('role:change', ({ role, term }) => log.debug({ role, term }, 'role:change'))
    node.on('conf:change', ({ index, change, conf }) => {
      this.confIndex = index
      this.stats.confChanges++
      log.info({ index, change, voters: conf.voters.length, learners: conf.learners.length }, 'conf:change')
    })
    node.on('snapshot:restore', ({ index }) => {
      this.confIndex = Math.max(this.confIndex, index)
      log.info({ index }, 'snapshot:restore')
    })
    messenger.onMessage((from, bytes) => {
      if (this.stopped) return
      if (node.receive(bytes, from)) this.lastHeard.set(from, performance.now())
    })
    messenger.onRequest((from, bytes, signal) => this.serveForward(from, bytes, signal))
    this.watchLeaderLiveness(ctx)
    await messenger.start()
    node.start()
    log.info(
      { term: st.term, commit: st.commit, lastIndex: st.lastIndex, voters: st.conf.voters.length },
      st.lastIndex > 0 || st.term > 0 ? 'raft state loaded' : 'raft starting empty',
    )

    const expect = ctx.config.bootstrapExpect
    if (expect !== undefined && !ctx.config.bootstrap) this.waitToBootstrap(expect)
    this.autopilotTimer = setInterval(() => this.runAutopilot(), this.opts.autopilotIntervalMs)
    this.registerMetrics(ctx)
    registerRaftRoutes(ctx.http, this)
  }

  async stop(): Promise<void> {
    if (this.stopped) return
    this.stopped = true
    clearInterval(this.autopilotTimer)
    clearInterval(this.bootstrapTimer)
    clearTimeout(this.failoverTimer)
    this.unsubscribeHost?.()
    await this.node?.stop()
    await this.messenger?.stop()
  }

  // ---- signed policy state -------------------------------------------------------------------------

  /** Sets the source of the key that signs snapshots sent from here (undefined: unsigned). */
  setSnapshotSigner(signer: (() => PolicySigningRoot | undefined) | undefined): void {
    this.snapshotSigner = signer
  }

  /** Sets the signer of the policy entries this agent appends as leader (undefined: unsigned). */
  setEntrySealer(sealer: EntrySealer | undefined): void {
    this.entrySealer = sealer
  }

  /** Sets the step autopilot awaits before making a member a voter. */
  setVoterGate(gate: ((peerId: string, signal: AbortSignal) => Promise<void>) | undefined): void {
    this.voterGate = gate
  }

  /**
   * A snapshot replaces the whole policy state, so once this agent trusts a CA root it installs
   * only a snapshot signed by one of its trusted roots (policy-signing.ts).
   */
  private verifySnapshotMessage(msg: Message): boolean {
    const ok = snapshotMessageTrusted(msg, this.store.trustedRoots())
    if (!ok) {
      this.stats.snapshotsRejected++
      this.log?.warn(
        { from: msg.from, index: msg.snapshot?.metadata.index },
        'snapshot refused: not signed by a CA root trusted here (if this agent missed a whole root ' +
          'rotation while the log was compacted, stop it, empty its raft directory and restart it)',
      )
    }
    return ok
  }

  // ---- bootstrap ----------------------------------------------------------------------------------

  /**
   * `--bootstrap-expect N`: once N members are alive in gossip, the N lowest peer ids found the
   * cluster with that same voter list (every founder computes the same list; no coordination).
   * A node with any Raft state (from disk, or from a leader that reached it first) never does.
   */
  private waitToBootstrap(expect: number): void {
    const check = (): void => {
      const node = this.node
      if (node === undefined || this.stopped) return
      const st = node.status()
      if (st.term > 0 || st.lastIndex > 0) {
        clearInterval(this.bootstrapTimer)
        return
      }
      const alive = this.gossip
        .members()
        .filter((m) => m.status === 'alive')
        .map((m) => m.id)
        .sort()
      if (alive.length < expect) return
      clearInterval(this.bootstrapTimer)
      const founders = alive.slice(0, expect)
      if (!founders.includes(node.id)) {
        this.log?.info({ founders }, 'bootstrap-expect met; not a founder, waiting to be added')
        return
      }
      try {
        node.bootstrap(founders)
        this.log?.info({ founders }, 'bootstrapped raft cluster')
      } catch (err) {
        this.log?.info({ err: (err as Error).message }, 'not bootstrapping: raft state already present')
      }
    }
    this.bootstrapTimer = setInterval(check, 100)
    check()
  }

  // ---- fast failover ------------------------------------------------------------------------------

  /**
   * Leader failure detection outside Raft, so that a dead leader is replaced in about two round
   * trips instead of one or two randomized election timeouts (with check-quorum, the first
   * candidate often finds the other followers still inside their leader lease, thesis §6.2, and
   * has to wait for a second round):
   * - the libp2p connection to the leader closed (`peer:disconnect`: its last connection is gone;
   *   a `kill -9` or a crash closes its sockets at once): forget the leader and campaign in turn;
   * - gossip declared it dead or it left: the same;
   * - gossip suspects it: only forget it. Every member hears the suspicion, so campaigning on it
   *   would let one member's failed probe depose a healthy leader; forgetting only lets a pre-vote
   *   succeed if some voter already stopped hearing from the leader, and the leader's next
   *   heartbeat restores the lease.
   * Forgetting the leader (etcd's ForgetLeader) never makes a healthy leader lose: a candidate
   * still needs a quorum of pre-votes, and followers still connected to the leader are in lease.
   */
  private watchLeaderLiveness(ctx: AgentContext): void {
    const onDisconnect = (evt: CustomEvent<{ toString(): string }>): void => {
      this.leaderLost(evt.detail.toString(), 'disconnected', true)
    }
    ctx.host.addEventListener('peer:disconnect', onDisconnect)
    this.unsubscribeHost = () => ctx.host.removeEventListener('peer:disconnect', onDisconnect)
    this.gossip.onEvent((e) => {
      if (e.type === 'member:fail' || e.type === 'member:leave') this.leaderLost(e.member.id, e.type, true)
      else if (e.type === 'member:suspect') this.leaderLost(e.member.id, e.type, false)
    })
  }

  private leaderLost(peer: string, reason: string, campaign: boolean): void {
    const node = this.node
    if (node === undefined || this.stopped || node.isLeader() || node.leader() !== peer) return
    const term = node.term()
    node.forgetLeader()
    const voters = node.voters()
    const stagger = this.opts.failoverStaggerMs
    const rank = voters
      .filter((v) => v !== peer)
      .sort()
      .indexOf(node.id)
    this.log?.info({ leader: peer, term, reason, rank }, 'leader lost: forgot it')
    if (!campaign || stagger <= 0 || rank < 0) return
    // Voters ranked by peer id start one after another, each only if no election reached it: a
    // vote request moves its term, a new leader's append sets the leader. Pre-vote keeps a
    // campaign that cannot win from disturbing anyone. A pre-vote that got no quorum because the
    // others were still in their lease is repeated every tick, for one election timeout at most
    // (pre-votes change no state, so repeating them is harmless); one that was refused (our log
    // is behind) is not: the next survivor's turn comes.
    clearTimeout(this.failoverTimer)
    let attempts = 0
    const attempt = (): void => {
      this.failoverTimer = undefined
      if (this.stopped || node.term() !== term || node.leader() !== undefined || node.isLeader()) return
      const role = node.role()
      if (attempts > 0 && role !== 'preCandidate') return
      if (attempts === 0) this.log?.info({ term, rank }, 'leader lost: campaigning')
      node.campaign()
      if (++attempts < this.opts.electionTick) this.failoverTimer = setTimeout(attempt, this.opts.tickMs)
    }
    this.failoverTimer = setTimeout(attempt, rank * stagger)
  }

  /**
   * Keeps a libp2p connection open to every other voter that gossip does not report dead, so that
   * a failover's vote messages ride an existing connection instead of paying a dial (TCP, private
   * network, noise, yamux) in the middle of the election; a member that just restarted would
   * otherwise answer its first pre-votes late.
   */
  private keepVotersConnected(
    voters: readonly string[],
    members: readonly { id: string; status: string }[],
  ): void {
    const host = this.ctx?.host
    if (host === undefined) return
    const self = this.ctx?.identity.id
    const dead = new Set(members.filter((m) => m.status === 'dead' || m.status === 'left').map((m) => m.id))
    for (const v of voters) {
      if (v === self || dead.has(v)) continue
      try {
        const peer = peerIdFromString(v)
        if (host.getConnections(peer).length > 0) continue
        host.dial(peer, { signal: AbortSignal.timeout(2_000) }).catch(() => {})
      } catch {
        // not a peer id: nothing to keep open
      }
    }
  }

  // ---- autopilot ----------------------------------------------------------------------------------

  private runAutopilot(): void {
    const node = this.node
    if (node === undefined || this.stopped) return
    const st = node.status()
    // Only voters lead, vote or keep connections to the other voters: a learner (most agents of
    // a large cluster) skips the scan of every member five times a second.
    if (!st.conf.voters.includes(node.id)) return
    const members = this.gossip.members().map((m) => ({ id: m.id, status: m.status }))
    const now = performance.now()
    trackDown(this.downSince, st.conf, members, now)
    this.keepVotersConnected(st.conf.voters, members)
    if (!node.isLeader() || this.autopilotBusy) return
    const heard = new Set<NodeId>()
    for (const [id, t] of this.lastHeard) {
      if (now - t < this.opts.autopilot.deadThresholdMs) heard.add(id)
      else this.lastHeard.delete(id)
    }
    const change = planAutopilot(
      {
        self: node.id,
        conf: st.conf,
        members,
        progress: st.progress,
        lastIndex: st.lastIndex,
        downSince: this.downSince,
        now,
        heard,
      },
      this.opts.autopilot,
    )
    if (change === undefined) return
    this.autopilotBusy = true
    this.log?.info({ change }, 'autopilot: proposing membership change')
    const signal = AbortSignal.timeout(5_000)
    const becomesVoter = change.type === 'addVoter' || change.type === 'promoteLearner'
    const gate =
      becomesVoter && this.voterGate !== undefined ? this.voterGate(change.node, signal) : Promise.resolve()
    gate
      .then(() => node.changeMembership(change, { signal }))
      .then(
        ({ index }) => this.log?.info({ change, index }, 'autopilot: membership change committed'),
        (err: unknown) =>
          this.log?.debug({ change, err: (err as Error).message }, 'autopilot: change not made'),
      )
      .finally(() => {
        this.autopilotBusy = false
      })
  }

  // ---- writes and reads ---------------------------------------------------------------------------

  /**
   * Replicates a policy command through the leader, wherever it is, and resolves with the
   * state machine's result once committed and applied there. Retried across leader changes with
   * the same request id, so it takes effect at most once. Rejects with NoLeaderError or
   * WriteTimeoutError when the signal fires first.
   */
  async write(
    cmd: PolicyCommand,
    options: { signal: AbortSignal },
  ): Promise<{ index: number; result: PolicyResult }> {
    const data = encodePolicyCommand(cmd)
    const rid: RequestId = { clientId: `${this.clientPrefix}${++this.writeSeq}`, seq: 1 }
    this.stats.proposals++
    for (let attempt = 1; ; attempt++) {
      const out = await this.writeOnce(data, rid, options.signal)
      // A leader signs with the CA state it has applied; an entry it appended right behind a CA
      // change still in flight (the CA's creation at bootstrap, or a new leader that has not
      // applied its predecessor's last entries) is refused everywhere, changing nothing, not even
      // the dedupe table: the same request is safe to send again once the leader has caught up.
      const r = out.result
      if (r.ok || r.code !== 'PEERMESH_ERR_POLICY_SIGNATURE' || attempt >= WRITE_SIGNATURE_RETRIES) return out
      this.stats.signatureRetries++
      this.log?.debug(
        { index: out.index, reason: r.message },
        'write refused for its signature; sending it again',
      )
      await this.pause(options.signal)
    }
  }

  private async writeOnce(
    data: Uint8Array,
    rid: RequestId,
    signal: AbortSignal,
  ): Promise<{ index: number; result: PolicyResult }> {
    const node = this.running()
    let sent = false
    let lastLeader: string | undefined
    for (;;) {
      if (signal.aborted || this.stopped) {
        if (!sent) throw new NoLeaderError('no raft leader accepted the write before the deadline')
        throw new WriteTimeoutError(
          `write not confirmed before the deadline (leader ${lastLeader ?? 'unknown'}); it may still apply, once`,
        )
      }
      const attempt = AbortSignal.any([signal, AbortSignal.timeout(DEFAULTS.attemptTimeoutMs)])
      try {
        if (node.isLeader()) {
          lastLeader = node.id
          sent = true
          const r = await node.propose(data, { requestId: rid, signal: attempt })
          return { index: r.index, result: r.result }
        }
        const leader = node.leader()
        if (leader === undefined) {
          await this.pause(signal)
          continue
        }
        lastLeader = leader
        this.stats.forwardedWrites++
        const req: ForwardRequest = { t: 'propose', data, clientId: rid.clientId, seq: rid.seq }
        const bytes = await this.messenger!.request(leader, pack(req), { signal: attempt })
        const reply = decodeReply(bytes)
        if (reply === undefined) throw new Error('malformed reply from the leader')
        if (reply.ok) return { index: reply.index, result: reply.result }
        if (reply.code !== 'PEERMESH_ERR_NOT_LEADER') sent = true
        await this.pause(signal)
      } catch (err) {
        if (!(err instanceof NotLeaderError)) sent = true
        if (!isAbort(err)) this.log?.debug({ err: (err as Error).message }, 'write attempt failed; retrying')
        await this.pause(signal)
      }
    }
  }

  /**
   * Resolves once this agent's state machine reflects every write committed before the call
   * (ReadIndex, thesis §6.4, on any member: a follower or learner asks the leader through Raft).
   */
  async linearizableRead(options: { signal: AbortSignal }): Promise<{ index: number }> {
    const node = this.running()
    const { signal } = options
    for (;;) {
      if (signal.aborted || this.stopped)
        throw new NoLeaderError('no raft leader confirmed the read before the deadline')
      if (node.leader() === undefined) {
        await this.pause(signal)
        continue
      }
      const attempt = AbortSignal.any([signal, AbortSignal.timeout(DEFAULTS.attemptTimeoutMs)])
      try {
        return await node.read({ signal: attempt })
      } catch {
        await this.pause(signal)
      }
    }
  }

  /** Answers a forwarded write on the leader. Bad input gets an error reply, never a throw. */
  private async serveForward(_from: string, bytes: Uint8Array, signal: AbortSignal): Promise<Uint8Array> {
    const node = this.node
    let req: ForwardRequest | undefined
    try {
      req = parseForward(unpack(bytes))
    } catch {
      req = undefined
    }
    if (req === undefined) return pack(fail('PEERMESH_ERR_BAD_REQUEST', 'malformed forwarded write'))
    if (node === undefined || this.stopped) return pack(fail('PEERMESH_ERR_RAFT_NOT_RUNNING', 'stopping'))
    if (!node.isLeader()) {
      const leader = node.leader()
      return pack({ ...fail('PEERMESH_ERR_NOT_LEADER', 'not the leader'), ...(leader ? { leader } : {}) })
    }
    try {
      const r = await node.propose(req.data, {
        requestId: { clientId: req.clientId, seq: req.seq },
        signal: AbortSignal.any([signal, AbortSignal.timeout(DEFAULTS.attemptTimeoutMs)]),
      })
      return pack({ ok: true, index: r.index, result: r.result } satisfies ForwardReply)
    } catch (err) {
      const code = (err as { code?: unknown }).code
      return pack(fail(typeof code === 'string' ? code : 'PEERMESH_ERR_INTERNAL', (err as Error).message))
    }
  }

  /** Waits for a leader change or a short pause, whichever comes first. */
  private pause(signal: AbortSignal): Promise<void> {
    const node = this.node
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer)
        off?.()
        signal.removeEventListener('abort', done)
        resolve()
      }
      const timer = setTimeout(done, DEFAULTS.retryPauseMs)
      const off = node?.on('leader:change', done)
      signal.addEventListener('abort', done, { once: true })
    })
  }

  private running(): RaftNode<PolicyResult> {
    if (this.node === undefined || this.stopped) throw new RaftNotRunningError('raft is not running')
    return this.node
  }

  // ---- views for the API --------------------------------------------------------------------------

  /** libp2p address of the leader ending in /p2p/<id>, "" when no leader is known. */
  leaderAddress(): string {
    const leader = this.node?.leader()
    if (leader === undefined) return ''
    return this.addressOf(leader)
  }

  leaderId(): string | undefined {
    return this.node?.leader()
  }

  configuration(): RaftConfigurationJson {
    const node = this.node
    if (node === undefined) return { servers: [], index: 0 }
    const st = node.status()
    const names = new Map(this.gossip.members().map((m) => [m.id, m.name]))
    if (this.ctx !== undefined) names.set(this.ctx.identity.id, this.ctx.config.name)
    const server = (id: string, voter: boolean): RaftServerJson => ({
      id,
      node: names.get(id) ?? '',
      address: this.addressOf(id),
      leader: id === st.leader,
      voter,
    })
    return {
      servers: [
        ...st.conf.voters.map((id) => server(id, true)),
        ...st.conf.learners.map((id) => server(id, false)),
      ],
      index: this.confIndex,
    }
  }

  private addressOf(id: string): string {
    const ctx = this.ctx
    let addr: string | undefined
    if (ctx !== undefined && id === ctx.identity.id) addr = ctx.host.getMultiaddrs()[0]?.toString()
    else addr = this.gossip.members().find((m) => m.id === id)?.address
    if (addr === undefined || addr === '') return ''
    return addr.endsWith(`/p2p/${id}`) ? addr : `${addr}/p2p/${id}`
  }

  // ---- metrics ------------------------------------------------------------------------------------

  private registerMetrics(ctx: AgentContext): void {
    const gauge = (name: string, help: string, pick: () => number): void =>
      gaugeFrom(ctx.metrics, name, help, pick)
    const counter = (name: string, help: string, pick: () => number): void =>
      counterFrom(ctx.metrics, name, help, pick)
    const status = () => this.node?.status()
    gauge('peermesh_raft_term', 'Current Raft term', () => status()?.term ?? 0)
    gauge('peermesh_raft_commit_index', 'Highest log index known committed', () => status()?.commit ?? 0)
    gauge('peermesh_raft_applied_index', 'Highest log index applied here', () => this.node?.applied() ?? 0)
    gauge('peermesh_raft_last_index', 'Last log index here', () => status()?.lastIndex ?? 0)
    new Gauge({
      name: 'peermesh_raft_role',
      help: 'Raft role of this agent (1 for the current role; learner = follower outside the voters)',
      labelNames: ['role'],
      registers: [ctx.metrics],
      collect() {
        this.reset()
        const st = status()
        if (st === undefined) return
        const learner = st.conf.learners.includes(st.id)
        this.set({ role: learner ? 'learner' : st.role }, 1)
      },
    })
    gauge('peermesh_raft_voters', 'Voters in the Raft configuration', () => status()?.conf.voters.length ?? 0)
    gauge(
      'peermesh_raft_learners',
      'Learners in the Raft configuration',
      () => status()?.conf.learners.length ?? 0,
    )
    counter(
      'peermesh_raft_leader_changes_total',
      'Leader or term changes seen',
      () => this.stats.leaderChanges,
    )
    counter('peermesh_raft_proposals_total', 'Writes started on this agent', () => this.stats.proposals)
    counter(
      'peermesh_raft_forwarded_writes_total',
      'Write attempts forwarded to the leader',
      () => this.stats.forwardedWrites,
    )
    counter('peermesh_raft_conf_changes_total', 'Membership changes applied', () => this.stats.confChanges)
  }
}

function fail(code: string, message: string): ForwardReply {
  return { ok: false, code, message }
}

function parseForward(v: unknown): ForwardRequest | undefined {
  if (v === null || typeof v !== 'object') return undefined
  const o = v as Record<string, unknown>
  if (o['t'] !== 'propose') return undefined
  const data = o['data']
  const clientId = o['clientId']
  const seq = o['seq']
  if (!(data instanceof Uint8Array) || data.length === 0 || data.length > MAX_COMMAND_BYTES) return undefined
  if (typeof clientId !== 'string' || clientId.length === 0 || clientId.length > 256) return undefined
  if (typeof seq !== 'number' || !Number.isSafeInteger(seq) || seq < 1) return undefined
  return { t: 'propose', data, clientId, seq }
}

function decodeReply(bytes: Uint8Array): ForwardReply | undefined {
  let v: unknown
  try {
    v = unpack(bytes)
  } catch {
    return undefined
  }
  if (v === null || typeof v !== 'object') return undefined
  const o = v as Record<string, unknown>
  if (o['ok'] === true) {
    const r = o['result'] as PolicyResult | undefined
    if (typeof o['index'] !== 'number' || r === null || typeof r !== 'object' || typeof r.ok !== 'boolean')
      return undefined
    return { ok: true, index: o['index'], result: r }
  }
  if (o['ok'] === false && typeof o['code'] === 'string') {
    return {
      ok: false,
      code: o['code'],
      message: typeof o['message'] === 'string' ? o['message'] : '',
      ...(typeof o['leader'] === 'string' ? { leader: o['leader'] } : {}),
    }
  }
  return undefined
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>
}
