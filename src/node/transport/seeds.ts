import { connect } from 'node:net'
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
  /** Called with the peer id of each seed that answered, in the first round where any did. */
  onJoined?: (peerId: string) => void
  /**
   * Whether something accepts TCP connections at `seed` (a multiaddr): asked after a dial that
   * failed without a refusal, to tell "nobody there" from "a handshake that never completed".
   * Default: a plain TCP connect (`tcpAccepts`).
   */
  probeTcp?: (seed: string, timeoutMs: number) => Promise<boolean>
}

/**
 * The hint logged when a seed accepts TCP connections but the libp2p dial does not complete: the
 * private-network handshake fails silently (each side decrypts the other's bytes into garbage and
 * waits), so a different cluster key looks like a timeout.
 */
export const KEY_MISMATCH_HINT =
  'a seed accepted the TCP connection but the handshake never completed: most likely this ' +
  "agent's cluster key differs from the seed's (or the address is not a peermesh agent)"

/** How long the TCP probe after a failed dial waits. */
const PROBE_TIMEOUT_MS = 1_000

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
    const probeTcp = this.init.probeTcp ?? tcpAccepts
    let hinted = false
    while (!signal.aborted) {
      // Seeds that took the TCP connection but not the handshake, this round.
      const handshakeFailed: string[] = []
      // Every seed that answers is joined through, as memberlist's Join does: agents started
      // together that each stopped at their first live seed could form islands that never meet
      // (a and b through each other, c and d through each other).
      let joined = 0
      for (const seed of seeds) {
        if (signal.aborted) return
        try {
          const conn = await host.dial(multiaddr(seed), {
            signal: AbortSignal.any([signal, AbortSignal.timeout(dialTimeout)]),
          })
          const peerId = conn.remotePeer.toString()
          log.info({ seed, peerId }, 'joined through seed')
          this.init.onJoined?.(peerId)
          joined++
        } catch (err) {
          if (signal.aborted) return
          const message = (err as Error).message
          log.debug({ seed, err: message }, 'seed did not answer')
          if (
            !hinted &&
            !/ECONNREFUSED|EHOSTUNREACH|ENETUNREACH/.test(message) &&
            (await probeTcp(seed, PROBE_TIMEOUT_MS))
          )
            handshakeFailed.push(seed)
        }
      }
      if (joined > 0) return
      const delay = backoff * (0.8 + 0.4 * rng())
      // The hint once per run (it does not change while the keys stay as they are).
      if (handshakeFailed.length > 0 && !hinted) {
        hinted = true
        log.warn(
          { seeds, handshakeFailed, hint: KEY_MISMATCH_HINT, retryInMs: Math.round(delay) },
          'no seed answered; retrying',
        )
      } else log.warn({ seeds, retryInMs: Math.round(delay) }, 'no seed answered; retrying')
      await pause(clock, delay, signal)
      backoff = Math.min(backoff * 2, maxBackoff)
    }
  }
}

/** Whether a plain TCP connection to `seed`'s /ip4|ip6|dns/.../tcp/PORT address is accepted. */
export function tcpAccepts(seed: string, timeoutMs: number): Promise<boolean> {
  let host: string | undefined
  let port: number | undefined
  try {
    for (const c of multiaddr(seed).getComponents()) {
      if (['ip4', 'ip6', 'dns', 'dns4', 'dns6'].includes(c.name)) host ??= c.value
      else if (c.name === 'tcp' && c.value !== undefined) port ??= Number(c.value)
    }
  } catch {
    return Promise.resolve(false) // not a multiaddr: the dial said so already
  }
  if (host === undefined || port === undefined) return Promise.resolve(false)
  const target = { host, port, timeout: timeoutMs }
  return new Promise((resolve) => {
    const socket = connect(target)
    const done = (ok: boolean): void => {
      socket.destroy()
      resolve(ok)
    }
    socket.once('connect', () => done(true))
    socket.once('timeout', () => done(false))
    socket.once('error', () => done(false))
  })
}
