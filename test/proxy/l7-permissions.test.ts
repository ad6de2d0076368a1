/**
 * L7 intentions: permission matching (first match wins, default when none), the path
 * normalization the inbound matches with, the strict validation of Consul's `Permissions` shape,
 * and the inbound gate that combines intentions with rate limits.
 */
import { describe, expect, it } from 'vitest'
import { InboundGate } from '../../src/proxy/inbound-gate.ts'
import {
  type IntentionPermission,
  IntentionIndex,
  MalformedIntentionError,
  validateIntention,
  validatePermissions,
} from '../../src/proxy/intentions.ts'
import {
  compilePathMatch,
  compilePermissions,
  decidePermissions,
  normalizeRequestPath,
} from '../../src/proxy/l7-permissions.ts'
import type { GateRequest } from '../../src/proxy/request-gate.ts'
import { readingStoredPatterns } from '../../src/raft/policy/config-entries.ts'
import { VirtualClock } from '../sim/virtual-clock.ts'

const req = (method: string, path: string, headers: GateRequest['headers'] = {}): GateRequest => ({
  source: 'web',
  method,
  path,
  headers,
})

const decide = (perms: unknown, r: GateRequest, def: 'allow' | 'deny' = 'deny') =>
  decidePermissions(compilePermissions(validatePermissions(perms)), r, def)

describe('L7 permission matching (Consul: in order, first match decides, else the default)', () => {
  const perms = [
    { Action: 'deny', HTTP: { PathPrefix: '/admin' } },
    { Action: 'allow', HTTP: { PathExact: '/public', Methods: ['GET', 'HEAD'] } },
    { Action: 'allow', HTTP: { PathRegex: '/items/[0-9]+' } },
    {
      Action: 'allow',
      HTTP: {
        PathPrefix: '/debug',
        Header: [
          { Name: 'X-Debug', Exact: 'on' },
          { Name: 'x-bot', Present: true, Invert: true },
        ],
      },
    },
  ]
  it.each([
    ['GET', '/public', {}, 'allow'],
    ['HEAD', '/public', {}, 'allow'],
    ['POST', '/public', {}, 'deny'], // method not listed: no match, default deny
    ['GET', '/public/x', {}, 'deny'], // exact, not prefix
    ['GET', '/admin', {}, 'deny'],
    ['GET', '/admin/users', {}, 'deny'],
    ['GET', '/items/42', {}, 'allow'],
    ['GET', '/items/42/x', {}, 'deny'], // the regex matches the whole path
    ['GET', '/xitems/42', {}, 'deny'],
    ['GET', '/debug/vars', { 'x-debug': 'on' }, 'allow'],
    ['GET', '/debug/vars', { 'x-debug': 'off' }, 'deny'],
    ['GET', '/debug/vars', { 'x-debug': 'on', 'x-bot': '1' }, 'deny'], // Invert: must be absent
    ['GET', '/debug/vars', {}, 'deny'],
  ] as const)('%s %s %j -> %s', (method, path, headers, want) => {
    expect(decide(perms, req(method, path, headers))).toBe(want)
  })

  it('falls back to the default action when nothing matches', () => {
    const only = [{ Action: 'deny', HTTP: { PathExact: '/x' } }]
    expect(decide(only, req('GET', '/y'), 'allow')).toBe('allow')
    expect(decide(only, req('GET', '/y'), 'deny')).toBe('deny')
    expect(decide(only, req('GET', '/x'), 'allow')).toBe('deny')
  })

  it('header rules: prefix, suffix, regex, repeated headers joined by a comma', () => {
    const h = (rule: object) => [{ Action: 'allow', HTTP: { Header: [{ Name: 'x-v', ...rule }] } }]
    expect(decide(h({ Prefix: 'ab' }), req('GET', '/', { 'x-v': 'abc' }))).toBe('allow')
    expect(decide(h({ Prefix: 'ab' }), req('GET', '/', {}))).toBe('deny')
    expect(decide(h({ Suffix: 'bc' }), req('GET', '/', { 'x-v': 'abc' }))).toBe('allow')
    expect(decide(h({ Regex: 'a+' }), req('GET', '/', { 'x-v': 'aaa' }))).toBe('allow')
    expect(decide(h({ Regex: 'a+' }), req('GET', '/', { 'x-v': 'aab' }))).toBe('deny')
    expect(decide(h({ Exact: 'a,b' }), req('GET', '/', { 'x-v': ['a', 'b'] }))).toBe('allow')
    expect(decide(h({ Exact: 'a', Invert: true }), req('GET', '/', {}))).toBe('allow')
  })
})

describe('Permissions validation (hostile input refused, naming the field)', () => {
  const problem = (perms: unknown): string => {
    try {
      validatePermissions(perms)
    } catch (err) {
      expect(err).toBeInstanceOf(MalformedIntentionError)
      return (err as Error).message
    }
    return 'accepted'
  }
  it.each([
    [[], /permissions: .*1/],
    ['allow', /permissions: /],
    [[{ Action: 'allow' }], /permissions: 0\.HTTP: /],
    [[{ Action: 'maybe', HTTP: { PathExact: '/' } }], /permissions: 0\.Action: /],
    [[{ Action: 'allow', HTTP: {} }], /permissions: 0\.HTTP: should not be empty/],
    [[{ Action: 'allow', HTTP: { PathExact: 'x' } }], /0\.HTTP\.PathExact: must start with \//],
    [
      [{ Action: 'allow', HTTP: { PathExact: '/a', PathPrefix: '/b' } }],
      /0\.HTTP\.PathPrefix: cannot be combined/,
    ],
    [
      [{ Action: 'allow', HTTP: { PathRegex: '(' } }],
      /0\.HTTP\.PathRegex: is not a valid regular expression/,
    ],
    [[{ Action: 'allow', HTTP: { PathRegex: 'a'.repeat(2000) } }], /0\.HTTP\.PathRegex/],
    [[{ Action: 'allow', HTTP: { Methods: ['FETCH'] } }], /0\.HTTP\.Methods\.0/],
    [[{ Action: 'allow', HTTP: { Header: [{ Name: 'x' }] } }], /0\.HTTP\.Header\.0: needs one of/],
    [[{ Action: 'allow', HTTP: { Header: [{ Name: 'x', Exact: 'a', Prefix: 'b' }] } }], /Header\.0\.Prefix/],
    [
      [{ Action: 'allow', HTTP: { Header: [{ Name: 'x', Present: false }] } }],
      /Header\.0\.Present: must be true/,
    ],
    [[{ Action: 'allow', HTTP: { Header: [{ Name: 'bad name', Exact: 'a' }] } }], /Header\.0\.Name/],
    [[{ Action: 'allow', HTTP: { PathExact: '/', Color: 'red' } }], /0\.HTTP\.Color: unknown field/],
    [[{ Action: 'allow', HTTP: { PathExact: '/' }, Extra: 1 }], /0\.Extra: unknown field/],
    [Array.from({ length: 300 }, () => ({ Action: 'allow', HTTP: { PathExact: '/' } })), /permissions: /],
  ])('%j is refused', (perms, want) => {
    expect(problem(perms)).toMatch(want)
  })

  it('accepts any field case (Consul decodes snake and lower case) and returns the canonical form', () => {
    expect(validatePermissions([{ action: 'allow', http: { path_prefix: '/p', methods: ['GET'] } }])).toEqual(
      [{ Action: 'allow', HTTP: { PathPrefix: '/p', Methods: ['GET'] } }],
    )
  })

  it('an intention is L4 (action) or L7 (permissions): an L7 one stores action deny', () => {
    const perms = [{ Action: 'allow', HTTP: { PathExact: '/' } }]
    expect(validateIntention({ source: 'web', destination: 'api', permissions: perms })).toMatchObject({
      action: 'deny',
      permissions: perms,
    })
    expect(() =>
      validateIntention({ source: 'web', destination: 'api', action: 'allow', permissions: perms }),
    ).toThrow(/action: must not be set with permissions/)
  })
})

describe('normalizeRequestPath (what the permissions match is what the app routes)', () => {
  it.each([
    ['/public', '/public'],
    ['/a/./b', '/a/b'],
    ['/a/b/../c', '/a/c'],
    ['/public/../admin', '/admin'],
    ['/..', '/'],
    ['/a/..', '/'],
    ['/a/.', '/a/'],
    ['//admin', '/admin'],
    ['/a//b///c', '/a/b/c'],
    ['/%61dmin', '/admin'],
    ['/a%2e%2e/x', '/a../x'],
    ['/%2e%2e/admin', '/admin'],
    ['/x%20y', '/x%20y'],
    ['/x%c3%a9', '/x%C3%A9'],
  ])('%s -> %s', (input, want) => {
    expect(normalizeRequestPath(input)).toBe(want)
  })
  it.each(['admin', '*', '/a%2Fb', '/a%2fb', '/a%5cb', '/a\\b', '/a%zz', '/a%4'])(
    '%s is refused',
    (input) => {
      expect(normalizeRequestPath(input)).toBeUndefined()
    },
  )
})

describe('InboundGate (intentions per request, then rate limits)', () => {
  const l7: IntentionPermission[] = [
    { Action: 'allow', HTTP: { PathExact: '/public', Methods: ['GET'] } },
    { Action: 'deny', HTTP: { PathPrefix: '/admin' } },
  ]
  const index = (list: unknown[], def: 'allow' | 'deny' = 'deny') => new IntentionIndex(list, def)

  it('L4 allow passes every request; L7 decides per request; no intention: the default', () => {
    let current = index([
      { source: 'web', destination: 'api', permissions: l7 },
      { source: 'ops', destination: 'api', action: 'allow' },
    ])
    const gate = new InboundGate({ service: 'api', intentions: () => current, now: () => 0 })
    expect(gate.check(req('GET', '/public'))).toEqual({ allow: true })
    expect(gate.check(req('POST', '/admin'))).toEqual({
      allow: false,
      reason: 'intention',
      status: 403,
      grpcStatus: 7,
    })
    expect(gate.check(req('GET', '/other')).allow).toBe(false) // no permission matches: default deny
    expect(gate.check({ ...req('POST', '/admin'), source: 'ops' }).allow).toBe(true)
    expect(gate.check({ ...req('GET', '/public'), source: 'db' }).allow).toBe(false)
    expect(gate.check({ ...req('GET', '/public'), source: 'Not A Name' }).allow).toBe(false)
    // A new policy applies to the next request: the gate reads the intentions per request.
    current = index([{ source: 'web', destination: 'api', action: 'allow' }])
    expect(gate.check(req('POST', '/admin')).allow).toBe(true)
    current = index([{ source: 'web', destination: 'api', permissions: l7 }], 'allow')
    expect(gate.check(req('GET', '/other')).allow).toBe(true) // default allow now
  })

  it('a denied request takes no rate-limit token; over the limit is 429, per source', () => {
    const clock = new VirtualClock()
    const gate = new InboundGate({
      service: 'api',
      intentions: () => index([{ source: '*', destination: 'api', permissions: l7 }]),
      rateLimits: { InstanceLevel: { RequestsPerSecond: 2 } },
      now: clock.now,
    })
    for (let i = 0; i < 10; i++) expect(gate.check(req('POST', '/admin')).allow).toBe(false)
    expect(gate.check(req('GET', '/public')).allow).toBe(true)
    expect(gate.check(req('GET', '/public')).allow).toBe(true)
    expect(gate.check(req('GET', '/public'))).toEqual({
      allow: false,
      reason: 'rate-limit',
      status: 429,
      grpcStatus: 8,
    })
    expect(gate.check({ ...req('GET', '/public'), source: 'other' }).allow).toBe(true)
    // Same limits again: the buckets are kept (no fresh burst); other limits: new buckets.
    gate.setRateLimits({ InstanceLevel: { RequestsPerSecond: 2 } })
    expect(gate.check(req('GET', '/public')).allow).toBe(false)
    gate.setRateLimits(undefined)
    expect(gate.check(req('GET', '/public')).allow).toBe(true)
  })
})

describe('hostile requests against backtracking-prone patterns (the mesh client sends the path)', () => {
  // On the backtracking engine `/api/(\w+/?)+/items` took over a second at 32 characters and
  // doubled per character: this request would hold the sidecar for longer than the universe.
  const perms = [
    { Action: 'allow', HTTP: { PathRegex: '/api/(\\w+/?)+/items' } },
    { Action: 'allow', HTTP: { Header: [{ Name: 'x-tag', Regex: '(a|a?)+' }] } },
  ]
  it('answers at once, and right', () => {
    expect(decide(perms, req('GET', `/api/${'a'.repeat(5000)}!`))).toBe('deny')
    expect(decide(perms, req('GET', '/api/v1/users/items'))).toBe('allow')
    expect(decide(perms, req('GET', '/x', { 'x-tag': `${'a'.repeat(5000)}b` }))).toBe('deny')
    expect(decide(perms, req('GET', '/x', { 'x-tag': 'a'.repeat(5000) }))).toBe('allow')
  })
})

describe('patterns the linear-time engine cannot run', () => {
  const problem = (perms: unknown): string => {
    try {
      validatePermissions(perms)
    } catch (err) {
      expect(err).toBeInstanceOf(MalformedIntentionError)
      return (err as Error).message
    }
    return 'accepted'
  }
  it.each([
    [
      [{ Action: 'deny', HTTP: { PathRegex: '/(a+)/\\1' } }],
      /0\.HTTP\.PathRegex: cannot be run in linear time/,
    ],
    [
      [{ Action: 'deny', HTTP: { PathRegex: '/(?!public).*' } }],
      /0\.HTTP\.PathRegex: cannot be run in linear time/,
    ],
    [
      [{ Action: 'allow', HTTP: { Header: [{ Name: 'x', Regex: '(?<=a)b' }] } }],
      /0\.HTTP\.Header\.0\.Regex: cannot be run in linear time/,
    ],
    [
      [{ Action: 'allow', HTTP: { PathRegex: '/[0-9a-f]{32}' } }],
      /0\.HTTP\.PathRegex: cannot be run in linear time/,
    ],
  ])('are refused when written: %j', (perms, want) => {
    expect(problem(perms)).toMatch(want)
  })

  // Written before writes were checked for it: still in the store, read with the old rule.
  const stored = (perms: unknown[]) => readingStoredPatterns(() => validatePermissions(perms))
  const decideStored = (perms: unknown[], r: GateRequest, def: 'allow' | 'deny') =>
    decidePermissions(compilePermissions(stored(perms)), r, def)

  it('when stored, fail closed: an allow matches nothing, a deny everything its other criteria do', () => {
    const allow = [{ Action: 'allow', HTTP: { PathRegex: '/(a+)/\\1' } }]
    expect(decideStored(allow, req('GET', '/a/a'), 'deny')).toBe('deny')
    expect(decideStored(allow, req('GET', '/a/a'), 'allow')).toBe('allow') // the default, as without it
    const deny = [{ Action: 'deny', HTTP: { PathRegex: '/(?!public).*', Methods: ['POST'] } }]
    expect(decideStored(deny, req('POST', '/public'), 'allow')).toBe('deny')
    expect(decideStored(deny, req('POST', '/admin'), 'allow')).toBe('deny')
    expect(decideStored(deny, req('GET', '/admin'), 'allow')).toBe('allow') // Methods still apply
  })

  it('when stored, an inverted header rule fails closed too', () => {
    const header = (Action: string) => [
      { Action, HTTP: { Header: [{ Name: 'x-user', Regex: '(\\w+)-\\1', Invert: true }] } },
    ]
    for (const headers of [{}, { 'x-user': 'bob-bob' }, { 'x-user': 'bob' }]) {
      expect(decideStored(header('deny'), req('GET', '/', headers), 'allow')).toBe('deny')
      expect(decideStored(header('allow'), req('GET', '/', headers), 'deny')).toBe('deny')
    }
  })

  it('when stored, an allow earlier in the list cannot let a request past a later deny', () => {
    const perms = [
      { Action: 'allow', HTTP: { PathRegex: '/public/(\\w+)/\\1' } },
      { Action: 'deny', HTTP: { PathPrefix: '/public' } },
    ]
    expect(decideStored(perms, req('GET', '/public/x/x'), 'allow')).toBe('deny')
  })

  it('the inbound gate decides with them without throwing', () => {
    const index = readingStoredPatterns(
      () =>
        new IntentionIndex(
          [
            {
              source: 'web',
              destination: 'api',
              permissions: [{ Action: 'deny', HTTP: { PathRegex: '/admin(?=/)' } }],
            },
          ],
          'allow',
        ),
    )
    const gate = new InboundGate({ service: 'api', intentions: () => index, now: () => 0 })
    expect(gate.check(req('GET', '/public')).allow).toBe(false)
    expect(gate.check({ ...req('GET', '/public'), source: 'ops' }).allow).toBe(true)
  })

  it('a rate-limit route with one matches no path (the instance-wide limit applies)', () => {
    expect(compilePathMatch({ PathRegex: '/(a)\\1' })!('/aa')).toBe(false)
    expect(compilePathMatch({ PathRegex: '/(a)\\1' }, true)!('/b')).toBe(true)
    expect(compilePathMatch({ PathRegex: '/a+' })!('/aa')).toBe(true)
  })
})
