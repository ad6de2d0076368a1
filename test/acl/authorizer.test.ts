import { describe, expect, it } from 'vitest'
import {
  ANONYMOUS_TOKEN_ID,
  type AclPolicy,
  type AclToken,
  type Authorizer,
  authorizerForToken,
  GLOBAL_MANAGEMENT_POLICY_ID,
  MANAGE_ALL,
  PolicyAuthorizer,
  parseRules,
} from '../../src/acl/index.ts'

const authz = (rules: string[], defaultPolicy: 'allow' | 'deny' = 'deny'): Authorizer =>
  new PolicyAuthorizer(rules.map(parseRules), defaultPolicy)

type Method = {
  [K in keyof Authorizer]: Authorizer[K] extends (...args: never[]) => boolean ? K : never
}[keyof Authorizer]

/** [policies (HCL), method, argument, expected]; default deny. */
const cases: [string, string[], Method, string, boolean][] = [
  // Default deny: nothing matches.
  ['nothing matches → deny', [], 'serviceRead', 'web', false],
  ['nothing matches → deny (operator)', [], 'operatorRead', '', false],
  // Exact rules and levels.
  ['exact read grants read', ['service "web" { policy = "read" }'], 'serviceRead', 'web', true],
  ['exact read refuses write', ['service "web" { policy = "read" }'], 'serviceWrite', 'web', false],
  ['write implies read', ['service "web" { policy = "write" }'], 'serviceRead', 'web', true],
  ['exact rule is not a prefix', ['service "web" { policy = "write" }'], 'serviceRead', 'web2', false],
  // Exact beats prefix, whatever the levels.
  [
    'exact deny beats prefix write',
    ['service_prefix "" { policy = "write" }', 'service "db" { policy = "deny" }'],
    'serviceRead',
    'db',
    false,
  ],
  [
    'exact read beats prefix write (for write)',
    ['service_prefix "d" { policy = "write" }\nservice "db" { policy = "read" }'],
    'serviceWrite',
    'db',
    false,
  ],
  [
    'exact write beats prefix deny',
    ['service_prefix "" { policy = "deny" }\nservice "web" { policy = "write" }'],
    'serviceWrite',
    'web',
    true,
  ],
  // Longest prefix wins.
  [
    'longer prefix deny beats shorter write',
    ['service_prefix "" { policy = "write" }\nservice_prefix "we" { policy = "deny" }'],
    'serviceRead',
    'web',
    false,
  ],
  [
    'longer prefix read beats shorter deny',
    ['service_prefix "" { policy = "deny" }\nservice_prefix "web" { policy = "read" }'],
    'serviceRead',
    'web-1',
    true,
  ],
  [
    'a prefix as long as the name matches it',
    ['service_prefix "web" { policy = "read" }'],
    'serviceRead',
    'web',
    true,
  ],
  [
    'shorter prefix still applies outside the longer one',
    ['service_prefix "" { policy = "read" }\nservice_prefix "we" { policy = "deny" }'],
    'serviceRead',
    'api',
    true,
  ],
  // Deny wins at equal specificity, across policies; then write over read.
  [
    'deny wins over write for the same exact name',
    ['service "web" { policy = "write" }', 'service "web" { policy = "deny" }'],
    'serviceRead',
    'web',
    false,
  ],
  [
    'deny wins over read for the same prefix',
    ['node_prefix "" { policy = "read" }', 'node_prefix "" { policy = "deny" }'],
    'nodeRead',
    'n1',
    false,
  ],
  [
    'write wins over read for the same name',
    ['service "web" { policy = "read" }', 'service "web" { policy = "write" }'],
    'serviceWrite',
    'web',
    true,
  ],
  // Intentions: their own level, else read when the service rule grants read.
  ['service read → intention read', ['service "db" { policy = "read" }'], 'intentionRead', 'db', true],
  [
    'service write → not intention write',
    ['service "db" { policy = "write" }'],
    'intentionWrite',
    'db',
    false,
  ],
  [
    'intentions = "write"',
    ['service "db" { policy = "read" intentions = "write" }'],
    'intentionWrite',
    'db',
    true,
  ],
  [
    'intentions = "deny" on a readable service',
    ['service "db" { policy = "write" intentions = "deny" }'],
    'intentionRead',
    'db',
    false,
  ],
  [
    'intentions from a prefix rule',
    ['service_prefix "" { policy = "read" intentions = "write" }'],
    'intentionWrite',
    'anything',
    true,
  ],
  ['service deny → intention deny', ['service "db" { policy = "deny" }'], 'intentionRead', 'db', false],
  // Nodes, keys, agents.
  ['node exact write', ['node "n1" { policy = "write" }'], 'nodeWrite', 'n1', true],
  ['node prefix read', ['node_prefix "n" { policy = "read" }'], 'nodeWrite', 'n1', false],
  ['key prefix write', ['key_prefix "app/" { policy = "write" }'], 'keyWrite', 'app/x/y', true],
  [
    'key exact deny inside a write prefix',
    ['key_prefix "app/" { policy = "write" }\nkey "app/secret" { policy = "deny" }'],
    'keyRead',
    'app/secret',
    false,
  ],
  [
    'key rule does not match a shorter key',
    ['key_prefix "app/" { policy = "write" }'],
    'keyRead',
    'app',
    false,
  ],
  // Recursive deletes (Consul's KeyWritePrefix): the prefix's own rule, and nothing under it refusing.
  ['key write prefix', ['key_prefix "app/" { policy = "write" }'], 'keyWritePrefix', 'app/', true],
  [
    'key write prefix refused by a read rule under it',
    ['key_prefix "app/" { policy = "write" }\nkey_prefix "app/ro/" { policy = "read" }'],
    'keyWritePrefix',
    'app/',
    false,
  ],
  [
    'key write prefix refused by an exact deny under it',
    ['key_prefix "" { policy = "write" }\nkey "app/secret" { policy = "deny" }'],
    'keyWritePrefix',
    'app/',
    false,
  ],
  [
    'key write prefix ignores an exact write rule for the prefix string',
    ['key_prefix "" { policy = "read" }\nkey "app/" { policy = "write" }'],
    'keyWritePrefix',
    'app/',
    false,
  ],
  [
    'key write prefix: a write rule under it is fine',
    ['key_prefix "" { policy = "write" }\nkey "a/b" { policy = "write" }'],
    'keyWritePrefix',
    'a/',
    true,
  ],
  // `list` (enable_key_list_policy off): neither read nor write, and it stops the shorter prefix.
  ['key list does not read', ['key_prefix "app/" { policy = "list" }'], 'keyRead', 'app/x', false],
  [
    'key list beats a shorter read prefix',
    ['key_prefix "" { policy = "read" }\nkey_prefix "app/" { policy = "list" }'],
    'keyRead',
    'app/x',
    false,
  ],
  ['key list does not write', ['key_prefix "app/" { policy = "list" }'], 'keyWrite', 'app/x', false],
  // Sessions: rules name nodes.
  ['session exact write', ['session "n1" { policy = "write" }'], 'sessionWrite', 'n1', true],
  [
    'session exact does not match another node',
    ['session "n1" { policy = "write" }'],
    'sessionWrite',
    'n2',
    false,
  ],
  [
    'session prefix read refuses write',
    ['session_prefix "" { policy = "read" }'],
    'sessionWrite',
    'n1',
    false,
  ],
  ['session prefix read', ['session_prefix "" { policy = "read" }'], 'sessionRead', 'n1', true],
  ['agent prefix read', ['agent_prefix "" { policy = "read" }'], 'agentRead', 'n9', true],
  ['agent prefix read refuses write', ['agent_prefix "" { policy = "read" }'], 'agentWrite', 'n9', false],
  // User events (Consul's event / event_prefix): read lists, write fires.
  ['event exact write fires', ['event "deploy" { policy = "write" }'], 'eventWrite', 'deploy', true],
  ['event read refuses firing', ['event_prefix "" { policy = "read" }'], 'eventWrite', 'deploy', false],
  ['event prefix read lists', ['event_prefix "dep" { policy = "read" }'], 'eventRead', 'deploy', true],
  [
    'event exact deny inside a write prefix',
    ['event_prefix "" { policy = "write" }\nevent "halt" { policy = "deny" }'],
    'eventRead',
    'halt',
    false,
  ],
  ['no event rule → deny', ['service_prefix "" { policy = "write" }'], 'eventWrite', 'deploy', false],
  // Scalars; mesh follows operator when unset.
  ['operator read', ['operator = "read"'], 'operatorRead', '', true],
  ['operator read refuses write', ['operator = "read"'], 'operatorWrite', '', false],
  ['mesh follows operator', ['operator = "write"'], 'meshWrite', '', true],
  ['mesh set wins over operator', ['operator = "write"\nmesh = "deny"'], 'meshRead', '', false],
  ['acl write', ['acl = "write"'], 'aclWrite', '', true],
  ['acl read refuses write', ['acl = "read"'], 'aclWrite', '', false],
  ['operator and acl merge to deny', ['operator = "write"', 'operator = "deny"'], 'operatorRead', '', false],
]

function call(a: Authorizer, m: Method, arg: string): boolean {
  return (a[m] as (x: string) => boolean).call(a, arg)
}

describe('PolicyAuthorizer: Consul precedence (exact > longest prefix; deny > write > read at a tie)', () => {
  it.each(cases)('%s', (_name, rules, method, arg, want) => {
    expect(call(authz(rules), method, arg)).toBe(want)
  })
})

describe('PolicyAuthorizer: default policy', () => {
  it.each<[string, string[], Method, string, boolean]>([
    ['allow when nothing matches', [], 'serviceWrite', 'web', true],
    [
      'a matching read rule still refuses write',
      ['service "web" { policy = "read" }'],
      'serviceWrite',
      'web',
      false,
    ],
    ['a matching deny still denies', ['key_prefix "" { policy = "deny" }'], 'keyRead', 'k', false],
    ['the default never grants acl:read', [], 'aclRead', '', false],
    ['the default never grants acl:write', [], 'aclWrite', '', false],
    ['operator by default', [], 'operatorWrite', '', true],
  ])('default allow: %s', (_name, rules, method, arg, want) => {
    expect(call(authz(rules, 'allow'), method, arg)).toBe(want)
  })
})

// ---- tokens: identities, management, anonymous --------------------------------------------------

const policies = new Map<string, AclPolicy>()
function policy(id: string, rules: string): string {
  policies.set(id, {
    id,
    name: `p-${id}`,
    description: '',
    rules,
    datacenters: [],
    createIndex: 1,
    modifyIndex: 1,
  })
  return id
}
const READ_ALL = policy('11111111-1111-1111-1111-111111111111', 'service_prefix "" { policy = "read" }')
const DENY_DB = policy('22222222-2222-2222-2222-222222222222', 'service "db" { policy = "deny" }')
const BROKEN = policy('33333333-3333-3333-3333-333333333333', 'service "x" {')

function token(over: Partial<AclToken>): AclToken {
  return {
    accessorId: 'aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa',
    secretId: 'bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb',
    description: '',
    policies: [],
    serviceIdentities: [],
    nodeIdentities: [],
    local: false,
    voter: false,
    createTime: '2026-01-01T00:00:00Z',
    createIndex: 1,
    modifyIndex: 1,
    ...over,
  }
}

const options = { defaultPolicy: 'deny' as const, anonymousRead: true }
const of = (t: AclToken, o = options): Authorizer => authorizerForToken(t, (id) => policies.get(id), o)

describe('authorizerForToken', () => {
  const web = of(token({ serviceIdentities: [{ serviceName: 'web' }] }))
  const node = of(token({ nodeIdentities: [{ nodeName: 'n1', datacenter: 'dc1' }] }))
  const anon = of(token({ accessorId: ANONYMOUS_TOKEN_ID, secretId: 'anonymous' }))
  const anonOff = of(token({ accessorId: ANONYMOUS_TOKEN_ID, secretId: 'anonymous' }), {
    ...options,
    anonymousRead: false,
  })

  it.each<[string, Authorizer, Method, string, boolean]>([
    ['service identity: write on itself', web, 'serviceWrite', 'web', true],
    ['service identity: write on its sidecar', web, 'serviceWrite', 'web-sidecar-proxy', true],
    ['service identity: not write on another service', web, 'serviceWrite', 'api', false],
    ['service identity: read on every service', web, 'serviceRead', 'api', true],
    ['service identity: read on every node', web, 'nodeRead', 'n7', true],
    ['service identity: not write on nodes', web, 'nodeWrite', 'n7', false],
    [
      'service identity: intention read on itself (Consul default for a service rule)',
      web,
      'intentionRead',
      'web',
      true,
    ],
    ['service identity: not intention write', web, 'intentionWrite', 'web', false],
    ['service identity: no keys', web, 'keyRead', 'k', false],
    ['service identity: no operator', web, 'operatorRead', '', false],
    ['node identity: write on itself', node, 'nodeWrite', 'n1', true],
    ['node identity: not write on another node', node, 'nodeWrite', 'n2', false],
    ['node identity: read on every service', node, 'serviceRead', 'web', true],
    ['node identity: not read on other nodes', node, 'nodeRead', 'n2', false],
    ['anonymous with anonymousRead: services', anon, 'serviceRead', 'web', true],
    ['anonymous with anonymousRead: nodes', anon, 'nodeRead', 'n1', true],
    ['anonymous with anonymousRead: agent self', anon, 'agentRead', 'n1', true],
    ['anonymous with anonymousRead: not intentions', anon, 'intentionRead', 'web', false],
    ['anonymous with anonymousRead: no writes', anon, 'serviceWrite', 'web', false],
    ['anonymous with anonymousRead: no keys', anon, 'keyRead', 'k', false],
    ['anonymous with anonymousRead: no acl', anon, 'aclRead', '', false],
    ['anonymous without anonymousRead: nothing', anonOff, 'serviceRead', 'web', false],
  ])('%s', (_name, a, method, arg, want) => expect(call(a, method, arg)).toBe(want))

  it('a token linking global-management is management: everything', () => {
    const a = of(token({ policies: [GLOBAL_MANAGEMENT_POLICY_ID, DENY_DB] }))
    expect(a).toBe(MANAGE_ALL)
    expect(a.isManagement).toBe(true)
    for (const m of ['aclWrite', 'operatorWrite', 'meshWrite'] as const) expect(a[m]()).toBe(true)
    expect(a.serviceWrite('db') && a.keyWrite('x') && a.agentWrite('n') && a.intentionWrite('db')).toBe(true)
  })

  it('linked policies merge with identities: an exact deny beats the identity write', () => {
    const a = of(token({ policies: [READ_ALL, DENY_DB], serviceIdentities: [{ serviceName: 'db' }] }))
    expect(a.serviceWrite('db')).toBe(false)
    expect(a.serviceRead('web')).toBe(true)
  })

  it('a link to a deleted policy or a policy that no longer parses grants nothing', () => {
    const bad: string[] = []
    const a = authorizerForToken(
      token({ policies: ['44444444-4444-4444-4444-444444444444', BROKEN] }),
      (id) => policies.get(id),
      { ...options, onInvalidPolicy: (p) => bad.push(p.id) },
    )
    expect(a.serviceRead('x')).toBe(false)
    expect(bad).toEqual([BROKEN])
  })
})
