import type { KeyObject } from 'node:crypto'
import type { Logger } from 'pino'
import { type PublishEntitlement, ServiceNotEntitledError } from '../../acl/entitlement.ts'
import { type Clock, systemClock, withTimeout } from '../../common/clock.ts'
import { type Events, TypedEmitter, type Unsubscribe } from '../../common/events.ts'
import { DEFAULT_LEAF_TTL_MS } from '../../identity/ca/constants.ts'
import { CaManager, type RotationStarted } from '../../identity/connect/ca-manager.ts'
import type { CaState } from '../../identity/connect/ca-state.ts'
import type { ConnectLog, LeaderView } from '../../identity/connect/components.ts'
import { refusalError } from '../../identity/connect/errors.ts'
import { KeyCustody } from '../../identity/connect/key-custody.ts'
import { LeafManager } from '../../identity/connect/leaf-manager.ts'
import type { LeafCredentials, LeafResponse } from '../../identity/connect/leaf-rotator.ts'
import { LeafSigner, type SignReply } from '../../identity/connect/leaf-signer.ts'
import type { KeyType } from '../../identity/keys/keys.ts'
import type { IntentionIndex } from '../../proxy/intentions.ts'
import type { StoredIntention } from '../../raft/policy/intention.ts'
import type { PolicyCommand, PolicyResult } from '../../raft/policy/policy-commands.ts'
import { signPolicyEntry } from '../../raft/policy/policy-signing.ts'
import type { AgentContext, AgentModule } from '../agent/agent.ts'
import { type ConnectApi, registerConnectRoutes } from '../api/connect-routes.ts'
import { need } from '../../acl/index.ts'
import {
  type ConnectCatalog,
  type ConnectRaft,
  catalogDirectory,
  entitledDirectory,
  raftCaWriter,
  raftLeaderView,
} from './adapters.ts'
import { registerConnectMetrics } from './connect-metrics.ts'
import { ConnectRpc } from './connect-rpc.ts'
import type { ConnectEvents } from './events.ts'
import { IntentionView } from './intention-view.ts'
import { ConnectMeshSecurity } from './mesh-security.ts'
import { PolicyIndexWaiters } from './policy-waiters.ts'

export { CONNECT_PROTOCOL, CONNECT_SIGN_PROTOCOL } from './connect-rpc.ts'
export type { IntentionChange } from './events.ts'
export { DEFAULT_ACTION_ENTRY } from './intention-view.ts'

export interface ConnectModuleOptions {
  /** Trust domain for a CA created here (default: config, else random `<hex>.peermesh`). */
  trustDomain?: string
  caKeyType?: KeyType
  /** Leaf lifetime signed by this agent when it leads (default: config, else 72 h). */
  leafTtlMs?: number
  /** Time and timers (default `systemClock`); tests inject a virtual one. */
  clock?: Clock
  /** Leaf signings per second on the leader (default 50, Consul's csr_max_per_second). */
  signingRatePerSecond?: number
  /** This agent's peer id when used without `start()` (tests). */
  selfId?: string
  /** This agent's node key, which opens its sealed copy of the root key (default: the agent's). */
  nodeKey?: KeyObject
  /**
   * Custody of the root key, when it is built before this module (the agent builds it first and
   * hands it to the Raft module as its PolicySigner); by default built here.
   */
  custody?: KeyCustody
  /**
   * Who may publish which service (issue #12), on the committed ACL state: as leader, a CSR for a
   * service its requester may not publish is refused (PEERMESH_ERR_PERMISSION_DENIED). Absent:
   * every registered service gets its leaf (as with ACLs off).
   */
  entitlement?: Pick<PublishEntitlement, 'mayPublish'>
  /**
   * Who may hold a sealed copy of the CA root key besides the leader (issue #12): with ACLs on,
   * voter-eligible enrolled voters and the founders (key-holder-eligibility.ts). Absent: every voter.
   */
  keyHolderEligible?: (peerId: string) => boolean
}

/** Longest a leader waits to catch up (ReadIndex) before refusing a CSR as not entitled. */
const ENTITLEMENT_CATCH_UP_MS = 2_000
/** Denials logged at warn, at most (then debug): bounded memory whatever a flood of peers sends. */
const MAX_DENIALS_REMEMBERED = 1_000

/**
 * Service identity and authorization for the agent (Consul Connect's CA, leaf and intention
 * endpoints), on top of the Raft policy store. This module wires the identity layer's pieces to
 * the Raft module and the catalog:
 * - `KeyCustody` opens this agent's sealed copy of the root key and signs the policy entries and
 *   snapshots it sends as leader;
 * - `CaManager` (leader) creates and rotates the CA and seals its key to voters;
 * - `LeafSigner` (leader) signs leaf CSRs sent over the signing RPC (`ConnectRpc`);
 * - `LeafManager` keeps a leaf per local service;
 * - `IntentionView` and `PolicyIndexWaiters` serve intentions and blocking queries from the
 *   committed state here.
 * Why policy entries are signed and who holds the root key: README, "Mesh identity and intentions",
 * key-custody.ts and src/raft/policy/policy-signing.ts.
 */
export class ConnectModule implements AgentModule, ConnectApi {
  readonly name = 'connect'
  readonly custody: KeyCustody
  readonly caManager: CaManager
  readonly signer: LeafSigner
  readonly leaves: LeafManager
  /** The sidecars' view (certificates, intentions, splits); released by `stop()`. */
  readonly meshSecurity: ConnectMeshSecurity
  private readonly rpc: ConnectRpc
  private readonly view: IntentionView
  private readonly waiters: PolicyIndexWaiters
  /** A failing listener is logged, never thrown into the apply path (as before the typed events). */
  private readonly emitter = new TypedEmitter<ConnectEvents>((err) =>
    this.log?.warn({ err: (err as Error).message }, 'connect event listener failed'),
  )
  private readonly clock: Clock
  private ctx?: AgentContext
  private log?: Logger
  private readonly subscriptions: Unsubscribe[] = []
  private caSeen: CaState = { roots: [], active: undefined, modifyIndex: 0 }
  private stopped = false
  private readonly leader: LeaderView
  /** CSRs refused here as leader because the requester may not publish the service. */
  readonly stats = { signDenied: 0 }
  /** (requester, service) pairs whose denial was logged at warn. */
  private readonly deniedLogged = new Set<string>()

  constructor(
    private readonly raft: ConnectRaft,
    private readonly catalog: { readonly catalog: ConnectCatalog },
    private readonly options: ConnectModuleOptions = {},
  ) {
    const clock = options.clock ?? systemClock
    this.clock = clock
    const store = raft.store
    const log = this.lazyLog()
    const selfId = (): string => this.selfId
    const leader = raftLeaderView(raft, selfId)
    this.leader = leader
    const directory = catalogDirectory(() => catalog.catalog)
    const publishable =
      options.entitlement === undefined ? directory : entitledDirectory(directory, options.entitlement)
    const leafTtlMs = (): number => options.leafTtlMs ?? this.ctx?.config.leafTtlMs ?? DEFAULT_LEAF_TTL_MS
    this.custody =
      options.custody ??
      new KeyCustody({
        ca: store,
        identity: () => {
          const id = this.ctx?.identity.id ?? options.selfId
          const key = options.nodeKey ?? this.ctx?.identity.signingKey
          return id === undefined || key === undefined ? undefined : { id, signingKey: key }
        },
        signEntry: signPolicyEntry,
      })
    this.signer = new LeafSigner({
      ca: store,
      keys: this.custody,
      leader,
      directory,
      clock,
      leafTtlMs,
      ...(options.signingRatePerSecond !== undefined
        ? { signingRatePerSecond: options.signingRatePerSecond }
        : {}),
    })
    this.caManager = new CaManager({
      ca: store,
      writer: raftCaWriter(raft),
      leader,
      keys: this.custody,
      // A rotation waits for the leaves of instances that may have one, not for refused ones.
      directory: publishable,
      issued: this.signer,
      ...(options.keyHolderEligible !== undefined ? { keyHolderEligible: options.keyHolderEligible } : {}),
      settings: {
        trustDomain: () => options.trustDomain ?? this.ctx?.config.trustDomain,
        keyType: () => options.caKeyType ?? this.ctx?.config.caKeyType ?? 'ed25519',
        leafTtlMs,
      },
      clock,
      log,
    })
    this.rpc = new ConnectRpc({
      leader: { ...leader, onLeaderChange: (l) => raft.raft?.on('leader:change', l) ?? (() => {}) },
      clock,
      handlers: {
        signFor: (requester, service, csr) => this.signFor(requester, service, csr),
        rotate: (o) => this.caManager.rotate(o),
        authorizeRotate: (token) => raft.authorizeRequest?.(token, need.operatorWrite()),
      },
    })
    this.leaves = new LeafManager({ channel: this.rpc, ca: store, directory, selfId, clock, log })
    this.view = new IntentionView(store)
    this.waiters = new PolicyIndexWaiters(clock)
    this.meshSecurity = new ConnectMeshSecurity(this, store)
  }

  /** Connect's typed events: `ca:change`, `cert:rotated`, `intention:change`. */
  get events(): Events<ConnectEvents> {
    return this.emitter
  }

  // ---- lifecycle ----------------------------------------------------------------------------------

  async start(ctx: AgentContext): Promise<void> {
    this.ctx = ctx
    this.log = ctx.log.child({ component: 'connect' })
    await this.rpc.start(ctx.host, this.log)
    const store = this.raft.store
    this.subscriptions.push(store.onChange(() => this.refreshState()))
    this.refreshState()
    const offLeader = this.raft.raft?.on('leader:change', () => this.onLeaderChange())
    if (offLeader !== undefined) this.subscriptions.push(offLeader)
    this.subscriptions.push(
      this.leaves.events.on('cert:rotated', (e) => this.emitter.emit('cert:rotated', e)),
      this.onCatalogChange(),
      // Also announced on the agent's bus, where they were before connect had its own events.
      this.emitter.on('ca:change', (e) => ctx.events.emit('ca:change', e)),
      this.emitter.on('cert:rotated', (e) => ctx.events.emit('cert:rotated', e)),
      this.emitter.on('intention:change', (e) => ctx.events.emit('intention:change', e)),
    )
    // The CA checks run only while this agent leads (no timer on followers).
    const node = this.raft.raft
    this.caManager.start(node === undefined ? undefined : (listener) => node.on('leader:change', listener))
    this.leaves.start()
    registerConnectRoutes(ctx.http, this)
    registerConnectMetrics(ctx.metrics, {
      leavesSigned: () => this.signer.stats.leavesSigned,
      signRefused: () => this.signer.stats.signRefused + this.stats.signDenied,
      signDenied: () => this.stats.signDenied,
      policyRejected: () => store.stats.signatureRejected,
      leavesRenewed: () => this.leaves.stats.leavesRenewed,
      intentions: () => this.view.intentions().length,
      caKeyHeld: () => this.custody.holdsActiveKey(),
      caRoots: () => store.caState().roots.length,
    })
  }

  async stop(): Promise<void> {
    if (this.stopped) return
    this.stopped = true
    this.caManager.stop()
    this.meshSecurity.stop()
    for (const off of this.subscriptions.splice(0)) off()
    this.leaves.stop()
    this.waiters.close()
    await this.rpc.stop()
  }

  get selfId(): string {
    const id = this.ctx?.identity.id ?? this.options.selfId
    if (id === undefined) throw new Error('connect module not started')
    return id
  }

  private onCatalogChange(): Unsubscribe {
    const catalog = this.catalog.catalog
    const sync = (): void => this.leaves.sync()
    return catalog.on('catalog:change', sync)
  }

  /**
   * A new leader does not know which leaves its predecessor re-issued under the new root (that is
   * not in Raft), so during a rotation every agent asks again; else the old root would stay trusted
   * until a whole leaf lifetime had passed.
   */
  private onLeaderChange(): void {
    this.caManager.check()
    if (this.raft.store.caState().roots.length > 1) this.leaves.renewAll()
  }

  // ---- committed state ----------------------------------------------------------------------------

  /** Updates the views of the policy store and announces changes; runs after each applied change. */
  refreshState(): void {
    const store = this.raft.store
    const ca = store.caState()
    if (ca.modifyIndex !== this.caSeen.modifyIndex) {
      const prevActive = this.caSeen.active?.id
      this.caSeen = ca
      this.emitter.emit('ca:change', { activeRootId: ca.active?.id, roots: ca.roots.length })
      if (prevActive !== undefined && ca.active?.id !== prevActive) {
        this.log?.info({ from: prevActive, to: ca.active?.id }, 'CA root rotated; renewing leaves')
        this.leaves.renewAll()
      }
      if (prevActive === undefined && ca.active !== undefined) this.leaves.sync()
    }
    const change = this.view.refresh()
    if (change !== undefined) this.emitter.emit('intention:change', change)
    this.waiters.advance(store.index)
  }

  /** Raft index of the policy state last applied here. */
  get stateIndex(): number {
    return this.waiters.index
  }

  waitForChange(after: number, waitMs: number, signal?: AbortSignal): Promise<number> {
    return this.waiters.wait(after, waitMs, signal)
  }

  intentions(): StoredIntention[] {
    return this.view.intentions()
  }

  intentionIndex(): IntentionIndex {
    return this.view.intentionIndex()
  }

  getIntention(source: string, destination: string): StoredIntention | undefined {
    return this.raft.store.getIntention(source, destination)
  }

  async write(cmd: PolicyCommand, options: { signal: AbortSignal; token?: string }): Promise<PolicyResult> {
    return (await this.raft.write(cmd, options)).result
  }

  caState(): CaState {
    return this.raft.store.caState()
  }

  /** Trusted roots (PEM): during a rotation, old and new. */
  trustedRootsPem(): string[] {
    return this.caState().roots.map((r) => r.certPem)
  }

  /** Trust domain of the active CA root, once the CA exists. */
  activeTrustDomain(): string | undefined {
    return this.caState().active?.trustDomain
  }

  holdsActiveKey(): boolean {
    return this.custody.holdsActiveKey()
  }

  // ---- CA rotation and leaves ---------------------------------------------------------------------

  /**
   * Starts a root rotation from any agent. Only a voter holds the old root's key, which
   * cross-signs the new root: a follower asks the leader, again across leader changes.
   */
  async rotate(options: { signal: AbortSignal; token?: string }): Promise<RotationStarted> {
    const reply = await this.rpc.rotate(options)
    if (!reply.ok) throw refusalError(reply.code, reply.message)
    return { activeRootId: reply.activeRootId, previousRootId: reply.previousRootId }
  }

  /**
   * Signs a CSR as leader (see LeafSigner.signFor), first refusing a service the requester may not
   * publish (issue #12). A "no" is checked again after catching up with the committed state, so a
   * new leader, or a grant committed a moment ago, does not refuse a legitimate request.
   */
  async signFor(requester: string, service: unknown, csrPem: unknown): Promise<SignReply> {
    const entitlement = this.options.entitlement
    if (entitlement !== undefined && typeof service === 'string' && this.leader.isLeader()) {
      if (!entitlement.mayPublish(requester, service)) {
        try {
          await withTimeout(this.clock, ENTITLEMENT_CATCH_UP_MS, (signal) => this.leader.catchUp(signal))
        } catch {
          // Not caught up: decide on what is applied here; the requester asks again later.
        }
        if (!entitlement.mayPublish(requester, service)) {
          this.stats.signDenied++
          this.logDenied(requester, service)
          return {
            ok: false,
            code: ServiceNotEntitledError.code,
            message: `agent ${requester} may not publish service ${service}: neither its enrollment nor a grant gives it service:write`,
          }
        }
      }
    }
    return this.signer.signFor(requester, service, csrPem)
  }

  requestLeaf(service: string, csrPem: string, options: { signal: AbortSignal }): Promise<LeafResponse> {
    return this.leaves.requestLeaf(service, csrPem, options)
  }

  /** The current leaf of a local service, if one has been issued (no waiting). */
  currentLeaf(service: string): LeafCredentials | undefined {
    return this.leaves.current(service)
  }

  /** Whether this agent may publish `service` (issue #12): the leader would sign its leaf. */
  mayPublishHere(service: string): boolean {
    return this.options.entitlement?.mayPublish(this.selfId, service) ?? true
  }

  hostsService(service: string): boolean {
    return this.leaves.hostsService(service)
  }

  /** The current leaf of a local service, waiting for the first one up to the signal. */
  leaf(service: string, options: { signal: AbortSignal }): Promise<LeafCredentials | undefined> {
    return this.leaves.leaf(service, options)
  }

  /** Warns of the first denial of each (requester, service), at debug after: refusals can be a flood. */
  private logDenied(requester: string, service: string): void {
    const key = `${requester}/${service}`
    const first = !this.deniedLogged.has(key)
    if (first && this.deniedLogged.size < MAX_DENIALS_REMEMBERED) this.deniedLogged.add(key)
    const line = { requester, service, denied: this.stats.signDenied }
    const msg = 'leaf request refused: the requester may not publish this service'
    if (first) this.log?.warn(line, msg)
    else this.log?.debug(line, msg)
  }

  /** Logs through the agent's logger once started; silent before. */
  private lazyLog(): ConnectLog {
    return {
      debug: (o, m) => this.log?.debug(o, m),
      info: (o, m) => this.log?.info(o, m),
      warn: (o, m) => this.log?.warn(o, m),
      error: (o, m) => this.log?.error(o, m),
    }
  }
}
