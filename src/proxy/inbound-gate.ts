/**
 * The request gate of one local service's inbound (`request-gate.ts`): L7 intentions, then local
 * rate limits. Built by the sidecar per local service; the intentions are read per request from
 * the current committed policy (so a change applies to the next request on every open
 * connection), and `setRateLimits` swaps the limits when service-defaults change.
 *
 * Order: a request denied by intention is refused before it takes a rate-limit token, so denied
 * traffic never uses up an allowed caller's budget.
 */
import type { RateLimits } from '../raft/policy/config-entries.ts'
import type { IntentionIndex, Intention } from './intentions.ts'
import { type CompiledPermission, compilePermissions, decidePermissions } from './l7-permissions.ts'
import { RateLimiter } from './rate-limit.ts'
import type { GateDecision, GateRequest, RequestGate } from './request-gate.ts'

/** gRPC status codes the gate answers with. */
const GRPC_PERMISSION_DENIED = 7
const GRPC_RESOURCE_EXHAUSTED = 8

const DENY_INTENTION: GateDecision = Object.freeze({
  allow: false,
  reason: 'intention',
  status: 403,
  grpcStatus: GRPC_PERMISSION_DENIED,
})
const DENY_RATE: GateDecision = Object.freeze({
  allow: false,
  reason: 'rate-limit',
  status: 429,
  grpcStatus: GRPC_RESOURCE_EXHAUSTED,
})
const ALLOW: GateDecision = Object.freeze({ allow: true })

export interface InboundGateInit {
  /** The local service: the destination of every decision. */
  service: string
  /** The intentions in force now; read on every request. */
  intentions: () => IntentionIndex
  /** `RateLimits` of the service's service-defaults, if any. */
  rateLimits?: RateLimits | undefined
  /** Milliseconds, monotonic (the rate limiter's clock). */
  now: () => number
  /** Rate-limit buckets kept at most (see `rate-limit.ts`). */
  maxBuckets?: number
}

export class InboundGate implements RequestGate {
  readonly service: string
  private readonly intentions: () => IntentionIndex
  private readonly now: () => number
  private readonly maxBuckets: number | undefined
  private limiter: RateLimiter | undefined
  private limitsKey = ''
  /** Compiled permissions per (frozen) intention of the index. */
  /** Compiled permissions per matched intention; null: they do not compile (the intention denies). */
  private readonly compiled = new WeakMap<Intention, CompiledPermission[] | null>()

  constructor(init: InboundGateInit) {
    this.service = init.service
    this.intentions = init.intentions
    this.now = init.now
    this.maxBuckets = init.maxBuckets
    this.setRateLimits(init.rateLimits)
  }

  /**
   * Puts new rate limits in force. Unchanged limits keep their buckets (a policy change elsewhere
   * must not hand every caller a fresh burst).
   */
  setRateLimits(limits: RateLimits | undefined): void {
    const key = limits === undefined ? '' : JSON.stringify(limits)
    if (key === this.limitsKey) return
    this.limitsKey = key
    const limiter =
      limits === undefined
        ? undefined
        : new RateLimiter({
            limits,
            now: this.now,
            ...(this.maxBuckets !== undefined ? { maxBuckets: this.maxBuckets } : {}),
          })
    this.limiter = limiter?.active === true ? limiter : undefined
  }

  /** The decision for one request: intentions first, then rate limits. */
  check(request: GateRequest): GateDecision {
    if (!this.allowedByIntention(request)) return DENY_INTENTION
    if (this.limiter !== undefined && !this.limiter.take(request.source, request.path)) return DENY_RATE
    return ALLOW
  }

  private allowedByIntention(request: GateRequest): boolean {
    const index = this.intentions()
    let d: ReturnType<IntentionIndex['decide']>
    try {
      d = index.decide(request.source, this.service)
    } catch {
      return false // a source that is not a service name: fail closed
    }
    if (d.permissions === undefined || d.matched === undefined) return d.action === 'allow'
    let compiled = this.compiled.get(d.matched)
    if (compiled === undefined) {
      try {
        compiled = compilePermissions(d.permissions)
      } catch {
        // Validated on write; permissions that do not compile here deny (fail closed), never
        // fall to a default that may allow.
        compiled = null
      }
      this.compiled.set(d.matched, compiled)
    }
    if (compiled === null) return false
    return decidePermissions(compiled, request, index.defaultAction) === 'allow'
  }
}
