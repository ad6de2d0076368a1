/** The figures, timeline, table and plot of `bench:failover` (see failover.ts). */
import { mkdirSync, writeFileSync } from 'node:fs'
import { renderTimelineSvg, type SvgEvent } from './failover-svg.ts'
import { emitJson, quantile, table } from './lib.ts'

export interface Sample {
  seq: number
  /** ms since load start. */
  start: number
  latency: number
  ok: boolean
  /** Instance name that answered (the body), or the error. */
  by: string
  attempts?: number
}

export interface EventSpec {
  name: string
  /** Name the dead instance answers with (its requests stop). */
  instance: string
  /** Service id of the dead instance. */
  id: string
  at: number
  /** When the instance answers again (restarted), if it does; ms since load start. */
  backAt?: number
}

export interface LogMark {
  t: number
  endpoint: string
}

export interface ReportSettings {
  /** The window after each kill for its p99 (`--window-ms`). */
  windowMs: number
  /** Timeline bucket. */
  bucketMs: number
  /** Where failover.svg goes. */
  outDir: string
  /** Keep-alive connections of the load. */
  connections: number
}

export function report(
  samples: Sample[],
  events: EventSpec[],
  marks: SvgEvent[],
  passingLog: { t: number; ids: Set<string> }[],
  retries: LogMark[],
  ejections: LogMark[],
  endMs: number,
  info: { leader: string; newLeader: string; web: string; accessLogLines: number; protocol: 'http' | 'tcp' },
  settings: ReportSettings,
): void {
  const { windowMs: WINDOW_MS, bucketMs: BUCKET_MS, outDir: OUT_DIR, connections: CONNECTIONS } = settings
  const failed = samples.filter((s) => !s.ok)
  const retried = samples.filter((s) => (s.attempts ?? 1) > 1)
  // L4 access lines name no request: the retries web logged instead (one per retried attempt).
  const retriedCount = info.protocol === 'tcp' ? retries.length : retried.length
  const perEvent = events.map((e, i) => {
    // A request belongs to the event when it ends after the kill and before the next event (or
    // before the killed app is back, for the dead instance's own figures).
    const until = events[i + 1]?.at ?? endMs
    const deadUntil = e.backAt ?? until
    const span = samples.filter((s) => s.start + s.latency >= e.at && s.start + s.latency < until)
    const window = samples.filter((s) => s.start >= e.at && s.start < e.at + WINDOW_MS)
    const before = samples.filter((s) => s.start >= e.at - WINDOW_MS && s.start < e.at)
    const hit = span.filter((s) => !s.ok || (s.attempts ?? 1) > 1)
    const isDead = (m: LogMark): boolean => m.endpoint.endsWith(`/${e.id}`) && m.t >= e.at - 20
    const toDead = retries.filter((m) => isDead(m) && m.t < deadUntil)
    const lastToDead = toDead.reduce((m, r) => Math.max(m, r.t), Number.NEGATIVE_INFINITY)
    const firstEject = ejections.find((m) => isDead(m) && m.t < deadUntil)
    const stillAnswered = samples.filter(
      (s) => s.ok && s.by === e.instance && s.start >= e.at && s.start < deadUntil,
    )
    const notPassing = passingLog.find((p) => p.t >= e.at && !p.ids.has(e.id))
    return {
      event: e.name,
      at_s: Math.round(e.at) / 1000,
      failed_requests: span.filter((s) => !s.ok).length,
      retried_requests: hit.filter((s) => s.ok).length,
      retries_to_dead: toDead.length,
      requests_in_window: window.length,
      p99_ms_before:
        Math.round(
          quantile(
            before.map((s) => s.latency),
            0.99,
          ) * 10,
        ) / 10,
      p99_ms_window:
        Math.round(
          quantile(
            window.map((s) => s.latency),
            0.99,
          ) * 10,
        ) / 10,
      max_ms_window: Math.round(Math.max(...window.map((s) => s.latency)) * 10) / 10,
      reroute_ms: Number.isFinite(lastToDead) ? Math.max(0, Math.round(lastToDead - e.at)) : 0,
      ejected_ms: firstEject ? Math.round(firstEject.t - e.at) : null,
      answered_by_dead_after_kill: stillAnswered.length,
      critical_ms: notPassing ? Math.round(notPassing.t - e.at) : null,
    }
  })
  const baseline = samples.filter((s) => s.start < (events[0]?.at ?? endMs))
  const p99Base = quantile(
    baseline.map((s) => s.latency),
    0.99,
  )

  // Timeline, by request start time, 100 ms buckets.
  const n = Math.floor(endMs / BUCKET_MS) // whole buckets only: the last partial one would read low
  const rps = new Array<number>(n).fill(0)
  const errs = new Array<number>(n).fill(0)
  const retr = new Array<number>(n).fill(0)
  for (const s of samples) {
    const b = Math.floor(s.start / BUCKET_MS)
    if (b >= n) continue
    rps[b]! += 1000 / BUCKET_MS
    if (!s.ok) errs[b]! += 1
    else if ((s.attempts ?? 1) > 1) retr[b]! += 1
  }
  const byInstance = new Map<string, number>()
  for (const s of samples) if (s.ok) byInstance.set(s.by, (byInstance.get(s.by) ?? 0) + 1)

  {
    process.stdout.write(
      `\ntimeline (100 ms buckets by request start; # = 100 req/s, E = errors, r = retried)\n`,
    )
    const evAt = new Map(events.map((e) => [Math.floor(e.at / BUCKET_MS), e.name]))
    for (const m of marks) evAt.set(Math.floor(m.t / BUCKET_MS), m.label)
    for (let b = 0; b < n; b++) {
      const bar = '#'.repeat(Math.round(rps[b]! / 100))
      const tag = evAt.has(b) ? `  <== ${evAt.get(b)}` : ''
      process.stdout.write(
        `${(b / 10).toFixed(1).padStart(5)}s ${String(rps[b]).padStart(6)} req/s ${String(errs[b]).padStart(3)} err ${String(retr[b]).padStart(3)} retried ${bar}${'E'.repeat(errs[b]!)}${'r'.repeat(Math.min(20, retr[b]!))}${tag}\n`,
      )
    }
    process.stdout.write('\n')
  }
  table(
    [
      'event',
      'at s',
      'failed',
      'retried',
      'retries to dead',
      `p99 ms ${WINDOW_MS} ms before`,
      `p99 ms ${WINDOW_MS} ms after`,
      'max ms',
      'reroute ms',
      'ejected after ms',
      'not passing after ms',
      'answered by dead',
    ],
    perEvent.map((e) => [
      e.event,
      e.at_s,
      e.failed_requests,
      e.retried_requests,
      e.retries_to_dead,
      e.p99_ms_before,
      e.p99_ms_window,
      e.max_ms_window,
      e.reroute_ms,
      e.ejected_ms ?? '-',
      e.critical_ms ?? 'never',
      e.answered_by_dead_after_kill,
    ]),
  )
  process.stdout.write('\n')
  table(
    ['total requests', 'failed', 'retried', 'req/s', 'p99 ms before events', 'leader killed', 'new leader'],
    [
      [
        samples.length,
        failed.length,
        retriedCount,
        Math.round((samples.length / endMs) * 1000),
        Math.round(p99Base * 10) / 10,
        info.leader,
        info.newLeader,
      ],
    ],
  )
  process.stdout.write('\nanswered by: ')
  process.stdout.write(`${[...byInstance].map(([k, v]) => `${k} ${v}`).join(', ')}\n`)
  const errorKinds = new Map<string, number>()
  for (const s of failed) errorKinds.set(s.by, (errorKinds.get(s.by) ?? 0) + 1)
  if (errorKinds.size > 0)
    process.stdout.write(`errors: ${[...errorKinds].map(([k, v]) => `${v}× ${k}`).join('; ')}\n`)
  if (info.protocol === 'http' && info.accessLogLines < samples.length * 0.99)
    process.stdout.write(
      `note: only ${info.accessLogLines} of ${samples.length} requests found in web's access log; retries may be undercounted\n`,
    )

  mkdirSync(OUT_DIR, { recursive: true })
  const svgPath = `${OUT_DIR}failover.svg`
  writeFileSync(
    svgPath,
    renderTimelineSvg({
      bucketMs: BUCKET_MS,
      rps,
      errors: errs,
      retried: retr,
      events: [...events.map((e) => ({ t: e.at, label: e.name })), ...marks],
      title: `peermesh failover: ${CONNECTIONS} ${info.protocol === 'tcp' ? 'loops of fresh L4 connections' : 'keep-alive connections'} through web's sidecar to 3 api instances`,
    }),
  )
  process.stdout.write(`plot: ${svgPath}\n`)

  emitJson({
    failed_requests: failed.length,
    total_requests: samples.length,
    retried_requests: retriedCount,
    protocol: info.protocol,
    reroute_ms: Math.max(...perEvent.map((e) => e.reroute_ms)),
    p99_ms_baseline: Math.round(p99Base * 10) / 10,
    window_ms: WINDOW_MS,
    connections: CONNECTIONS,
    leader_killed: info.leader,
    new_leader: info.newLeader,
    events: perEvent,
  })
}
