/**
 * OpenTelemetry spans and golden metrics through real agents and sidecars (issue #17): agent `ta`
 * runs with `--otlp-endpoint` pointing at an OTLP/HTTP receiver in this test; agent `tb` runs
 * without it. A request carrying a `traceparent` through ta's web -> api sidecars produces two
 * spans of that trace: web's outbound CLIENT span, child of the caller's, and api's inbound SERVER
 * span, child of the CLIENT span; api's app sees the same trace with the SERVER span as parent.
 * Through tb's outbound nothing is traced and the header reaches api's inbound untouched.
 * /metrics shows the requests by router route.
 */
import { createServer, type Server } from 'node:http'
import http from 'node:http'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type AgentProcess, authHeaders, freePort, runCli, TestCluster, waitFor } from './harness.ts'
import { registerService, stopApp } from './mesh-helpers.ts'

interface OtlpKeyValue {
  key: string
  value: { stringValue?: string; intValue?: string }
}
interface OtlpSpan {
  traceId: string
  spanId: string
  parentSpanId?: string
  name: string
  kind: number
  startTimeUnixNano: string
  endTimeUnixNano: string
  attributes: OtlpKeyValue[]
  status: { code: number }
}
interface ReceivedSpan extends OtlpSpan {
  resource: Record<string, string | undefined>
}

const TRACE = '0af7651916cd43dd8448eb211c80319c'
const PARENT = 'b7ad6b7169203331'
const OFF_TRACE = '5ad7651916cd43dd8448eb211c80319d'

describe('tracing and golden metrics through the sidecars (end to end, 2 agent processes)', () => {
  const cluster = new TestCluster()
  const servers: Server[] = []
  const spans: ReceivedSpan[] = []
  const exportRequests: { path: string; contentType: string | undefined }[] = []
  /** The headers api's app saw, by request path. */
  const seenByApi = new Map<string, http.IncomingHttpHeaders>()
  let ta: AgentProcess
  let tb: AgentProcess
  let webUpstream = 0
  let web2Upstream = 0

  const attr = (s: OtlpSpan, key: string) => {
    const v = s.attributes.find((a) => a.key === key)?.value
    return v?.stringValue ?? v?.intValue
  }

  const get = (port: number, path: string, headers: Record<string, string>) =>
    new Promise<number>((resolve, reject) => {
      http
        .get({ host: '127.0.0.1', port, path, headers }, (res) => {
          res.resume()
          res.on('end', () => resolve(res.statusCode ?? 0))
        })
        .on('error', reject)
    })

  const serve = async (port: number, handler: http.RequestListener) => {
    const server = createServer(handler)
    await new Promise<void>((r) => server.listen(port, '127.0.0.1', r))
    servers.push(server)
  }

  beforeAll(async () => {
    // The OTLP/HTTP receiver (a collector's part that matters here).
    const receiverPort = await freePort()
    await serve(receiverPort, (req, res) => {
      let body = ''
      req.setEncoding('utf8')
      req.on('data', (d: string) => {
        body += d
      })
      req.on('end', () => {
        exportRequests.push({ path: req.url ?? '', contentType: req.headers['content-type'] })
        const parsed = JSON.parse(body) as {
          resourceSpans: {
            resource: { attributes: OtlpKeyValue[] }
            scopeSpans: { spans: OtlpSpan[] }[]
          }[]
        }
        for (const rs of parsed.resourceSpans) {
          const resource = Object.fromEntries(rs.resource.attributes.map((a) => [a.key, a.value.stringValue]))
          for (const ss of rs.scopeSpans) for (const s of ss.spans) spans.push({ ...s, resource })
        }
        res.writeHead(200, { 'content-type': 'application/json' })
        res.end('{}')
      })
    })

    const key = await cluster.writeClusterKey()
    ta = cluster.agent({
      name: 'ta',
      clusterKeyFile: key,
      extraArgs: ['--bootstrap', '--otlp-endpoint', `http://127.0.0.1:${receiverPort}`],
    })
    await ta.start()
    const seed = (await ta.self())!.addresses[0]!
    tb = cluster.agent({ name: 'tb', clusterKeyFile: key, seeds: [seed] })
    await tb.start()
    await cluster.waitForManagementToken()

    const put = async (path: string, body: object, method = 'PUT') => {
      const res = await fetch(`http://${ta.http}${path}`, {
        method,
        headers: { ...authHeaders(), 'content-type': 'application/json' },
        body: JSON.stringify(body),
      })
      expect(res.status, await res.text()).toBe(200)
    }
    await put('/v1/config', { Kind: 'service-defaults', Name: 'api', Protocol: 'http' })
    await put('/v1/config', {
      Kind: 'service-router',
      Name: 'api',
      Routes: [{ Match: { HTTP: { PathPrefix: '/orders/' } }, Destination: { Service: 'api' } }],
    })
    await put('/v1/connect/intentions', { source: '*', destination: 'api', action: 'allow' }, 'POST')

    const [apiPort, apiInbound, webPort, webInbound, web2Port, web2Inbound] = await Promise.all(
      Array.from({ length: 6 }, () => freePort()),
    )
    ;[webUpstream, web2Upstream] = await Promise.all([freePort(), freePort()])
    await serve(apiPort!, (req, res) => {
      seenByApi.set(req.url ?? '', req.headers)
      req.resume()
      res.statusCode = req.url?.endsWith('/fail') ? 500 : 200
      res.end('api')
    })
    await registerService(ta, {
      name: 'api',
      port: apiPort,
      address: '127.0.0.1',
      connect: { sidecarService: { port: apiInbound } },
    })
    await registerService(ta, {
      name: 'web',
      port: webPort,
      address: '127.0.0.1',
      connect: {
        sidecarService: {
          port: webInbound,
          upstreams: [{ destinationName: 'api', localBindPort: webUpstream }],
        },
      },
    })
    await registerService(tb, {
      name: 'web2',
      port: web2Port,
      address: '127.0.0.1',
      connect: {
        sidecarService: {
          port: web2Inbound,
          upstreams: [{ destinationName: 'api', localBindPort: web2Upstream }],
        },
      },
    })
    for (const port of [webUpstream, web2Upstream]) {
      await waitFor(
        `api reachable through the sidecar on ${port}`,
        async () => ((await get(port, '/ready', {}).catch(() => 0)) === 200 ? true : undefined),
        90_000,
        250,
      )
    }
  }, 240_000)

  afterAll(async () => {
    for (const s of servers) await stopApp(s)
    await cluster.close()
  })

  it("a request's traceparent is continued: a span of that trace reaches the collector, and the app's parent is the proxy span", async () => {
    const status = await get(webUpstream, '/orders/42', {
      traceparent: `00-${TRACE}-${PARENT}-01`,
      tracestate: 'vendor=abc',
    })
    expect(status).toBe(200)
    const seen = seenByApi.get('/orders/42')!
    const m = /^00-([0-9a-f]{32})-([0-9a-f]{16})-01$/.exec(String(seen.traceparent))
    expect(m, String(seen.traceparent)).not.toBeNull()
    expect(m![1]).toBe(TRACE)
    expect(m![2]).not.toBe(PARENT)
    expect(seen.tracestate).toBe('vendor=abc')

    // api's inbound SERVER span is the app's parent; web's outbound CLIENT span is its parent,
    // and the caller's span is the CLIENT span's parent.
    const server = await waitFor(
      'the inbound span at the OTLP receiver',
      async () => spans.find((s) => s.spanId === m![2]),
      15_000,
      50,
    )
    expect(server.traceId).toBe(TRACE)
    expect(server.kind).toBe(2) // SERVER
    expect(server.resource['service.name']).toBe('api')
    expect(attr(server, 'peermesh.source_service')).toBe('web')
    expect(attr(server, 'url.path')).toBe('/orders/42')
    expect(attr(server, 'http.response.status_code')).toBe('200')
    const span = await waitFor(
      'the outbound span at the OTLP receiver',
      async () => spans.find((s) => s.spanId === server.parentSpanId),
      15_000,
      50,
    )
    expect(exportRequests[0]).toEqual({ path: '/v1/traces', contentType: 'application/json' })
    expect(span.traceId).toBe(TRACE)
    expect(span.parentSpanId).toBe(PARENT)
    expect(span.kind).toBe(3) // CLIENT
    expect(span.name).toBe('GET')
    expect(span.resource['service.name']).toBe('web')
    expect(span.resource['host.name']).toBe('ta')
    expect(attr(span, 'http.request.method')).toBe('GET')
    expect(attr(span, 'url.path')).toBe('/orders/42')
    expect(attr(span, 'http.response.status_code')).toBe('200')
    expect(attr(span, 'peermesh.route')).toBe('0')
    expect(attr(span, 'peermesh.upstream')).toBe('api')
    expect(attr(span, 'peermesh.source_service')).toBe('web')
    expect(span.status.code).toBe(0)
    const start = BigInt(span.startTimeUnixNano)
    const end = BigInt(span.endTimeUnixNano)
    expect(end >= start).toBe(true)
    // Wall-clock nanoseconds, within a minute of now.
    expect(Number(start / 1_000_000n)).toBeGreaterThan(Date.now() - 60_000)
  }, 60_000)

  it('a request without a traceparent starts a trace; a 5xx is an error span', async () => {
    expect(await get(webUpstream, '/fail', {})).toBe(500)
    const seen = seenByApi.get('/fail')!
    const [, traceId, spanId] = /^00-([0-9a-f]{32})-([0-9a-f]{16})-01$/.exec(String(seen.traceparent)) ?? []
    const server = await waitFor(
      'the 5xx inbound span',
      async () => spans.find((s) => s.spanId === spanId),
      15_000,
      50,
    )
    expect(server.traceId).toBe(traceId)
    expect(server.kind).toBe(2) // SERVER
    expect(server.status.code).toBe(2) // ERROR: a 5xx is the server's error
    const span = await waitFor(
      'the 5xx outbound span',
      async () => spans.find((s) => s.spanId === server.parentSpanId),
      15_000,
      50,
    )
    expect(span.traceId).toBe(traceId)
    expect(span.kind).toBe(3) // CLIENT
    expect(span.parentSpanId).toBeUndefined()
    expect(span.status.code).toBe(2) // ERROR
    expect(attr(span, 'peermesh.route')).toBe('default')
  }, 60_000)

  it("with tracing off (tb) its outbound traces nothing: the traceparent reaches api's inbound untouched, no web2 span is sent", async () => {
    const sent = `00-${OFF_TRACE}-${PARENT}-01`
    expect(await get(web2Upstream, '/untraced', { traceparent: sent })).toBe(200)
    // api's inbound (on ta, tracing on) continues the caller's span itself: tb added none between.
    const seen = String(seenByApi.get('/untraced')!.traceparent).split('-')
    expect(seen[1]).toBe(OFF_TRACE)
    const server = await waitFor(
      'the inbound span',
      async () => spans.find((s) => s.spanId === seen[2]),
      15_000,
      50,
    )
    expect(server.parentSpanId).toBe(PARENT)
    // A later traced request's span arriving shows the receiver is caught up: none of tb's came.
    expect(await get(webUpstream, '/after', {})).toBe(200)
    const after = String(seenByApi.get('/after')!.traceparent).split('-')[2]
    await waitFor('the later span', async () => spans.find((s) => s.spanId === after), 15_000, 50)
    expect(spans.filter((s) => s.resource['service.name'] === 'web2')).toEqual([])
    expect(spans.filter((s) => s.traceId === OFF_TRACE && s.resource['service.name'] !== 'api')).toEqual([])
    const metricsB = await (await fetch(`http://${tb.http}/metrics`)).text()
    expect(metricsB).not.toContain('peermesh_tracing_spans_exported_total')
  }, 60_000)

  it('/metrics shows the golden signals per upstream and route, and the spans exported', async () => {
    const text = await (await fetch(`http://${ta.http}/metrics`)).text()
    const sample = (name: string, labels: string[]) =>
      text
        .split('\n')
        .filter((l) => l.startsWith(`${name}{`) && labels.every((x) => l.includes(x)))
        .reduce((sum, l) => sum + Number(l.slice(l.lastIndexOf(' ') + 1)), 0)
    const web = ['service="web"', 'direction="outbound"', 'upstream="api"']
    expect(sample('peermesh_proxy_requests_total', [...web, 'route="0"'])).toBe(1)
    expect(
      sample('peermesh_proxy_responses_total', [...web, 'route="0"', 'code="200"', 'grpc_status=""']),
    ).toBe(1)
    expect(
      sample('peermesh_proxy_responses_total', [...web, 'route="default"', 'code="500"', 'class="5xx"']),
    ).toBe(1)
    expect(
      sample('peermesh_proxy_request_duration_seconds_count', [...web, 'route="0"', 'class="2xx"']),
    ).toBe(1)
    expect(text).toMatch(
      /^peermesh_proxy_request_duration_seconds_bucket\{le="\+Inf",[^}]*upstream="api",route="0",class="2xx"\} 1$/m,
    )
    await waitFor(
      'the exported-spans counter',
      async () => {
        const t = await (await fetch(`http://${ta.http}/metrics`)).text()
        const m = /^peermesh_tracing_spans_exported_total (\d+)$/m.exec(t)
        return m !== null && Number(m[1]) >= 3 ? true : undefined
      },
      15_000,
      100,
    )
  }, 60_000)

  it('a bad --otlp-endpoint stops the agent before it starts, naming the flag', async () => {
    for (const bad of ['ftp://127.0.0.1:4318', 'http://user:pw@127.0.0.1:4318', 'not-a-url']) {
      const r = await runCli(['agent', '--otlp-endpoint', bad, '--data-dir', `${cluster.dir}/never`])
      expect(r.code).toBe(1)
      expect(r.stderr.trim().split('\n')).toHaveLength(1)
      expect(r.stderr).toMatch(/^peermesh: --otlp-endpoint: /)
    }
  }, 60_000)
})
