/**
 * The OTLP/HTTP JSON exporter against a local HTTP server playing the collector: the encoding
 * (opentelemetry-proto "JSON Protobuf Encoding"), batching, a bounded queue under a stalled
 * collector, export timeouts, failures, and stop. Timers run on a virtual clock; I/O is real.
 */
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { Registry } from 'prom-client'
import { afterEach, describe, expect, it } from 'vitest'
import {
  encodeExportRequest,
  OtlpHttpExporter,
  type OtlpHttpExporterInit,
  unixNanos,
} from '../../src/proxy/otlp-exporter.ts'
import { type FinishedSpan, SpanKind, SpanStatusCode } from '../../src/proxy/tracing.ts'
import { VirtualClock } from '../sim/virtual-clock.ts'
import { deadPort, memoryLogger, metricValue, waitFor } from './helpers.ts'

interface Received {
  path: string
  contentType: string | undefined
  body: {
    resourceSpans: {
      resource: { attributes: { key: string; value: Record<string, unknown> }[] }
      scopeSpans: { scope: { name: string; version?: string }; spans: Record<string, unknown>[] }[]
    }[]
  }
}

/** A collector: records each request; `mode` decides the answer. */
async function collector(mode: { status?: number; hang?: boolean } = {}) {
  const received: Received[] = []
  const held: http.ServerResponse[] = []
  const server = http.createServer((req, res) => {
    let body = ''
    req.setEncoding('utf8')
    req.on('data', (d: string) => {
      body += d
    })
    req.on('end', () => {
      received.push({ path: req.url ?? '', contentType: req.headers['content-type'], body: JSON.parse(body) })
      if (mode.hang) {
        held.push(res)
        return
      }
      res.writeHead(mode.status ?? 200, { 'content-type': 'application/json' })
      res.end('{}')
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as AddressInfo).port
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  )
  const spanCount = () =>
    received.reduce(
      (n, r) => n + r.body.resourceSpans.flatMap((x) => x.scopeSpans.flatMap((y) => y.spans)).length,
      0,
    )
  return { url: `http://127.0.0.1:${port}`, received, held, mode, spanCount }
}

const cleanups: (() => Promise<void>)[] = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

function exporter(init: Partial<OtlpHttpExporterInit> & { endpoint: string }) {
  const clock = new VirtualClock(0)
  const registry = new Registry()
  const logger = memoryLogger()
  const e = new OtlpHttpExporter({ clock, registry, logger, ...init })
  e.start()
  cleanups.push(() => e.stop())
  return { e, clock, registry, logger }
}

let n = 0
function span(extra: Partial<FinishedSpan> = {}): FinishedSpan {
  n++
  return {
    serviceName: 'web',
    traceId: '4bf92f3577b34da6a3ce929d0e0e4736',
    spanId: n.toString(16).padStart(16, '0'),
    parentSpanId: '00f067aa0ba902b7',
    traceState: undefined,
    name: 'GET',
    kind: SpanKind.CLIENT,
    startMs: 1_700_000_000_000.5,
    endMs: 1_700_000_000_012.25,
    attributes: [
      ['http.request.method', 'GET'],
      ['http.response.status_code', 200],
      ['ratio', 0.5],
      ['ok', true],
    ],
    status: { code: SpanStatusCode.UNSET },
    ...extra,
  }
}

describe('OTLP JSON encoding', () => {
  it('lowerCamelCase keys, hex ids, integer enums, 64-bit integers as decimal strings, one resource per service', () => {
    const body = JSON.parse(
      encodeExportRequest(
        [
          span(),
          span({ serviceName: 'api', kind: SpanKind.SERVER, parentSpanId: undefined, traceState: 'a=1' }),
          span({ status: { code: SpanStatusCode.ERROR, message: '503' } }),
        ],
        [['host.name', 'node-1']],
        '1.2.3',
      ),
    )
    expect(body.resourceSpans).toHaveLength(2)
    const [web, api] = body.resourceSpans
    expect(web.resource.attributes).toEqual([
      { key: 'service.name', value: { stringValue: 'web' } },
      { key: 'host.name', value: { stringValue: 'node-1' } },
      { key: 'service.version', value: { stringValue: '1.2.3' } },
    ])
    expect(web.scopeSpans[0].scope).toEqual({ name: 'peermesh-proxy', version: '1.2.3' })
    expect(web.scopeSpans[0].spans).toHaveLength(2)
    const s = web.scopeSpans[0].spans[0]
    expect(s).toEqual({
      traceId: '4bf92f3577b34da6a3ce929d0e0e4736',
      spanId: expect.stringMatching(/^[0-9a-f]{16}$/),
      parentSpanId: '00f067aa0ba902b7',
      name: 'GET',
      kind: 3,
      startTimeUnixNano: '1700000000000500000',
      endTimeUnixNano: '1700000000012250000',
      attributes: [
        { key: 'http.request.method', value: { stringValue: 'GET' } },
        { key: 'http.response.status_code', value: { intValue: '200' } },
        { key: 'ratio', value: { doubleValue: 0.5 } },
        { key: 'ok', value: { boolValue: true } },
      ],
      status: { code: 0 },
    })
    expect(web.scopeSpans[0].spans[1].status).toEqual({ code: 2, message: '503' })
    const a = api.scopeSpans[0].spans[0]
    expect(a.kind).toBe(2)
    expect(a.traceState).toBe('a=1')
    expect('parentSpanId' in a).toBe(false)
  })

  it('unix nanoseconds keep sub-millisecond precision', () => {
    expect(unixNanos(1_700_000_000_123.5)).toBe('1700000000123500000')
    expect(unixNanos(0)).toBe('0')
    expect(unixNanos(1.000001)).toBe('1000001')
  })
})

describe('OtlpHttpExporter', () => {
  it('a batch leaves after the scheduled delay, POSTed as JSON to {endpoint}/v1/traces', async () => {
    const c = await collector()
    const { e, clock, registry } = exporter({ endpoint: `${c.url}/`, scheduledDelayMs: 1_000 })
    e.export(span())
    e.export(span())
    clock.advance(999)
    expect(e.stats.requests).toBe(0) // not before the delay
    clock.advance(1)
    await waitFor(async () => c.received.length === 1)
    expect(c.received[0]!.path).toBe('/v1/traces')
    expect(c.received[0]!.contentType).toBe('application/json')
    expect(c.spanCount()).toBe(2)
    await waitFor(async () => e.stats.exported === 2)
    expect(await metricValue(registry, 'peermesh_tracing_spans_exported_total')).toBe(2)
  })

  it('a full batch leaves at once; the rest waits for the delay or for stop', async () => {
    const c = await collector()
    const { e, clock } = exporter({ endpoint: c.url, maxExportBatchSize: 3, scheduledDelayMs: 60_000 })
    for (let i = 0; i < 7; i++) e.export(span())
    clock.flush()
    await waitFor(async () => c.received.length === 1)
    // The next full batch goes as soon as the first is answered.
    await waitFor(async () => {
      clock.flush()
      return c.received.length === 2
    })
    expect(c.received.map((r) => r.body.resourceSpans[0]!.scopeSpans[0]!.spans.length)).toEqual([3, 3])
    expect(e.queued).toBe(1)
    await e.stop()
    expect(c.spanCount()).toBe(7)
    expect(e.stats).toMatchObject({ exported: 7, droppedQueueFull: 0, droppedExportFailed: 0 })
  })

  it('a stalled collector: export() never blocks, the queue stays bounded and drops are counted', async () => {
    const c = await collector({ hang: true })
    const { e, clock, registry } = exporter({
      endpoint: c.url,
      maxQueueSize: 4,
      maxExportBatchSize: 2,
      scheduledDelayMs: 10,
      exportTimeoutMs: 5_000,
    })
    e.export(span())
    e.export(span())
    clock.flush()
    await waitFor(async () => c.held.length === 1) // one batch in flight, unanswered
    for (let i = 0; i < 1_000; i++) e.export(span()) // returns at once, whatever the collector does
    expect(e.queued).toBe(4)
    expect(e.stats.droppedQueueFull).toBe(996)
    expect(
      await metricValue(registry, 'peermesh_tracing_spans_dropped_total', { reason: 'queue_full' }),
    ).toBe(996)
    // The export timeout cuts the stalled request: its batch is dropped, the next one goes.
    clock.advance(5_000)
    await waitFor(async () => e.stats.droppedExportFailed === 2)
    expect(
      await metricValue(registry, 'peermesh_tracing_spans_dropped_total', { reason: 'export_failed' }),
    ).toBe(2)
    await waitFor(async () => {
      clock.flush()
      return c.held.length === 2
    })
    // The collector recovers: what is queued is delivered.
    c.mode.hang = false
    for (const res of c.held.splice(0)) res.end('{}')
    await waitFor(async () => {
      clock.advance(10)
      return e.queued === 0 && e.stats.exported === 4
    })
  })

  it('a refusing collector and an absent one: batches dropped and counted, one warning per outage', async () => {
    const refusing = await collector({ status: 503 })
    const r = exporter({ endpoint: refusing.url, scheduledDelayMs: 10 })
    for (let round = 0; round < 3; round++) {
      r.e.export(span())
      r.clock.advance(10)
      await waitFor(async () => r.e.stats.droppedExportFailed === round + 1)
    }
    expect(r.logger.lines.filter((l) => l.level === 'warn')).toHaveLength(1)
    expect(r.logger.lines[0]!.fields['error']).toBe('HTTP 503')
    refusing.mode.status = 200
    r.e.export(span())
    r.clock.advance(10)
    await waitFor(async () => r.e.stats.exported === 1)
    expect(r.logger.lines.map((l) => l.level)).toEqual(['warn', 'info'])

    const absent = exporter({ endpoint: `http://127.0.0.1:${await deadPort()}`, scheduledDelayMs: 10 })
    absent.e.export(span())
    absent.clock.advance(10)
    await waitFor(async () => absent.e.stats.droppedExportFailed === 1)
    expect(absent.logger.lines[0]!.fields['error']).toBe('ECONNREFUSED')
  })

  it('stop sends what is queued; a fired signal cuts a stalled export and drops the rest', async () => {
    const c = await collector({ hang: true })
    const { e, clock } = exporter({ endpoint: c.url, maxExportBatchSize: 2, scheduledDelayMs: 10 })
    for (let i = 0; i < 5; i++) e.export(span())
    clock.flush()
    await waitFor(async () => c.held.length === 1)
    const abort = new AbortController()
    const stopped = e.stop({ signal: abort.signal })
    abort.abort()
    await stopped
    expect(e.stats).toMatchObject({ exported: 0, droppedExportFailed: 5 })
    e.export(span()) // after stop: dropped, never sent
    expect(e.stats.droppedQueueFull).toBe(1)
    expect(c.received).toHaveLength(1)
  })

  it.each([
    ['endpoint', { endpoint: 'ftp://c:21' }, 'otlpEndpoint'],
    ['credentials', { endpoint: 'http://u:p@c:4318' }, 'otlpEndpoint'],
    ['queue size', { endpoint: 'http://c:4318', maxQueueSize: 0 }, 'maxQueueSize'],
    [
      'batch over queue',
      { endpoint: 'http://c:4318', maxQueueSize: 4, maxExportBatchSize: 8 },
      'maxExportBatchSize',
    ],
    ['timeout', { endpoint: 'http://c:4318', exportTimeoutMs: -1 }, 'exportTimeoutMs'],
  ])('refuses a bad %s naming the field', (_what, init, field) => {
    expect(() => new OtlpHttpExporter(init)).toThrow(
      expect.objectContaining({ code: 'PEERMESH_ERR_INVALID_PROXY_CONFIG', field }),
    )
  })
})
