/**
 * The leader's side of the mesh CA (Consul's leader CA manager): creates the root once, rotates
 * it, finishes a rotation once every instance holds a leaf of the new root, and seals the root key
 * to each voter (before autopilot promotes a learner, and to any voter still without a copy).
 * Every change is a compare-and-set `ca.setRoots` through Raft, so racing leaders cannot both win.
 *
 * Custody (issue #12): the key is sealed only to voters that `keyHolderEligible` accepts, in every
 * path that seals (creation, rotation, the grant loop, `grantKeyTo`), and always to this leader
 * (it holds the key already: it created it, or opened its own copy). Being in the Raft
 * configuration is not enough: a configuration change forced on Raft must not hand out the key.
 */
import { randomBytes } from 'node:crypto'
import { type Cancel, type Clock, withTimeout } from '../../common/clock.ts'
import type { Unsubscribe } from '../../common/events.ts'
import type { KeyType } from '../keys/keys.ts'
import { loadCa } from './ca-code.ts'
import {
  type CaState,
  type IssuedLeaf,
  rootRecordOf,
  rotationComplete,
  votersWithoutKey,
  withSealedKey,
} from './ca-state.ts'
import type { CaStateSource, CaStateWriter, ConnectLog, LeaderView, ServiceDirectory } from './components.ts'
import {
  CaNotReadyError,
  CaRotationConflictError,
  KeyGrantFailedError,
  KeyHolderNotEligibleError,
} from './errors.ts'
import type { RootKeys } from './leaf-signer.ts'

/** The roots before and after a rotation this leader started. */
export interface RotationStarted {
  activeRootId: string
  previousRootId: string
}

/** The CA settings, read when used (they come from the agent's config). */
export interface CaSettings {
  /** Trust domain of a CA created here (undefined: a random `<hex>.peermesh`). */
  trustDomain(): string | undefined
  keyType(): KeyType
  leafTtlMs(): number
}

export interface CaManagerComponents {
  ca: CaStateSource
  writer: CaStateWriter
  leader: LeaderView
  keys: RootKeys & { holdsActiveKey(): boolean }
  directory: ServiceDirectory
  /** What this leader signed under which root (LeafSigner). */
  issued: { readonly issuedUnder: ReadonlyMap<string, IssuedLeaf> }
  settings: CaSettings
  clock: Clock
  log: ConnectLog
  /** How often the leader checks that the CA exists and whether a rotation can finish. */
  checkEveryMs?: number
  /**
   * Whether `peerId` may hold a sealed copy of the root key (be a voter that can lead and sign).
   * Default: every voter (ACLs off). With ACLs on the agent passes `enrolledVoterOrFounder`
   * (key-holder-eligibility.ts). This leader is always a holder.
   */
  keyHolderEligible?: (peerId: string) => boolean
}

/** Bounds each CA write and catch-up done by the periodic check. */
const CHECK_STEP_TIMEOUT_MS = 5_000

export class CaManager {
  readonly stats = { keysGranted: 0, keysWithheld: 0 }
  private cancelTimer: Cancel | undefined
  private offLeader: Unsubscribe | undefined
  /** Voters already logged as not eligible to hold the key (once each). */
  private readonly withheldLogged = new Set<string>()
  private busy = false
  private stopped = false

  constructor(private readonly c: CaManagerComponents) {}

  /**
   * Starts the periodic check. Given `leaderChanges` (subscribes to "the known leader or the term
   * changed"), the check's timer runs only while this agent leads: a follower has no CA duty, and a
   * timer of its own would wake it twice a second for nothing. Without it, the timer always runs
   * (and the check returns at once on a follower).
   */
  start(leaderChanges?: (listener: () => void) => Unsubscribe): void {
    if (leaderChanges === undefined) {
      this.runChecks(true)
      return
    }
    this.offLeader = leaderChanges(() => this.runChecks(this.c.leader.isLeader()))
    this.runChecks(this.c.leader.isLeader())
  }

  stop(): void {
    this.stopped = true
    this.offLeader?.()
    this.runChecks(false)
  }

  /** Starts or stops the periodic check. */
  private runChecks(on: boolean): void {
    if (on && !this.stopped) {
      // The leader creates and rotates the CA and signs leaves: its certificate code is loaded now,
      // in the background, so that neither the first check nor the first CSR waits for it.
      loadCa().catch((err: unknown) =>
        this.c.log.error({ err: (err as Error).message }, 'CA certificate code failed to load'),
      )
      this.cancelTimer ??= this.c.clock.setInterval(() => this.check(), this.c.checkEveryMs ?? 500)
    } else {
      this.cancelTimer?.()
      this.cancelTimer = undefined
    }
  }

  /** Runs the leader's CA duties once, unless a run is in progress or this agent does not lead. */
  check(): void {
    if (this.stopped || !this.c.leader.isLeader() || this.busy) return
    this.busy = true
    this.leaderWork()
      .catch((err: unknown) =>
        this.c.log.debug({ err: (err as Error).message }, 'CA check not done; will retry'),
      )
      .finally(() => {
        this.busy = false
      })
  }

  /** Whether `peerId` may be sealed a copy of the key: this leader, or an eligible peer. */
  private mayHoldKey(peerId: string): boolean {
    return peerId === this.c.leader.selfId() || (this.c.keyHolderEligible?.(peerId) ?? true)
  }

  /** The voters of `voters` that may hold the key; the others are logged (once each) and counted. */
  private keyHolders(voters: readonly string[]): string[] {
    return voters.filter((v) => {
      if (this.mayHoldKey(v)) return true
      if (!this.withheldLogged.has(v)) {
        this.withheldLogged.add(v)
        this.stats.keysWithheld++
        this.c.log.warn(
          { peer: v },
          'voter is not eligible to hold the CA key (not an enrolled voter); key withheld',
        )
      }
      return false
    })
  }

  private async leaderWork(): Promise<void> {
    const { leader, keys, log } = this.c
    if (this.c.ca.caState().active === undefined) {
      // A new leader may not have applied every committed entry yet: ReadIndex first.
      await withTimeout(this.c.clock, CHECK_STEP_TIMEOUT_MS, (signal) => leader.catchUp(signal))
      if (this.c.ca.caState().active !== undefined) return
      await this.createCa()
      return
    }
    const voters = leader.voters()
    if (!keys.holdsActiveKey()) {
      // Elected without a copy of the key (promoted before it was sealed to us): hand leadership
      // to a voter that can sign; the grant loop then reaches us from there. First make sure this
      // is not just a new leader that has not applied the grant yet.
      await withTimeout(this.c.clock, CHECK_STEP_TIMEOUT_MS, (signal) => leader.catchUp(signal))
      const active = this.c.ca.caState().active
      if (active === undefined || keys.holdsActiveKey()) return
      const heir = voters.find(
        (v) => v !== leader.selfId() && active.sealedKeys[v] !== undefined && this.mayHoldKey(v),
      )
      log.warn({ heir }, 'leading without a copy of the CA key; transferring leadership')
      if (heir !== undefined) leader.transferLeadership(heir)
      return
    }
    const state = this.c.ca.caState()
    const missing = this.keyHolders(voters).filter((v) =>
      state.roots.some((r) => votersWithoutKey(r, [v]).length > 0),
    )
    if (missing.length > 0)
      await withTimeout(this.c.clock, CHECK_STEP_TIMEOUT_MS, (signal) =>
        this.grantKeys(missing, state, signal),
      )
    if (this.c.ca.caState().roots.length > 1) await this.maybeFinishRotation()
  }

  private async createCa(): Promise<void> {
    const now = this.c.clock.wallNow()
    const trustDomain = this.c.settings.trustDomain() ?? `${randomBytes(4).toString('hex')}.peermesh`
    const { createRootCa } = await loadCa()
    const root = await createRootCa({ trustDomain, keyType: this.c.settings.keyType(), nowMs: now })
    const result = await withTimeout(this.c.clock, CHECK_STEP_TIMEOUT_MS, (signal) =>
      this.c.writer.setRoots(
        {
          roots: [rootRecordOf(root, now, this.keyHolders(this.c.leader.voters()))],
          activeRootId: root.id,
          casIndex: 0,
        },
        { signal },
      ),
    )
    if (result.ok)
      this.c.log.info({ rootId: root.id, trustDomain: root.trustDomain }, 'created the mesh CA root')
    else this.c.log.info({ code: result.code }, 'CA root already created by another leader')
  }

  /**
   * Seals every trusted root's key to `peerId` (awaited by autopilot before it makes `peerId` a
   * voter). Resolves once committed, or at once when `peerId` already has a copy or there is no CA.
   * Rejects with `KeyHolderNotEligibleError` when `peerId` may not hold the key (autopilot then does
   * not promote it).
   */
  async grantKeyTo(peerId: string, signal: AbortSignal): Promise<void> {
    if (!this.mayHoldKey(peerId))
      throw new KeyHolderNotEligibleError(
        `${peerId} is not eligible to hold the CA key (not an enrolled voter)`,
      )
    const state = this.c.ca.caState()
    if (state.active === undefined) return
    if (state.roots.every((r) => r.sealedKeys[peerId] !== undefined)) return
    await this.grantKeys([peerId], state, signal)
  }

  private async grantKeys(peers: string[], state: CaState, signal: AbortSignal): Promise<void> {
    // Every caller filters already; checked again here, where the key is sealed.
    const refused = peers.filter((p) => !this.mayHoldKey(p))
    if (refused.length > 0)
      throw new KeyHolderNotEligibleError(`not eligible to hold the CA key: ${refused.join(', ')}`)
    const roots = state.roots.map((r) => {
      const ca = this.c.keys.signingRoot(r)
      if (ca === undefined) throw new CaNotReadyError(`this agent holds no copy of root ${r.id}'s key`)
      return withSealedKey(r, ca.keyPem, peers)
    })
    const result = await this.c.writer.setRoots(
      { roots, activeRootId: state.active!.id, casIndex: state.modifyIndex },
      { signal },
    )
    if (!result.ok)
      throw new KeyGrantFailedError(`granting the CA key failed: ${result.code} ${result.message}`)
    this.stats.keysGranted += peers.length
    this.c.log.info({ peers, roots: roots.length }, 'CA key sealed to voters')
  }

  /**
   * Starts a root rotation on this leader, which holds the old root's key: a new root, cross-signed
   * by the active one, becomes active; both stay trusted until every leaf is re-issued.
   */
  async rotate(options: { signal: AbortSignal }): Promise<RotationStarted> {
    await this.c.leader.catchUp(options.signal)
    const state = this.c.ca.caState()
    const old = this.c.keys.signingRoot(state.active)
    if (state.active === undefined) throw new CaNotReadyError('the CA has not been created yet')
    if (old === undefined) throw new CaNotReadyError('this leader holds no copy of the CA key yet')
    if (state.roots.length > 1) {
      throw new CaRotationConflictError(
        'a root rotation is still in progress (two roots trusted); retry once it completes',
      )
    }
    const now = this.c.clock.wallNow()
    const { createRootCa, crossSign } = await loadCa()
    const next = await createRootCa({
      trustDomain: old.trustDomain,
      keyType: this.c.settings.keyType(),
      nowMs: now,
    })
    const cross = await crossSign(old, next)
    const result = await this.c.writer.setRoots(
      {
        roots: [
          state.active,
          rootRecordOf(next, now, this.keyHolders(this.c.leader.voters()), cross.certPem),
        ],
        activeRootId: next.id,
        casIndex: state.modifyIndex,
      },
      options,
    )
    if (!result.ok) throw new CaRotationConflictError(`the CA changed meanwhile: ${result.message}`)
    this.c.log.info({ from: old.id, to: next.id }, 'CA root rotation started')
    return { activeRootId: next.id, previousRootId: old.id }
  }

  private async maybeFinishRotation(): Promise<void> {
    const state = this.c.ca.caState()
    const active = state.active
    if (active === undefined) return
    const required: string[] = []
    for (const peerId of this.c.directory.aliveMembers())
      for (const svc of this.c.directory.servicesOf(peerId)) required.push(`${peerId}/${svc}`)
    const done = rotationComplete({
      active,
      required,
      issuedUnder: this.c.issued.issuedUnder,
      leafTtlMs: this.c.settings.leafTtlMs(),
      nowMs: this.c.clock.wallNow(),
    })
    if (!done) return
    const { crossSignedPem: _dropped, ...kept } = active
    const result = await withTimeout(this.c.clock, CHECK_STEP_TIMEOUT_MS, (signal) =>
      this.c.writer.setRoots(
        { roots: [kept], activeRootId: active.id, casIndex: state.modifyIndex },
        { signal },
      ),
    )
    if (result.ok) this.c.log.info({ active: active.id }, 'CA root rotation complete; old root dropped')
  }
}
