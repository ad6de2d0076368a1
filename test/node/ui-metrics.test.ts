import { describe, expect, it } from 'vitest'

/** The page's pure traffic module (plain JS served to the browser). */
interface TrafficRate {
  key: string
  rps: number
  eps: number
  requests: number
  errors: number
  p50?: number
  p90?: number
  p99?: number
}
interface MetricsModule {
  parsePrometheus(text: string): { name: string; labels: Record<string, string>; value: number }[]
  histogramQuantile(q: number, buckets: [number, number][]): number | undefined
  trafficSnapshot(samples: unknown[]): Map<string, unknown>
  trafficRates(
    prev: Map<string, unknown> | undefined,
    cur: Map<string, unknown>,
    seconds: number,
  ): TrafficRate[]
}
const modulePath = '../../src/node/ui/static/metrics.js'
const m = (await import(modulePath)) as MetricsModule

const L = 'service="web",direction="outbound",upstream="api"'
function exposition(requests: number, errors: number, buckets: [string, number][]): string {
  return [
    '# HELP peermesh_proxy_requests_total Requests proxied.',
    '# TYPE peermesh_proxy_requests_total counter',
    `peermesh_proxy_requests_total{${L}} ${requests}`,
    `peermesh_proxy_errors_total{${L},reason="connect"} ${errors}`,
    `peermesh_proxy_errors_total{${L},reason="timeout"} 0`,
    ...buckets.map(([le, n]) => `peermesh_proxy_latency_seconds_bucket{le="${le}",${L}} ${n}`),
    `peermesh_proxy_latency_seconds_sum{${L}} 1.5`,
    `peermesh_proxy_latency_seconds_count{${L}} ${buckets[buckets.length - 1]![1]}`,
    'process_cpu_seconds_total 12.5',
    'junk line {',
  ].join('\n')
}

describe('UI traffic figures from Prometheus text', () => {
  it('parses names, escaped label values, special floats, and skips junk', () => {
    const s = m.parsePrometheus(
      'a_total{x="q\\"uote",y="back\\\\slash\\nnl"} 3\nb +Inf\n# c 1\nc{le="+Inf"} 7 1700000000\nbad{x=1} 2',
    )
    expect(s).toEqual([
      { name: 'a_total', labels: { x: 'q"uote', y: 'back\\slash\nnl' }, value: 3 },
      { name: 'b', labels: {}, value: Number.POSITIVE_INFINITY },
      { name: 'c', labels: { le: '+Inf' }, value: 7 },
    ])
  })

  it('quantiles interpolate inside the bucket as histogram_quantile does', () => {
    const b: [number, number][] = [
      [0.01, 0],
      [0.1, 50],
      [1, 100],
      [Number.POSITIVE_INFINITY, 100],
    ]
    expect(m.histogramQuantile(0.5, b)).toBeCloseTo(0.1)
    expect(m.histogramQuantile(0.25, b)).toBeCloseTo(0.055)
    expect(m.histogramQuantile(0.99, b)).toBeCloseTo(0.982)
    // Rank in +Inf: the highest finite bound. No observations: undefined.
    expect(
      m.histogramQuantile(0.99, [
        [0.5, 1],
        [Number.POSITIVE_INFINITY, 10],
      ]),
    ).toBe(0.5)
    expect(
      m.histogramQuantile(0.5, [
        [0.5, 0],
        [Number.POSITIVE_INFINITY, 0],
      ]),
    ).toBeUndefined()
  })

  it('rates and percentiles come from the interval between two scrapes', () => {
    const a = m.trafficSnapshot(
      m.parsePrometheus(
        exposition(100, 2, [
          ['0.001', 100],
          ['0.01', 100],
          ['+Inf', 100],
        ]),
      ),
    )
    // 20 requests in 2 s, all between 1 and 10 ms; 1 more error.
    const b = m.trafficSnapshot(
      m.parsePrometheus(
        exposition(120, 3, [
          ['0.001', 100],
          ['0.01', 120],
          ['+Inf', 120],
        ]),
      ),
    )
    const [r] = m.trafficRates(a, b, 2)
    expect(r).toMatchObject({ key: 'web|outbound|api', rps: 10, eps: 0.5, requests: 120, errors: 3 })
    expect(r!.p50).toBeCloseTo(0.0055)
    expect(r!.p99).toBeGreaterThan(0.009)
    // The first scrape has no interval: no rate, no percentile.
    const [first] = m.trafficRates(undefined, a, 1)
    expect(first).toMatchObject({ rps: 0, p50: undefined })
    // A counter that went down (agent restart) counts from zero rather than going negative.
    const [reset] = m.trafficRates(b, a, 1)
    expect(reset!.rps).toBe(0)
    expect(reset!.eps).toBe(0)
  })
})
