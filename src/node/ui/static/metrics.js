// Traffic figures from the agent's Prometheus text (/metrics): the sidecar families of
// src/proxy/metrics.ts. Pure functions, no DOM: the page and the unit tests use them alike.

/** Metric families read here (src/proxy/metrics.ts). */
export const FAMILIES = {
  requests: 'peermesh_proxy_requests_total',
  errors: 'peermesh_proxy_errors_total',
  latency: 'peermesh_proxy_latency_seconds',
  active: 'peermesh_proxy_active_connections',
}

/**
 * Parses Prometheus text exposition into samples `{ name, labels, value }`; comments, blank and
 * malformed lines are skipped.
 */
export function parsePrometheus(text) {
  const out = []
  for (const raw of text.split('\n')) {
    const line = raw.trim()
    if (line === '' || line.startsWith('#')) continue
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)(\s+\S+)?$/.exec(line)
    if (m === null) continue
    const labels = m[2] === undefined ? {} : parseLabels(m[2].slice(1, -1))
    if (labels === undefined) continue
    const value = parseValue(m[3])
    if (Number.isNaN(value) && m[3] !== 'NaN') continue
    out.push({ name: m[1], labels, value })
  }
  return out
}

function parseValue(s) {
  if (s === '+Inf' || s === 'Inf') return Number.POSITIVE_INFINITY
  if (s === '-Inf') return Number.NEGATIVE_INFINITY
  return Number(s)
}

/** `a="x",b="y\"z"` to `{ a: 'x', b: 'y"z' }`; undefined when malformed. */
function parseLabels(s) {
  const labels = {}
  let i = 0
  while (i < s.length) {
    const m = /^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"/.exec(s.slice(i))
    if (m === null) return undefined
    i += m[0].length
    let v = ''
    for (;;) {
      if (i >= s.length) return undefined
      const c = s[i]
      if (c === '\\') {
        const n = s[i + 1]
        v += n === 'n' ? '\n' : n
        i += 2
      } else if (c === '"') {
        i++
        break
      } else {
        v += c
        i++
      }
    }
    labels[m[1]] = v
    const rest = /^\s*,?/.exec(s.slice(i))
    i += rest[0].length
  }
  return labels
}

/** The key of one listener: `service|direction|upstream`. */
export function listenerKey(l) {
  return `${l.service}|${l.direction}|${l.upstream}`
}

/**
 * Per listener: cumulative requests, errors (all reasons), and the latency histogram
 * (`buckets`: `[le, cumulative count]` by increasing le, +Inf last; `count`, `sum`).
 */
export function trafficSnapshot(samples) {
  const byKey = new Map()
  const get = (labels) => {
    const key = listenerKey(labels)
    let e = byKey.get(key)
    if (e === undefined) {
      e = {
        service: labels.service,
        direction: labels.direction,
        upstream: labels.upstream,
        requests: 0,
        errors: 0,
        active: 0,
        buckets: [],
        count: 0,
        sum: 0,
      }
      byKey.set(key, e)
    }
    return e
  }
  for (const s of samples) {
    const l = s.labels
    if (l.service === undefined || l.direction === undefined || l.upstream === undefined) continue
    if (s.name === FAMILIES.requests) get(l).requests += s.value
    else if (s.name === FAMILIES.errors) get(l).errors += s.value
    else if (s.name === FAMILIES.active) get(l).active = s.value
    else if (s.name === `${FAMILIES.latency}_bucket`) get(l).buckets.push([parseValue(l.le), s.value])
    else if (s.name === `${FAMILIES.latency}_count`) get(l).count = s.value
    else if (s.name === `${FAMILIES.latency}_sum`) get(l).sum = s.value
  }
  for (const e of byKey.values()) e.buckets.sort((a, b) => a[0] - b[0])
  return byKey
}

/**
 * The q-quantile (0..1) of a cumulative histogram, as Prometheus's histogram_quantile: linear
 * interpolation inside the bucket holding the rank; the highest finite bound when the rank falls
 * in +Inf; undefined with no observations.
 */
export function histogramQuantile(q, buckets) {
  if (buckets.length === 0) return undefined
  const total = buckets[buckets.length - 1][1]
  if (!(total > 0)) return undefined
  const rank = q * total
  let prevLe = 0
  let prevCount = 0
  for (const [le, count] of buckets) {
    if (count >= rank) {
      if (le === Number.POSITIVE_INFINITY) return prevLe
      if (count === prevCount) return le
      return prevLe + ((le - prevLe) * (rank - prevCount)) / (count - prevCount)
    }
    prevLe = le
    prevCount = count
  }
  return prevLe
}

/**
 * Rates between two snapshots `seconds` apart, per listener present in `cur`: requests/s,
 * errors/s, and latency percentiles (seconds) of the requests in the interval (bucket deltas),
 * undefined when there were none. A counter that went down (agent restarted) counts from zero.
 */
export function trafficRates(prev, cur, seconds) {
  const out = []
  for (const [key, c] of cur) {
    const p = prev?.get(key)
    const reset = p !== undefined && c.requests < p.requests
    const base = p === undefined || reset ? undefined : p
    const delta = (a, b) => Math.max(0, a - (b ?? 0))
    const buckets = c.buckets.map(([le, n], i) => {
      const before = base?.buckets[i]
      return [le, before !== undefined && before[0] === le ? delta(n, before[1]) : n]
    })
    const dt = seconds > 0 ? seconds : 1
    out.push({
      key,
      service: c.service,
      direction: c.direction,
      upstream: c.upstream,
      active: c.active,
      requests: c.requests,
      errors: c.errors,
      rps: base === undefined ? 0 : delta(c.requests, base.requests) / dt,
      eps: base === undefined ? 0 : delta(c.errors, base.errors) / dt,
      p50: base === undefined ? undefined : histogramQuantile(0.5, buckets),
      p90: base === undefined ? undefined : histogramQuantile(0.9, buckets),
      p99: base === undefined ? undefined : histogramQuantile(0.99, buckets),
    })
  }
  return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
}
