/**
 * Leaf certificate rotation: renew well before expiry, keep serving the current certificate while
 * renewal fails, retry with capped, jittered exponential backoff.
 *
 * `renewAt` and `retryDelayMs` are pure. `LeafCertificateRotator` does no I/O of its own: the clock
 * and timers, the random source and the leaf request (`requestLeaf`, normally an RPC to the CA
 * holder) are injected, so tests drive it with a virtual clock. A fresh key is made for every
 * renewal, locally; only the CSR leaves the process.
 */
import { type Cancel, type Clock, systemClock } from '../../common/clock.ts'
import { TypedEmitter, type Unsubscribe } from '../../common/events.ts'
import { parseCertificatePem, uriSans } from '../ca/cert-info.ts'
import { InvalidCaOptionError, LeafRequestTimeoutError, LeafResponseInvalidError } from '../ca/errors.ts'
import { type KeyType, publicKeySpkiOfPrivatePem } from '../keys/keys.ts'
import { type CreateLeafKeyAndCsrOptions, createLeafKeyAndCsr, type LeafKeyAndCsr } from '../ca/leaf.ts'
import { serviceSpiffeId } from '../ca/spiffe.ts'
import { clamp01, DEFAULT_RETRY_BACKOFF, type RetryBackoff, retryDelayMs } from './retry-backoff.ts'

export { DEFAULT_RETRY_BACKOFF, type RetryBackoff, retryDelayMs }

/** Renewal happens at a uniformly random point in this fraction of the lifetime (Consul: 60–90%). */
export const RENEW_WINDOW_START = 0.6
export const RENEW_WINDOW_END = 0.9

/**
 * When to renew a certificate valid from `notBefore` to `notAfter` (ms): a random point between
 * 60% and 90% of its lifetime. The jitter spreads the renewals of leaves issued together (e.g.
 * all of them after a root rotation) so they do not hit the CA at the same moment.
 */
export function renewAt(notBefore: number, notAfter: number, rng: () => number): number {
  if (!Number.isFinite(notBefore) || !Number.isFinite(notAfter) || notAfter <= notBefore) {
    throw new InvalidCaOptionError('notAfter', 'must be a finite time after notBefore')
  }
  const u = clamp01(rng())
  const fraction = RENEW_WINDOW_START + (RENEW_WINDOW_END - RENEW_WINDOW_START) * u
  return notBefore + Math.floor((notAfter - notBefore) * fraction)
}

/** Default per-attempt timeout for `requestLeaf`: longer than a Raft election plus a signing. */
export const DEFAULT_LEAF_REQUEST_TIMEOUT_MS = 30_000

/** Node timers cannot wait longer than 2^31-1 ms; longer waits are done in steps. */
const MAX_TIMER_DELAY_MS = 2 ** 31 - 1

/** What `requestLeaf` returns: the leaf PEM, optionally with intermediates to present alongside. */
export type LeafResponse = string | { certPem: string; intermediatesPem?: string[] }

export type RequestLeaf = (csrPem: string, options: { signal: AbortSignal }) => Promise<LeafResponse>

/** A usable leaf: key, certificate and what a TLS endpoint needs to present. */
export interface LeafCredentials {
  keyPem: string
  certPem: string
  /** Intermediates to send after the leaf (e.g. the cross-signed new root during a rotation). */
  intermediatesPem: string[]
  spiffeId: string
  serialNumber: string
  notBefore: number
  notAfter: number
}

export interface LeafCertificateRotatorEvents {
  /** A new certificate is in place. */
  'cert:rotated': { current: LeafCredentials; previous: LeafCredentials | undefined }
  /** An attempt failed; the previous certificate (if still valid) keeps serving. */
  'cert:renew-failed': {
    error: unknown
    /** Consecutive failures so far, 1-based. */
    attempt: number
    retryInMs: number
    current: LeafCredentials | undefined
  }
  /** The current certificate passed its notAfter without a replacement. */
  'cert:expired': { expired: LeafCredentials }
}

export interface LeafCertificateRotatorInit {
  service: string
  trustDomain: string
  /** Key type for new keys. Default 'ed25519'. */
  keyType?: KeyType
  /** Asks the CA for a certificate for this CSR; should honour `signal`. */
  requestLeaf: RequestLeaf
  /** Time and timers. Default `systemClock`. */
  clock?: Clock
  /** Uniform [0, 1). Default Math.random (jitter needs no cryptographic randomness). */
  rng?: () => number
  retry?: Partial<RetryBackoff>
  /** Per-attempt timeout on `requestLeaf`. Default 30 s. */
  requestTimeoutMs?: number
  /** A certificate to serve from the start (e.g. reloaded from disk); renewed on schedule. */
  initial?: { keyPem: string; certPem: string; intermediatesPem?: string[] }
  /** Key/CSR factory; tests may inject a faster one. Default `createLeafKeyAndCsr`. */
  createKeyAndCsr?: (options: CreateLeafKeyAndCsrOptions) => Promise<LeafKeyAndCsr>
}

/**
 * Keeps one service's leaf certificate fresh. `start()` schedules the first renewal (at once if
 * there is no usable certificate); `stop()` cancels timers and aborts any request in flight.
 */
export class LeafCertificateRotator {
  readonly spiffeId: string
  private readonly init: LeafCertificateRotatorInit
  private readonly clock: Clock
  private readonly rng: () => number
  private readonly backoff: RetryBackoff
  private readonly requestTimeoutMs: number
  // A faulty listener must not stop rotation: listener errors are dropped.
  private readonly events = new TypedEmitter<LeafCertificateRotatorEvents>(() => {})
  private credentials: LeafCredentials | undefined
  private running = false
  /** Bumped by stop(): work begun in an earlier epoch must not touch state. */
  private epoch = 0
  private failures = 0
  private renewTimer: Cancel | undefined
  private expiryTimer: Cancel | undefined
  private inFlight: Promise<void> | undefined
  /** renewNow() came while a renewal was in flight: its answer may predate the reason. */
  private renewAgain = false
  private stopController = new AbortController()

  constructor(init: LeafCertificateRotatorInit) {
    this.spiffeId = serviceSpiffeId(init.trustDomain, init.service)
    this.init = init
    this.clock = init.clock ?? systemClock
    this.rng = init.rng ?? Math.random
    this.backoff = { ...DEFAULT_RETRY_BACKOFF, ...init.retry }
    if (!(this.backoff.initialMs > 0) || !(this.backoff.maxMs >= this.backoff.initialMs)) {
      throw new InvalidCaOptionError('retry', 'need 0 < initialMs <= maxMs')
    }
    this.requestTimeoutMs = init.requestTimeoutMs ?? DEFAULT_LEAF_REQUEST_TIMEOUT_MS
    if (!(this.requestTimeoutMs > 0)) throw new InvalidCaOptionError('requestTimeoutMs', 'must be positive')
    if (init.initial) this.credentials = this.initialCredentials(init.initial)
  }

  private initialCredentials(initial: NonNullable<LeafCertificateRotatorInit['initial']>): LeafCredentials {
    try {
      const spki = publicKeySpkiOfPrivatePem(initial.keyPem).toString('base64')
      return this.toCredentials(initial.keyPem, initial.certPem, initial.intermediatesPem ?? [], spki)
    } catch (cause) {
      throw new InvalidCaOptionError(
        'initial',
        'is not a readable key and a certificate for it and our SPIFFE id',
        {
          cause,
        },
      )
    }
  }

  /** The certificate to serve now, or `undefined` if there is none or it has expired. */
  current(): LeafCredentials | undefined {
    const c = this.credentials
    return c && this.clock.wallNow() < c.notAfter ? c : undefined
  }

  get isRunning(): boolean {
    return this.running
  }

  /** Consecutive failed renewal attempts (0 after a success). */
  get consecutiveFailures(): number {
    return this.failures
  }

  start(): void {
    if (this.running) return
    this.running = true
    this.stopController = new AbortController()
    const c = this.current()
    if (c) {
      this.scheduleExpiry(c)
      this.scheduleRenewalAt(renewAt(c.notBefore, c.notAfter, this.rng))
    } else {
      this.scheduleRenewalAt(this.clock.wallNow())
    }
  }

  stop(): void {
    if (!this.running) return
    this.running = false
    this.epoch++
    this.stopController.abort()
    // The aborted attempt finishes on its own and, being of an old epoch, changes nothing; a
    // later start() must not wait for it.
    this.inFlight = undefined
    this.renewAgain = false
    this.clearTimer('renewTimer')
    this.clearTimer('expiryTimer')
  }

  /**
   * Renew now (e.g. after a root rotation, when every leaf must be re-issued). With a renewal in
   * flight, renews again once it lands: that answer may have been signed before the rotation.
   */
  renewNow(): void {
    if (!this.running) return
    if (this.inFlight) {
      this.renewAgain = true
      return
    }
    this.clearTimer('renewTimer')
    this.renew()
  }

  /** Resolves when no renewal is in flight; for tests and orderly shutdown. */
  async whenIdle(): Promise<void> {
    while (this.inFlight) await this.inFlight
  }

  on<K extends keyof LeafCertificateRotatorEvents>(
    type: K,
    listener: (detail: LeafCertificateRotatorEvents[K]) => void,
  ): Unsubscribe {
    return this.events.on(type, listener)
  }

  private renew(): void {
    if (!this.running || this.inFlight) return
    const epoch = this.epoch
    const attempt: Promise<void> = this.attempt(epoch).finally(() => {
      if (this.inFlight !== attempt) return
      this.inFlight = undefined
      if (this.renewAgain) {
        this.renewAgain = false
        this.renewNow()
      }
    })
    this.inFlight = attempt
  }

  private async attempt(epoch: number): Promise<void> {
    const attemptController = new AbortController()
    const cancelTimeout = this.clock.setTimeout(
      () =>
        attemptController.abort(
          new LeafRequestTimeoutError(`leaf request took over ${this.requestTimeoutMs} ms`),
        ),
      this.requestTimeoutMs,
    )
    const signal = AbortSignal.any([this.stopController.signal, attemptController.signal])
    try {
      const createKeyAndCsr = this.init.createKeyAndCsr ?? createLeafKeyAndCsr
      const fresh = await createKeyAndCsr({
        service: this.init.service,
        trustDomain: this.init.trustDomain,
        keyType: this.init.keyType ?? 'ed25519',
      })
      signal.throwIfAborted()
      const response = await abortable(this.init.requestLeaf(fresh.csrPem, { signal }), signal)
      if (epoch !== this.epoch) return
      const certPem = typeof response === 'string' ? response : response.certPem
      const intermediatesPem = typeof response === 'string' ? [] : (response.intermediatesPem ?? [])
      const next = this.toCredentials(fresh.keyPem, certPem, intermediatesPem, fresh.publicKeySpki)
      if (next.notAfter <= this.clock.wallNow())
        throw new LeafResponseInvalidError('issued certificate is already expired')
      const previous = this.current()
      this.credentials = next
      this.failures = 0
      this.scheduleExpiry(next)
      this.scheduleRenewalAt(renewAt(next.notBefore, next.notAfter, this.rng))
      this.events.emit('cert:rotated', { current: next, previous })
    } catch (error) {
      if (epoch !== this.epoch) return
      this.failures++
      const retryInMs = retryDelayMs(this.failures, this.backoff, this.rng)
      this.scheduleRenewalAt(this.clock.wallNow() + retryInMs)
      this.events.emit('cert:renew-failed', {
        error,
        attempt: this.failures,
        retryInMs,
        current: this.current(),
      })
    } finally {
      cancelTimeout()
    }
  }

  /**
   * Checks that a certificate is for our SPIFFE id (exactly one URI SAN) and, when we know it,
   * for our key; chain trust is the CA's and the peers' business.
   */
  private toCredentials(
    keyPem: string,
    certPem: string,
    intermediatesPem: string[],
    expectedSpki?: string,
  ): LeafCredentials {
    const cert = parseCertificatePem(certPem)
    if (!cert)
      throw new LeafResponseInvalidError('issued certificate is not a single well-formed PEM certificate')
    let uris: string[]
    try {
      uris = uriSans(cert)
    } catch (cause) {
      throw new LeafResponseInvalidError('issued certificate subjectAltName does not decode', { cause })
    }
    if (uris.length !== 1 || uris[0] !== this.spiffeId) {
      throw new LeafResponseInvalidError(`issued certificate is not for ${this.spiffeId}`)
    }
    if (
      expectedSpki !== undefined &&
      Buffer.from(cert.publicKey.rawData).toString('base64') !== expectedSpki
    ) {
      throw new LeafResponseInvalidError('issued certificate is not for the key in our CSR')
    }
    return {
      keyPem,
      certPem,
      intermediatesPem,
      spiffeId: this.spiffeId,
      serialNumber: cert.serialNumber,
      notBefore: cert.notBefore.getTime(),
      notAfter: cert.notAfter.getTime(),
    }
  }

  private scheduleRenewalAt(dueMs: number): void {
    this.setTimerAt('renewTimer', dueMs, () => this.renew())
  }

  private scheduleExpiry(credentials: LeafCredentials): void {
    this.setTimerAt('expiryTimer', credentials.notAfter, () => {
      if (this.credentials === credentials) this.events.emit('cert:expired', { expired: credentials })
    })
  }

  /** Sets a timer for an absolute time, in steps if it is further away than a Node timer allows. */
  private setTimerAt(slot: 'renewTimer' | 'expiryTimer', dueMs: number, fire: () => void): void {
    this.clearTimer(slot)
    if (!this.running) return
    const delay = Math.max(0, dueMs - this.clock.wallNow())
    this[slot] = this.clock.setTimeout(
      () => {
        this[slot] = undefined
        if (!this.running) return
        if (this.clock.wallNow() < dueMs) this.setTimerAt(slot, dueMs, fire)
        else fire()
      },
      Math.min(delay, MAX_TIMER_DELAY_MS),
    )
  }

  private clearTimer(slot: 'renewTimer' | 'expiryTimer'): void {
    this[slot]?.()
    this[slot] = undefined
  }
}

/** Rejects with the signal's reason as soon as it aborts, even if `promise` ignores the signal. */
function abortable<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason)
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason)
    signal.addEventListener('abort', onAbort, { once: true })
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort)
        resolve(value)
      },
      (error: unknown) => {
        signal.removeEventListener('abort', onAbort)
        reject(error)
      },
    )
  })
}
