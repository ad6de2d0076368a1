import { multiaddr } from '@multiformats/multiaddr'
import type { Logger } from 'pino'
import type { Host } from './host.ts'

export interface SeedDialerInit {
  host: Host
  seeds: string[]
  log: Logger
  /** First retry delay; doubles up to `maxBackoffMs`, with ±20% jitter so agents don't retry in step. */
  initialBackoffMs?: number
  maxBackoffMs?: number
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
    const signal = this.controller.signal
    let backoff = this.init.initialBackoffMs ?? 250
    const maxBackoff = this.init.maxBackoffMs ?? 10_000
    while (!signal.aborted) {
      for (const seed of seeds) {
        if (signal.aborted) return
        try {
          const conn = await host.dial(multiaddr(seed), {
            signal: AbortSignal.any([signal, AbortSignal.timeout(5_000)]),
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
      const delay = backoff * (0.8 + 0.4 * Math.random())
      log.warn({ seeds, retryInMs: Math.round(delay) }, 'no seed answered; retrying')
      await abortableDelay(delay, signal)
      backoff = Math.min(backoff * 2, maxBackoff)
    }
  }
}

function abortableDelay(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve()
    const timer = setTimeout(done, ms)
    signal.addEventListener('abort', done, { once: true })
    function done(): void {
      clearTimeout(timer)
      signal.removeEventListener('abort', done)
      resolve()
    }
  })
}
