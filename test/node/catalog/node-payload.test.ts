import { Packr } from 'msgpackr'
import { describe, expect, it } from 'vitest'
import { PayloadTooLargeError } from '../../../src/node/catalog/errors.ts'
import {
  DEFAULT_MAX_PAYLOAD_BYTES,
  decodeNodePayload,
  encodeNodePayload,
  payloadBytes,
} from '../../../src/node/catalog/node-payload.ts'
import { parseServiceDefinition } from '../../../src/node/catalog/service-definition.ts'

const web = parseServiceDefinition(
  {
    name: 'web',
    port: 8080,
    tags: ['v1'],
    weights: { passing: 3, warning: 1 },
    checks: [
      { http: 'http://127.0.0.1:8080/health', interval: '10s' },
      { ttl: '30s', id: 'web-heartbeat', name: 'heartbeat' },
    ],
    connect: {
      sidecarService: {
        port: 21000,
        protocol: 'http',
        upstreams: [{ destinationName: 'db', localBindPort: 9191 }],
      },
    },
  },
  'x',
)
const db = parseServiceDefinition(
  { name: 'db', id: 'db-1', port: 5432, address: '10.0.0.9', meta: { zone: 'a' } },
  'x',
)

describe('node payload', () => {
  it('round-trips what other nodes need, compactly', () => {
    const p = encodeNodePayload([web, db], (id) => (id === 'web-heartbeat' ? 'warning' : undefined))
    expect(payloadBytes(p)).toBeLessThan(120)
    // Survives the gossip codec's msgpack round trip.
    const packr = new Packr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' })
    const r = decodeNodePayload(packr.unpack(packr.pack(p)))
    expect(r).toEqual({
      ok: true,
      services: [
        {
          id: 'web',
          name: 'web',
          port: 8080,
          tags: ['v1'],
          meta: {},
          weights: { passing: 3, warning: 1 },
          sidecar: { port: 21000, protocol: 'http' },
          checks: [
            { id: 'service:web:1', name: "Service 'web' check", status: 'critical' },
            { id: 'web-heartbeat', name: 'heartbeat', status: 'warning' },
          ],
        },
        {
          id: 'db-1',
          name: 'db',
          address: '10.0.0.9',
          port: 5432,
          tags: [],
          meta: { zone: 'a' },
          weights: { passing: 1, warning: 1 },
          checks: [],
        },
      ],
    })
  })

  it('refuses a node that registers too much, with a coded error', () => {
    const many = Array.from({ length: 40 }, (_, i) =>
      parseServiceDefinition(
        { name: `service-${i}`, port: 1000 + i, tags: ['some-tag', 'another-tag'] },
        'x',
      ),
    )
    try {
      encodeNodePayload(many, () => undefined)
      expect.unreachable()
    } catch (err) {
      expect(err).toBeInstanceOf(PayloadTooLargeError)
      expect((err as PayloadTooLargeError).code).toBe('PEERMESH_ERR_CATALOG_PAYLOAD_TOO_LARGE')
      expect((err as PayloadTooLargeError).limit).toBe(DEFAULT_MAX_PAYLOAD_BYTES)
    }
  })

  it('treats a missing payload as no services', () => {
    expect(decodeNodePayload(undefined)).toEqual({ ok: true, services: [] })
  })

  const good = { n: 'web', p: 80 }
  const hostile: [string, unknown][] = [
    ['null', null],
    ['a string', 'svc'],
    ['an array', []],
    ['a future version', { v: 2, s: [] }],
    ['services not an array', { v: 1, s: {} }],
    ['a service that is a number', { v: 1, s: [1] }],
    ['a bad name', { v: 1, s: [{ n: 'Web!', p: 80 }] }],
    ['a missing port', { v: 1, s: [{ n: 'web' }] }],
    ['port out of range', { v: 1, s: [{ n: 'web', p: 70000 }] }],
    ['NaN port', { v: 1, s: [{ n: 'web', p: Number.NaN }] }],
    ['duplicate ids', { v: 1, s: [good, good] }],
    ['bad address', { v: 1, s: [{ ...good, a: '<script>' }] }],
    ['tags not strings', { v: 1, s: [{ ...good, t: [1] }] }],
    ['too many tags', { v: 1, s: [{ ...good, t: Array.from({ length: 33 }, (_, i) => `t${i}`) }] }],
    ['meta value not a string', { v: 1, s: [{ ...good, m: { a: {} } }] }],
    ['meta as array', { v: 1, s: [{ ...good, m: ['x'] }] }],
    ['bad weights', { v: 1, s: [{ ...good, w: [0, 1] }] }],
    ['bad sidecar', { v: 1, s: [{ ...good, x: [0, 0] }] }],
    ['bad check status', { v: 1, s: [{ ...good, c: [[0, 3]] }] }],
    ['bad check id', { v: 1, s: [{ ...good, c: [[-1, 0]] }] }],
    ['check not a tuple', { v: 1, s: [{ ...good, c: [{ id: 0 }] }] }],
    [
      'duplicate check ids',
      {
        v: 1,
        s: [
          {
            ...good,
            c: [
              [0, 0],
              [0, 1],
            ],
          },
        ],
      },
    ],
    ['too many services', { v: 1, s: Array.from({ length: 300 }, (_, i) => ({ n: `s${i}`, p: 1 })) }],
    ['binary', { v: 1, s: [{ ...good, t: [new Uint8Array(4)] }] }],
    ['a class instance', new Date()],
  ]

  it.each(hostile)('rejects %s without throwing', (_why, raw) => {
    const r = decodeNodePayload(raw)
    expect(r.ok).toBe(false)
    if (!r.ok) expect(typeof r.reason).toBe('string')
  })

  it('does not let "__proto__" keys reach a prototype', () => {
    const raw = JSON.parse('{"v":1,"s":[{"n":"web","p":80,"m":{"__proto__":"x"}}]}')
    const r = decodeNodePayload(raw)
    expect(r.ok).toBe(true)
    if (r.ok) {
      expect(Object.getPrototypeOf(r.services[0]!.meta)).toBe(Object.prototype)
      expect(Object.getOwnPropertyDescriptor(r.services[0]!.meta, '__proto__')?.value).toBe('x')
    }
  })
})
