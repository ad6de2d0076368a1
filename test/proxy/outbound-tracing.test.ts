/**
 * Golden metrics per route and OpenTelemetry CLIENT spans of the HTTP/1.1 outbound listener,
 * against real inbound listeners and apps: the route and grpc_status labels (checked by
 * `promtool check metrics` when installed), the span continuing the app's traceparent and being
 * the parent of the request sent on, hostile trace headers, and no tracing without a tracer.
 */
import { spawnSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import type http from 'node:http'
import net from 'node:net'
import { Registry } from 'prom-client'
import { afterEach, beforeAll, describe, expect, it } from 'vitest'
import type { RootCa } from '../../src/identity/ca/ca.ts'
import { HttpOutboundListener, type HttpOutboundListenerInit } from '../../src/proxy/outbound-http.ts'
import {
  IntentionAuthorizer,
  StaticCertificateSource,
  StaticEndpointSource,
} from '../../src/proxy/sources.ts'
import { type FinishedSpan, SpanKind, SpanStatusCode, Tracer } from '../../src/proxy/tracing.ts'
import { EMPTY_POLICY, type TrafficPolicy } from '../../src/proxy/traffic.ts'
import type { ServiceCertificate } from '../../src/proxy/types.ts'
import { join } from 'node:path'
import { makeTempDir, removeTempDir } from '../temp-dir.ts'
import { httpGet, leafFor, makeRoot, metricValue, startHandlerInstance, TD } from './helpers.ts'

let root: RootCa
let apiCert: ServiceCertificate
let webCert: ServiceCertificate
const allow = IntentionAuthorizer.from([{ source: 'web', destination: 'api', action: 'allow' }])
const hasPromtool = spawnSync('promtool', ['--version'], { stdio: 'ignore' }).status === 0

beforeAll(async () => {
  root = await makeRoot()
  ;[apiCert, webCert] = await Promise.all([leafFor(root, 'api'), leafFor(root, 'web')])
})

const cleanups: (() => Promise<void>)[] = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

const TRACE = '4bf92f3577b34da6a3ce929d0e0e4736'
const PARENT = '00f067aa0ba902b7'

/** An app answering with `handler` behind a real inbound listener of service api. */
async function instanceWith(handler: http.RequestListener) {
  const instance = await startHandlerInstance({ id: 'api', cert: apiCert, authorizer: allow, handler })
  cleanups.push(instance.stop)
  return { endpoint: { ...instance.endpoint, id: `api-${instance.inbound.port}` } }
}

/**
 * An api instance answering by path (`/fail` 500, `/grpc-*` gRPC answers) and recording every
 * request's headers.
 */
async function apiInstance() {
  const seen: http.IncomingHttpHeaders[] = []
  const instance = await instanceWith((req, res) => {
    seen.push(req.headers)
    req.resume()
    const url = req.url ?? '/'
    if (url === '/grpc-trailers-only') {
      res.writeHead(200, { 'content-type': 'application/grpc', 'grpc-status': '5' })
      res.end()
    } else if (url === '/grpc-trailers') {
      res.writeHead(200, { 'content-type': 'application/grpc+proto', trailer: 'grpc-status' })
      res.addTrailers({ 'grpc-status': '14' })
      res.end('x')
    } else if (url === '/grpc-hostile') {
      res.writeHead(200, { 'content-type': 'application/grpc', 'grpc-status': '999999' })
      res.end()
    } else if (url === '/b/slow') {
      setTimeout(() => res.end('slow'), 300)
    } else {
      res.statusCode = url.endsWith('/fail') ? 500 : 200
      res.end('api')
    }
  })
  return { seen, endpoint: instance.endpoint }
}

/** An outbound listener web -> api, started (stopped after the test). */
async function listen(init: Partial<HttpOutboundListenerInit> & Pick<HttpOutboundListenerInit, 'endpoints'>) {
  const listener = new HttpOutboundListener({
    sourceService: 'web',
    destinationService: 'api',
    trustDomain: TD,
    bindPort: 0,
    certificates: new StaticCertificateSource(webCert),
    ...init,
  })
  await listener.start()
  cleanups.push(() => listener.stop())
  return listener
}

async function outbound(extra: Partial<HttpOutboundListenerInit> = {}) {
  const api = await apiInstance()
  const registry = new Registry()
  const listener = await listen({ endpoints: new StaticEndpointSource([api.endpoint]), registry, ...extra })
  return { listener, registry, api }
}

function tracing(sampleRatio = 1) {
  const spans: FinishedSpan[] = []
  const tracer = new Tracer({ serviceName: 'web', exporter: { export: (s) => spans.push(s) }, sampleRatio })
  return { tracer, spans }
}

/** Routes /a/* (index 0) and /b/* (index 1); anything else takes the default route. */
const twoRoutes: TrafficPolicy = {
  ...EMPTY_POLICY,
  routes: [
    { match: (r) => r.path.startsWith('/a/'), destination: {} },
    { match: (r) => r.path.startsWith('/b/'), destination: { requestTimeoutMs: 5_000 } },
  ],
}

const attrs = (s: FinishedSpan) => Object.fromEntries(s.attributes)

describe('golden metrics per route', () => {
  it('requests, responses by code/class/grpc_status and durations carry the route; the success rate per route is exact', async () => {
    const { listener, registry } = await outbound({ policy: twoRoutes })
    const plan = [
      ...Array.from({ length: 6 }, () => '/a/ok'),
      ...Array.from({ length: 2 }, () => '/a/fail'),
      ...Array.from({ length: 3 }, () => '/b/x'),
      '/fail',
      '/grpc-trailers-only',
      '/grpc-trailers',
      '/grpc-hostile',
    ]
    for (const p of plan) await httpGet(listener.port, p)
    const req = (route: string) =>
      metricValue(registry, 'peermesh_proxy_requests_total', { upstream: 'api', route })
    expect([await req('0'), await req('1'), await req('default')]).toEqual([8, 3, 4])
    const responses = (labels: Record<string, string>) =>
      metricValue(registry, 'peermesh_proxy_responses_total', { upstream: 'api', ...labels })
    // Route 0 saw 6 × 200 and 2 × 500: 75% success.
    const ok0 = await responses({ route: '0', class: '2xx' })
    const all0 = await responses({ route: '0' })
    expect([ok0, all0]).toEqual([6, 8])
    expect(await responses({ route: '0', code: '500', class: '5xx', grpc_status: '' })).toBe(2)
    expect(await responses({ route: '1', code: '200' })).toBe(3)
    // gRPC: from a trailers-only answer, from the trailers, and a hostile code read as UNKNOWN.
    expect(await responses({ route: 'default', grpc_status: '5' })).toBe(1)
    expect(await responses({ route: 'default', grpc_status: '14' })).toBe(1)
    expect(await responses({ route: 'default', grpc_status: '2' })).toBe(1)
    const text = await registry.metrics()
    // The hostile code is never a label value (a float in a duration sum may contain its digits).
    expect(text).not.toMatch(/="999999"/)
    expect(text).toMatch(/^peermesh_proxy_request_duration_seconds_count\{[^}]*route="1",class="2xx"\} 3$/m)
    expect(text).toMatch(/^peermesh_proxy_request_duration_seconds_count\{[^}]*route="0",class="5xx"\} 2$/m)
    expect(text).toMatch(/peermesh_proxy_request_duration_seconds_bucket\{[^}]*route="0"[^}]*class="5xx"/)
  })

  it('timeouts are errors_total{reason="timeout"} on their route', async () => {
    const slow = await instanceWith((req) => req.resume()) // never answers
    const registry = new Registry()
    const listener = await listen({
      endpoints: new StaticEndpointSource([slow.endpoint]),
      registry,
      policy: { ...EMPTY_POLICY, routes: [{ match: () => true, destination: { requestTimeoutMs: 100 } }] },
    })
    expect((await httpGet(listener.port, '/x')).status).toBe(504)
    expect(
      await metricValue(registry, 'peermesh_proxy_errors_total', { reason: 'timeout', route: '0' }),
    ).toBe(1)
    expect(await metricValue(registry, 'peermesh_proxy_responses_total', { route: '0', code: '504' })).toBe(1)
  })

  it.skipIf(!hasPromtool)('the exposition passes promtool check metrics', async () => {
    const { listener, registry } = await outbound({ policy: twoRoutes, tracer: tracing().tracer })
    for (const p of ['/a/1', '/b/2', '/fail', '/grpc-trailers-only']) await httpGet(listener.port, p)
    const text = await registry.metrics()
    const res = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' })
    expect(`${res.stdout}${res.stderr}`.trim()).toBe('')
    expect(res.status).toBe(0)
  })
  it.skipIf(!hasPromtool)(
    'PromQL over two scrapes gives the true success rate per route, and p99 per route (promtool test rules)',
    async () => {
      const { listener, registry } = await outbound({ policy: twoRoutes })
      const before = await registry.metrics()
      const plan = [
        ...Array.from({ length: 6 }, () => '/a/ok'),
        ...Array.from({ length: 2 }, () => '/a/fail'),
        '/b/slow',
        '/b/slow',
        '/ok',
        '/fail',
      ]
      for (const p of plan) await httpGet(listener.port, p)
      const after = await registry.metrics()
      const series = scrapePairs(before, after, [
        'peermesh_proxy_responses_total',
        'peermesh_proxy_request_duration_seconds_bucket',
      ])
      const by = 'service, upstream, route'
      const successRate = `sum by (${by}) (increase(peermesh_proxy_responses_total{class!="5xx"}[2m])) / sum by (${by}) (increase(peermesh_proxy_responses_total[2m]))`
      const p99 = `histogram_quantile(0.99, sum by (${by}, le) (increase(peermesh_proxy_request_duration_seconds_bucket[2m])))`
      const labels = (route: string) => `{service="web", upstream="api", route="${route}"}`
      const test = {
        rule_files: [],
        evaluation_interval: '1m',
        tests: [
          {
            interval: '1m',
            input_series: series,
            promql_expr_test: [
              {
                expr: successRate,
                eval_time: '1m',
                exp_samples: [
                  { labels: labels('0'), value: 0.75 },
                  { labels: labels('1'), value: 1 },
                  { labels: labels('default'), value: 0.5 },
                ],
              },
              // Route 1's app answers after 300 ms: its p99 is past the 0.25 s bucket bound.
              {
                expr: `${p99} >= bool 0.25`,
                eval_time: '1m',
                exp_samples: [
                  { labels: labels('0'), value: 0 },
                  { labels: labels('1'), value: 1 },
                  { labels: labels('default'), value: 0 },
                ],
              },
            ],
          },
        ],
      }
      const dir = makeTempDir('promql')
      cleanups.push(async () => removeTempDir(dir))
      const file = join(dir, 'golden.test.yml')
      writeFileSync(file, JSON.stringify(test)) // JSON is YAML
      const res = spawnSync('promtool', ['test', 'rules', file], { encoding: 'utf8' })
      expect(res.status, `${res.stdout}${res.stderr}`).toBe(0)
    },
  )

  if (!hasPromtool)
    console.warn('promtool not installed (Debian: prometheus): the exposition lint is skipped')
})

describe('CLIENT spans of the outbound HTTP listener', () => {
  it("continue the app's traceparent; the upstream gets the same trace with the span as parent", async () => {
    const { tracer, spans } = tracing()
    const { listener, api } = await outbound({ policy: twoRoutes, tracer })
    const r = await httpGet(listener.port, '/a/users?secret=1', {
      traceparent: `00-${TRACE}-${PARENT}-01`,
      tracestate: 'rojo=00f067aa0ba902b7',
    })
    expect(r.status).toBe(200)
    await expectSpans(spans, 1)
    const s = spans[0]!
    expect(s).toMatchObject({ traceId: TRACE, parentSpanId: PARENT, kind: SpanKind.CLIENT, name: 'GET' })
    expect(api.seen[0]!.traceparent).toBe(`00-${TRACE}-${s.spanId}-01`)
    expect(api.seen[0]!.tracestate).toBe('rojo=00f067aa0ba902b7')
    expect(attrs(s)).toMatchObject({
      'http.request.method': 'GET',
      'url.path': '/a/users',
      'server.address': 'api',
      'http.response.status_code': 200,
      'peermesh.route': '0',
      'peermesh.upstream': 'api',
      'peermesh.source_service': 'web',
      'peermesh.destination_service': 'api',
      'network.peer.address': '127.0.0.1',
      'peermesh.attempts': 1,
    })
    expect(JSON.stringify(s.attributes)).not.toContain('secret')
    expect(s.status.code).toBe(SpanStatusCode.UNSET)
    expect(s.endMs).toBeGreaterThanOrEqual(s.startMs)
  })

  it('a 5xx and a proxy failure are errors', async () => {
    const { tracer, spans } = tracing()
    const { listener } = await outbound({ tracer })
    await httpGet(listener.port, '/fail')
    const noEndpoints = await listen({ endpoints: new StaticEndpointSource([]), tracer })
    expect((await httpGet(noEndpoints.port, '/')).status).toBe(503)
    await expectSpans(spans, 2)
    expect(
      spans.map((s) => [s.status.code, attrs(s)['error.type'], attrs(s)['http.response.status_code']]),
    ).toEqual([
      [SpanStatusCode.ERROR, '500', 500],
      [SpanStatusCode.ERROR, 'no_endpoint', 503],
    ])
  })

  it.each([
    ['no traceparent', {}],
    ['an invalid one', { traceparent: `00-${TRACE.toUpperCase()}-${PARENT}-01`, tracestate: 'a=1' }],
    ['an all-zero trace id', { traceparent: `00-${'0'.repeat(32)}-${PARENT}-01` }],
  ])('with %s, a new trace starts and the upstream gets its traceparent only', async (_what, headers) => {
    const { tracer, spans } = tracing()
    const { listener, api } = await outbound({ tracer })
    await httpGet(listener.port, '/', headers)
    await expectSpans(spans, 1)
    const s = spans[0]!
    expect(s.traceId).not.toBe(TRACE)
    expect(s.parentSpanId).toBeUndefined()
    expect(api.seen[0]!.traceparent).toBe(`00-${s.traceId}-${s.spanId}-01`)
    expect(api.seen[0]!.tracestate).toBeUndefined()
  })

  it('two traceparent headers are no parent: one new traceparent goes on', async () => {
    const { tracer, spans } = tracing()
    const { listener, api } = await outbound({ tracer })
    const answer = await rawGet(listener.port, [
      ['traceparent', `00-${TRACE}-${PARENT}-01`],
      ['traceparent', `00-${TRACE.replace('4', '5')}-${PARENT}-01`],
    ])
    expect(answer).toMatch(/^HTTP\/1.1 200/)
    await expectSpans(spans, 1)
    expect(spans[0]!.traceId).not.toBe(TRACE)
    expect(api.seen[0]!.traceparent).toBe(`00-${spans[0]!.traceId}-${spans[0]!.spanId}-01`)
  })

  it('an unsampled parent: nothing is recorded, the upstream still gets the span as parent with flag 00', async () => {
    const { tracer, spans } = tracing()
    const { listener, api } = await outbound({ tracer })
    await httpGet(listener.port, '/', { traceparent: `00-${TRACE}-${PARENT}-00` })
    const sent = api.seen[0]!.traceparent as string
    expect(sent).toMatch(new RegExp(`^00-${TRACE}-[0-9a-f]{16}-00$`))
    expect(sent).not.toContain(PARENT)
    expect(spans).toEqual([])
  })

  it('without a tracer nothing is traced: trace headers pass through untouched, even invalid ones', async () => {
    const { listener, api } = await outbound()
    const hostile = `00-${TRACE.toUpperCase()}-${PARENT}-01`
    await httpGet(listener.port, '/', { traceparent: hostile, tracestate: 'A=1' })
    expect(api.seen[0]!.traceparent).toBe(hostile)
    expect(api.seen[0]!.tracestate).toBe('A=1')
  })
})

/**
 * promtool `input_series` from two scrapes one minute apart: each sample of `families` as
 * `name{labels}` with its value before (0 when absent) and after.
 */
function scrapePairs(
  before: string,
  after: string,
  families: string[],
): { series: string; values: string }[] {
  const samples = (text: string) => {
    const out = new Map<string, string>()
    for (const line of text.split('\n')) {
      const m = /^([a-z_]+)(\{[^}]*\}) (\S+)$/.exec(line)
      if (m !== null && families.includes(m[1]!)) out.set(`${m[1]}${m[2]}`, m[3]!)
    }
    return out
  }
  const was = samples(before)
  return [...samples(after)].map(([series, value]) => ({
    series,
    values: `${was.get(series) ?? 0} ${value}`,
  }))
}

/** Spans end when the response closes, just after the client saw it: wait for them. */
async function expectSpans(spans: FinishedSpan[], count: number): Promise<void> {
  const deadline = Date.now() + 5_000
  while (spans.length < count && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5))
  expect(spans).toHaveLength(count)
}

/** A GET with repeated headers, written on a plain socket (Node's client would merge them). */
function rawGet(port: number, headers: [string, string][]): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1', () => {
      const lines = headers.map(([k, v]) => `${k}: ${v}\r\n`).join('')
      socket.write(`GET / HTTP/1.1\r\nhost: api\r\nconnection: close\r\n${lines}\r\n`)
    })
    let answer = ''
    socket.setEncoding('utf8')
    socket.on('data', (d: string) => {
      answer += d
    })
    socket.on('close', () => resolve(answer))
    socket.on('error', reject)
  })
}
