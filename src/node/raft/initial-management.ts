import type { Logger } from 'pino'
import type { Cancel, Clock } from '../../common/clock.ts'

/** What applying the initial management token needs of the Raft module. */
export interface InitialManagementDeps {
  clock: Clock
  log: Logger
  /** This agent leads (and its Raft module runs). */
  leading(): boolean
  /** An entry proposed now will apply: the CA exists (entries are signed by its root). */
  signingReady(): boolean
  /** Calls `fn` after each change of the replicated state; returns the unsubscribe. */
  onStateChange(fn: () => void): () => void
  /** The index of the committed `acl.bootstrap` (0: never bootstrapped). */
  bootstrapIndex(): number
  /** Whether the committed ACL state holds a token with this secret. */
  knowsSecret(secret: string): boolean
  /** Proposes `acl.bootstrap` with `secret` and waits for its result. */
  write(secret: string): Promise<{ ok: boolean }>
  /** How soon a failed or refused write is tried again while this agent leads. */
  retryMs: number
}

/**
 * The founders' shared initial management token (Consul's `initial_management`): the first leader
 * applies it as `acl.bootstrap`; a later leader finds it done and does nothing.
 *
 * Until it commits, no request presenting the token is authorized anywhere, so a leader does not
 * give up: it waits for the CA first (an entry proposed before the CA exists is refused everywhere
 * as unsigned), and while it leads it tries again after a write that failed (a timeout under load,
 * a quorum lost for a while) or was refused. One attempt at a time; `stop` cancels everything.
 */
export class InitialManagementApplier {
  private readonly cancels: Cancel[] = []
  private inFlight = false
  private retryPending = false
  private waitingForCa = false
  private stopped = false

  constructor(
    private readonly deps: InitialManagementDeps,
    private readonly secret: string,
  ) {}

  /** This agent became leader: apply the token unless it is already applied. */
  onLeadership(): void {
    this.attempt()
  }

  stop(): void {
    this.stopped = true
    for (const cancel of this.cancels.splice(0)) cancel()
  }

  private attempt(): void {
    const d = this.deps
    if (this.stopped || this.inFlight || this.retryPending || !d.leading()) return
    if (!d.signingReady()) {
      // A new cluster's first leader creates the CA first (connect's CA manager): wait for it.
      if (this.waitingForCa) return
      this.waitingForCa = true
      const off = d.onStateChange(() => {
        if (!d.signingReady()) return
        off()
        this.waitingForCa = false
        this.attempt()
      })
      this.cancels.push(off)
      return
    }
    if (d.bootstrapIndex() !== 0) {
      if (!d.knowsSecret(this.secret))
        d.log.warn('acl.initialManagementToken is not the token this cluster was bootstrapped with')
      return
    }
    this.inFlight = true
    d.write(this.secret)
      .then(
        ({ ok }) => {
          if (ok) d.log.info('ACLs bootstrapped with the initial management token')
          // Refused: applied by another leader meanwhile (seen on the next attempt), or not yet possible.
          else this.retryLater()
        },
        (err: unknown) => {
          d.log.warn(
            { err: (err as Error).message },
            'initial management token not applied yet; trying again while this agent leads',
          )
          this.retryLater()
        },
      )
      .finally(() => {
        this.inFlight = false
      })
  }

  private retryLater(): void {
    if (this.stopped) return
    this.retryPending = true
    this.cancels.push(
      this.deps.clock.setTimeout(() => {
        this.retryPending = false
        this.attempt()
      }, this.deps.retryMs),
    )
  }
}
