import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import type { Logger } from 'pino'
import { type Clock, systemClock, withTimeout } from '../../common/clock.ts'
import type { Unsubscribe } from '../../common/events.ts'
import {
  decodeMessage,
  type EntrySealer,
  encodeMessage,
  FileStorage,
  type Message,
  type PolicyCommand,
  type PolicyResult,
  type PolicyStore,
  RaftNode,
  type RaftNodeDriverOptions,
  snapshotMessageTrusted,
  withSnapshotSignature,
} from '../../raft/index.ts'
import type { RefusalReason, RefusalRecord } from '../../raft/types.ts'
import { commandPermission } from '../../acl/command-permission.ts'
import {
  ANONYMOUS_TOKEN_SECRET,
  type PermissionCheck,
  type PermissionNeed,
  permissionDeniedMessage,
} from '../../acl/index.ts'
import type { AclResult } from '../../raft/policy/acl-state.ts'
import { sealPolicyBatch } from '../../raft/policy/policy-signing.ts'
import {
  encodePolicyCommand,
  PolicyErrorCodes,
  type PolicyRefusal,
  policyRefusal,
} from '../../raft/policy/policy-commands.ts'
import type { AgentContext, AgentModule } from '../agent/agent.ts'
import { AclResolver, type ResolvedToken } from '../api/acl-auth.ts'
import { initialManagementCommand, registerAclRoutes, untilApplied } from '../api/acl-routes.ts'
import {
  API_RAFT_TIMEOUT_MS,
  RAFT_DEFAULTS,
  type RaftAgentConfig,
  validateRaftAgentConfig,
} from '../agent/defaults.ts'
import { registerRaftRoutes } from '../api/raft-routes.ts'
import { attemptSignal, LeaderRpc } from '../transport/leader-rpc.ts'
import { DirectMessenger, directListenHost } from '../transport/direct-messenger.ts'
import { StreamMessenger } from '../transport/stream-messenger.ts'
import { enrollmentEligibility } from './autopilot.ts'
import { AutopilotRunner } from './autopilot-runner.ts'
import { BootstrapExpect, registerFoundingMetrics } from './bootstrap-expect.ts'
import type { PolicySigner, RaftMembers, VoterKeyGrant } from './components.ts'
import {
  AgentEnrollment,
  ENROLLMENT_MAX_BACKOFF_MS,
  ENROLLMENT_MIN_BACKOFF_MS,
  ENROLLMENT_RETRY_PAUSE_MS,
  ENROLLMENT_ROUND_MS,
  EnrollmentServer,
  foundersToEnroll,
  grantSecret,
  isEnrollmentRequestType,
  LeaderFinder,
  PermissionDeniedError,
  tokenGrantsService,
} from './enrollment.ts'
import { NoLeaderError, RaftNotRunningError } from './errors.ts'
import { FoundingRecordFile } from './founding-record-file.ts'
import { InitialManagementApplier } from './initial-management.ts'
import { FoundingRpc } from './founding-rpc.ts'
import { sharedIntervals } from '../../common/shared-intervals.ts'
import { EvidenceRelay } from './evidence-relay.ts'
import { hostConnections, LeaderLiveness } from './leader-liveness.ts'
import { registerRaftMetrics } from './metrics.ts'
import { ForwardedWriteServer, WriteForwarder, type WriteResult } from './write-forwarding.ts'

/**
 * Best-effort Raft messages between members (appends, votes, heartbeats, snapshots); v2: frames
 * carry a kind byte, and a message larger than a frame travels in chunks (message-chunks.ts).
 */
export const RAFT_PROTOCOL = '/peermesh/raft/2'
/**
 * Reliable request/response: writes forwarded to the leader, many at once on one stream per peer;
 * v3: a forwarded write is a typed request `{ t: 'write', cmd, clientId, seq, token? }`; node
 * enrollment and service grants are `{ t: 'enroll', node, tid, mac }` and `{ t: 'grant', service,
 * tid, mac }` (./enrollment.ts), answered by the leader for the authenticated sender. They carry
 * no secret, since an agent not in Raft asks any gossip member: `tid` names the token one-way, and
 * `mac` (keyed by the secret) is bound to the sender and to the member asked, so a member asked by
 * mistake can neither use it nor pass it on to the leader.
 */
export const RAFT_RPC_PROTOCOL = '/peermesh/raft/rpc/3'
/** Sub-directory of the data dir holding the Raft log, hard state and snapshot. */
export const RAFT_DIR = 'raft'
/**
 * Refused peer messages are logged at most once per reason per this interval (count and last
 * sender), so that a peer flooding hostile messages cannot flood the log.
 */
export const REFUSAL_LOG_INTERVAL_MS = 10_000
/** How soon a leader tries again to apply the initial management token after a failed write. */
const INITIAL_MANAGEMENT_RETRY_MS = 1_000
const UNTRUSTED_SNAPSHOT_HINT =
  'a snapshot not signed by a CA root trusted here: if this agent missed a whole root rotation while ' +
  'the log was compacted, stop it, empty its raft directory and restart it'
/** Refusals that also happen in a healthy cluster (a failover's first pre-votes): logged at debug. */
const ROUTINE_REFUSALS: ReadonlySet<RefusalReason> = new Set(['vote_in_lease'])

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

export interface RaftModuleComponents {
  /** Gossip's view of the members: alive ones, their names and addresses, failure events. */
  members: RaftMembers
  /** The replicated policy state (verifying CA signatures once the CA exists). */
  store: PolicyStore
  /** Signs entries and snapshots sent from here; absent: they go unsigned. */
  signer?: PolicySigner
  /** Awaited by autopilot before a member becomes a voter. */
  keyGrant?: VoterKeyGrant
  /**
   * Who autopilot may add as a learner; absent: with ACLs on an enrolled member, else an alive
   * gossip member (autopilot.ts).
   */
  eligibleLearner?: (id: string) => boolean
  /**
   * Who autopilot may promote to voter; absent: with ACLs on a member enrolled as voter, else an
   * alive gossip member (autopilot.ts).
   */
  eligibleVoter?: (id: string) => boolean
  clock?: Clock
}

/** Overrides of the agent's Raft defaults (`RAFT_DEFAULTS`), for tests and benches. */
export type RaftModuleOptions = Partial<RaftAgentConfig>

/** The parts that run while the module runs. */
interface Running {
  node: RaftNode<PolicyResult>
  messenger: DirectMessenger
  /** The leader's side of forwarded writes (its refusal counters). */
  server?: ForwardedWriteServer
  rpc: LeaderRpc
  forwarder: WriteForwarder
  liveness: LeaderLiveness
  autopilot: AutopilotRunner
  bootstrap?: BootstrapExpect
  /** The leader's side of enrollment and grant requests. */
  enrollment: EnrollmentServer
  /** Asks the leader from here, even before this agent is in the configuration. */
  finder: LeaderFinder
  /** This agent's own enrollment (ACLs on, an agent token). */
  agentEnrollment?: AgentEnrollment
  /**
   * Members whose answer to this agent's enrollment proved they hold its token's secret (the
   * leader's ack): with ACLs on, only they may give this agent its first configuration.
   */
  provenLeaders: Set<string>
  /** When this run last asked again for a proof (an unproven member's appends; see receive). */
  reprovedAt: number
  acl: AclResolver
  ctx: AgentContext
  log: Logger
  subscriptions: Unsubscribe[]
}

/**
 * Runs this agent's Raft member and connects it to the rest of the agent: storage in
 * `<dataDir>/raft` (a corrupted log stops the agent), the policy store as state machine, libp2p
 * streams as transport; bootstrap from `--bootstrap` or `--bootstrap-expect N`
 * (./bootstrap-expect.ts); fast failover (./leader-liveness.ts); autopilot on the leader
 * (./autopilot-runner.ts); writes from any agent forwarded to the leader (./write-forwarding.ts);
 * reads local, or linearizable through ReadIndex.
 */
export class RaftModule implements AgentModule {
  readonly name = 'raft'
  readonly store: PolicyStore
  private readonly settings: RaftAgentConfig
  private readonly clock: Clock
  private run?: Running
  private stopped = false
  private confIndex = 0
  /** When a message from the leader this agent knows last arrived (clock ms; X-Consul-LastContact). */
  private lastLeaderContact: number | undefined
  private readonly counters = { leaderChanges: 0, confChanges: 0, snapshotsRejected: 0 }
  /** Messages refused here, before the core (which counts its own refusals). */
  private readonly refusals = new Map<RefusalReason, RefusalRecord>()
  /** Per reason, the total already logged (see REFUSAL_LOG_INTERVAL_MS). */
  private readonly refusalsLogged = new Map<RefusalReason, number>()
  /** Enrollment and grant refusals already logged. */
  private enrollDeniedLogged = 0
  /** The leader whose list of voters heard from gossip holds (as follower). */
  private relayedBy: string | undefined
  /**
   * Whom this agent heard from, passed on to its followers on heartbeats (as leader), and what its
   * leader passed on, handed to gossip (as follower). The window: one and a half idle heartbeat
   * intervals.
   */
  private readonly relay = new EvidenceRelay(
    () => 1.5 * this.settings.idleHeartbeatTick * this.settings.tickMs,
  )

  constructor(
    private readonly components: RaftModuleComponents,
    options: RaftModuleOptions = {},
  ) {
    this.store = components.store
    // The module's periodic tasks of one period (autopilot, voter connections, founder
    // enrollment) share one timer.
    this.clock = sharedIntervals(components.clock ?? systemClock)
    this.settings = { ...RAFT_DEFAULTS, ...stripUndefined(options) }
    validateRaftAgentConfig(this.settings)
  }

  /** The Raft settings this module runs with (RAFT_DEFAULTS and its options). */
  get timing(): Readonly<RaftAgentConfig> {
    return this.settings
  }

  /** The running Raft node (for tests and other modules). */
  get raft(): RaftNode<PolicyResult> | undefined {
    return this.run?.node
  }

  /**
   * Peer messages refused so far, per reason, with the last of each: the agent's own checks
   * (undecodable, wrong sender, untrusted snapshot) and the core's (see RefusalReason).
   */
  refusedMessages(): Partial<Record<RefusalReason, RefusalRecord>> {
    const out: Partial<Record<RefusalReason, RefusalRecord>> = { ...this.run?.node.status().refused }
    for (const [reason, r] of this.refusals) out[reason] = { ...r }
    return out
  }

  /** Counters for metrics and tests. */
  get stats(): {
    proposals: number
    forwardedWrites: number
    leaderChanges: number
    confChanges: number
    snapshotsRejected: number
    signatureRetries: number
  } {
    return {
      ...this.counters,
      proposals: this.run?.forwarder.stats.proposals ?? 0,
      forwardedWrites: this.run?.rpc.stats.forwarded ?? 0,
      signatureRetries: this.run?.forwarder.stats.signatureRetries ?? 0,
    }
  }

  /**
   * Inputs refused by reason, beyond the peer messages of `refusedMessages`: commands the store
   * refused as invalid or too large, forwarded writes refused by the leader, stream budget
   * overruns and bad frames, failed snapshot attempts.
   */
  inputsRefused(): Record<string, number> {
    const run = this.run
    const f = run?.server?.stats
    const m = run?.messenger.stats
    return {
      command_invalid: this.store.stats.invalidRejected,
      command_too_large: this.store.stats.tooLargeRejected,
      forward_malformed: f?.malformed ?? 0,
      forward_invalid: f?.invalid ?? 0,
      forward_too_large: f?.tooLarge ?? 0,
      forward_not_forwardable: f?.notForwardable ?? 0,
      forward_permission_denied: f?.denied ?? 0,
      stream_over_budget: m?.overBudget ?? 0,
      stream_bad_frame: m?.badFrames ?? 0,
      // The direct transport's listener (docs/ARCHITECTURE.md, libp2p).
      direct_address_refused: m?.directRefused ?? 0,
      direct_certificate_rejected: m?.directRejected ?? 0,
      direct_handshake_failed: m?.directHandshakeFailures ?? 0,
      direct_hello_refused: m?.helloRefused ?? 0,
      snapshot_failed: run?.node.status().snapshotFailures ?? 0,
      enroll_denied: run?.enrollment.stats.enrollDenied ?? 0,
      grant_denied: run?.enrollment.stats.grantDenied ?? 0,
    }
  }

  async start(ctx: AgentContext): Promise<void> {
    const log = ctx.log.child({ component: 'raft' })
    const { settings: s, clock, components } = this
    const self = ctx.identity.id
    // A corrupted record is thrown from here and stops the agent with one line (see cli.ts).
    const { storage, warnings } = FileStorage.open(join(ctx.config.dataDir, RAFT_DIR))
    for (const w of warnings) log.warn({ warning: w }, 'raft log repaired')
    const limits = {
      log,
      maxMessageBytes: s.maxMessageBytes,
      maxRequestBytes: s.maxCommandBytes + 4096,
      // A message larger than a frame (a big snapshot) travels in chunks; a peer's partly
      // received messages are bounded over all its streams.
      chunking: { maxFrameBytes: s.maxFrameBytes },
      maxPartialBytesPerPeer: s.maxPartialBytesPerPeer,
      maxPartialMessagesPerPeer: s.maxPartialMessagesPerPeer,
      clock,
    }
    // Over a direct TLS connection to each peer once set up, over libp2p until then (and for peers
    // without one).
    const listenHost = s.directTransport
      ? directListenHost(ctx.config.listen, ctx.host.getMultiaddrs())
      : undefined
    const messenger = new DirectMessenger({
      ...limits,
      fallback: new StreamMessenger({
        ...limits,
        host: ctx.host,
        protocol: RAFT_PROTOCOL,
        requestProtocol: RAFT_RPC_PROTOCOL,
        requestMode: 'multiplexed',
        maxQueuedPerPeer: s.maxQueuedPerPeer,
        dialBackoffMs: s.dialBackoffMs,
      }),
      host: ctx.host,
      self,
      ...(listenHost !== undefined ? { listenHost } : {}),
    })
    let node: RaftNode<PolicyResult>
    try {
      node = this.createNode(ctx, storage, messenger, log)
    } catch (err) {
      storage.close()
      throw err
    }
    const acl = this.createAclResolver(ctx, node, log)
    // With ACLs on, autopilot adds only enrolled members, promotes only voter-enrolled ones and
    // removes revoked ones (issue #12); the hooks given in the components win.
    const byEnrollment = ctx.config.acl.enabled ? enrollmentEligibility(self, this.store.acl) : undefined
    const eligibleLearner = components.eligibleLearner ?? byEnrollment?.eligibleLearner
    const eligibleVoter = components.eligibleVoter ?? byEnrollment?.eligibleVoter
    const enrollment = new EnrollmentServer(
      { self, node: () => (this.stopped ? undefined : node), state: this.store.acl, acl, clock },
      { attemptTimeoutMs: s.attemptTimeoutMs },
    )
    const rpc = new LeaderRpc(
      {
        leader: {
          isLeader: () => node.isLeader(),
          leader: () => node.leader(),
          onLeaderChange: (listener) => node.on('leader:change', listener),
        },
        channel: messenger,
        clock,
        log,
        stopped: () => this.stopped,
      },
      { attemptTimeoutMs: s.attemptTimeoutMs, retryPauseMs: s.retryPauseMs },
    )
    const provenLeaders = new Set<string>()
    const run: Running = {
      node,
      messenger,
      rpc,
      ctx,
      log,
      forwarder: new WriteForwarder(
        { rpc, node, clock, log },
        {
          // Unique per agent run: a restarted agent must not hit its old dedupe records.
          clientPrefix: `${self}.${randomBytes(6).toString('hex')}.`,
          signatureRetries: s.signatureRetries,
          retryPauseMs: s.retryPauseMs,
        },
      ),
      liveness: new LeaderLiveness(
        { node, members: components.members, connections: hostConnections(ctx.host), clock, log },
        {
          tickMs: s.tickMs,
          electionTick: s.electionTick,
          failoverStaggerMs: s.failoverStaggerMs,
          keepConnectedMs: s.autopilotIntervalMs,
          voterDialTimeoutMs: s.voterDialTimeoutMs,
          gossipVerdictQuietTicks: 2 * Math.max(s.idleHeartbeatTick, s.heartbeatTick),
        },
      ),
      autopilot: new AutopilotRunner(
        {
          node,
          members: components.members,
          clock,
          log,
          ...(components.keyGrant !== undefined ? { keyGrant: components.keyGrant } : {}),
          ...(eligibleLearner !== undefined ? { eligibleLearner } : {}),
          ...(eligibleVoter !== undefined ? { eligibleVoter } : {}),
          ...(ctx.config.acl.enabled ? { revoked: (id: string) => this.store.acl.revoked(id) } : {}),
        },
        {
          targetVoters: ctx.config.raftVoters,
          deadThresholdMs: s.deadThresholdMs,
          maxLagEntries: s.maxLagEntries,
          intervalMs: s.autopilotIntervalMs,
          changeTimeoutMs: s.autopilotChangeTimeoutMs,
        },
      ),
      enrollment,
      finder: new LeaderFinder(
        {
          self,
          node,
          members: components.members,
          channel: messenger,
          local: (req, signal) => enrollment.answer(self, req, signal),
          proven: (peer) => provenLeaders.add(peer),
          clock,
          log,
        },
        { attemptTimeoutMs: s.attemptTimeoutMs, retryPauseMs: ENROLLMENT_RETRY_PAUSE_MS },
      ),
      provenLeaders,
      reprovedAt: Number.NEGATIVE_INFINITY,
      acl,
      subscriptions: [],
    }
    this.run = run
    const server = new ForwardedWriteServer(
      {
        node: () => (this.stopped ? undefined : node),
        clock,
        ...(acl.config.enabled ? { authorize: (cmd, token) => authorizeForward(acl, cmd, token) } : {}),
      },
      { attemptTimeoutMs: s.attemptTimeoutMs, maxCommandBytes: s.maxCommandBytes },
    )
    run.server = server
    const st = node.status()
    this.confIndex = Math.max(0, st.firstIndex - 1) // the snapshot's index, a lower bound
    this.watchNode(run)
    messenger.onMessage((from, bytes) => {
      if (!this.stopped) this.receive(node, from, bytes)
    })
    messenger.onRequest((from, bytes, signal) => {
      // Decoded once; the typed enrollment requests go to their server, the rest are writes.
      const o = server.decode(bytes)
      if (isEnrollmentRequestType(o?.['t'])) return enrollment.serve(from, o, signal)
      return server.serveRecord(bytes.length, o, signal)
    })
    run.subscriptions.push(clock.setInterval(() => this.logRefusals(log), REFUSAL_LOG_INTERVAL_MS))
    // A killed member's connections close at once: gossip probes it at its next turn again, and
    // this agent no longer passes on what it heard from it.
    const lost = components.members.lostContact
    run.subscriptions.push(
      hostConnections(ctx.host).onDisconnect((peer) => {
        this.relay.lost(peer)
        lost?.(peer)
      }),
    )
    run.liveness.start()
    // Direct connections to every voter (and a request connection to the leader) ahead of need:
    // followers talk to each other only in an election, and a failover must not wait for a
    // handshake. A peer backing off is left alone.
    run.subscriptions.push(
      clock.setInterval(() => {
        if (this.stopped) return
        for (const v of node.voters()) if (v !== self) messenger.prepare(v)
        const leader = node.leader()
        if (leader !== undefined && leader !== self) messenger.prepare(leader, 'request')
      }, s.autopilotIntervalMs),
    )
    await messenger.start()
    node.start()
    log.info(
      { term: st.term, commit: st.commit, lastIndex: st.lastIndex, voters: st.conf.voters.length },
      st.lastIndex > 0 || st.term > 0 ? 'raft state loaded' : 'raft starting empty',
    )
    // Every agent answers founding requests; only `--bootstrap-expect N` founds (./founding.ts).
    run.bootstrap = new BootstrapExpect(
      {
        node,
        members: components.members,
        channel: new FoundingRpc(ctx.host, log),
        record: new FoundingRecordFile(ctx.config.dataDir),
        clock,
        log,
        // ACLs on: founders prove they hold the initial management token (founding.ts, #12).
        ...(ctx.config.acl.enabled
          ? { founderAuth: { initialManagementToken: ctx.config.acl.initialManagementToken } }
          : {}),
      },
      { expect: ctx.config.bootstrap ? undefined : ctx.config.bootstrapExpect, checkMs: s.bootstrapCheckMs },
    )
    await run.bootstrap.start()
    registerFoundingMetrics(ctx.metrics, run.bootstrap)
    run.autopilot.start()
    registerRaftMetrics(ctx.metrics, {
      status: () => this.run?.node.status(),
      applied: () => this.run?.node.applied() ?? 0,
      counters: () => this.stats,
      refused: () => this.refusedMessages(),
      inputsRefused: () => this.inputsRefused(),
      transport: () => {
        const m = this.run?.messenger.stats
        return {
          direct: { sent: m?.directSent ?? 0, received: m?.directReceived ?? 0 },
          libp2p: {
            sent: (m?.sent ?? 0) - (m?.directSent ?? 0),
            received: (m?.received ?? 0) - (m?.directReceived ?? 0),
          },
          directConnects: m?.directConnects ?? 0,
          directConnectFailures: m?.directConnectFailures ?? 0,
        }
      },
    })
    registerRaftRoutes(ctx.http, this)
    ctx.http.useAcl(acl)
    registerAclRoutes(ctx.http, {
      resolver: acl,
      backend: {
        state: this.store.acl,
        write: async (cmd, options) => {
          const { index, result } = await this.write(cmd, options)
          // So the route reads what it wrote.
          if (result.ok) await untilApplied(this.store, index, options.signal)
          return result as AclResult
        },
      },
    })
    const initial = ctx.config.acl.initialManagementToken
    if (ctx.config.acl.enabled && initial !== undefined) {
      const applier = new InitialManagementApplier(
        {
          clock: this.clock,
          log,
          leading: () => !this.stopped && node.isLeader(),
          signingReady: () => this.signingReady(),
          onStateChange: (fn) => this.store.onChange(fn),
          bootstrapIndex: () => this.store.acl.bootstrapIndex,
          knowsSecret: (secret) => this.store.acl.tokenBySecret(secret) !== undefined,
          write: async (secret) =>
            (
              await this.write(initialManagementCommand(secret), {
                signal: AbortSignal.timeout(API_RAFT_TIMEOUT_MS),
              })
            ).result,
          retryMs: INITIAL_MANAGEMENT_RETRY_MS,
        },
        initial,
      )
      run.subscriptions.push(
        () => applier.stop(),
        node.on('leader:change', ({ leader }) => {
          if (leader === ctx.identity.id) applier.onLeadership()
        }),
      )
    }
    if (ctx.config.acl.enabled) this.startEnrollment(run)
  }

  /**
   * ACLs on: this agent enrolls with its agent token (`tokenFile`, else the initial management
   * token), once per run; and while it leads, it enrolls the configuration's voters that have no
   * enrollment as founders (./enrollment.ts).
   */
  private startEnrollment(run: Running): void {
    const { ctx, log, node } = run
    const token = ctx.config.defaultToken ?? ctx.config.acl.initialManagementToken
    if (token === undefined) {
      log.warn(
        'ACLs are on and this agent has no agent token (tokenFile or acl.initialManagementToken): ' +
          'it will not be enrolled, so it will not join the Raft group',
      )
    } else {
      run.agentEnrollment = new AgentEnrollment(
        { finder: run.finder, clock: this.clock, log },
        {
          node: ctx.config.name,
          token,
          roundTimeoutMs: ENROLLMENT_ROUND_MS,
          minBackoffMs: ENROLLMENT_MIN_BACKOFF_MS,
          maxBackoffMs: ENROLLMENT_MAX_BACKOFF_MS,
        },
      )
      run.agentEnrollment.start()
    }
    let busy = false
    const enrollFounders = (): void => {
      if (busy || this.stopped || !node.isLeader() || !this.signingReady()) return
      const names = new Map(this.components.members.members().map((m) => [m.id, m.name]))
      names.set(ctx.identity.id, ctx.config.name)
      const cmd = foundersToEnroll(node.status().conf, this.store.acl, (id) => names.get(id))[0]
      if (cmd === undefined) return
      busy = true
      withTimeout(this.clock, this.settings.autopilotChangeTimeoutMs, (signal) =>
        node.propose(encodePolicyCommand(cmd), { signal }),
      )
        .then(
          ({ index, result }) =>
            log.info(
              { index, ok: result.ok, node: 'node' in cmd ? cmd.node : '' },
              'founding voter enrolled',
            ),
          (err: unknown) =>
            log.debug({ err: (err as Error).message }, 'founder enrollment not committed; will retry'),
        )
        .finally(() => {
          busy = false
        })
    }
    run.subscriptions.push(this.clock.setInterval(enrollFounders, this.settings.autopilotIntervalMs))
  }

  /**
   * Whether an entry proposed now will apply: entries are signed by the CA root once the CA exists
   * (a PolicySigner is given), so an entry proposed unsigned just before the CA's creation commits
   * after it and is refused everywhere as unsigned. The leader's own early writes (the initial
   * management token, founder enrollments) wait for the CA instead of racing it.
   */
  private signingReady(): boolean {
    return this.components.signer === undefined || this.store.caState().active !== undefined
  }

  /** The resolver of this agent's tokens, on its committed ACL state (docs/SECURITY.md). */
  private createAclResolver(ctx: AgentContext, node: RaftNode<PolicyResult>, log: Logger): AclResolver {
    const cfg = ctx.config.acl
    let caughtUp = false
    return new AclResolver(
      this.store.acl,
      {
        enabled: cfg.enabled,
        defaultPolicy: cfg.defaultPolicy,
        anonymousRead: cfg.anonymousRead,
        // No default secret: a local request without a token is anonymous. The agent's own token
        // (`tokenFile`) enrolls the node and is never lent to tokenless callers, whose rights
        // would otherwise depend on which agent they asked (a node identity cannot read other
        // nodes, anonymous can).
      },
      {
        // Caught up once a leader is known and everything it committed was applied here; then for
        // good (until a restart). Rechecked on every unknown token, a follower answered 503 instead
        // of "ACL not found" whenever a write was between its commit and its apply here (verified
        // off the loop first), which is most of the time under writes: a token unknown to an agent
        // that has caught up once is refused as on a Consul agent with stale state.
        replicated: () => {
          if (caughtUp) return true
          const st = node.status()
          caughtUp = st.leader !== undefined && st.commit > 0 && node.applied() >= st.commit
          return caughtUp
        },
        onInvalidPolicy: (id, err) =>
          log.warn({ policy: id, err: err.message }, 'ACL policy rules do not parse here; it grants nothing'),
      },
    )
  }

  async stop(): Promise<void> {
    if (this.stopped) return
    this.stopped = true
    const run = this.run
    if (run === undefined) return
    run.autopilot.stop()
    await run.agentEnrollment?.stop()
    await run.bootstrap?.stop()
    run.liveness.stop()
    for (const off of run.subscriptions.splice(0)) off()
    await run.node.stop()
    await run.messenger.stop()
  }

  private createNode(
    ctx: AgentContext,
    storage: FileStorage,
    messenger: DirectMessenger,
    log: Logger,
  ): RaftNode<PolicyResult> {
    const s = this.settings
    const self = ctx.identity.id
    const signer = this.components.signer
    // One signature per batch of entries (policy-signing.ts), with the root custody signs with.
    // Without a root (before the CA exists) or a copy of its key, entries go unsigned, and every
    // agent refuses them once the CA exists.
    const sealer: EntrySealer | undefined =
      signer === undefined
        ? undefined
        : (batch) => {
            const root = signer.snapshotSigningRoot()
            return root === undefined ? batch.map((b) => b.data) : sealPolicyBatch(root, batch)
          }
    const options: RaftNodeDriverOptions<PolicyResult> = {
      id: self,
      log,
      storage,
      stateMachine: this.store,
      transport: {
        send: (to, msg) => {
          const signed = msg.type === 'snap' ? withSnapshotSignature(msg, signer?.snapshotSigningRoot()) : msg
          messenger.send(to, encodeMessage(this.withRelay(signed)))
        },
      },
      clock: this.clock,
      config: {
        electionTick: s.electionTick,
        heartbeatTick: s.heartbeatTick,
        learnerHeartbeatTick: s.learnerHeartbeatTick,
        idleHeartbeatTick: s.idleHeartbeatTick,
      },
      tickMs: s.tickMs,
      snapshotThreshold: s.snapshotThreshold,
      snapshotTrailing: s.snapshotTrailing,
      requestTimeoutMs: s.requestTimeoutMs,
      coalesceReady: s.coalesceReady,
      noticeHoldMs: s.noticeHoldMs,
      lazyTicks: s.lazyTicks,
      ...(ctx.config.bootstrap ? { bootstrap: [self] } : {}),
      ...(sealer !== undefined ? { sealer } : {}),
    }
    return new RaftNode<PolicyResult>(options)
  }

  private watchNode(run: Running): void {
    const { node, ctx, log } = run
    const self = ctx.identity.id
    run.subscriptions.push(
      node.on('leader:change', ({ leader, term }) => {
        // What the old leader passed on is withdrawn; the new one's heartbeats say it again.
        this.components.members.setRelayed?.([])
        this.relayedBy = undefined
        this.counters.leaderChanges++
        log.info({ leader, term, self: leader === self }, 'leader:change')
        ctx.events.emit('leader:change', { leader, term })
      }),
      node.on('role:change', ({ role, term }) => log.debug({ role, term }, 'role:change')),
      node.on('conf:change', ({ index, change, conf }) => {
        this.confIndex = index
        this.counters.confChanges++
        log.info({ index, change, voters: conf.voters.length, learners: conf.learners.length }, 'conf:change')
      }),
      node.on('snapshot:restore', ({ index }) => {
        this.confIndex = Math.max(this.confIndex, index)
        log.info({ index }, 'snapshot:restore')
      }),
    )
  }

  /**
   * One message from the peer the transport authenticated (`from`, its libp2p peer id): decoded
   * once, dropped and counted unless it names that peer as its sender and this node as its
   * recipient, and, for a snapshot, carries a trusted CA signature and restores (a fresh agent,
   * which trusts no root yet, must not write to disk a snapshot it cannot restore: it would not
   * start again); then the core decides (it listens only to its configuration).
   */
  private receive(node: RaftNode<PolicyResult>, from: string, bytes: Uint8Array): void {
    const r = decodeMessage(bytes)
    if (!r.ok) {
      this.refuse('malformed', from, '', 0)
      return
    }
    const m = r.message
    if (m.from !== from) this.refuse('sender_mismatch', from, m.type, m.term)
    else if (m.to !== node.id) this.refuse('malformed', from, m.type, m.term)
    else if (this.unprovenFirstLeader(node, m)) this.refuse('unproven_leader', from, m.type, m.term)
    else if (m.type === 'snap' && !this.verifySnapshot(m))
      this.refuse('untrusted_snapshot', from, m.type, m.term)
    else if (m.type === 'snap' && this.store.snapshotProblem(m.snapshot!.data) !== undefined)
      this.refuse('malformed', from, m.type, m.term)
    else {
      // Consul's X-Consul-LastContact: when this follower last heard from the leader it knows.
      if (m.from === node.leader()) this.lastLeaderContact = this.clock.now()
      node.step(m)
      // The transport authenticated `from` and it sent this just now: gossip may skip a probe.
      this.components.members.heardFrom?.(from)
      this.relay.heard(from, this.clock.now())
      // A heartbeat from the leader this node follows says whom that leader heard from. A new
      // leader's first list is not compared with the old one's (what it leaves off is not news).
      const relayed = this.relay.accept(m, node.leader(), node.id)
      if (relayed !== undefined) {
        if (m.from !== this.relayedBy) this.components.members.setRelayed?.([])
        this.relayedBy = m.from
        this.components.members.setRelayed?.(relayed)
      }
    }
  }

  /**
   * With ACLs on, whether `m` would give this agent its first configuration (an append, heartbeat
   * or snapshot to an agent whose configuration is still empty: the Raft core takes those from
   * anyone) from a member that has not proven it leads this agent's cluster. Proven: it answered
   * this agent's enrollment with an ack made with the agent's token secret (LeaderFinder), which
   * a process holding only the cluster key cannot make; so such a process cannot make a joining
   * agent follow it, trust its CA and enforce its intentions. The leader may have changed since
   * that answer: such a refusal asks again (at most once per ENROLLMENT_MIN_BACKOFF_MS), which
   * proves the new leader.
   */
  private unprovenFirstLeader(node: RaftNode<PolicyResult>, m: Message): boolean {
    const run = this.run
    if (run === undefined || !run.ctx.config.acl.enabled) return false
    if (m.type !== 'app' && m.type !== 'heartbeat' && m.type !== 'snap') return false
    if (node.voters().length > 0 || node.status().conf.learners.length > 0) return false
    if (run.provenLeaders.has(m.from)) return false
    const now = this.clock.now()
    if (run.agentEnrollment !== undefined && now - run.reprovedAt >= ENROLLMENT_MIN_BACKOFF_MS) {
      run.reprovedAt = now
      run.agentEnrollment.reprove()
    }
    return true
  }

  /** A heartbeat to a voter, with the other voters this leader heard from (EvidenceRelay). */
  private withRelay(m: Message): Message {
    const node = this.run?.node
    if (m.type !== 'heartbeat' || node === undefined) return m
    const alive = this.relay.aliveFor(m.to, node.voters(), m.from, this.clock.now())
    return alive === undefined ? m : { ...m, alive }
  }

  private refuse(reason: RefusalReason, from: string, type: RefusalRecord['type'], term: number): void {
    const r = this.refusals.get(reason)
    if (r === undefined) this.refusals.set(reason, { count: 1, from, type, term })
    else Object.assign(r, { count: r.count + 1, from, type, term })
  }

  /** One line per reason with new refusals since the last call (called every interval). */
  private logRefusals(log: Logger): void {
    const e = this.run?.enrollment
    if (e !== undefined) {
      const denied = e.stats.enrollDenied + e.stats.grantDenied
      if (denied > this.enrollDeniedLogged) {
        log.warn(
          { count: denied - this.enrollDeniedLogged, total: denied, last: e.lastDenied },
          'raft: enrollment or grant requests refused',
        )
        this.enrollDeniedLogged = denied
      }
    }
    for (const [reason, r] of Object.entries(this.refusedMessages()) as [RefusalReason, RefusalRecord][]) {
      const seen = this.refusalsLogged.get(reason) ?? 0
      if (r.count <= seen) continue
      this.refusalsLogged.set(reason, r.count)
      const fields = {
        reason,
        count: r.count - seen,
        total: r.count,
        from: r.from,
        type: r.type,
        term: r.term,
      }
      if (ROUTINE_REFUSALS.has(reason)) log.debug(fields, 'raft: peer messages refused')
      else if (reason === 'untrusted_snapshot')
        log.warn({ ...fields, hint: UNTRUSTED_SNAPSHOT_HINT }, 'raft: peer messages refused')
      else log.warn(fields, 'raft: peer messages refused')
    }
  }

  /**
   * A snapshot replaces the whole policy state, so once this agent trusts a CA root it installs
   * only a snapshot signed by one of its trusted roots (policy-signing.ts).
   */
  private verifySnapshot(msg: Message): boolean {
    const ok = snapshotMessageTrusted(msg, this.store.trustedRoots())
    if (!ok) this.counters.snapshotsRejected++
    return ok
  }

  // ---- writes and reads ---------------------------------------------------------------------------

  /**
   * Replicates a policy command through the leader, wherever it is, and resolves with the state
   * machine's result once committed and applied there (see WriteForwarder).
   */
  async write(cmd: PolicyCommand, options: { signal: AbortSignal; token?: string }): Promise<WriteResult> {
    const run = this.running()
    // A request without a token is anonymous here as on the leader, which reads it so.
    const token = options.token
    return run.forwarder.write(cmd, { signal: options.signal, ...(token !== undefined ? { token } : {}) })
  }

  // ---- enrollment (issue #12) ---------------------------------------------------------------------

  /**
   * Whether this agent is enrolled: the leader confirmed it during this run, or the committed
   * state holds its binding. Always true with ACLs off (every key holder is eligible).
   */
  enrolled(): boolean {
    const run = this.run
    if (run === undefined) return false
    if (!run.ctx.config.acl.enabled) return true
    return (
      run.agentEnrollment?.confirmed === true || this.store.acl.enrollment(run.ctx.identity.id) !== undefined
    )
  }

  /**
   * Asks the leader for a grant to publish `service` with `token` (else the agent's default
   * token, else anonymous): resolves once it is committed (and applied here when this agent is in
   * the Raft configuration), or at once when no grant is needed (ACLs off, this agent's enrollment
   * token grants `service:write` on it, or a grant with this token exists). Rejects with
   * PermissionDeniedError (code PEERMESH_ERR_PERMISSION_DENIED) when the leader refuses, and with
   * NoLeaderError when no leader answered before the signal.
   */
  async requestServiceGrant(
    service: string,
    token: string | undefined,
    options: { signal: AbortSignal },
  ): Promise<void> {
    const run = this.running()
    if (!run.ctx.config.acl.enabled) return
    const self = run.ctx.identity.id
    const secret = grantSecret(token, run.ctx.config.defaultToken)
    const acl = this.store.acl
    const enrollment = acl.enrollment(self)
    if (enrollment !== undefined) {
      if (tokenGrantsService(acl, run.acl, enrollment, service)) return
      const accessor = acl.tokenBySecret(secret)?.accessorId
      if (acl.serviceGrants(self).some((g) => g.service === service && g.accessorId === accessor)) return
    }
    const reply = await run.finder.ask({ t: 'grant', service, token: secret }, options)
    if (!reply.ok) {
      if (reply.code === PermissionDeniedError.code) throw new PermissionDeniedError(reply.message)
      throw Object.assign(new Error(reply.message), { code: reply.code })
    }
    const conf = run.node.status().conf
    if (reply.index > 0 && (conf.voters.includes(self) || conf.learners.includes(self)))
      await untilApplied(this.store, reply.index, options.signal)
  }

  /**
   * Resolves once this agent's state machine reflects every write committed before the call
   * (ReadIndex, thesis §6.4, on any member: a follower or learner asks the leader through Raft).
   */
  async linearizableRead(options: { signal: AbortSignal }): Promise<{ index: number }> {
    const { node, rpc } = this.running()
    const { signal } = options
    for (;;) {
      if (signal.aborted || this.stopped)
        throw new NoLeaderError('no raft leader confirmed the read before the deadline')
      if (node.leader() === undefined) {
        await rpc.pause(signal)
        continue
      }
      const attempt = attemptSignal(this.clock, signal, this.settings.attemptTimeoutMs)
      try {
        return await node.read({ signal: attempt.signal })
      } catch {
        await rpc.pause(signal)
      } finally {
        attempt.done()
      }
    }
  }

  private running(): Running {
    if (this.run === undefined || this.stopped) throw new RaftNotRunningError('raft is not running')
    return this.run
  }

  /**
   * Whether `token` (none: anonymous) grants `needed` on this agent's committed ACL state, for a
   * request another agent forwarded here (the leader's side of an RPC); with ACLs off, yes. The
   * same rule and messages as the HTTP routes.
   */
  authorizeRequest(
    token: string | undefined,
    needed: readonly [PermissionCheck, PermissionNeed],
  ): PolicyRefusal | undefined {
    const acl = this.run?.acl
    if (acl === undefined) return policyRefusal(PolicyErrorCodes.permissionDenied, 'raft is not running')
    if (!acl.config.enabled) return undefined
    return authorizeToken(acl, token, needed)
  }

  // ---- views for the API --------------------------------------------------------------------------

  /** libp2p address of the leader ending in /p2p/<id>, "" when no leader is known. */
  leaderAddress(): string {
    const leader = this.run?.node.leader()
    if (leader === undefined) return ''
    return this.addressOf(leader)
  }

  /** The founder set this agent committed to under `--bootstrap-expect` (none: not a founder). */
  foundingSet(): readonly string[] | undefined {
    return this.run?.bootstrap?.commitment()?.set
  }

  leaderId(): string | undefined {
    return this.run?.node.leader()
  }

  /**
   * Consul's `X-Consul-LastContact`: milliseconds since this agent last heard from the leader; 0
   * on the leader itself; undefined when no leader is known.
   */
  lastContactMs(): number | undefined {
    const node = this.run?.node
    const leader = node?.leader()
    if (node === undefined || leader === undefined) return undefined
    if (leader === node.id) return 0
    return this.lastLeaderContact === undefined
      ? undefined
      : Math.max(0, this.clock.now() - this.lastLeaderContact)
  }

  configuration(): RaftConfigurationJson {
    const run = this.run
    if (run === undefined) return { servers: [], index: 0 }
    const st = run.node.status()
    const names = new Map(this.components.members.members().map((m) => [m.id, m.name]))
    names.set(run.ctx.identity.id, run.ctx.config.name)
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
    const ctx = this.run?.ctx
    let addr: string | undefined
    if (ctx !== undefined && id === ctx.identity.id) addr = ctx.host.getMultiaddrs()[0]?.toString()
    else addr = this.components.members.members().find((m) => m.id === id)?.address
    if (addr === undefined || addr === '') return ''
    return addr.endsWith(`/p2p/${id}`) ? addr : `${addr}/p2p/${id}`
  }
}

/**
 * Whether a forwarded write's token grants its command, on the leader's committed ACL state: the
 * same rule as the HTTP route that took it (acl/command-permission.ts).
 */
function authorizeForward(
  acl: AclResolver,
  cmd: PolicyCommand,
  token: string | undefined,
): PolicyRefusal | undefined {
  const needed = commandPermission(cmd)
  return needed === undefined ? undefined : authorizeToken(acl, token, needed)
}

/** Whether `token` (none: anonymous) grants `needed` on `acl`'s committed state; else a refusal. */
function authorizeToken(
  acl: AclResolver,
  token: string | undefined,
  needed: readonly [PermissionCheck, PermissionNeed],
): PolicyRefusal | undefined {
  let who: ResolvedToken
  try {
    // A forward without a token is anonymous here, never this leader's own default token.
    who = acl.resolve(token ?? ANONYMOUS_TOKEN_SECRET)
  } catch (err) {
    return policyRefusal(PolicyErrorCodes.permissionDenied, (err as Error).message)
  }
  const [check, what] = needed
  return check(who.authorizer)
    ? undefined
    : policyRefusal(PolicyErrorCodes.permissionDenied, permissionDeniedMessage(who.accessorId, what))
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>
}
