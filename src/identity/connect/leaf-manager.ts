/**
 * The agent's side of leaf issuance (Consul's agent leaf cache): one `LeafCertificateRotator` per
 * service registered on this agent, each renewed at 60–90 % of the leaf's lifetime and at once when
 * the active root changes. The key never leaves the agent; the CSR goes to the Raft leader, asked
 * again across leader changes and until the CA exists.
 */
import { type Clock, pause } from '../../common/clock.ts'
import { type Events, TypedEmitter, type Unsubscribe } from '../../common/events.ts'
import { lazyModule } from '../../common/lazy-module.ts'
import type { CaStateSource, ConnectLog, ServiceDirectory } from './components.ts'
import { AgentStoppingError, LeafSigningRefusedError } from './errors.ts'
import type { LeafCertificateRotator, LeafCredentials, LeafResponse } from './leaf-rotator.ts'
import type { SignReply } from './leaf-signer.ts'
import { DEFAULT_RETRY_BACKOFF, type RetryBackoff } from './retry-backoff.ts'

type RotatorModule = typeof import('./leaf-rotator.ts')

/**
 * The rotator with the x509 code it makes keys and CSRs and reads certificates with (a large part
 * of an agent's compiled code and heap), loaded when the first local service needs a leaf: an
 * agent without services never loads it. The build puts it in a chunk of its own.
 */
const rotatorCode = lazyModule<RotatorModule>(() => import('./leaf-rotator.ts'))

/**
 * Gets a CSR signed by the current leader (or here, when this agent leads), asking again across
 * leader changes and while the CA does not exist yet: resolves with the leaf or a final refusal,
 * throws only when the signal fires or the agent stops.
 */
export interface LeafSigningChannel {
  sign(service: string, csrPem: string, options: { signal: AbortSignal }): Promise<SignReply>
}

export interface LeafManagerEvents {
  /** A local service has a new leaf. */
  'cert:rotated': { service: string; current: LeafCredentials }
}

export interface LeafManagerComponents {
  channel: LeafSigningChannel
  ca: CaStateSource
  directory: Pick<ServiceDirectory, 'servicesOf' | 'isRegisteredOn'>
  /** This agent's peer id (known once the agent has started). */
  selfId: () => string
  clock: Clock
  log: ConnectLog
  /** Renewal retries after a refusal (e.g. the leader has not yet seen the service in gossip). */
  retryBackoff?: RetryBackoff
}

/** First renewal retry 250 ms: a refusal is usually gossip catching up, which takes well under 1 s. */
const DEFAULT_LEAF_RETRY: RetryBackoff = { initialMs: 250, maxMs: DEFAULT_RETRY_BACKOFF.maxMs }

/** How often `leaf()` looks again for a service whose rotator has not started (no CA yet). */
const WAIT_FOR_ROTATOR_MS = 50

export class LeafManager {
  readonly stats = { leavesRenewed: 0 }
  /** A failing listener is logged: it must not stop rotation. */
  private readonly emitter = new TypedEmitter<LeafManagerEvents>((err) =>
    this.c.log.warn({ err: (err as Error).message }, 'leaf listener failed'),
  )
  private readonly rotators = new Map<string, LeafCertificateRotator>()
  private started = false
  private stopped = false

  constructor(private readonly c: LeafManagerComponents) {}

  get events(): Events<LeafManagerEvents> {
    return this.emitter
  }

  start(): void {
    this.started = true
    this.sync()
  }

  stop(): void {
    this.stopped = true
    for (const r of this.rotators.values()) r.stop()
    this.rotators.clear()
  }

  /** Sends a CSR to the leader (see LeafSigningChannel); a refusal ends in LeafSigningRefusedError. */
  async requestLeaf(
    service: string,
    csrPem: string,
    options: { signal: AbortSignal },
  ): Promise<LeafResponse> {
    if (this.stopped) throw new AgentStoppingError('agent stopping')
    const reply = await this.c.channel.sign(service, csrPem, options)
    if (reply.ok) return { certPem: reply.certPem, intermediatesPem: reply.intermediatesPem }
    throw new LeafSigningRefusedError(reply.code, reply.message)
  }

  /** Starts a rotator for each local service, stops those of services gone. */
  sync(): void {
    const active = this.c.ca.caState().active
    if (this.stopped || !this.started || active === undefined) return
    const want = new Set(this.c.directory.servicesOf(this.c.selfId()))
    for (const [name, r] of this.rotators) {
      if (!want.has(name)) {
        r.stop()
        this.rotators.delete(name)
      }
    }
    if (want.size === 0) return
    const rotatorModule = rotatorCode.loaded
    if (rotatorModule === undefined) {
      // Once loaded, sync again with the state then: `leaf()` waits for the rotator meanwhile.
      rotatorCode.load().then(
        () => this.sync(),
        (err: unknown) => this.c.log.error({ err: (err as Error).message }, 'leaf rotator failed to load'),
      )
      return
    }
    for (const name of want)
      if (!this.rotators.has(name)) this.startRotator(rotatorModule, name, active.trustDomain)
  }

  private startRotator(m: RotatorModule, service: string, trustDomain: string): void {
    const { log } = this.c
    const r = new m.LeafCertificateRotator({
      service,
      trustDomain,
      requestLeaf: (csr, o) => this.requestLeaf(service, csr, o),
      retry: this.c.retryBackoff ?? DEFAULT_LEAF_RETRY,
      clock: this.c.clock,
    })
    r.on('cert:rotated', ({ current }) => {
      this.stats.leavesRenewed++
      log.info({ service, serial: current.serialNumber, notAfter: current.notAfter }, 'cert:rotated')
      this.emitter.emit('cert:rotated', { service, current })
    })
    r.on('cert:renew-failed', ({ error, attempt, retryInMs }) =>
      log.warn(
        {
          service,
          attempt,
          retryInMs,
          code: (error as { code?: unknown }).code,
          err: (error as Error).message,
        },
        'cert:renew-failed',
      ),
    )
    r.on('cert:expired', () => log.error({ service }, 'cert:expired'))
    this.rotators.set(service, r)
    r.start()
  }

  /** Renews every local leaf now (the active root changed, or a rotation needs re-issued leaves). */
  renewAll(): void {
    for (const r of this.rotators.values()) r.renewNow()
  }

  /** The current leaf of a local service, if one has been issued (no waiting). */
  current(service: string): LeafCredentials | undefined {
    return this.rotators.get(service)?.current()
  }

  /** Whether this agent hosts `service` (and so keeps a leaf for it). */
  hostsService(service: string): boolean {
    return (
      this.rotators.has(service) ||
      (this.started && this.c.directory.isRegisteredOn(this.c.selfId(), service))
    )
  }

  /** The current leaf of a local service, waiting for the first one up to the signal. */
  async leaf(service: string, options: { signal: AbortSignal }): Promise<LeafCredentials | undefined> {
    for (;;) {
      if (this.c.ca.caState().active !== undefined) this.sync()
      const r = this.rotators.get(service)
      const c = r?.current()
      if (c !== undefined) return c
      if (options.signal.aborted || this.stopped) return undefined
      if (r === undefined) await pause(this.c.clock, WAIT_FOR_ROTATOR_MS, options.signal)
      else await nextRotation(r, options.signal)
    }
  }
}

function nextRotation(r: LeafCertificateRotator, signal: AbortSignal): Promise<void> {
  return new Promise<void>((resolve) => {
    let off: Unsubscribe = () => {}
    const done = (): void => {
      off()
      signal.removeEventListener('abort', done)
      resolve()
    }
    off = r.on('cert:rotated', done)
    signal.addEventListener('abort', done, { once: true })
  })
}
