import { multiaddr } from '@multiformats/multiaddr'
import type { Logger } from 'pino'
import { type Clock, pause, systemClock } from '../../common/clock.ts'
import { SEED_DIAL_DEFAULTS, type SeedDialConfig } from '../agent/defaults.ts'
import type { Host } from './host.ts'

export interface SeedDialerInit extends Partial<SeedDialConfig> {
  host: Pick<Host, 'dial'>
  seeds: string[]
  log: Logger
  clock?: Clock
  /** Uniform in [0, 1): the backoff's jitter, so agents don't retry in step. */
  rng?: () => number
  /** Called once, with the peer id of the first seed that answered. */
  onJoined?: (peerId: string) => void
}

/**
 * Dials the seeds at start and keeps retrying with exponential backoff until one of them
 * answers. An agent with no reachable seed keeps running alone (and keeps trying).
 */
export class SeedDialer {
  private readonly controller = new AbortController()
  private running?: Promise<void>

  constructor(private readonly init: SeedDialerInit) {}

  start(): void {
    if (this.init.seeds.length === 0 || this.running !== undefined) return
    this.running = this.run()
  }

  async stop(): Promise<void> {
    this.controller.abort()
    await this.running
  }

  private async run(): Promise<void> {
    const { host, seeds, log } = this.init
    const clock = this.init.clock ?? systemClock
    const rng = this.init.rng ?? Math.random
    const signal = this.controller.signal
    let backoff = this.init.initialBackoffMs ?? SEED_DIAL_DEFAULTS.initialBackoffMs
    const maxBackoff = this.init.maxBackoffMs ?? SEED_DIAL_DEFAULTS.maxBackoffMs
    const dialTimeout = this.init.dialTimeoutMs ?? SEED_DIAL_DEFAULTS.dialTimeoutMs
    while (!signal.aborted) {
      for (const seed of seeds) {
        if (signal.aborted) return
        try {
          const conn = await host.dial(multiaddr(seed), {
            signal: AbortSignal.any([signal, AbortSignal.timeout(dialTimeout)]),
          })
          const peerId = conn.remotePeer.toString()
          log.info({ seed, peerId }, 'joined through seed')
          this.init.onJoined?.(peerId)
          return
        } catch (err) {
          if (signal.aborted) return
          log.debug({ seed, err: (err as Error).message }, 'seed did not answer')
        }
      }
      const delay = backoff * (0.8 + 0.4 * rng())
      log.warn({ seeds, retryInMs: Math.round(delay) }, 'no seed answered; retrying')
      await pause(clock, delay, signal)
      backoff = Math.min(backoff * 2, maxBackoff)
    }
  }
}
