/** The pure decisions of the traffic policy: targets, split legs, header operations, the concurrency limit, and compiling Consul entries. */
import { describe, expect, it } from 'vitest'
import { compileUpstreamPolicy, readTrafficEntries } from '../../src/node/sidecars/traffic-config.ts'
import { ConcurrencyLimit } from '../../src/proxy/concurrency-limit.ts'
import {
  applyHeaderOps,
  EMPTY_POLICY,
  hashKeyOf,
  type Plan,
  planTargets,
  type RequestView,
  type TrafficPolicy,
} from '../../src/proxy/traffic.ts'
import type { ConfigEntry } from '../../src/raft/policy/policy-store.ts'

function policyOf(
  list: { kind: string; name: string; value: Record<string, unknown> }[],
  source = 'web',
  upstream = 'api',
) {
  const stored: ConfigEntry[] = list.map((e, i) => ({ ...e, createdIndex: i + 1, modifyIndex: i + 1 }))
  const entries = readTrafficEntries({
    listConfigEntries: (kind) => stored.filter((e) => e.kind === kind),
    onChange: () => () => {},
  })
  return compileUpstreamPolicy(entries, source, upstream)
}

const names = (p: Plan) => p.targets.map((t) => `${t.service}${t.subset ? `/${t.subset}` : ''}`)

describe('planTargets (Consul discovery chain: router → splitter → resolver)', () => {
  const policy = policyOf([
    {
      kind: 'service-resolver',
      name: 'api',
      value: {
        DefaultSubset: 'v1',
        Subsets: {
          v1: { Filter: 'Service.Tags contains "v1"' },
          v2: { Filter: 'Service.Tags contains "v2"' },
        },
        Failover: {
          v1: { Targets: [{ ServiceSubset: 'v2' }, { Service: 'backup' }] },
          '*': { Service: 'dr' },
        },
      },
    },
    { kind: 'service-resolver', name: 'old', value: { Redirect: { Service: 'api', ServiceSubset: 'v2' } } },
    { kind: 'service-resolver', name: 'loop-a', value: { Redirect: { Service: 'loop-b' } } },
    { kind: 'service-resolver', name: 'loop-b', value: { Redirect: { Service: 'loop-a' } } },
    {
      kind: 'service-splitter',
      name: 'api',
      value: {
        Splits: [
          { Weight: 50, ServiceSubset: 'v2' },
          { Weight: 50, Service: 'next' },
        ],
      },
    },
  ])

  it.each([
    ['no subset: the splitter chooses (first leg)', {}, 0.1, ['api/v2', 'dr']],
    ['no subset: the splitter chooses (second leg, another service)', {}, 0.9, ['next']],
    ['the default subset, with its failover in order', { subset: 'v1' }, 0.5, ['api/v1', 'api/v2', 'backup']],
    ['a redirect to a subset of another service', { service: 'old' }, 0.5, ['api/v2', 'dr']],
    ['a service with no entries: all its instances', { service: 'plain' }, 0.5, ['plain']],
    ['a redirect loop resolves to nothing', { service: 'loop-a' }, 0.5, []],
  ] as const)('%s', (_what, dest, r, want) => {
    expect(names(planTargets(policy, 'api', dest, r))).toEqual(want)
  })

  it('a subset no resolver defines is a tag subset, lenient (falls back to the whole service)', () => {
    const p = planTargets(EMPTY_POLICY, 'api', { subset: 'canary' }, 0)
    expect(p.targets[0]!.lenient).toBe(true)
    expect(
      p.targets[0]!.select!({ id: 'x', address: '', port: 1, weight: 1, tags: ['canary'], service: 'api' }),
    ).toBe(true)
    expect(planTargets(policy, 'api', { subset: 'v1' }, 0).targets[0]!.lenient).toBe(false)
  })

  it('selects by meta and tag, negations included', () => {
    const p = policyOf([
      {
        kind: 'service-resolver',
        name: 'api',
        value: { Subsets: { s: { Filter: 'Service.Meta.version == "2" and "beta" not in Service.Tags' } } },
      },
    ])
    const select = planTargets(p, 'api', { subset: 's' }, 0).targets[0]!.select!
    const e = (tags: string[], version?: string) => ({
      id: 'x',
      address: '',
      port: 1,
      weight: 1,
      tags,
      service: 'api',
      ...(version ? { meta: { version } } : {}),
    })
    expect(select(e([], '2'))).toBe(true)
    expect(select(e(['beta'], '2'))).toBe(false)
    expect(select(e([], '1'))).toBe(false)
    expect(select(e([]))).toBe(false)
  })
})

describe('compileUpstreamPolicy precedence', () => {
  it('proxy-defaults < source Defaults < source Overrides; resolver ConnectTimeout per service', () => {
    const p: TrafficPolicy = policyOf([
      {
        kind: 'proxy-defaults',
        name: 'global',
        value: {
          Config: { connect_timeout_ms: 900, local_request_timeout_ms: 7000 },
          UpstreamConfig: { Defaults: { Limits: { MaxConnections: 10, MaxPendingRequests: 5 } } },
        },
      },
      {
        kind: 'service-defaults',
        name: 'web',
        value: {
          UpstreamConfig: {
            Defaults: { ConnectTimeoutMs: 800, Limits: { MaxConcurrentRequests: 20 } },
            Overrides: [
              {
                Name: 'api',
                Limits: { MaxConcurrentRequests: 3 },
                PassiveHealthCheck: { MaxFailures: 7, BaseEjectionTime: '2s', EnforcingConsecutive5xx: 0 },
              },
            ],
          },
        },
      },
      { kind: 'service-defaults', name: 'api', value: { LocalRequestTimeoutMs: 1234 } },
      { kind: 'service-resolver', name: 'api', value: { ConnectTimeout: '250ms' } },
    ])
    expect(p.connectTimeoutMs).toBe(800)
    expect(p.requestTimeoutMs).toBe(7000)
    expect(p.limits).toEqual({ maxConnections: 10, maxPendingRequests: 5, maxConcurrentRequests: 3 })
    expect(p.outlier).toEqual({
      consecutiveFailures: 7,
      baseEjectionMs: 2000,
      maxEjectionMs: 30_000,
      count5xx: false,
    })
    expect(p.serviceRequestTimeoutMs.get('api')).toBe(1234)
    expect(p.resolvers.get('api')!.connectTimeoutMs).toBe(250)
    // Another source's sidecar is not affected by web's service-defaults.
    const other = policyOf(
      [
        {
          kind: 'service-defaults',
          name: 'web',
          value: { UpstreamConfig: { Defaults: { ConnectTimeoutMs: 800 } } },
        },
      ],
      'billing',
    )
    expect(other.connectTimeoutMs).toBeUndefined()
  })
})

describe('headers and hashing', () => {
  it('applies remove, then set, then add', () => {
    const raw = ['X-Drop', '1', 'x-set', 'old', 'keep', 'k']
    expect(
      applyHeaderOps(raw, { remove: ['x-drop'], set: [['X-Set', 'new']], add: [['keep', 'k2']] }),
    ).toEqual(['keep', 'k', 'X-Set', 'new', 'keep', 'k2'])
    expect(applyHeaderOps(raw, undefined)).toBe(raw)
  })

  it('hashes on header, cookie and query; a terminal policy stops the list', () => {
    const req: RequestView = {
      method: 'GET',
      path: '/',
      query: (n) => (n === 'user' ? 'q1' : undefined),
      header: (n) => (n === 'x-user' ? 'h1' : n === 'cookie' ? 'a=1; session=c1' : undefined),
    }
    expect(hashKeyOf([{ field: 'cookie', name: 'session', terminal: false }], req, 'web')).toBe('c1')
    expect(
      hashKeyOf(
        [
          { field: 'header', name: 'x-user', terminal: true },
          { field: 'query_parameter', name: 'user', terminal: false },
        ],
        req,
        'web',
      ),
    ).toBe('h1')
    expect(hashKeyOf([{ field: 'header', name: 'x-none', terminal: false }], req, 'web')).toBeUndefined()
  })
})

describe('ConcurrencyLimit', () => {
  it('grants up to the limit, queues up to maxPending in order, refuses beyond; releases drain the queue', () => {
    const limit = new ConcurrencyLimit({ maxConcurrent: 2, maxPending: 1 })
    const started: number[] = []
    const t = [0, 1, 2].map((i) => limit.admit(() => started.push(i)))
    expect(t.map((x) => x.ok)).toEqual([true, true, true])
    expect(started).toEqual([0, 1])
    expect(limit.admit(() => started.push(3)).ok).toBe(false)
    if (t[0]!.ok) t[0]!.ticket.release()
    expect(started).toEqual([0, 1, 2])
    expect([limit.inFlight, limit.pending]).toEqual([2, 0])
    // A waiter that gives up leaves the queue without taking a slot.
    const w = limit.admit(() => started.push(4))
    expect(w.ok && !w.ticket.granted).toBe(true)
    if (w.ok) w.ticket.release()
    if (t[1]!.ok) t[1]!.ticket.release()
    if (t[1]!.ok) t[1]!.ticket.release() // twice: no effect
    expect(started).toEqual([0, 1, 2])
    expect([limit.inFlight, limit.pending]).toEqual([1, 0])
  })

  it('a lifted limit lets its waiters go', () => {
    const limit = new ConcurrencyLimit({ maxConcurrent: 1, maxPending: 5 })
    const started: number[] = []
    for (let i = 0; i < 3; i++) limit.admit(() => started.push(i))
    limit.configure({ maxConcurrent: Number.POSITIVE_INFINITY, maxPending: 0 })
    expect(started).toEqual([0, 1, 2])
  })

  it('a raised limit grants waiters at once', () => {
    const limit = new ConcurrencyLimit({ maxConcurrent: 1, maxPending: 5 })
    const started: number[] = []
    for (let i = 0; i < 4; i++) limit.admit(() => started.push(i))
    expect(started).toEqual([0])
    limit.configure({ maxConcurrent: 3, maxPending: 5 })
    expect(started).toEqual([0, 1, 2])
  })
})
