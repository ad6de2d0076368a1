import { describe, expect, it } from 'vitest'
import { ServiceDefinitionError } from '../../../src/node/catalog/errors.ts'
import {
  parseServiceDefinition,
  serviceDefinitionToJson,
} from '../../../src/node/catalog/service-definition.ts'

const web = {
  name: 'web',
  port: 8080,
  tags: ['v1', 'primary'],
  checks: [{ http: 'http://127.0.0.1:8080/health', interval: '10s', timeout: '1s' }],
  connect: { sidecarService: { port: 21000, upstreams: [{ destinationName: 'db', localBindPort: 9191 }] } },
}

function fieldOf(json: unknown): string {
  try {
    parseServiceDefinition(json, 'test.json')
  } catch (err) {
    expect(err).toBeInstanceOf(ServiceDefinitionError)
    expect((err as ServiceDefinitionError).code).toBe('PEERMESH_ERR_INVALID_SERVICE')
    const e = err as ServiceDefinitionError
    expect(e.message).toContain(e.field)
    return e.field
  }
  throw new Error('expected a ServiceDefinitionError')
}

describe('parseServiceDefinition', () => {
  it('fills in Consul defaults', () => {
    const d = parseServiceDefinition(web, 'test.json')
    expect(d.id).toBe('web')
    expect(d.address).toBeUndefined()
    expect(d.weights).toEqual({ passing: 1, warning: 1 })
    expect(d.meta).toEqual({})
    expect(d.checks).toEqual([
      {
        kind: 'http',
        id: 'service:web',
        name: "Service 'web' check",
        status: 'critical',
        http: 'http://127.0.0.1:8080/health',
        method: 'GET',
        header: {},
        intervalMs: 10_000,
        timeoutMs: 1000,
      },
    ])
    expect(d.connect?.sidecarService).toEqual({
      port: 21000,
      localServicePort: 8080,
      protocol: 'tcp',
      upstreams: [{ destinationName: 'db', localBindPort: 9191 }],
    })
  })

  it('numbers check ids from 1 when there are several, caps the timeout at the interval', () => {
    const d = parseServiceDefinition(
      {
        name: 'db',
        id: 'db-1',
        port: 5432,
        checks: [{ tcp: 'localhost:5432', interval: '2s' }, { ttl: '30s' }],
      },
      'x',
    )
    expect(d.checks.map((c) => c.id)).toEqual(['service:db-1:1', 'service:db-1:2'])
    expect(d.checks[0]).toMatchObject({ kind: 'tcp', intervalMs: 2000, timeoutMs: 2000 })
    expect(d.checks[1]).toMatchObject({ kind: 'ttl', ttlMs: 30_000 })
  })

  it('accepts the Consul file wrapper { service: {...} }', () => {
    expect(parseServiceDefinition({ service: { name: 'api', port: 80 } }, 'x').name).toBe('api')
  })

  it('round-trips through its JSON form', () => {
    const d = parseServiceDefinition(
      { ...web, weights: { passing: 10, warning: 0 }, address: '10.0.0.7' },
      'x',
    )
    expect(parseServiceDefinition(JSON.parse(JSON.stringify(serviceDefinitionToJson(d))), 'x')).toEqual(d)
  })

  const bad: [string, unknown, string][] = [
    ['not an object', 'web', ''],
    ['missing name', { port: 80 }, 'name'],
    ['missing port', { name: 'web' }, 'port'],
    ['name with a space', { name: 'W eb', port: 80 }, 'name'],
    ['name with a dot', { name: 'web.x', port: 80 }, 'name'],
    ['name ending in -', { name: 'web-', port: 80 }, 'name'],
    ['name longer than 63', { name: 'a'.repeat(64), port: 80 }, 'name'],
    ['port 0', { name: 'web', port: 0 }, 'port'],
    ['port 65536', { name: 'web', port: 65536 }, 'port'],
    ['port not an integer', { name: 'web', port: 80.5 }, 'port'],
    ['port a string', { name: 'web', port: '80' }, 'port'],
    ['bad id', { name: 'web', id: '-x', port: 80 }, 'id'],
    ['bad address', { name: 'web', port: 80, address: 'not an address!' }, 'address'],
    ['unknown field (typo)', { name: 'web', port: 80, tag: ['x'] }, 'tag'],
    ['empty tag', { name: 'web', port: 80, tags: [''] }, 'tags.0'],
    ['tag with a newline', { name: 'web', port: 80, tags: ['ok', 'a\nb'] }, 'tags.1'],
    ['meta key', { name: 'web', port: 80, meta: { 'a b': 'x' } }, 'meta.a b'],
    ['meta value not a string', { name: 'web', port: 80, meta: { a: 1 } }, 'meta.a'],
    ['weights.passing 0', { name: 'web', port: 80, weights: { passing: 0 } }, 'weights.passing'],
    ['weights.warning negative', { name: 'web', port: 80, weights: { warning: -1 } }, 'weights.warning'],
    ['checks not an array', { name: 'web', port: 80, checks: {} }, 'checks'],
    ['check with no kind', { name: 'web', port: 80, checks: [{ interval: '10s' }] }, 'checks.0'],
    ['check with two kinds', { name: 'web', port: 80, checks: [{ ttl: '10s', tcp: 'a:1' }] }, 'checks.0'],
    [
      'bad interval',
      { name: 'web', port: 80, checks: [{ tcp: 'a:1', interval: '10' }] },
      'checks.0.interval',
    ],
    [
      'interval too short',
      { name: 'web', port: 80, checks: [{ tcp: 'a:1', interval: '1ms' }] },
      'checks.0.interval',
    ],
    ['missing interval', { name: 'web', port: 80, checks: [{ tcp: 'a:1' }] }, 'checks.0.interval'],
    ['bad tcp target', { name: 'web', port: 80, checks: [{ tcp: 'a', interval: '1s' }] }, 'checks.0.tcp'],
    [
      'bad http url',
      { name: 'web', port: 80, checks: [{ http: 'ftp://x/', interval: '1s' }] },
      'checks.0.http',
    ],
    [
      'interval on a ttl check',
      { name: 'web', port: 80, checks: [{ ttl: '10s', interval: '1s' }] },
      'checks.0.interval',
    ],
    ['bad status', { name: 'web', port: 80, checks: [{ ttl: '10s', status: 'ok' }] }, 'checks.0.status'],
    [
      'duplicate check ids',
      {
        name: 'web',
        port: 80,
        checks: [
          { ttl: '10s', id: 'a' },
          { ttl: '10s', id: 'a' },
        ],
      },
      'checks.1.id',
    ],
    [
      'sidecar port missing',
      { name: 'web', port: 80, connect: { sidecarService: {} } },
      'connect.sidecarService.port',
    ],
    [
      'bad protocol',
      { name: 'web', port: 80, connect: { sidecarService: { port: 2, protocol: 'udp' } } },
      'connect.sidecarService.protocol',
    ],
    [
      'bad upstream name',
      {
        name: 'web',
        port: 80,
        connect: { sidecarService: { port: 2, upstreams: [{ destinationName: 'DB', localBindPort: 1 }] } },
      },
      'connect.sidecarService.upstreams.0.destinationName',
    ],
    [
      'two upstreams on one port',
      {
        name: 'web',
        port: 80,
        connect: {
          sidecarService: {
            port: 2,
            upstreams: [
              { destinationName: 'a', localBindPort: 9 },
              { destinationName: 'b', localBindPort: 9 },
            ],
          },
        },
      },
      'connect.sidecarService.upstreams.1.localBindPort',
    ],
    [
      'unknown sidecar field',
      { name: 'web', port: 80, connect: { sidecarService: { port: 2, x: 1 } } },
      'connect.sidecarService.x',
    ],
  ]

  it.each(bad)('rejects %s, naming the field', (_why, json, field) => {
    expect(fieldOf(json)).toBe(field)
  })
})

describe('parseServiceDefinition reads bodies as Consul does (issue #15)', () => {
  it("reads node-consul's PascalCase body with an HTTP check", () => {
    const d = parseServiceDefinition(
      {
        Name: 'web',
        ID: 'web-1',
        Port: 8080,
        Tags: ['v1'],
        Meta: { Version: '1' },
        EnableTagOverride: false,
        Check: { HTTP: 'http://127.0.0.1:8080/health', Interval: '10s', Timeout: '1s' },
      },
      'body',
    )
    expect(d).toMatchObject({ id: 'web-1', name: 'web', port: 8080, tags: ['v1'], meta: { Version: '1' } })
    expect(d.checks).toEqual([
      expect.objectContaining({
        id: 'service:web-1',
        kind: 'http',
        http: 'http://127.0.0.1:8080/health',
        intervalMs: 10_000,
        timeoutMs: 1000,
      }),
    ])
  })

  it("reads python-consul's lowercase singular check, CheckID and snake_case, Check before Checks", () => {
    const d = parseServiceDefinition(
      {
        name: 'db',
        port: 5432,
        check: { ttl: '10s', check_id: 'db-ttl' },
        Checks: [{ TCP: '127.0.0.1:5432', Interval: '5s', DeregisterCriticalServiceAfter: '1m' }],
        connect: {
          sidecar_service: { port: 21000, upstreams: [{ destination_name: 'x', local_bind_port: 9000 }] },
        },
      },
      'body',
    )
    expect(d.checks.map((c) => [c.id, c.kind])).toEqual([
      ['db-ttl', 'ttl'],
      ['service:db:2', 'tcp'],
    ])
    expect(d.connect?.sidecarService.upstreams).toEqual([{ destinationName: 'x', localBindPort: 9000 }])
  })

  it('takes empty strings and nulls as not given, and the {"Service": {...}} wrapper', () => {
    const d = parseServiceDefinition(
      { Service: { Name: 'web', ID: '', Address: '', Port: 80, Tags: null } },
      'b',
    )
    expect(d.id).toBe('web')
    expect(d.address).toBeUndefined()
  })

  it('allows "_" and capitals in names, as Consul does, but not for a Connect service', () => {
    expect(parseServiceDefinition({ Name: 'My_Service', Port: 80 }, 'b').name).toBe('My_Service')
    expect(fieldOf({ Name: 'My_Service', Port: 80, Connect: { SidecarService: { Port: 21000 } } })).toBe(
      'name',
    )
    for (const bad of ['a.b', 'a b', '_a', 'a-', 'a/b', '', 'x'.repeat(64)])
      expect(fieldOf({ Name: bad, Port: 80 })).toBe('name')
  })

  it('refuses a field given twice, features peermesh lacks, and unknown fields', () => {
    expect(fieldOf({ Name: 'web', name: 'web', Port: 80 })).toBe('name')
    expect(fieldOf({ Name: 'web', Port: 80, Check: { Args: ['/bin/true'], Interval: '10s' } })).toBe(
      'check.Args',
    )
    expect(fieldOf({ Name: 'web', Port: 80, Kind: 'connect-proxy' })).toBe('Kind')
    expect(fieldOf({ Name: 'web', Port: 80, Bogus: 1 })).toBe('Bogus')
  })
})
