/** The traffic config entry schemas: Consul's shapes accepted, unknown fields and impossible values refused by path. */
import { describe, expect, it } from 'vitest'
import {
  configEntryProblem,
  configEntryProblemOf,
  parseConfigEntry,
  parseDurationMs,
  parseSubsetFilter,
  readingStoredPatterns,
  serviceIntentionsSchema,
  type TrafficEntryKind,
} from '../../../src/raft/policy/config-entries.ts'
import {
  checkPolicyCommand,
  PolicyErrorCodes,
  preparePolicyCommand,
} from '../../../src/raft/policy/policy-commands.ts'

describe('valid entries (Consul documentation examples)', () => {
  const valid: [TrafficEntryKind, string, Record<string, unknown>][] = [
    ['service-defaults', 'api', { Protocol: 'http', LocalRequestTimeoutMs: 2000, Meta: { team: 'x' } }],
    [
      'service-defaults',
      'web',
      {
        UpstreamConfig: {
          Defaults: {
            ConnectTimeoutMs: 500,
            Limits: { MaxConnections: 100, MaxPendingRequests: 10, MaxConcurrentRequests: 50 },
            PassiveHealthCheck: {
              Interval: '10s',
              MaxFailures: 5,
              EnforcingConsecutive5xx: 100,
              BaseEjectionTime: '30s',
            },
          },
          Overrides: [{ Name: 'api', Limits: { MaxConcurrentRequests: 4 } }],
        },
      },
    ],
    ['proxy-defaults', 'global', { Config: { protocol: 'http', connect_timeout_ms: 1000 } }],
    [
      'service-resolver',
      'api',
      {
        DefaultSubset: 'v1',
        Subsets: {
          v1: { Filter: 'Service.Meta.version == "v1"' },
          v2: { Filter: 'Service.Tags contains "v2"', OnlyPassing: true },
        },
        Failover: {
          v1: { Targets: [{ ServiceSubset: 'v2' }, { Service: 'api-backup' }] },
          '*': { Service: 'api-dr' },
        },
        ConnectTimeout: '5s',
        RequestTimeout: '1m30s',
        LoadBalancer: {
          Policy: 'ring_hash',
          HashPolicies: [{ Field: 'cookie', FieldValue: 'session', CookieConfig: { TTL: '1h' } }],
        },
      },
    ],
    ['service-resolver', 'api', { Redirect: { Service: 'api-v2' } }],
    [
      'service-router',
      'api',
      {
        Routes: [
          {
            Match: {
              HTTP: {
                PathPrefix: '/v2/',
                Header: [{ Name: 'x-debug', Present: true }],
                Methods: ['GET', 'PUT'],
              },
            },
            Destination: {
              ServiceSubset: 'v2',
              RequestTimeout: '2s',
              NumRetries: 3,
              RetryOnConnectFailure: true,
              RetryOnStatusCodes: [503],
              RequestHeaders: { Set: { 'x-route': 'v2' }, Remove: ['cookie'] },
            },
          },
          {
            Match: { HTTP: { PathRegex: '/users/[0-9]+', QueryParam: [{ Name: 'beta', Exact: '1' }] } },
            Destination: { Service: 'users' },
          },
        ],
      },
    ],
    [
      'service-splitter',
      'api',
      {
        Splits: [
          { Weight: 90, ServiceSubset: 'v1' },
          { Weight: 10, Service: 'api-next' },
        ],
      },
    ],
    // The original lower-case splitter shape keeps working: names match case-insensitively.
    [
      'service-splitter',
      'api',
      {
        splits: [
          { weight: 50, serviceSubset: 'v1' },
          { weight: 50, serviceSubset: 'v2' },
        ],
      },
    ],
  ]
  it.each(valid.map((v, i) => [i, ...v] as const))('#%i %s', (_i, kind, name, value) => {
    expect(configEntryProblem(kind, name, value)).toBeUndefined()
    expect(checkPolicyCommand({ op: 'config.set', kind, name, value }).ok).toBe(true)
  })

  it('parses to the canonical form: PascalCase fields, durations in ms', () => {
    expect(
      parseConfigEntry('service-resolver', { connect_timeout: '1m30s', request_timeout: '250ms' }),
    ).toEqual({
      ConnectTimeout: 90_000,
      RequestTimeout: 250,
    })
    expect(parseConfigEntry('service-splitter', { splits: [{ weight: 100, serviceSubset: 'v1' }] })).toEqual({
      Splits: [{ Weight: 100, ServiceSubset: 'v1' }],
    })
  })
})

describe('refused, naming the field; nothing written', () => {
  const invalid: [TrafficEntryKind, string, Record<string, unknown>, string][] = [
    ['service-defaults', 'api', { Protocl: 'http' }, 'Protocl: unknown field'],
    ['service-defaults', 'api', { Protocol: 'udp' }, 'Protocol:'],
    ['service-defaults', 'api', { LocalRequestTimeoutMs: -1 }, 'LocalRequestTimeoutMs:'],
    [
      'service-defaults',
      'api',
      { UpstreamConfig: { Defaults: { Limits: { MaxConcurrentRequests: 0 } } } },
      'UpstreamConfig.Defaults.Limits.MaxConcurrentRequests:',
    ],
    [
      'service-defaults',
      'api',
      { UpstreamConfig: { Defaults: { PassiveHealthCheck: { BaseEjectionTime: '30 parsecs' } } } },
      'UpstreamConfig.Defaults.PassiveHealthCheck.BaseEjectionTime:',
    ],
    [
      'service-defaults',
      'api',
      { UpstreamConfig: { Overrides: [{ Name: 'a' }, { Name: 'a' }] } },
      'UpstreamConfig.Overrides:',
    ],
    ['proxy-defaults', 'mine', {}, 'name:'],
    ['proxy-defaults', 'global', { Config: { envoy_extra: 1 } }, 'Config.envoy_extra: unknown field'],
    [
      'service-resolver',
      'api',
      { DefaultSubset: 'v3', Subsets: { v1: { Filter: 'Service.Tags contains "v1"' } } },
      'DefaultSubset:',
    ],
    [
      'service-resolver',
      'api',
      { Subsets: { v1: { Filter: 'Service.Tags matches "v1"' } } },
      'Subsets.v1.Filter:',
    ],
    ['service-resolver', 'api', { Failover: { v9: { Service: 'b' } } }, 'Failover.v9:'],
    [
      'service-resolver',
      'api',
      { Redirect: { Service: 'b' }, Failover: { '*': { Service: 'c' } } },
      'Redirect:',
    ],
    ['service-resolver', 'api', { ConnectTimeout: '2h' }, 'ConnectTimeout:'],
    [
      'service-resolver',
      'api',
      { LoadBalancer: { Policy: 'round_robin', HashPolicies: [{ Field: 'header', FieldValue: 'x' }] } },
      'LoadBalancer.HashPolicies:',
    ],
    [
      'service-router',
      'api',
      { Routes: [{ Match: { HTTP: { PathPrefix: 'v2' } } }] },
      'Routes.0.Match.HTTP.PathPrefix:',
    ],
    [
      'service-router',
      'api',
      { Routes: [{ Match: { HTTP: { PathExact: '/a', PathPrefix: '/b' } } }] },
      'Routes.0.Match.HTTP.PathPrefix:',
    ],
    [
      'service-router',
      'api',
      { Routes: [{ Match: { HTTP: { PathRegex: '([a-z' } } }] },
      'Routes.0.Match.HTTP.PathRegex:',
    ],
    [
      'service-router',
      'api',
      { Routes: [{ Destination: { NumRetries: 100 } }] },
      'Routes.0.Destination.NumRetries:',
    ],
    [
      'service-router',
      'api',
      { Routes: [{ Destination: { RetryOnStatusCodes: [700] } }] },
      'Routes.0.Destination.RetryOnStatusCodes.0:',
    ],
    [
      'service-router',
      'api',
      { Routes: [{ Destination: { RequestHeaders: { Set: { 'x-a': 'a\r\nb' } } } }] },
      'Routes.0.Destination.RequestHeaders.Set.x-a:',
    ],
    [
      'service-router',
      'api',
      { Routes: [{ Destination: { Bogus: 1 } }] },
      'Routes.0.Destination.Bogus: unknown field',
    ],
    ['service-splitter', 'api', { Splits: [{ Weight: 60, ServiceSubset: 'v1' }] }, 'Splits:'],
    ['service-splitter', 'api', { Splits: [] }, 'Splits:'],
    ['service-splitter', 'bad name!', { Splits: [{ Weight: 100 }] }, 'name:'],
    ['service-splitter', 'api', { Splits: [{ Weight: 100, Service: 'Api_2' }] }, 'Splits.0.Service:'],
  ]
  it.each(invalid.map((v, i) => [i, ...v] as const))('#%i %s %s', (_i, kind, name, value, prefix) => {
    const problem = configEntryProblem(kind, name, value)
    expect(problem).toBeDefined()
    expect(problem!.startsWith(prefix), problem).toBe(true)
    const checked = checkPolicyCommand({ op: 'config.set', kind, name, value })
    expect(checked.ok).toBe(false)
    if (!checked.ok) expect(checked.code).toBe(PolicyErrorCodes.invalidCommand)
  })
})

describe('regular expressions follow RE2 rules: refused on write unless they run in linear time', () => {
  const LINEAR = 'cannot be run in linear time'
  const refused: [TrafficEntryKind, Record<string, unknown>, string][] = [
    [
      'service-router',
      { Routes: [{ Match: { HTTP: { PathRegex: '/(\\w+)/\\1' } } }] },
      'Routes.0.Match.HTTP.PathRegex',
    ],
    [
      'service-router',
      { Routes: [{ Match: { HTTP: { Header: [{ Name: 'x-a', Regex: '(?=a)a' }] } } }] },
      'Routes.0.Match.HTTP.Header.0.Regex',
    ],
    [
      'service-router',
      { Routes: [{ Match: { HTTP: { QueryParam: [{ Name: 'q', Regex: '(?<!x)y' }] } } }] },
      'Routes.0.Match.HTTP.QueryParam.0.Regex',
    ],
    [
      'service-defaults',
      { RateLimits: { InstanceLevel: { Routes: [{ PathRegex: '/v1/\\d{1,100}', RequestsPerSecond: 5 }] } } },
      'RateLimits.InstanceLevel.Routes.0.PathRegex',
    ],
  ]
  it.each(refused)('%s %j', (kind, value, path) => {
    expect(configEntryProblem(kind, 'api', value)).toMatch(
      new RegExp(`^${path.replace(/\./g, '\\.')}: ${LINEAR}`),
    )
    // What a write goes through before anything is proposed: refused, so nothing is written.
    const prepared = preparePolicyCommand({ op: 'config.set', kind, name: 'api', value })
    expect(prepared.ok).toBe(false)
    if (!prepared.ok) {
      expect(prepared.code).toBe(PolicyErrorCodes.invalidCommand)
      expect(prepared.message).toMatch(LINEAR)
    }
  })

  it('an intention with one is refused, by the command and by the service-intentions entry', () => {
    const permissions = [{ Action: 'deny', HTTP: { PathRegex: '/(?!public).*' } }]
    const upsert = preparePolicyCommand({
      op: 'intention.upsert',
      source: 'web',
      destination: 'api',
      action: 'deny',
      permissions,
    })
    expect(upsert.ok).toBe(false)
    if (!upsert.ok) expect(upsert.message).toMatch(`permissions.0.HTTP.PathRegex: ${LINEAR}`)
    expect(
      configEntryProblemOf(serviceIntentionsSchema, { Sources: [{ Name: 'web', Permissions: permissions }] }),
    ).toMatch(`Sources.0.Permissions.0.HTTP.PathRegex: ${LINEAR}`)
  })

  it('patterns that run in linear time are accepted as before', () => {
    const value = {
      Routes: [
        { Match: { HTTP: { PathRegex: '/api/(\\w+/?)+/items' } } },
        { Match: { HTTP: { Header: [{ Name: 'x-v', Regex: 'v[0-9]{1,3}' }] } } },
      ],
    }
    expect(configEntryProblem('service-router', 'api', value)).toBeUndefined()
    expect(checkPolicyCommand({ op: 'config.set', kind: 'service-router', name: 'api', value }).ok).toBe(true)
  })

  it('an entry stored before the rule is still read (the proxy fails closed on that pattern)', () => {
    const value = {
      Protocol: 'http',
      RateLimits: { InstanceLevel: { Routes: [{ PathRegex: '/(a)\\1', RequestsPerSecond: 5 }] } },
    }
    expect(parseConfigEntry('service-defaults', value)?.Protocol).toBe('http')
    expect(
      parseConfigEntry('service-router', { Routes: [{ Match: { HTTP: { PathRegex: '([a-z' } } }] }),
    ).toBe(undefined)
    expect(readingStoredPatterns(() => configEntryProblem('service-defaults', 'api', value))).toBeUndefined()
    // Only while reading: a write right after, or after a read that threw, is checked again.
    expect(configEntryProblem('service-defaults', 'api', value)).toMatch(LINEAR)
    expect(() =>
      readingStoredPatterns(() => {
        throw new Error('read failed')
      }),
    ).toThrow('read failed')
    expect(configEntryProblem('service-defaults', 'api', value)).toMatch(LINEAR)
  })
})

describe('helpers', () => {
  it.each([
    ['500ms', 500],
    ['15s', 15_000],
    ['1m30s', 90_000],
    ['1.5s', 1500],
    ['1h', 3_600_000],
    ['', undefined],
    ['10', undefined],
    ['5 s', undefined],
    ['-1s', undefined],
  ])('parseDurationMs(%j) = %j', (text, ms) => {
    expect(parseDurationMs(text)).toBe(ms)
  })

  it('reads the documented filter forms', () => {
    expect(parseSubsetFilter('Service.Tags contains "v2"')).toEqual([
      { kind: 'tag', tag: 'v2', negate: false },
    ])
    expect(parseSubsetFilter('"canary" in Service.Tags and Service.Meta.version != "1"')).toEqual([
      { kind: 'tag', tag: 'canary', negate: false },
      { kind: 'meta', key: 'version', value: '1', negate: true },
    ])
    expect(typeof parseSubsetFilter('Service.Tags contains v2')).toBe('string')
    expect(typeof parseSubsetFilter('Service.Meta.version == "a" or Service.Meta.version == "b"')).toBe(
      'string',
    )
  })
})
