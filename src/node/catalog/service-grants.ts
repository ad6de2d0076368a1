/**
 * Registration grants (issue #12: service identity is granted). A service registered through the
 * API with a token that passed the local `service:write` check, but that this agent's enrollment
 * does not cover, is published to the other agents only once the leader has committed a grant
 * (peer id, service) for that token. `ServiceGrants` asks for it: the registration waits a bounded
 * time for the first answer; after that (or after a refusal) the registration stays, and the
 * grant is asked for again in the background with capped, jittered backoff until it is committed,
 * the service is no longer registered here, or another grant covers it.
 *
 * The token is held in memory while asking, never written anywhere. Services from the agent's
 * config file are not granted: they rely on the rights of the token that enrolled the agent.
 */
import type { Logger } from 'pino'
import { type Clock, pause, withTimeout } from '../../common/clock.ts'
import { errorCode } from '../../common/errors.ts'
import { type RetryBackoff, retryDelayMs } from '../../identity/connect/retry-backoff.ts'

/**
 * Asks the Raft leader to commit a grant of `service` to this agent for `token` (RaftModule's
 * `requestServiceGrant`): resolves once committed and applied here or when none is needed;
 * rejects on refusal (code PEERMESH_ERR_PERMISSION_DENIED) or failure.
 */
export type RequestServiceGrant = (
  service: string,
  token: string | undefined,
  options: { signal: AbortSignal },
) => Promise<void>

export interface ServiceGrantsComponents {
  request: RequestServiceGrant
  /** Whether this agent may publish `service` already (its enrollment, or a grant). */
  entitled: (service: string) => boolean
  /** Whether some local registration still has this service name. */
  registered: (service: string) => boolean
  clock: Clock
  log: Pick<Logger, 'info' | 'warn'>
  /** Uniform [0, 1) for the retry jitter (default Math.random). */
  rng?: () => number
}

export interface ServiceGrantsSettings {
  /** How long a registration waits for its grant before answering (the grant goes on after). */
  waitMs: number
  /** Longest one request may take: an election plus a commit, with room. */
  attemptTimeoutMs: number
  /** Background retries: from 1 s (the agent may still be enrolling), capped at 1 min. */
  retry: RetryBackoff
}

export const SERVICE_GRANT_DEFAULTS: ServiceGrantsSettings = {
  waitMs: 5_000,
  attemptTimeoutMs: 15_000,
  retry: { initialMs: 1_000, maxMs: 60_000 },
}

export class ServiceGrants {
  readonly stats = { granted: 0, failed: 0 }
  /** The background request per service; a newer registration's token replaces it. */
  private readonly pending = new Map<string, AbortController>()
  private readonly settings: ServiceGrantsSettings
  private stopped = false

  constructor(
    private readonly c: ServiceGrantsComponents,
    settings: Partial<ServiceGrantsSettings> = {},
  ) {
    this.settings = { ...SERVICE_GRANT_DEFAULTS, ...settings }
  }

  /** Services whose grant is being asked for. */
  get asking(): string[] {
    return [...this.pending.keys()].sort()
  }

  /**
   * Makes sure this agent may publish `service`, asking for a grant with `token` if it may not
   * yet. Waits for the first answer at most `waitMs` (or until `signal`); resolves whether the
   * agent may publish it by then. Never rejects.
   */
  async ensure(
    service: string,
    token: string | undefined,
    options: { signal?: AbortSignal } = {},
  ): Promise<boolean> {
    if (this.stopped || this.c.entitled(service)) return this.c.entitled(service)
    this.pending.get(service)?.abort()
    const run = new AbortController()
    this.pending.set(service, run)
    let answered!: (granted: boolean) => void
    const first = new Promise<boolean>((resolve) => {
      answered = resolve
    })
    void this.keepAsking(service, token, run, answered)
    const wait = new AbortController()
    const stopWaiting = (): void => wait.abort()
    options.signal?.addEventListener('abort', stopWaiting, { once: true })
    const timedOut = pause(this.c.clock, this.settings.waitMs, wait.signal).then(() => false)
    try {
      return await Promise.race([first, timedOut])
    } finally {
      wait.abort()
      options.signal?.removeEventListener('abort', stopWaiting)
    }
  }

  /** Stops every background request. */
  stop(): void {
    this.stopped = true
    for (const run of this.pending.values()) run.abort()
    this.pending.clear()
  }

  private async keepAsking(
    service: string,
    token: string | undefined,
    run: AbortController,
    answered: (granted: boolean) => void,
  ): Promise<void> {
    const { clock, log } = this.c
    let attempt = 0
    try {
      while (!run.signal.aborted) {
        if (this.c.entitled(service)) return answered(true)
        if (!this.c.registered(service)) return answered(false)
        attempt++
        try {
          await withTimeout(clock, this.settings.attemptTimeoutMs, (timeout) =>
            this.c.request(service, token, { signal: AbortSignal.any([run.signal, timeout]) }),
          )
          this.stats.granted++
          if (attempt > 1) log.info({ service, attempt }, 'service grant committed: the service is published')
          return answered(true)
        } catch (err) {
          if (run.signal.aborted) return answered(false)
          this.stats.failed++
          const retryInMs = retryDelayMs(attempt, this.settings.retry, this.c.rng ?? Math.random)
          log.warn(
            { service, attempt, retryInMs, code: errorCode(err), err: (err as Error).message },
            'no grant for this service yet: the registration is kept but other agents ignore it; asking again',
          )
          answered(false)
          await pause(clock, retryInMs, run.signal)
        }
      }
      answered(false)
    } finally {
      if (this.pending.get(service) === run) this.pending.delete(service)
    }
  }
}
