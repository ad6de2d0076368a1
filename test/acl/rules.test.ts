import { describe, expect, it } from 'vitest'
import { AclRulesError, parseRules } from '../../src/acl/index.ts'

describe('parseRules: the JSON form', () => {
  it('reads every resource peermesh enforces', () => {
    const r = parseRules(
      JSON.stringify({
        service: { web: { policy: 'write', intentions: 'read' } },
        service_prefix: { '': { policy: 'read' } },
        node: { n1: { policy: 'write' } },
        node_prefix: { '': { policy: 'read' } },
        key: { 'a/b': { policy: 'deny' } },
        key_prefix: { 'a/': { policy: 'write' } },
        agent: { n1: { policy: 'read' } },
        agent_prefix: { '': { policy: 'deny' } },
        operator: 'read',
        acl: 'write',
        mesh: 'deny',
      }),
    )
    expect(r.service.get('web')).toEqual({ policy: 'write', intentions: 'read' })
    expect(r.servicePrefix.get('')).toEqual({ policy: 'read' })
    expect(r.node.get('n1')).toBe('write')
    expect(r.nodePrefix.get('')).toBe('read')
    expect(r.key.get('a/b')).toBe('deny')
    expect(r.keyPrefix.get('a/')).toBe('write')
    expect(r.agent.get('n1')).toBe('read')
    expect(r.agentPrefix.get('')).toBe('deny')
    expect([r.operator, r.acl, r.mesh]).toEqual(['read', 'write', 'deny'])
  })

  it("accepts HCL's JSON form (blocks as arrays of objects)", () => {
    const r = parseRules('{"service": [{"web": [{"policy": "read"}]}, {"api": {"policy": "write"}}]}')
    expect(r.service.get('web')).toEqual({ policy: 'read' })
    expect(r.service.get('api')).toEqual({ policy: 'write' })
  })

  it('checks and ignores Consul resources peermesh has no counterpart for', () => {
    const r = parseRules(
      '{"query_prefix": {"": {"policy": "read"}}, "keyring": "write", "identity": {"x": {"policy": "write"}}}',
    )
    expect(r.service.size + r.node.size + r.key.size + r.session.size).toBe(0)
    expect(() => parseRules('{"keyring": "all"}')).toThrow(AclRulesError)
  })

  it('reads event and event_prefix rules (HCL and JSON)', () => {
    const r = parseRules('event "deploy" { policy = "write" }\nevent_prefix "" { policy = "read" }')
    expect(r.event.get('deploy')).toBe('write')
    expect(r.eventPrefix.get('')).toBe('read')
    expect(parseRules('{"event": {"x": {"policy": "deny"}}}').event.get('x')).toBe('deny')
    expect(() => parseRules('event "x" { policy = "all" }')).toThrow(AclRulesError)
  })

  it('reads "list" on key rules (Consul), merging below read', () => {
    const r = parseRules('key_prefix "app/" { policy = "list" }\nkey "app/x" { policy = "list" }')
    expect(r.keyPrefix.get('app/')).toBe('list')
    expect(
      parseRules(
        ['key_prefix "a/" { policy = "list" }', 'key_prefix "a/" { policy = "read" }'].join('\n'),
      ).keyPrefix.get('a/'),
    ).toBe('read')
  })

  it('reads session and session_prefix rules (on node names), JSON and HCL', () => {
    const r = parseRules('session "n1" { policy = "write" }\nsession_prefix "" { policy = "read" }')
    expect(r.session.get('n1')).toBe('write')
    expect(r.sessionPrefix.get('')).toBe('read')
    expect(parseRules('{"session": {"x": {"policy": "deny"}}}').session.get('x')).toBe('deny')
    expect(() => parseRules('session "x" { policy = "own" }')).toThrow(AclRulesError)
  })

  it('a service rule with only intentions denies the service itself (Consul)', () => {
    expect(parseRules('{"service": {"db": {"intentions": "write"}}}').service.get('db')).toEqual({
      policy: 'deny',
      intentions: 'write',
    })
  })

  it('an empty text is an empty policy', () => {
    expect(parseRules('  ').service.size).toBe(0)
  })

  it('treats __proto__ as a plain name', () => {
    const r = parseRules('{"service": {"__proto__": {"policy": "read"}}}')
    expect(r.service.get('__proto__')).toEqual({ policy: 'read' })
    expect(() => parseRules('{"__proto__": "read"}')).toThrow(/unknown resource "__proto__"/)
  })

  it.each([
    ['{nope', /^rules: not valid JSON/],
    ['[1]', /^rules: expected an object/],
    ['{"servce": {}}', /^rules: unknown resource "servce" \(known: service, /],
    [
      '{"service": {"web": {"policy": "rw"}}}',
      /^service "web": policy: expected "read", "write" or "deny", not "rw"$/,
    ],
    ['{"service": {"web": {"polcy": "read"}}}', /^service "web": unknown field "polcy"$/],
    ['{"node": {"n": {"policy": "read", "intentions": "read"}}}', /^node "n": unknown field "intentions"$/],
    ['{"service": {"web": {}}}', /^service "web": missing "policy"$/],
    ['{"service": {"web": "read"}}', /^service "web": expected \{"policy"/],
    ['{"service": "read"}', /^service: expected an object of names/],
    ['{"operator": {"policy": "read"}}', /^operator: expected "read", "write" or "deny"/],
    ['{"service_prefix": {"": {"policy": "list"}}}', /"list" is a level of key and key_prefix rules only/],
    ['{"service": {"web": {"policy": "read", "intentions": "all"}}}', /^service "web": intentions: /],
  ])('refuses %s with a message naming the rule', (text, message) => {
    expect(() => parseRules(text)).toThrow(message)
    try {
      parseRules(text)
    } catch (err) {
      expect((err as AclRulesError).code).toBe(AclRulesError.code)
    }
  })

  it('refuses rules longer than the cap', () => {
    expect(() => parseRules(`{"operator": "read"}${' '.repeat(70_000)}`)).toThrow(/longer than/)
  })
})

describe('parseRules: the HCL subset', () => {
  it('reads labelled blocks, top-level levels and comments, as the JSON form', () => {
    const hcl = `
      # a comment
      service "web" { policy = "write" intentions = "read" }
      service_prefix "" {
        policy = "read"   // another
      }
      /* block
         comment */
      node_prefix "" { policy = "read" }
      key_prefix "app/" { policy = "deny" }
      operator = "read"
      mesh = "write"
    `
    const r = parseRules(hcl)
    expect(r.service.get('web')).toEqual({ policy: 'write', intentions: 'read' })
    expect(r.servicePrefix.get('')).toEqual({ policy: 'read' })
    expect(r.nodePrefix.get('')).toBe('read')
    expect(r.keyPrefix.get('app/')).toBe('deny')
    expect(r.operator).toBe('read')
    expect(r.mesh).toBe('write')
  })

  it('merges a rule given twice to the stronger level (deny > write > read)', () => {
    const r = parseRules('service "web" { policy = "read" }\nservice "web" { policy = "deny" }')
    expect(r.service.get('web')?.policy).toBe('deny')
  })

  it.each([
    ['service web { policy = "read" }', /line 1: expected a quoted name after service/],
    ['service "web" { policy "read" }', /line 1: expected "=" after policy/],
    ['service "web" { policy = "read"', /unexpected end/],
    ['operator = "read"\noperator = "write"', /line 2: operator given twice/],
    ['operator = "read"\n$', /line 2: unexpected "\$"/],
    ['service "web { policy = "read" }', /unterminated string|expected/],
    ['/* open', /unterminated comment/],
    [
      'service "web" { policy = "read" }\nservice = "read"',
      /service used two ways|expected an object of names/,
    ],
    ['service "web" { policy = "maybe" }', /^service "web": policy: expected/],
  ])('refuses %j naming where', (text, message) => {
    expect(() => parseRules(text)).toThrow(message)
  })
})
