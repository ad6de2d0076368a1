import { type KeyObject, randomBytes } from 'node:crypto'
import type { Logger } from 'pino'
import { Gauge } from 'prom-client'
import {
  crossSign,
  createRootCa,
  DEFAULT_RETRY_BACKOFF,
  isDnsLabel,
  type KeyType,
  LeafCertificateRotator,
  type LeafCredentials,
  type LeafResponse,
  LeafSigningRateLimiter,
  signLeaf,
} from '../../identity/index.ts'
import { DEFAULT_LEAF_TTL_MS } from '../../identity/ca/constants.ts'
import { type IntentionAction, IntentionIndex } from '../../proxy/intentions.ts'
import { pack, unpack, unpackRecord } from '../../raft/msgpack.ts'
import { signPolicyEntry } from '../../raft/policy/policy-signing.ts'
import type { Intention } from '../../raft/policy/policy-store.ts'
import type { RequestId } from '../../raft/types.ts'
import type { AgentContext, AgentModule } from '../agent/agent.ts'
import { counterFrom } from '../agent/metrics.ts'
import type { CatalogModule } from '../catalog/catalog-module.ts'
import {
  type CaRootRecord,
  type CaState,
  caStateOf,
  type IssuedLeaf,
  openRootKey,
  recordIssued,
  rootRecordOf,
  rotationComplete,
  votersWithoutKey,
  withSealedKey,
} from '../../identity/connect/ca-state.ts'
import { registerConnectRoutes } from '../api/connect-routes.ts'
import type { RaftModule } from '../raft/raft-module.ts'
import { StreamMessenger } from '../transport/stream-messenger.ts'

/** Reliable request/response: a CSR sent to the Raft leader, a signed leaf or a coded refusal back. */
export const CONNECT_SIGN_PROTOCOL = '/peermesh/connect/sign/1'
/** Best-effort channel of the same messenger; unused for now (StreamMessenger needs one). */
export const CONNECT_PROTOCOL = '/peermesh/connect/1'
/** The cluster-wide default intention action: a `kv` config entry in the Raft policy store. */
export const DEFAULT_ACTION_ENTRY = { kind: 'kv', name: 'connect.default-intention-action' } as const

const MAX_SIGN_REQUEST_BYTES = 32 * 1024
const DEFAULTS = {
  /** One signing attempt: a dead leader's connection resets at once on a LAN; a hung one is cut. */
  attemptTimeoutMs: 2_000,
  /** Pause before asking again when no leader is known or the CA is not created yet. */
  retryPauseMs: 50,
  /** First renewal retry after a refusal (e.g. the leader has not yet seen the service in gossip). */
  retryBackoff: { initialMs: 250, maxMs: DEFAULT_RETRY_BACKOFF.maxMs },
  /** How often the leader checks that the CA exists and whether a rotation can finish. */
  leaderCheckMs: 500,
}

/** Coded refusal of a leaf signing request, as the leader answered it. */
export class LeafSigningRefusedError extends Error {
  override readonly name = 'LeafSigningRefusedError'
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message)
  }
}

/** `POST /v1/connect/ca/rotate` while an earlier rotation still trusts two roots, or a racing change. */
export class CaRotationConflictError extends Error {
  override readonly name = 'CaRotationConflictError'
  readonly code = 'PEERMESH_ERR_CA_ROTATION_CONFLICT'
}

const CA_NOT_READY = 'PEERMESH_ERR_CA_NOT_READY'

/** The CA has not been created yet (the cluster has not bootstrapped, or no leader yet). */
export class CaNotReadyError extends Error {
  override readonly name = 'CaNotReadyError'
  readonly code = CA_NOT_READY
}

type SignReply =
  | { ok: true; certPem: string; intermediatesPem: string[] }
  | { ok: false; code: string; message: string }

export interface ConnectModuleOptions {
  /** Trust domain for a CA created here (default: config, else random `<hex>.peermesh`). */
  trustDomain?: string
  caKeyType?: KeyType
  /** Leaf lifetime signed by this agent when it leads (default: config, else 72 h). */
  leafTtlMs?: number
  /** Wall clock (ms); tests inject one. */
  now?: () => number
  /** Leaf signings per second on the leader (default 50, Consul's csr_max_per_second). */
  signingRatePerSecond?: number
  /** This agent's peer id when used without `start()` (tests). */
  selfId?: string
  /** This agent's node key, which opens its sealed copy of the root key (default: the agent's). */
  nodeKey?: KeyObject
}

export interface IntentionChange {
  index: number
  intentions: Intention[]
  defaultAction: IntentionAction
}

/**
 * Service identity and authorization for the agent (Consul Connect's CA, leaf and intention
 * endpoints), on top of the Raft policy store:
 * - the leader creates the CA root once (`ca.setRoots` with casIndex 0: idempotent across leader
 *   changes and racing leaders) and signs leaf CSRs sent over `/peermesh/connect/sign/1` for
 *   services the requesting agent registers in gossip, rate-limited;
 * - each agent keeps one `LeafCertificateRotator` per local service name, renewed at 60–90 % of
 *   the lifetime and at once when the active root changes; the key never leaves the agent;
 * - intentions are written through Raft (from any agent) and answered from the local committed
 *   state by an `IntentionIndex` rebuilt on change; `intention:change` goes on the event bus.
 *
 * Custody of the root key and integrity of the policy state (DESIGN.md, "CA root in Raft"):
 * - the root certificate is replicated to every agent, its private key only sealed to each Raft
 *   voter (connect-ca.ts); a learner can verify but never sign. The leader seals the key to a
 *   learner before autopilot promotes it, and to any voter still without a copy;
 * - once the CA exists, the leader signs every policy entry it appends with the active root, over
 *   the entry's Raft index, request id and command (policy-signing.ts), and every agent applies
 *   only entries that verify against the roots trusted at that point of the log: an entry forged
 *   by a learner, or a genuine one replayed at another index, is refused and counted
 *   (`peermesh_connect_policy_rejected_total`). Snapshots the leader sends are signed the same way.
 *   Only the entry that creates the first root is trusted on first use;
 * - on top of that, Raft traffic needs the cluster key (pnet) and is noise-authenticated to the
 *   sender's peer id. The index travels with every read (`X-Peermesh-Index`).
 */
export class ConnectModule implements AgentModule {
  readonly name = 'connect'
  private ctx?: AgentContext
  private log?: Logger
  private messenger?: StreamMessenger
  private readonly limiter: LeafSigningRateLimiter
  private readonly rotators = new Map<string, LeafCertificateRotator>()
  private readonly issuedUnder = new Map<string, IssuedLeaf>()
  private index = new IntentionIndex([], 'deny')
  private intentionList: Intention[] = []
  private intentionKey = ''
  private ca: CaState = { roots: [], active: undefined, modifyIndex: 0 }
  private appliedIndex = 0
  /** The Raft term in which this leader caught up with the committed state (see signFor). */
  private signingReadyTerm = -1
  /** Root keys opened from this agent's sealed copies: root id -> PKCS#8 PEM. */
  private readonly rootKeys = new Map<string, string>()
  private readonly waiters = new Set<{ after: number; resolve: (index: number) => void }>()
  private leaderTimer?: NodeJS.Timeout
  private leaderBusy = false
  private offStore?: () => void
  private offLeader?: () => void
  private stopped = false
  private readonly now: () => number
  readonly stats = {
    leavesSigned: 0,
    signRefused: 0,
    leavesRenewed: 0,
    intentionChanges: 0,
    keysGranted: 0,
  }

  constructor(
    private readonly raft: RaftModule,
    private readonly catalog: CatalogModule,
    private readonly options: ConnectModuleOptions = {},
  ) {
    this.now = options.now ?? Date.now
    this.limiter = new LeafSigningRateLimiter({
      nowMs: this.now(),
      ...(options.signingRatePerSecond !== undefined ? { ratePerSecond: options.signingRatePerSecond } : {}),
    })
    this.selfIdOverride = options.selfId
  }

  // ---- lifecycle ----------------------------------------------------------------------------------

  async start(ctx: AgentContext): Promise<void> {
    this.ctx = ctx
    this.log = ctx.log.child({ component: 'connect' })
    const messenger = new StreamMessenger({
      host: ctx.host,
      protocol: CONNECT_PROTOCOL,
      requestProtocol: CONNECT_SIGN_PROTOCOL,
      log: this.log,
      maxMessageBytes: 1024,
      maxRequestBytes: MAX_SIGN_REQUEST_BYTES,
    })
    this.messenger = messenger
    messenger.onRequest((from, bytes) => this.serveSign(from, bytes))
    await messenger.start()

    this.offStore = this.raft.store.onChange(() => this.refreshState())
    this.refreshState()
    this.attachToRaft()
    this.offLeader = this.raft.raft?.on('leader:change', () => this.onLeaderChange())
    this.leaderTimer = setInterval(() => this.leaderCheck(), DEFAULTS.leaderCheckMs)
    this.catalog.catalog.on('catalog:change', this.syncRotators)
    this.syncRotators()
    registerConnectRoutes(ctx.http, this)
    this.registerMetrics(ctx)
  }

  async stop(): Promise<void> {
    if (this.stopped) return
    this.stopped = true
    clearInterval(this.leaderTimer)
    this.offStore?.()
    this.offLeader?.()
    this.raft.setEntrySealer(undefined)
    this.raft.setVoterGate(undefined)
    this.raft.setSnapshotSigner(undefined)
    this.catalog.catalog.off('catalog:change', this.syncRotators)
    for (const r of this.rotators.values()) r.stop()
    this.rotators.clear()
    for (const w of this.waiters) w.resolve(this.appliedIndex)
    this.waiters.clear()
    await this.messenger?.stop()
  }

  get raftModule(): RaftModule {
    return this.raft
  }

  private readonly selfIdOverride: string | undefined

  get selfId(): string {
    const id = this.ctx?.identity.id ?? this.selfIdOverride
    if (id === undefined) throw new Error('connect module not started')
    return id
  }

  // ---- committed state ----------------------------------------------------------------------------

  /** Rebuilds the views of the policy store; runs after each change applied here. */
  refreshState(): void {
    const store = this.raft.store
    // Runs on every applied entry: copy the CA state only when it changed.
    if (store.caModifyIndex !== this.ca.modifyIndex) {
      const prevActive = this.ca.active?.id
      this.ca = caStateOf(store.caRoots())
      this.ctx?.events.emit('ca:change', { activeRootId: this.ca.active?.id, roots: this.ca.roots.length })
      if (prevActive !== undefined && this.ca.active?.id !== prevActive) {
        this.log?.info({ from: prevActive, to: this.ca.active?.id }, 'CA root rotated; renewing leaves')
        for (const r of this.rotators.values()) r.renewNow()
      }
      if (prevActive === undefined && this.ca.active !== undefined) this.syncRotators()
    }
    const list = store.listIntentions()
    const def = this.readDefaultAction()
    let maxModify = 0
    for (const i of list) maxModify = Math.max(maxModify, i.modifyIndex)
    const key = `${list.length}:${maxModify}:${def}`
    if (key !== this.intentionKey) {
      this.intentionKey = key
      // Entries are validated on write; one that is not (e.g. written by a newer agent) is skipped.
      const valid = list.filter((i) => isIntentionName(i.source) && isIntentionName(i.destination))
      this.index = new IntentionIndex(
        valid.map((i) => ({ source: i.source, destination: i.destination, action: i.action })),
        def,
      )
      this.intentionList = valid
      this.stats.intentionChanges++
      const change: IntentionChange = { index: store.index, intentions: valid, defaultAction: def }
      this.ctx?.events.emit('intention:change', change)
    }
    this.appliedIndex = store.index
    for (const w of this.waiters) {
      if (store.index > w.after) {
        this.waiters.delete(w)
        w.resolve(store.index)
      }
    }
  }

  private readDefaultAction(): IntentionAction {
    const e = this.raft.store.getConfigEntry(DEFAULT_ACTION_ENTRY.kind, DEFAULT_ACTION_ENTRY.name)
    return e?.value['value'] === 'allow' ? 'allow' : 'deny'
  }

  /** Raft index of the policy state last applied here. */
  get stateIndex(): number {
    return this.appliedIndex
  }

  /** Resolves with the new index once the policy state here passes `after`, or after `waitMs`. */
  waitForChange(after: number, waitMs: number, signal?: AbortSignal): Promise<number> {
    if (this.appliedIndex > after || this.stopped) return Promise.resolve(this.appliedIndex)
    return new Promise((resolve) => {
      const w = {
        after,
        resolve: (i: number) => {
          clearTimeout(timer)
          signal?.removeEventListener('abort', onAbort)
          resolve(i)
        },
      }
      const onAbort = (): void => {
        this.waiters.delete(w)
        w.resolve(this.appliedIndex)
      }
      const timer = setTimeout(onAbort, waitMs)
      signal?.addEventListener('abort', onAbort, { once: true })
      this.waiters.add(w)
    })
  }

  intentions(): Intention[] {
    return this.intentionList
  }

  intentionIndex(): IntentionIndex {
    return this.index
  }

  caState(): CaState {
    return this.ca
  }

  /** Trusted roots (PEM): during a rotation, old and new. */
  trustedRootsPem(): string[] {
    return this.ca.roots.map((r) => r.certPem)
  }

  // ---- custody of the root key --------------------------------------------------------------------

  /**
   * Hooks this module into the Raft module (done by `start`): it signs the policy entries and
   * snapshots this agent sends as leader, and seals the root key to members before they vote.
   */
  attachToRaft(): void {
    this.raft.setEntrySealer(this.sealEntry)
    this.raft.setVoterGate((peerId, signal) => this.grantKeyTo(peerId, signal))
    this.raft.setSnapshotSigner(() => this.snapshotSigner())
  }

  /** `record` with its private key, when this agent holds a sealed copy (a voter); else undefined. */
  private signingCa(record: CaRootRecord | undefined): (CaRootRecord & { keyPem: string }) | undefined {
    const nodeKey = this.options.nodeKey ?? this.ctx?.identity.signingKey
    if (record === undefined || nodeKey === undefined) return undefined
    let keyPem = this.rootKeys.get(record.id)
    if (keyPem === undefined) {
      keyPem = openRootKey(record, this.selfId, nodeKey)
      if (keyPem === undefined) return undefined
      this.rootKeys.set(record.id, keyPem)
    }
    return { ...record, keyPem }
  }

  /** Whether this agent can sign with the active root (it holds a sealed copy of its key). */
  holdsActiveKey(): boolean {
    return this.signingCa(this.ca.active) !== undefined
  }

  /**
   * Set as the Raft module's entry sealer: signs each policy entry this agent appends as leader with
   * the active root, for the entry's index. Without a root (before the CA exists) or without a copy
   * of its key, the entry goes unsigned, and every agent refuses it once the CA exists.
   */
  private readonly sealEntry = (
    index: number,
    requestId: RequestId | undefined,
    data: Uint8Array,
  ): Uint8Array => {
    const ca = this.signingCa(this.ca.active)
    if (ca === undefined) return data
    return signPolicyEntry(ca, index, requestId, data)
  }

  /** The snapshot signer and the roots to verify against, for the Raft transport. */
  snapshotSigner(): (CaRootRecord & { keyPem: string }) | undefined {
    return this.signingCa(this.ca.active)
  }

  /**
   * Seals every trusted root's key to `peerId` (called by autopilot before it promotes a learner,
   * and by the leader for any voter without a copy). Resolves once committed, or at once when
   * `peerId` already has a copy or there is no CA yet.
   */
  private async grantKeyTo(peerId: string, signal: AbortSignal): Promise<void> {
    const state = this.caStateNow()
    if (state.active === undefined) return
    if (state.roots.every((r) => r.sealedKeys[peerId] !== undefined)) return
    await this.grantKeys([peerId], state, signal)
  }

  private async grantKeys(peers: string[], state: CaState, signal: AbortSignal): Promise<void> {
    const roots = state.roots.map((r) => {
      const ca = this.signingCa(r)
      if (ca === undefined) throw new CaNotReadyError(`this agent holds no copy of root ${r.id}'s key`)
      return withSealedKey(r, ca.keyPem, peers)
    })
    const { result } = await this.raft.write(
      { op: 'ca.setRoots', roots, activeRootId: state.active!.id, casIndex: state.modifyIndex },
      { signal },
    )
    if (!result.ok) throw new Error(`granting the CA key failed: ${result.code} ${result.message}`)
    this.stats.keysGranted += peers.length
    this.log?.info({ peers, roots: roots.length }, 'CA key sealed to voters')
  }

  // ---- CA on the leader ---------------------------------------------------------------------------

  /**
   * A new leader does not know which leaves its predecessor re-issued under the new root (that is
   * not in Raft), so during a rotation every agent asks again; else the old root would stay trusted
   * until a whole leaf lifetime had passed.
   */
  private onLeaderChange(): void {
    this.leaderCheck()
    if (this.ca.roots.length > 1) for (const r of this.rotators.values()) r.renewNow()
  }

  private leaderCheck(): void {
    const node = this.raft.raft
    if (this.stopped || node === undefined || !node.isLeader() || this.leaderBusy) return
    this.leaderBusy = true
    this.leaderWork()
      .catch((err: unknown) =>
        this.log?.debug({ err: (err as Error).message }, 'CA check not done; will retry'),
      )
      .finally(() => {
        this.leaderBusy = false
      })
  }

  private async leaderWork(): Promise<void> {
    if (this.ca.active === undefined) {
      // A new leader may not have applied every committed entry yet: ReadIndex first.
      await this.raft.linearizableRead({ signal: AbortSignal.timeout(5_000) })
      if (this.caStateNow().active !== undefined) return
      await this.createCa()
      return
    }
    const voters = this.raft.raft?.status().conf.voters ?? []
    if (!this.holdsActiveKey()) {
      // Elected without a copy of the key (promoted before it was sealed to us): hand leadership
      // to a voter that can sign; the grant loop below then reaches us from there. First make
      // sure this is not just a new leader that has not applied the grant yet.
      await this.raft.linearizableRead({ signal: AbortSignal.timeout(5_000) })
      if (this.caStateNow().active === undefined || this.holdsActiveKey()) return
      const heir = voters.find((v) => v !== this.selfId && this.ca.active!.sealedKeys[v] !== undefined)
      this.log?.warn({ heir }, 'leading without a copy of the CA key; transferring leadership')
      if (heir !== undefined) this.raft.raft?.transferLeadership(heir)
      return
    }
    const missing = voters.filter((v) => this.ca.roots.some((r) => votersWithoutKey(r, [v]).length > 0))
    if (missing.length > 0) await this.grantKeys(missing, this.ca, AbortSignal.timeout(5_000))
    if (this.ca.roots.length > 1) await this.maybeFinishRotation()
  }

  private caStateNow(): CaState {
    this.refreshState()
    return this.ca
  }

  private trustDomain(): string {
    return (
      this.options.trustDomain ?? this.ctx?.config.trustDomain ?? `${randomBytes(4).toString('hex')}.peermesh`
    )
  }

  private keyType(): KeyType {
    return this.options.caKeyType ?? this.ctx?.config.caKeyType ?? 'ed25519'
  }

  get leafTtlMs(): number {
    return this.options.leafTtlMs ?? this.ctx?.config.leafTtlMs ?? DEFAULT_LEAF_TTL_MS
  }

  private async createCa(): Promise<void> {
    const now = this.now()
    const root = await createRootCa({ trustDomain: this.trustDomain(), keyType: this.keyType(), nowMs: now })
    const voters = this.raft.raft?.status().conf.voters ?? [this.selfId]
    const { result } = await this.raft.write(
      { op: 'ca.setRoots', roots: [rootRecordOf(root, now, voters)], activeRootId: root.id, casIndex: 0 },
      { signal: AbortSignal.timeout(5_000) },
    )
    if (result.ok)
      this.log?.info({ rootId: root.id, trustDomain: root.trustDomain }, 'created the mesh CA root')
    else this.log?.info({ code: result.code }, 'CA root already created by another leader')
  }

  /**
   * Starts a root rotation from any agent: a new root, cross-signed by the active one, becomes
   * active; both stay trusted until every leaf is re-issued (see `rotationComplete`).
   */
  async rotate(options: { signal: AbortSignal }): Promise<{ activeRootId: string; previousRootId: string }> {
    for (;;) {
      options.signal.throwIfAborted()
      const node = this.raft.raft
      if (node?.isLeader()) return await this.rotateHere(options)
      // Only a voter holds the old root's key, which cross-signs the new root: ask the leader.
      const leader = this.raft.leaderId()
      if (leader === undefined || leader === this.selfId) {
        await pause(DEFAULTS.retryPauseMs, options.signal)
        continue
      }
      let reply: RotateReply | undefined
      try {
        const attempt = AbortSignal.any([options.signal, AbortSignal.timeout(10_000)])
        reply = decodeRotateReply(
          await this.messenger!.request(leader, pack({ op: 'rotate' }), { signal: attempt }),
        )
      } catch (err) {
        options.signal.throwIfAborted()
        this.log?.debug({ err: (err as Error).message }, 'rotation request to the leader failed; retrying')
      }
      if (reply?.ok) return { activeRootId: reply.activeRootId, previousRootId: reply.previousRootId }
      if (reply !== undefined && reply.code !== 'PEERMESH_ERR_NOT_LEADER') {
        if (reply.code === CA_NOT_READY) throw new CaNotReadyError(reply.message)
        if (reply.code === 'PEERMESH_ERR_CA_ROTATION_CONFLICT')
          throw new CaRotationConflictError(reply.message)
        throw new LeafSigningRefusedError(reply.code, reply.message)
      }
      await pause(DEFAULTS.retryPauseMs, options.signal)
    }
  }

  /** Rotation on the leader: it holds the old root's key. */
  private async rotateHere(options: {
    signal: AbortSignal
  }): Promise<{ activeRootId: string; previousRootId: string }> {
    await this.raft.linearizableRead(options)
    const state = this.caStateNow()
    const old = this.signingCa(state.active)
    if (state.active === undefined) throw new CaNotReadyError('the CA has not been created yet')
    if (old === undefined) throw new CaNotReadyError('this leader holds no copy of the CA key yet')
    if (state.roots.length > 1) {
      throw new CaRotationConflictError(
        'a root rotation is still in progress (two roots trusted); retry once it completes',
      )
    }
    const now = this.now()
    const next = await createRootCa({ trustDomain: old.trustDomain, keyType: this.keyType(), nowMs: now })
    const cross = await crossSign(old, next)
    const voters = this.raft.raft?.status().conf.voters ?? [this.selfId]
    const { result } = await this.raft.write(
      {
        op: 'ca.setRoots',
        roots: [state.active, rootRecordOf(next, now, voters, cross.certPem)],
        activeRootId: next.id,
        casIndex: state.modifyIndex,
      },
      options,
    )
    if (!result.ok) throw new CaRotationConflictError(`the CA changed meanwhile: ${result.message}`)
    this.log?.info({ from: old.id, to: next.id }, 'CA root rotation started')
    return { activeRootId: next.id, previousRootId: old.id }
  }

  private async maybeFinishRotation(): Promise<void> {
    const state = this.ca
    const active = state.active
    if (active === undefined) return
    const required: string[] = []
    for (const m of this.catalog.catalog.members()) {
      if (m.status !== 'alive') continue
      for (const svc of this.servicesOf(m.peerId)) required.push(`${m.peerId}/${svc}`)
    }
    const done = rotationComplete({
      active,
      required,
      issuedUnder: this.issuedUnder,
      leafTtlMs: this.leafTtlMs,
      nowMs: this.now(),
    })
    if (!done) return
    const { crossSignedPem: _dropped, ...kept } = active
    const { result } = await this.raft.write(
      { op: 'ca.setRoots', roots: [kept], activeRootId: active.id, casIndex: state.modifyIndex },
      { signal: AbortSignal.timeout(5_000) },
    )
    if (result.ok) this.log?.info({ active: active.id }, 'CA root rotation complete; old root dropped')
  }

  // ---- leaf signing (leader side) -----------------------------------------------------------------

  /** Service names (DNS labels) the catalog lists on node `peerId`. */
  servicesOf(peerId: string): string[] {
    const out: string[] = []
    for (const name of Object.keys(this.catalog.catalog.services())) {
      if (!isDnsLabel(name)) continue
      if (this.catalog.catalog.health(name).some((e) => e.node.peerId === peerId)) out.push(name)
    }
    return out
  }

  /** Whether `peerId` registers a service called `service` in its gossip record. */
  isRegisteredOn(peerId: string, service: string): boolean {
    return this.catalog.catalog.health(service).some((e) => e.node.peerId === peerId)
  }

  /**
   * Signs a CSR for `service` on behalf of agent `requester` (its libp2p peer id, authenticated by
   * the noise handshake). Refuses unless this agent leads, the CA exists, the requester registers
   * the service, and the rate limit allows; `signLeaf` checks the CSR itself.
   */
  async signFor(requester: string, service: unknown, csrPem: unknown): Promise<SignReply> {
    const refuse = (code: string, message: string): SignReply => {
      this.stats.signRefused++
      return { ok: false, code, message }
    }
    if (typeof service !== 'string' || !isDnsLabel(service))
      return refuse('PEERMESH_ERR_INVALID_SERVICE_NAME', 'service: not a service name')
    if (typeof csrPem !== 'string') return refuse('PEERMESH_ERR_CSR_MALFORMED', 'csr: expected a PEM string')
    const node = this.raft.raft
    if (node === undefined || !node.isLeader())
      return refuse('PEERMESH_ERR_NOT_LEADER', 'not the raft leader')
    // A new leader first applies everything committed before its term (a ReadIndex waits for
    // that), so it never signs under a root that a rotation it has not applied yet replaced.
    const term = node.status().term
    if (this.signingReadyTerm !== term) {
      try {
        await this.raft.linearizableRead({ signal: AbortSignal.timeout(DEFAULTS.attemptTimeoutMs) })
      } catch {
        return refuse(CA_NOT_READY, 'the new leader has not caught up with the committed state yet')
      }
      this.refreshState()
      this.signingReadyTerm = term
    }
    if (this.ca.active === undefined) return refuse(CA_NOT_READY, 'the CA is not created yet')
    const ca = this.signingCa(this.ca.active)
    if (ca === undefined) return refuse(CA_NOT_READY, 'this leader holds no copy of the CA key yet')
    if (!this.isRegisteredOn(requester, service)) {
      return refuse(
        'PEERMESH_ERR_SERVICE_NOT_REGISTERED',
        `service ${service} is not registered on agent ${requester}`,
      )
    }
    const decision = this.limiter.tryAcquire(this.now())
    if (!decision.ok)
      return refuse(
        'PEERMESH_ERR_LEAF_SIGNING_RATE_LIMITED',
        `rate limited; retry in ${decision.retryAfterMs} ms`,
      )
    try {
      const leaf = await signLeaf(ca, csrPem, {
        service,
        trustDomain: ca.trustDomain,
        ttlMs: this.leafTtlMs,
        nowMs: this.now(),
      })
      this.stats.leavesSigned++
      recordIssued(this.issuedUnder, `${requester}/${service}`, leaf.issuerId, this.now())
      return {
        ok: true,
        certPem: leaf.certPem,
        intermediatesPem: ca.crossSignedPem ? [ca.crossSignedPem] : [],
      }
    } catch (err) {
      const code = (err as { code?: unknown }).code
      return refuse(typeof code === 'string' ? code : 'PEERMESH_ERR_INTERNAL', (err as Error).message)
    }
  }

  private async serveSign(from: string, bytes: Uint8Array): Promise<Uint8Array> {
    let req: unknown
    try {
      req = unpack(bytes)
    } catch {
      req = undefined
    }
    if (req === null || typeof req !== 'object') {
      return pack({ ok: false, code: 'PEERMESH_ERR_BAD_REQUEST', message: 'malformed sign request' })
    }
    const o = req as Record<string, unknown>
    if (o['op'] === 'rotate') return pack(await this.serveRotate())
    return pack(await this.signFor(from, o['service'], o['csr']))
  }

  private async serveRotate(): Promise<RotateReply> {
    if (this.raft.raft?.isLeader() !== true)
      return { ok: false, code: 'PEERMESH_ERR_NOT_LEADER', message: 'not the raft leader' }
    try {
      return { ok: true, ...(await this.rotateHere({ signal: AbortSignal.timeout(8_000) })) }
    } catch (err) {
      const code = (err as { code?: unknown }).code
      return {
        ok: false,
        code: typeof code === 'string' ? code : 'PEERMESH_ERR_INTERNAL',
        message: (err as Error).message,
      }
    }
  }

  // ---- leaves (agent side) ------------------------------------------------------------------------

  /** Sends a CSR to the leader (or signs here when leading), retrying across leader changes. */
  async requestLeaf(
    service: string,
    csrPem: string,
    options: { signal: AbortSignal },
  ): Promise<LeafResponse> {
    const { signal } = options
    for (;;) {
      signal.throwIfAborted()
      if (this.stopped) throw new LeafSigningRefusedError('PEERMESH_ERR_STOPPING', 'agent stopping')
      const leader = this.raft.leaderId()
      let reply: SignReply | undefined
      if (leader === undefined) reply = undefined
      else if (leader === this.selfId) reply = await this.signFor(leader, service, csrPem)
      else {
        const attempt = AbortSignal.any([signal, AbortSignal.timeout(DEFAULTS.attemptTimeoutMs)])
        try {
          reply = decodeSignReply(
            await this.messenger!.request(leader, pack({ service, csr: csrPem }), { signal: attempt }),
          )
        } catch (err) {
          signal.throwIfAborted()
          this.log?.debug({ err: (err as Error).message }, 'leaf request to the leader failed; retrying')
        }
      }
      if (reply?.ok) return { certPem: reply.certPem, intermediatesPem: reply.intermediatesPem }
      if (reply !== undefined && reply.code !== 'PEERMESH_ERR_NOT_LEADER' && reply.code !== CA_NOT_READY) {
        throw new LeafSigningRefusedError(reply.code, reply.message)
      }
      await pause(DEFAULTS.retryPauseMs, signal)
    }
  }

  /** Starts a rotator for each local service name, stops those of services gone. */
  private readonly syncRotators = (): void => {
    if (this.stopped || this.ctx === undefined || this.ca.active === undefined) return
    const trustDomain = this.ca.active.trustDomain
    const want = new Set(this.servicesOf(this.selfId))
    for (const [name, r] of this.rotators) {
      if (!want.has(name)) {
        r.stop()
        this.rotators.delete(name)
      }
    }
    for (const name of want) {
      if (this.rotators.has(name)) continue
      const r = new LeafCertificateRotator({
        service: name,
        trustDomain,
        requestLeaf: (csr, o) => this.requestLeaf(name, csr, o),
        retry: DEFAULTS.retryBackoff,
      })
      r.on('cert:rotated', ({ current }) => {
        this.stats.leavesRenewed++
        this.log?.info(
          { service: name, serial: current.serialNumber, notAfter: current.notAfter },
          'cert:rotated',
        )
        this.ctx?.events.emit('cert:rotated', { service: name, current })
      })
      r.on('cert:renew-failed', ({ error, attempt, retryInMs }) =>
        this.log?.warn(
          {
            service: name,
            attempt,
            retryInMs,
            code: (error as { code?: unknown }).code,
            err: (error as Error).message,
          },
          'cert:renew-failed',
        ),
      )
      r.on('cert:expired', () => this.log?.error({ service: name }, 'cert:expired'))
      this.rotators.set(name, r)
      r.start()
    }
  }

  /** The current leaf of a local service, if one has been issued (no waiting). */
  currentLeaf(service: string): LeafCredentials | undefined {
    return this.rotators.get(service)?.current()
  }

  /** Trust domain of the active CA root, once the CA exists. */
  activeTrustDomain(): string | undefined {
    return this.ca.active?.trustDomain
  }

  /** Whether this agent hosts `service` (and so keeps a leaf for it). */
  hostsService(service: string): boolean {
    return this.rotators.has(service) || (this.ctx !== undefined && this.isRegisteredOn(this.selfId, service))
  }

  /** The current leaf of a local service, waiting for the first one up to the signal. */
  async leaf(service: string, options: { signal: AbortSignal }): Promise<LeafCredentials | undefined> {
    for (;;) {
      if (this.ca.active !== undefined) this.syncRotators()
      const r = this.rotators.get(service)
      const c = r?.current()
      if (c !== undefined) return c
      if (options.signal.aborted || this.stopped) return undefined
      if (r === undefined) await pause(DEFAULTS.retryPauseMs, options.signal).catch(() => {})
      else {
        await new Promise<void>((resolve) => {
          const off = r.on('cert:rotated', () => done())
          const done = (): void => {
            off()
            options.signal.removeEventListener('abort', done)
            resolve()
          }
          options.signal.addEventListener('abort', done, { once: true })
        })
      }
    }
  }

  // ---- metrics ------------------------------------------------------------------------------------

  private registerMetrics(ctx: AgentContext): void {
    const counter = (name: string, help: string, pick: () => number): void =>
      counterFrom(ctx.metrics, name, help, pick)
    counter(
      'peermesh_connect_leaves_signed_total',
      'Leaf certificates signed here as leader',
      () => this.stats.leavesSigned,
    )
    counter(
      'peermesh_connect_sign_refused_total',
      'Leaf signing requests refused here',
      () => this.stats.signRefused,
    )
    counter(
      'peermesh_connect_policy_rejected_total',
      'Policy entries refused here because their CA signature did not verify (forged or replayed)',
      () => this.raft.store.stats.signatureRejected,
    )
    counter(
      'peermesh_connect_leaves_renewed_total',
      'Leaf certificates obtained for local services',
      () => this.stats.leavesRenewed,
    )
    const self = this
    new Gauge({
      name: 'peermesh_connect_intentions',
      help: 'Intentions in the committed policy state here',
      registers: [ctx.metrics],
      collect() {
        this.set(self.intentionList.length)
      },
    })
    new Gauge({
      name: 'peermesh_connect_ca_key_held',
      help: 'Whether this agent holds a copy of the active CA root key (1 on Raft voters, 0 on learners)',
      registers: [ctx.metrics],
      collect() {
        this.set(self.holdsActiveKey() ? 1 : 0)
      },
    })
    new Gauge({
      name: 'peermesh_connect_ca_roots',
      help: 'Trusted CA roots (2 during a rotation)',
      registers: [ctx.metrics],
      collect() {
        this.set(self.ca.roots.length)
      },
    })
  }
}

function isIntentionName(v: string): boolean {
  return v === '*' || isDnsLabel(v)
}

type RotateReply =
  | { ok: true; activeRootId: string; previousRootId: string }
  | { ok: false; code: string; message: string }

function decodeRotateReply(bytes: Uint8Array): RotateReply | undefined {
  const o = unpackRecord(bytes)
  if (o === undefined) return undefined
  if (o['ok'] === true && typeof o['activeRootId'] === 'string' && typeof o['previousRootId'] === 'string')
    return { ok: true, activeRootId: o['activeRootId'], previousRootId: o['previousRootId'] }
  if (o['ok'] === false && typeof o['code'] === 'string')
    return { ok: false, code: o['code'], message: typeof o['message'] === 'string' ? o['message'] : '' }
  return undefined
}

function decodeSignReply(bytes: Uint8Array): SignReply | undefined {
  const o = unpackRecord(bytes)
  if (o === undefined) return undefined
  if (o['ok'] === true && typeof o['certPem'] === 'string') {
    const inter = Array.isArray(o['intermediatesPem'])
      ? o['intermediatesPem'].filter((x): x is string => typeof x === 'string')
      : []
    return { ok: true, certPem: o['certPem'], intermediatesPem: inter }
  }
  if (o['ok'] === false && typeof o['code'] === 'string') {
    return { ok: false, code: o['code'], message: typeof o['message'] === 'string' ? o['message'] : '' }
  }
  return undefined
}

/** A retry pause that ends early (rejecting) when the signal aborts. */
function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const onAbort = (): void => {
      clearTimeout(t)
      reject(signal.reason)
    }
    const t = setTimeout(() => {
      signal.removeEventListener('abort', onAbort)
      resolve()
    }, ms)
    signal.addEventListener('abort', onAbort, { once: true })
  })
}

export type { CaRootRecord }
