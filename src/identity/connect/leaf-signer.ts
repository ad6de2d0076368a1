/**
 * The leader's side of leaf issuance (Consul's leaf signer): serves the CSRs agents send for their
 * services. It refuses unless this agent leads, has caught up with the committed state in this
 * term, the CA exists and this agent holds its key, the requester registers the service, and the
 * rate limit allows; `signLeaf` checks the CSR itself.
 */
import { type Clock, withTimeout } from '../../common/clock.ts'
import { errorCode, PeermeshError } from '../../common/errors.ts'
import { CsrMalformedError, InvalidServiceNameError, LeafSigningRateLimitedError } from '../ca/errors.ts'
import { isDnsLabel } from '../ca/spiffe.ts'
import { loadCa } from './ca-code.ts'
import { type CaRootRecord, type IssuedLeaf, recordIssued } from './ca-state.ts'
import type { CaStateSource, LeaderView, ServiceDirectory } from './components.ts'
import { CaNotReadyError, NotSigningLeaderError, ServiceNotRegisteredError } from './errors.ts'
import type { SigningRoot } from './key-custody.ts'
import { LeafSigningRateLimiter } from './leaf-signing-rate-limiter.ts'

/** The answer to one signing request: the leaf and the intermediates to present, or a coded refusal. */
export type SignReply =
  | { ok: true; certPem: string; intermediatesPem: string[] }
  | { ok: false; code: string; message: string }

/** Opens the root keys this agent holds (KeyCustody). */
export interface RootKeys {
  signingRoot(record: CaRootRecord | undefined): SigningRoot | undefined
}

export interface LeafSignerComponents {
  ca: CaStateSource
  keys: RootKeys
  leader: Pick<LeaderView, 'isLeader' | 'term' | 'catchUp'>
  directory: Pick<ServiceDirectory, 'isRegisteredOn'>
  clock: Clock
  /** Lifetime of the leaves signed here (read at each signing: the agent's config). */
  leafTtlMs: () => number
  /** Leaf signings per second (default 50, Consul's csr_max_per_second). */
  signingRatePerSecond?: number
  /** Longest wait for the ReadIndex that a new leader does before its first signing. */
  catchUpTimeoutMs?: number
}

export class LeafSigner {
  readonly stats = { leavesSigned: 0, signRefused: 0 }
  private readonly limiter: LeafSigningRateLimiter
  /** When this leader first signed each instance (`<peerId>/<service>`) under its current root. */
  private readonly issued = new Map<string, IssuedLeaf>()
  /** The Raft term in which this leader caught up with the committed state. */
  private readyTerm = -1

  constructor(private readonly c: LeafSignerComponents) {
    this.limiter = new LeafSigningRateLimiter({
      nowMs: c.clock.wallNow(),
      ...(c.signingRatePerSecond !== undefined ? { ratePerSecond: c.signingRatePerSecond } : {}),
    })
  }

  /** What this leader signed, for deciding when a rotation is complete (see `rotationComplete`). */
  get issuedUnder(): ReadonlyMap<string, IssuedLeaf> {
    return this.issued
  }

  /**
   * Signs a CSR for `service` on behalf of agent `requester` (its peer id, authenticated by the
   * transport). Inputs come off the wire: anything malformed is a coded refusal, never a throw.
   */
  async signFor(requester: string, service: unknown, csrPem: unknown): Promise<SignReply> {
    const refuse = (code: string, message: string): SignReply => {
      this.stats.signRefused++
      return { ok: false, code, message }
    }
    if (typeof service !== 'string' || !isDnsLabel(service))
      return refuse(InvalidServiceNameError.code, 'service: not a service name')
    if (typeof csrPem !== 'string') return refuse(CsrMalformedError.code, 'csr: expected a PEM string')
    const { leader } = this.c
    if (!leader.isLeader()) return refuse(NotSigningLeaderError.code, 'not the raft leader')
    // A new leader first applies everything committed before its term (a ReadIndex waits for
    // that), so it never signs under a root that a rotation it has not applied yet replaced.
    const term = leader.term()
    if (this.readyTerm !== term) {
      try {
        await withTimeout(this.c.clock, this.c.catchUpTimeoutMs ?? 2_000, (signal) => leader.catchUp(signal))
      } catch {
        return refuse(CaNotReadyError.code, 'the new leader has not caught up with the committed state yet')
      }
      this.readyTerm = term
    }
    const active = this.c.ca.caState().active
    if (active === undefined) return refuse(CaNotReadyError.code, 'the CA is not created yet')
    const ca = this.c.keys.signingRoot(active)
    if (ca === undefined) return refuse(CaNotReadyError.code, 'this leader holds no copy of the CA key yet')
    if (!this.c.directory.isRegisteredOn(requester, service)) {
      return refuse(
        ServiceNotRegisteredError.code,
        `service ${service} is not registered on agent ${requester}`,
      )
    }
    const decision = this.limiter.tryAcquire(this.c.clock.wallNow())
    if (!decision.ok)
      return refuse(LeafSigningRateLimitedError.code, `rate limited; retry in ${decision.retryAfterMs} ms`)
    try {
      const { signLeaf } = await loadCa()
      const leaf = await signLeaf(ca, csrPem, {
        service,
        trustDomain: ca.trustDomain,
        ttlMs: this.c.leafTtlMs(),
        nowMs: this.c.clock.wallNow(),
      })
      this.stats.leavesSigned++
      recordIssued(this.issued, `${requester}/${service}`, leaf.issuerId, this.c.clock.wallNow())
      return {
        ok: true,
        certPem: leaf.certPem,
        intermediatesPem: ca.crossSignedPem ? [ca.crossSignedPem] : [],
      }
    } catch (err) {
      return refuse(errorCode(err) ?? PeermeshError.code, (err as Error).message)
    }
  }
}
