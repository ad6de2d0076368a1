/**
 * W3C Trace Context parsing against hostile input (Trace Context Level 1 §3.2, §3.3), sampling,
 * and the spans a Tracer builds (OpenTelemetry HTTP semantic conventions).
 */
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import {
  type FinishedSpan,
  formatTraceparent,
  type IdGenerator,
  MAX_ATTRIBUTE_LENGTH,
  otlpEndpointProblem,
  parentFromHeaders,
  parseTraceparent,
  parseTracestate,
  randomIdGenerator,
  sampledByRatio,
  SpanKind,
  SpanStatusCode,
  Tracer,
  tracesUrl,
} from '../../src/proxy/tracing.ts'
import { VirtualClock } from '../sim/virtual-clock.ts'

const TRACE = '4bf92f3577b34da6a3ce929d0e0e4736'
const PARENT = '00f067aa0ba902b7'
const VALID = `00-${TRACE}-${PARENT}-01`

/** Sequential ids, so tests can name them. */
function countingIds(): IdGenerator {
  let t = 0
  let s = 0
  return {
    traceId: () => (++t).toString(16).padStart(32, 'a'),
    spanId: () => (++s).toString(16).padStart(16, 'b'),
  }
}

function tracer(options: { sampleRatio?: number; clock?: VirtualClock } = {}) {
  const spans: FinishedSpan[] = []
  const t = new Tracer({
    serviceName: 'web',
    exporter: { export: (s) => spans.push(s) },
    ids: countingIds(),
    ...options,
  })
  return { tracer: t, spans }
}

const attrs = (s: FinishedSpan) => Object.fromEntries(s.attributes)

describe('traceparent (W3C Trace Context §3.2)', () => {
  it('reads a valid version-00 header', () => {
    expect(parseTraceparent(VALID)).toEqual({ traceId: TRACE, spanId: PARENT, sampled: true })
    expect(parseTraceparent(`00-${TRACE}-${PARENT}-00`)?.sampled).toBe(false)
    // Only bit 0 is "sampled"; other flag bits are kept out of it.
    expect(parseTraceparent(`00-${TRACE}-${PARENT}-02`)?.sampled).toBe(false)
    expect(parseTraceparent(`00-${TRACE}-${PARENT}-03`)?.sampled).toBe(true)
  })

  it('reads what version 00 defines of a later version, which may be longer (§4.3)', () => {
    expect(parseTraceparent(`01-${TRACE}-${PARENT}-01`)?.traceId).toBe(TRACE)
    expect(parseTraceparent(`cc-${TRACE}-${PARENT}-01-what-the-future-holds`)?.spanId).toBe(PARENT)
    expect(parseTraceparent(`cc-${TRACE}-${PARENT}-01x`)).toBeUndefined()
  })

  it.each([
    ['absent', undefined],
    ['not a string', 42],
    ['two headers (an array)', [VALID, VALID]],
    ['two headers joined by Node', `${VALID}, ${VALID}`],
    ['empty', ''],
    ['version ff', `ff-${TRACE}-${PARENT}-01`],
    ['version 00 with more after it', `${VALID}-extra`],
    ['upper-case ids', `00-${TRACE.toUpperCase()}-${PARENT}-01`],
    ['upper-case version', `0A-${TRACE}-${PARENT}-01`],
    ['non-hex trace id', `00-${TRACE.slice(0, 31)}g-${PARENT}-01`],
    ['non-hex flags', `00-${TRACE}-${PARENT}-0x`],
    ['all-zero trace id', `00-${'0'.repeat(32)}-${PARENT}-01`],
    ['all-zero parent id', `00-${TRACE}-${'0'.repeat(16)}-01`],
    ['short trace id', `00-${TRACE.slice(1)}-${PARENT}-01`],
    ['wrong separators', `00_${TRACE}_${PARENT}_01`],
    ['leading space', ` ${VALID}`.slice(0, 55)],
    ['unicode digits', `00-${'٣'.repeat(32)}-${PARENT}-01`],
    ['a huge value', `00-${TRACE}-${PARENT}-01${'a'.repeat(100_000)}`],
  ])('ignores %s', (_why, value) => {
    expect(parseTraceparent(value)).toBeUndefined()
  })

  it('never throws, and accepts only what formats back to itself (version 00)', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string({ maxLength: 80 }), fc.stringMatching(/^[0-9a-f-]{55}$/)), (s) => {
        const p = parseTraceparent(s)
        if (p !== undefined && s.startsWith('00-')) {
          const flags = Number.parseInt(s.slice(53), 16)
          expect(s).toBe(`00-${p.traceId}-${p.spanId}-${s.slice(53)}`)
          expect(p.sampled).toBe((flags & 1) === 1)
        }
      }),
      { numRuns: 2_000 },
    )
  })

  it('formats a version-00 header', () => {
    expect(formatTraceparent(TRACE, PARENT, true)).toBe(VALID)
    expect(formatTraceparent(TRACE, PARENT, false)).toBe(`00-${TRACE}-${PARENT}-00`)
  })
})

describe('tracestate (§3.3)', () => {
  it('keeps valid members, trimming spaces and empty members', () => {
    expect(parseTracestate('rojo=00f067aa0ba902b7,congo=t61rcWkgMzE')).toBe(
      'rojo=00f067aa0ba902b7,congo=t61rcWkgMzE',
    )
    expect(parseTracestate(' a=1 ,\t, b=2\t')).toBe('a=1,b=2')
    expect(parseTracestate(['a=1', 'b=2'])).toBe('a=1,b=2') // several headers
    expect(parseTracestate('tenant1@vendor=x')).toBe('tenant1@vendor=x')
    expect(parseTracestate('k=with space inside')).toBe('k=with space inside')
  })

  it.each([
    ['absent', undefined],
    ['empty', ''],
    ['only commas', ' , ,'],
    ['upper-case key', 'Rojo=1'],
    ['no value', 'a='],
    ['no equals sign', 'a'],
    ['an equals sign in the value', 'a=b=c'],
    ['a control character', 'a=b\u0001'],
    ['non-ASCII', 'a=ü'],
    ['a key twice', 'a=1,a=2'],
    ['33 members', Array.from({ length: 33 }, (_, i) => `k${i}=v`).join(',')],
    ['a key too long', `${'k'.repeat(257)}=v`],
    ['a huge header', `a=${'x'.repeat(20_000)}`],
  ])('drops it whole when %s', (_why, value) => {
    expect(parseTracestate(value)).toBeUndefined()
  })

  it('cuts a value over 512 characters: long members first, then from the end (§3.3.1.5)', () => {
    const long = `big=${'x'.repeat(200)}`
    const small = Array.from({ length: 30 }, (_, i) => `k${String(i).padStart(2, '0')}=${'v'.repeat(12)}`)
    const out = parseTracestate([long, ...small].join(','))!
    expect(out.length).toBeLessThanOrEqual(512)
    expect(out).not.toContain('big=')
    expect(out.startsWith('k00=')).toBe(true)
    expect(small.join(',').startsWith(out)).toBe(true)
  })

  it('is read only beside a valid traceparent', () => {
    expect(parentFromHeaders({ traceparent: VALID, tracestate: 'a=1' })).toEqual({
      traceId: TRACE,
      spanId: PARENT,
      sampled: true,
      traceState: 'a=1',
    })
    expect(parentFromHeaders({ traceparent: 'junk', tracestate: 'a=1' })).toBeUndefined()
    expect(parentFromHeaders({ traceparent: VALID, tracestate: 'A=1' })?.traceState).toBeUndefined()
  })
})

describe('sampling', () => {
  it('TraceIdRatioBased: decided by the id, so every node agrees, close to the ratio', () => {
    const ids = randomIdGenerator()
    let sampled = 0
    for (let i = 0; i < 20_000; i++) if (sampledByRatio(ids.traceId(), 0.25)) sampled++
    expect(sampled / 20_000).toBeGreaterThan(0.23)
    expect(sampled / 20_000).toBeLessThan(0.27)
    expect(sampledByRatio(`${'0'.repeat(19)}${'f'.repeat(13)}`, 0.999)).toBe(false)
    expect(sampledByRatio(`${'f'.repeat(19)}${'0'.repeat(12)}1`, 0.001)).toBe(true)
    expect(sampledByRatio(TRACE, 0)).toBe(false)
    expect(sampledByRatio(TRACE, 1)).toBe(true)
  })

  it('random ids are lower-case hex of the right length and not all zero', () => {
    const ids = randomIdGenerator()
    const seen = new Set<string>()
    for (let i = 0; i < 1_000; i++) {
      const t = ids.traceId()
      expect(t).toMatch(/^[0-9a-f]{32}$/)
      expect(ids.spanId()).toMatch(/^[0-9a-f]{16}$/)
      seen.add(t)
    }
    expect(seen.size).toBe(1_000)
  })

  it('a parent decides (ParentBased): sampled parents are recorded even at ratio 0, unsampled ones never', () => {
    const { tracer: t, spans } = tracer({ sampleRatio: 0 })
    t.startClientSpan({ traceparent: VALID }, { method: 'GET' }).end({ statusCode: 200 })
    const unsampled = t.startClientSpan({ traceparent: `00-${TRACE}-${PARENT}-00` }, { method: 'GET' })
    unsampled.end({ statusCode: 200 })
    const fresh = t.startClientSpan({}, { method: 'GET' })
    fresh.end({ statusCode: 200 })
    expect(spans.map((s) => s.parentSpanId)).toEqual([PARENT])
    // Unrecorded spans still propagate, with flag 00.
    expect(unsampled.traceparent).toBe(`00-${TRACE}-${unsampled.spanId}-00`)
    expect(fresh.traceparent).toMatch(/-00$/)
  })

  it('rejects a sample ratio outside [0, 1]', () => {
    for (const sampleRatio of [-0.1, 1.5, Number.NaN])
      expect(() => tracer({ sampleRatio })).toThrow(expect.objectContaining({ field: 'sampleRatio' }))
  })
})

describe('Tracer spans', () => {
  it('a CLIENT span continues the incoming trace and is the parent of the request sent on', () => {
    const clock = new VirtualClock(1_000)
    clock.wallNow = () => clock.now() + 1_700_000_000_000
    const { tracer: t, spans } = tracer({ clock })
    const span = t.startClientSpan(
      { traceparent: VALID, tracestate: 'rojo=1' },
      {
        method: 'GET',
        path: '/users/42',
        serverAddress: 'api',
        protocolVersion: '1.1',
        route: '0',
        upstream: 'api',
        sourceService: 'web',
      },
    )
    expect(span.traceId).toBe(TRACE)
    expect(span.parentSpanId).toBe(PARENT)
    expect(span.traceparent).toBe(`00-${TRACE}-${span.spanId}-01`)
    expect(span.traceState).toBe('rojo=1')
    clock.advance(250)
    span.end({ statusCode: 200, attributes: { 'peermesh.attempts': 1 } })
    span.end({ statusCode: 500 }) // a second end does nothing
    expect(spans).toHaveLength(1)
    const s = spans[0]!
    expect(s).toMatchObject({
      serviceName: 'web',
      traceId: TRACE,
      spanId: span.spanId,
      parentSpanId: PARENT,
      traceState: 'rojo=1',
      name: 'GET',
      kind: SpanKind.CLIENT,
      startMs: 1_700_000_001_000,
      endMs: 1_700_000_001_250,
      status: { code: SpanStatusCode.UNSET },
    })
    expect(attrs(s)).toEqual({
      'http.request.method': 'GET',
      'url.path': '/users/42',
      'server.address': 'api',
      'network.protocol.name': 'http',
      'network.protocol.version': '1.1',
      'peermesh.route': '0',
      'peermesh.upstream': 'api',
      'peermesh.source_service': 'web',
      'http.response.status_code': 200,
      'peermesh.attempts': 1,
    })
  })

  it('a hostile traceparent starts a new trace, with no parent and no tracestate', () => {
    const { tracer: t, spans } = tracer()
    const span = t.startServerSpan(
      { traceparent: `00-${TRACE.toUpperCase()}-${PARENT}-01`, tracestate: 'a=1' },
      { method: 'GET' },
    )
    span.end({ statusCode: 200 })
    expect(span.traceId).not.toBe(TRACE)
    expect(span.traceId).toMatch(/^[0-9a-f]{32}$/)
    expect(spans[0]!.parentSpanId).toBeUndefined()
    expect(spans[0]!.traceState).toBeUndefined()
    expect(spans[0]!.kind).toBe(SpanKind.SERVER)
  })

  it.each([
    ['CLIENT 404', 'client', { statusCode: 404 }, SpanStatusCode.ERROR, '404'],
    ['SERVER 404', 'server', { statusCode: 404 }, SpanStatusCode.UNSET, undefined],
    ['SERVER 503', 'server', { statusCode: 503 }, SpanStatusCode.ERROR, '503'],
    ['CLIENT 200', 'client', { statusCode: 200 }, SpanStatusCode.UNSET, undefined],
    ['a proxy timeout', 'client', { statusCode: 504, error: 'timeout' }, SpanStatusCode.ERROR, 'timeout'],
    ['a cut exchange', 'client', { error: 'client_closed' }, SpanStatusCode.ERROR, 'client_closed'],
    ['CLIENT gRPC NOT_FOUND', 'client', { statusCode: 200, grpcStatus: 5 }, SpanStatusCode.ERROR, undefined],
    ['SERVER gRPC NOT_FOUND', 'server', { statusCode: 200, grpcStatus: 5 }, SpanStatusCode.UNSET, undefined],
    [
      'SERVER gRPC UNAVAILABLE',
      'server',
      { statusCode: 200, grpcStatus: 14 },
      SpanStatusCode.ERROR,
      undefined,
    ],
  ] as const)('status of %s', (_what, kind, outcome, code, errorType) => {
    const { tracer: t, spans } = tracer()
    const span =
      kind === 'client'
        ? t.startClientSpan({}, { method: 'POST' })
        : t.startServerSpan({}, { method: 'POST' })
    span.end(outcome)
    expect(spans[0]!.status.code).toBe(code)
    expect(attrs(spans[0]!)['error.type']).toBe(errorType)
    if ('grpcStatus' in outcome) expect(attrs(spans[0]!)['rpc.grpc.status_code']).toBe(outcome.grpcStatus)
  })

  it('bounds what a client controls: unknown methods are _OTHER, long values are cut', () => {
    const { tracer: t, spans } = tracer()
    t.startServerSpan(
      {},
      { method: 'BREW', path: `/${'p'.repeat(5_000)}`, serverAddress: 'h'.repeat(3_000) },
    ).end()
    const a = attrs(spans[0]!)
    expect(spans[0]!.name).toBe('HTTP')
    expect(a['http.request.method']).toBe('_OTHER')
    expect(a['http.request.method_original']).toBe('BREW')
    expect((a['url.path'] as string).length).toBe(MAX_ATTRIBUTE_LENGTH)
    expect((a['server.address'] as string).length).toBe(MAX_ATTRIBUTE_LENGTH)
  })

  it('an exporter that throws does not reach the request path', () => {
    const t = new Tracer({
      serviceName: 'web',
      exporter: {
        export: () => {
          throw new Error('broken exporter')
        },
      },
    })
    expect(() => t.startClientSpan({}, { method: 'GET' }).end({ statusCode: 200 })).not.toThrow()
  })
})

describe('OTLP endpoint setting', () => {
  it.each(['http://127.0.0.1:4318', 'https://collector.example:4318/', 'http://[::1]:4318/otlp'])(
    'accepts %s',
    (url) => expect(otlpEndpointProblem(url)).toBeUndefined(),
  )

  it.each([
    ['empty', ''],
    ['not a URL', 'collector:4318'.replace(':', ' ')],
    ['another scheme', 'ftp://collector:4318'],
    ['javascript', 'javascript:alert(1)'],
    ['credentials', 'http://user:secret@collector:4318'],
    ['a query', 'http://collector:4318/?token=x'],
    ['a fragment', 'http://collector:4318/#x'],
    ['too long', `http://c/${'x'.repeat(3_000)}`],
    ['not a string', 4318],
  ])('refuses %s', (_why, value) => expect(otlpEndpointProblem(value)).toBeTypeOf('string'))

  it('spans go to {endpoint}/v1/traces', () => {
    expect(tracesUrl('http://127.0.0.1:4318').href).toBe('http://127.0.0.1:4318/v1/traces')
    expect(tracesUrl('http://127.0.0.1:4318/').href).toBe('http://127.0.0.1:4318/v1/traces')
    expect(tracesUrl('https://c.example/otlp/').href).toBe('https://c.example/otlp/v1/traces')
  })
})
