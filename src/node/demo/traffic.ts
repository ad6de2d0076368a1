/**
 * Steady traffic for the demo: a paced stream of GET requests to one `web` instance (the entry),
 * each outcome recorded with its completion time so a step can count what failed while it ran.
 */
import { PROXY_ERROR_HEADER, UpstreamDeniedError } from '../../proxy/index.ts'
import { DEMO_REQUEST_TIMEOUT_MS, TRAFFIC_MAX_IN_FLIGHT, TRAFFIC_RATE_PER_S } from './constants.ts'

/** ok: answered by api; denied: refused by an intention (api's sidecar); failed: anything else. */
export type Outcome = 'ok' | 'denied' | 'failed'

export interface RequestRecord {
  /** Completion time (ms since the epoch). */
  at: number
  outcome: Outcome
  /** For ok: the version tag of the api instance that answered (v1, v2). */
  version?: string
  /** For failures: the status and the mesh's error code or the network error. */
  why?: string
}

export interface WindowCounts {
  total: number
  ok: number
  denied: number
  failed: number
  /** Why the first few failed requests failed (status and error code, or the network error). */
  failures?: string[]
}

/** How many failure reasons a window keeps. */
const MAX_FAILURE_REASONS = 5

export class Traffic {
  readonly records: RequestRecord[] = []
  private timer: NodeJS.Timeout | undefined
  private inFlight = 0
  private idle: (() => void)[] = []
  /** Requests in flight per entry port, and who waits for a port to have none. */
  private readonly inFlightTo = new Map<number, number>()
  private readonly idleOn = new Map<number, (() => void)[]>()

  /** `entryPort`: the web instance requests go to; `now`: the clock (ms). */
  constructor(
    public entryPort: number,
    private readonly now: () => number = Date.now,
  ) {}

  start(): void {
    if (this.timer !== undefined) return
    this.timer = setInterval(() => this.tick(), 1000 / TRAFFIC_RATE_PER_S)
  }

  /** Stops sending at once (requests in flight run on). */
  halt(): void {
    if (this.timer !== undefined) clearInterval(this.timer)
    this.timer = undefined
  }

  /** Stops sending; resolves once the requests in flight completed. */
  async stop(): Promise<void> {
    this.halt()
    if (this.inFlight > 0) await new Promise<void>((r) => this.idle.push(r))
  }

  /**
   * Resolves once no request sent to `port` is still in flight. After `entryPort` moved away from
   * an agent about to be killed: the requests that went in through its web instance (whose sidecar
   * dies with it) finish first, so that a step counts what the mesh did, not a client that went
   * down with its machine.
   */
  async drained(port: number): Promise<void> {
    if ((this.inFlightTo.get(port) ?? 0) === 0) return
    await new Promise<void>((r) => {
      const waiting = this.idleOn.get(port) ?? []
      waiting.push(r)
      this.idleOn.set(port, waiting)
    })
  }

  private tick(): void {
    if (this.inFlight >= TRAFFIC_MAX_IN_FLIGHT) return
    this.inFlight++
    const port = this.entryPort
    this.inFlightTo.set(port, (this.inFlightTo.get(port) ?? 0) + 1)
    void this.one(port).then((r) => {
      this.records.push(r)
      const left = this.inFlightTo.get(port)! - 1
      this.inFlightTo.set(port, left)
      if (left === 0) {
        for (const done of this.idleOn.get(port) ?? []) done()
        this.idleOn.delete(port)
      }
      if (--this.inFlight === 0) for (const done of this.idle.splice(0)) done()
    })
  }

  private async one(port: number): Promise<RequestRecord> {
    try {
      const res = await fetch(`http://127.0.0.1:${port}/`, {
        signal: AbortSignal.timeout(DEMO_REQUEST_TIMEOUT_MS),
      })
      const body = await res.text()
      if (res.ok) return { at: this.now(), outcome: 'ok', version: body.split(' ')[1] ?? '?' }
      const code = res.headers.get(PROXY_ERROR_HEADER)
      if (code === UpstreamDeniedError.code) return { at: this.now(), outcome: 'denied', why: code }
      return { at: this.now(), outcome: 'failed', why: `HTTP ${res.status} ${code ?? body.slice(0, 80)}` }
    } catch (err) {
      return { at: this.now(), outcome: 'failed', why: (err as Error).message }
    }
  }

  /** Requests completed in [from, to]. */
  window(from: number, to = this.now()): WindowCounts {
    const c: WindowCounts = { total: 0, ok: 0, denied: 0, failed: 0 }
    for (const r of this.records) {
      if (r.at < from || r.at > to) continue
      c.total++
      c[r.outcome]++
      if (r.outcome !== 'failed') continue
      c.failures ??= []
      if (c.failures.length < MAX_FAILURE_REASONS) c.failures.push(r.why ?? '?')
    }
    return c
  }

  /** The first request completed at or after `from` with this outcome, if any yet. */
  firstAfter(from: number, outcome: Outcome): RequestRecord | undefined {
    return this.records.find((r) => r.at >= from && r.outcome === outcome)
  }

  /**
   * When the outcome settled on `outcome`: the completion time of the first request after the
   * last one (completed after `from`) that ended otherwise, once at least `n` have followed it.
   */
  settledAt(from: number, outcome: Outcome, n: number): number | undefined {
    const after = this.records.filter((r) => r.at >= from)
    let lastOther = -1
    for (let i = after.length - 1; i >= 0; i--) {
      if (after[i]!.outcome !== outcome) {
        lastOther = i
        break
      }
    }
    const run = after.slice(lastOther + 1)
    return run.length >= n ? run[0]!.at : undefined
  }

  /** Share of answers per version over the last `ms` (e.g. { v1: 0.9, v2: 0.1 }). */
  versionShare(ms: number): Map<string, number> {
    const from = this.now() - ms
    const counts = new Map<string, number>()
    let n = 0
    for (const r of this.records) {
      if (r.at < from || r.version === undefined) continue
      counts.set(r.version, (counts.get(r.version) ?? 0) + 1)
      n++
    }
    for (const [k, v] of counts) counts.set(k, v / n)
    return counts
  }
}

/** Requests per second over the last `ms`. */
export function ratePerSecond(t: Traffic, ms: number, now = Date.now()): number {
  return t.window(now - ms, now).total / (ms / 1000)
}
