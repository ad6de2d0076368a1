import { request as httpRequest } from 'node:http'
import { request as httpsRequest } from 'node:https'
import { connect } from 'node:net'
import { CheckNotFoundError, CheckNotTtlError } from './errors.ts'
import {
  type CheckDefinition,
  type CheckStatus,
  type HttpCheckDefinition,
  parseHostPort,
  type ServiceDefinition,
} from './service-definition.ts'
import { type Cancel, type Clock, systemClock } from '../../common/clock.ts'
import { TypedEmitter, type Unsubscribe } from '../../common/events.ts'

/** Result of one probe. */
export interface ProbeResult {
  status: CheckStatus
  output: string
}

export interface ProbeOptions {
  /** Aborted when the check's timeout elapses or the runner stops. */
  signal: AbortSignal
  timeoutMs: number
}

/**
 * How checks reach the world, injected so tests can fake it. A probe should settle soon after
 * `signal` aborts; the runner does not wait for it anyway (a timed-out probe is critical).
 */
export interface Probes {
  tcp(target: { host: string; port: number }, opts: ProbeOptions): Promise<ProbeResult>
  http(
    req: { url: string; method: string; header: Record<string, string[]> },
    opts: ProbeOptions,
  ): Promise<ProbeResult>
}

/** A check's current state, as `GET /v1/agent/checks` shows it. */
export interface CheckState {
  checkId: string
  name: string
  kind: CheckDefinition['kind']
  serviceId: string
  serviceName: string
  status: CheckStatus
  /** Last probe output or TTL note. */
  output: string
  notes?: string
  /** When `status` last changed (the runner's clock, ms). */
  changedAt: number
}

/** Emitted only when a check's status changes (not on every probe). */
export interface CheckUpdate {
  checkId: string
  serviceId: string
  status: CheckStatus
  previous: CheckStatus
  output: string
}

export interface CheckRunnerInit {
  clock?: Clock
  probes?: Probes
}

interface Entry {
  def: CheckDefinition
  /** JSON of def + service, to tell a changed definition from the same one re-registered. */
  key: string
  serviceId: string
  serviceName: string
  status: CheckStatus
  output: string
  changedAt: number
  cancelTimer?: Cancel
  inflight?: AbortController
}

/**
 * Runs this agent's health checks: TCP and HTTP probes every `interval` (the next one starts
 * `interval` after the previous one ended, so a slow service never has overlapping probes), and
 * TTL checks that go critical unless updated within `ttl`. Emits `check:update` on status
 * transitions only, which is what changes the node's gossip payload.
 */
export class CheckRunner {
  private readonly events = new TypedEmitter<{ 'check:update': CheckUpdate }>()
  private readonly clock: Clock
  private readonly probes: Probes
  private readonly checks = new Map<string, Entry>()
  private running = false

  constructor(init: CheckRunnerInit = {}) {
    this.clock = init.clock ?? systemClock
    this.probes = init.probes ?? systemProbes
  }

  /** Status transitions of any check. */
  on(type: 'check:update', listener: (update: CheckUpdate) => void): Unsubscribe {
    return this.events.on(type, listener)
  }

  /** Starts probing (the first probe of each check runs at once) and TTL expiry timers. */
  start(): void {
    if (this.running) return
    this.running = true
    for (const e of this.checks.values()) this.arm(e, 0)
  }

  /** Stops every timer and aborts probes in flight. States are kept. */
  stop(): void {
    this.running = false
    for (const e of this.checks.values()) this.disarm(e)
  }

  /**
   * Makes the set of checks match `services`: adds new checks, removes those gone, restarts
   * those whose definition changed. A check that keeps its id keeps its status (re-registering
   * a service does not make it flap).
   */
  sync(services: readonly ServiceDefinition[]): void {
    const wanted = new Map<string, { def: CheckDefinition; svc: ServiceDefinition }>()
    for (const svc of services) for (const def of svc.checks) wanted.set(def.id, { def, svc })
    for (const [id, e] of this.checks) {
      if (!wanted.has(id)) {
        this.disarm(e)
        this.checks.delete(id)
      }
    }
    for (const [id, { def, svc }] of wanted) {
      const key = JSON.stringify([svc.id, svc.name, def])
      const old = this.checks.get(id)
      if (old?.key === key) continue
      if (old !== undefined) this.disarm(old)
      const e: Entry = {
        def,
        key,
        serviceId: svc.id,
        serviceName: svc.name,
        status: old?.status ?? def.status,
        output: old?.output ?? '',
        changedAt: old?.changedAt ?? this.stamp(),
      }
      this.checks.set(id, e)
      if (this.running) this.arm(e, 0)
    }
  }

  status(checkId: string): CheckStatus | undefined {
    return this.checks.get(checkId)?.status
  }

  get(checkId: string): CheckState | undefined {
    const e = this.checks.get(checkId)
    return e === undefined ? undefined : view(e)
  }

  /** All checks, sorted by id. */
  list(): CheckState[] {
    return [...this.checks.values()].map(view).sort((a, b) => (a.checkId < b.checkId ? -1 : 1))
  }

  /**
   * A TTL check's heartbeat (`PUT /v1/agent/check/pass|warn|fail/:id?note=`): sets its status
   * and restarts its TTL. Throws `CheckNotFoundError` or `CheckNotTtlError`.
   */
  updateTtl(checkId: string, status: CheckStatus, note = ''): void {
    const e = this.checks.get(checkId)
    if (e === undefined) throw new CheckNotFoundError(`no check with id "${checkId}" on this agent`, checkId)
    if (e.def.kind !== 'ttl') {
      throw new CheckNotTtlError(`check "${checkId}" is a ${e.def.kind} check, not a TTL check`, checkId)
    }
    this.set(e, { status, output: note })
    if (this.running) this.arm(e, 0)
  }

  private arm(e: Entry, delayMs: number): void {
    this.disarm(e)
    if (e.def.kind === 'ttl') {
      const ttl = e.def.ttlMs
      e.cancelTimer = this.clock.setTimeout(
        () => {
          e.cancelTimer = undefined
          this.set(e, { status: 'critical', output: `TTL expired: no update in the last ${ttl} ms` })
        },
        ttl, // a TTL check expires `ttl` after it was armed or last updated, whatever `delayMs` says
      )
      return
    }
    e.cancelTimer = this.clock.setTimeout(() => {
      e.cancelTimer = undefined
      void this.probe(e)
    }, delayMs)
  }

  private disarm(e: Entry): void {
    e.cancelTimer?.()
    e.cancelTimer = undefined
    e.inflight?.abort()
    e.inflight = undefined
  }

  private async probe(e: Entry): Promise<void> {
    const def = e.def as Exclude<CheckDefinition, { kind: 'ttl' }>
    const ac = new AbortController()
    e.inflight = ac
    let cancelTimeout: Cancel = () => {}
    const timedOut = new Promise<ProbeResult>((resolve) => {
      cancelTimeout = this.clock.setTimeout(() => {
        ac.abort(new Error('check timed out'))
        resolve({ status: 'critical', output: `timed out after ${def.timeoutMs} ms` })
      }, def.timeoutMs)
    })
    const result = await Promise.race([this.runProbe(def, ac.signal), timedOut])
    cancelTimeout()
    if (e.inflight !== ac) return // removed, redefined or stopped meanwhile
    e.inflight = undefined
    ac.abort()
    this.set(e, result)
    if (this.running) this.arm(e, def.intervalMs)
  }

  private async runProbe(
    def: Exclude<CheckDefinition, { kind: 'ttl' }>,
    signal: AbortSignal,
  ): Promise<ProbeResult> {
    const opts = { signal, timeoutMs: def.timeoutMs }
    try {
      if (def.kind === 'tcp') return await this.probes.tcp(parseHostPort(def.tcp)!, opts)
      return await this.probes.http({ url: def.http, method: def.method, header: def.header }, opts)
    } catch (err) {
      return { status: 'critical', output: `probe failed: ${(err as Error)?.message ?? String(err)}` }
    }
  }

  /** Whole epoch milliseconds, as `GET /v1/agent/checks` has always shown `changedAt`. */
  private stamp(): number {
    return Math.floor(this.clock.wallNow())
  }

  private set(e: Entry, r: ProbeResult): void {
    e.output = r.output
    if (r.status === e.status) return
    const previous = e.status
    e.status = r.status
    e.changedAt = this.stamp()
    this.events.emit('check:update', {
      checkId: e.def.id,
      serviceId: e.serviceId,
      status: r.status,
      previous,
      output: r.output,
    })
  }
}

function view(e: Entry): CheckState {
  const s: CheckState = {
    checkId: e.def.id,
    name: e.def.name,
    kind: e.def.kind,
    serviceId: e.serviceId,
    serviceName: e.serviceName,
    status: e.status,
    output: e.output,
    changedAt: e.changedAt,
  }
  if (e.def.notes !== undefined) s.notes = e.def.notes
  return s
}

/** Most response body bytes kept as an HTTP check's output. */
const MAX_OUTPUT_BYTES = 4096

/** Real probes: node:net and node:http(s), each attempt bounded by `AbortSignal.timeout`. */
export const systemProbes: Probes = {
  tcp({ host, port }, { signal, timeoutMs }) {
    const sig = AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)])
    return new Promise<ProbeResult>((resolve) => {
      const where = `${host.includes(':') ? `[${host}]` : host}:${port}`
      const socket = connect({ host, port, signal: sig })
      socket.once('connect', () => {
        socket.destroy()
        resolve({ status: 'passing', output: `TCP connect ${where}: Success` })
      })
      socket.once('error', (err: NodeJS.ErrnoException) => {
        socket.destroy()
        const why = err.name === 'AbortError' ? `timed out after ${timeoutMs} ms` : (err.code ?? err.message)
        resolve({ status: 'critical', output: `TCP connect ${where}: ${why}` })
      })
    })
  },

  http(req: { url: string; method: string; header: HttpCheckDefinition['header'] }, { signal, timeoutMs }) {
    const sig = AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)])
    const request = req.url.startsWith('https:') ? httpsRequest : httpRequest
    return new Promise<ProbeResult>((resolve) => {
      const label = `HTTP ${req.method} ${req.url}`
      const fail = (err: NodeJS.ErrnoException) =>
        resolve({
          status: 'critical',
          output: `${label}: ${err.name === 'AbortError' ? `timed out after ${timeoutMs} ms` : (err.code ?? err.message)}`,
        })
      const r = request(
        req.url,
        {
          method: req.method,
          headers: { 'user-agent': 'peermesh health check', ...req.header },
          signal: sig,
          agent: false,
        },
        (res) => {
          const code = res.statusCode ?? 0
          const chunks: Buffer[] = []
          let size = 0
          const finish = () => {
            res.destroy()
            const body = Buffer.concat(chunks).subarray(0, MAX_OUTPUT_BYTES).toString('utf8')
            const status: CheckStatus =
              code >= 200 && code < 300 ? 'passing' : code === 429 ? 'warning' : 'critical'
            resolve({ status, output: `${label}: ${code} ${res.statusMessage ?? ''} Output: ${body}` })
          }
          res.on('data', (c: Buffer) => {
            chunks.push(c)
            size += c.length
            if (size >= MAX_OUTPUT_BYTES) finish()
          })
          res.once('end', finish)
          res.once('error', fail)
        },
      )
      r.once('error', fail)
      r.end()
    })
  },
}
