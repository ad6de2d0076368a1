import { MAX_RULES_CHARS } from './constants.ts'
import { AclRulesError } from './errors.ts'
import { type AccessLevel, emptyRuleSet, type RuleSet, type ServiceRule } from './types.ts'

/**
 * Parses a policy's `Rules` in Consul's rule language, in its JSON form
 * (`{"service": {"web": {"policy": "write", "intentions": "read"}}, "operator": "read"}`) or the
 * HCL form most Consul policies are written in (`service "web" { policy = "write" }`; only the
 * subset rules use: labelled blocks of `key = "value"`, top-level `key = "value"`, comments).
 * The JSON form of HCL (a block as an array of objects) is accepted too.
 *
 * Resources peermesh enforces: service/service_prefix (with `intentions`), node/node_prefix,
 * key/key_prefix, agent/agent_prefix, event/event_prefix, session/session_prefix, operator, acl,
 * mesh. Consul resources peermesh has no counterpart for (query, keyring, peering, identity, ...)
 * are checked and
 * ignored, so a policy written for Consul loads. Anything else is an error naming the rule.
 */
export function parseRules(text: string): RuleSet {
  if (text.length > MAX_RULES_CHARS)
    throw new AclRulesError(`rules: longer than ${MAX_RULES_CHARS} characters`)
  if (text.trim() === '') return emptyRuleSet()
  let doc: unknown
  if (/^\s*[{[]/.test(text)) {
    try {
      doc = JSON.parse(text)
    } catch (err) {
      throw new AclRulesError(`rules: not valid JSON: ${(err as Error).message}`)
    }
  } else {
    doc = parseHclSubset(text)
  }
  return ruleSetFromDocument(doc)
}

const LEVELS: readonly AccessLevel[] = ['read', 'write', 'deny']

/** Rules with a name (`service "web" {...}`), by their key, and what each one's body may hold. */
const NAMED = {
  service: 'service',
  service_prefix: 'servicePrefix',
  node: 'node',
  node_prefix: 'nodePrefix',
  key: 'key',
  key_prefix: 'keyPrefix',
  agent: 'agent',
  agent_prefix: 'agentPrefix',
  event: 'event',
  event_prefix: 'eventPrefix',
  session: 'session',
  session_prefix: 'sessionPrefix',
} as const
const SCALAR = { operator: 'operator', acl: 'acl', mesh: 'mesh' } as const
/** Consul resources without a peermesh counterpart: validated, then ignored. */
const IGNORED_NAMED = new Set(['query', 'query_prefix', 'identity', 'identity_prefix'])
const IGNORED_SCALAR = new Set(['keyring', 'peering'])

const RANK: Record<AccessLevel, number> = { list: 0, read: 1, write: 2, deny: 3 }

/** Of two levels for the same rule, the one Consul keeps when merging: deny, then write, read, list. */
export function strongerLevel(a: AccessLevel | undefined, b: AccessLevel): AccessLevel {
  return a === undefined || RANK[b] > RANK[a] ? b : a
}

/** Validates a decoded rules document (the JSON form) into a RuleSet. */
export function ruleSetFromDocument(doc: unknown): RuleSet {
  if (!isObject(doc)) throw new AclRulesError('rules: expected an object of rules')
  const out = emptyRuleSet()
  for (const [resource, value] of Object.entries(doc)) {
    if (Object.hasOwn(NAMED, resource) || IGNORED_NAMED.has(resource)) {
      for (const [name, body] of namedEntries(resource, value)) {
        const where = `${resource} ${JSON.stringify(name)}`
        const rule = parseRuleBody(
          where,
          body,
          resource === 'service' || resource === 'service_prefix',
          resource === 'key' || resource === 'key_prefix',
        )
        const field = Object.hasOwn(NAMED, resource) ? NAMED[resource as keyof typeof NAMED] : undefined
        if (field === undefined) continue
        if (field === 'service' || field === 'servicePrefix') {
          const cur = out[field].get(name)
          const merged: ServiceRule = { policy: strongerLevel(cur?.policy, rule.policy) }
          const intentions =
            rule.intentions === undefined ? cur?.intentions : strongerLevel(cur?.intentions, rule.intentions)
          if (intentions !== undefined) merged.intentions = intentions
          out[field].set(name, merged)
        } else {
          out[field].set(name, strongerLevel(out[field].get(name), rule.policy))
        }
      }
    } else if (Object.hasOwn(SCALAR, resource) || IGNORED_SCALAR.has(resource)) {
      const level = parseLevel(resource, value)
      const field = Object.hasOwn(SCALAR, resource) ? SCALAR[resource as keyof typeof SCALAR] : undefined
      if (field !== undefined) out[field] = strongerLevel(out[field], level)
    } else {
      const known = [...Object.keys(NAMED), ...Object.keys(SCALAR)].join(', ')
      throw new AclRulesError(`rules: unknown resource ${JSON.stringify(resource)} (known: ${known})`)
    }
  }
  return out
}

/** `{ "web": {...}, "api": {...} }`, or HCL-JSON's `[{ "web": {...} }, { "api": {...} }]`. */
function namedEntries(resource: string, value: unknown): [string, unknown][] {
  const parts = Array.isArray(value) ? value : [value]
  const out: [string, unknown][] = []
  for (const part of parts) {
    if (!isObject(part))
      throw new AclRulesError(`${resource}: expected an object of names, e.g. {"web": {"policy": "read"}}`)
    out.push(...Object.entries(part))
  }
  return out
}

function parseRuleBody(where: string, raw: unknown, service: boolean, key: boolean): ServiceRule {
  let body = raw
  if (Array.isArray(body)) {
    if (body.length !== 1) throw new AclRulesError(`${where}: expected one rule body`)
    body = body[0]
  }
  if (!isObject(body)) throw new AclRulesError(`${where}: expected {"policy": "read"|"write"|"deny"}`)
  let policy: AccessLevel | undefined
  let intentions: AccessLevel | undefined
  for (const [k, v] of Object.entries(body)) {
    if (k === 'policy') policy = parseLevel(`${where}: policy`, v, key)
    else if (k === 'intentions' && service) intentions = parseLevel(`${where}: intentions`, v)
    else throw new AclRulesError(`${where}: unknown field ${JSON.stringify(k)}`)
  }
  if (policy === undefined) {
    // Consul allows a service rule that sets only `intentions`; its service level is then deny.
    if (intentions === undefined) throw new AclRulesError(`${where}: missing "policy"`)
    policy = 'deny'
  }
  return intentions === undefined ? { policy } : { policy, intentions }
}

/** `list` is a level of key rules only (Consul's), see `AccessLevel`. */
function parseLevel(where: string, v: unknown, listAllowed = false): AccessLevel {
  if (typeof v === 'string' && (LEVELS as readonly string[]).includes(v)) return v as AccessLevel
  if (v === 'list') {
    if (listAllowed) return 'list'
    throw new AclRulesError(`${where}: "list" is a level of key and key_prefix rules only`)
  }
  throw new AclRulesError(`${where}: expected "read", "write" or "deny", not ${JSON.stringify(v)}`)
}

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v)
}

// ---- the HCL subset ---------------------------------------------------------------------------

type Token = { kind: 'ident' | 'string' | '=' | '{' | '}' | ','; text: string; line: number }

function tokenize(text: string): Token[] {
  const out: Token[] = []
  let i = 0
  let line = 1
  while (i < text.length) {
    const c = text[i]!
    if (c === '\n') {
      line++
      i++
    } else if (c === ' ' || c === '\t' || c === '\r') {
      i++
    } else if (c === '#' || (c === '/' && text[i + 1] === '/')) {
      while (i < text.length && text[i] !== '\n') i++
    } else if (c === '/' && text[i + 1] === '*') {
      const end = text.indexOf('*/', i + 2)
      if (end < 0) throw new AclRulesError(`rules: line ${line}: unterminated comment`)
      for (let j = i; j < end; j++) if (text[j] === '\n') line++
      i = end + 2
    } else if (c === '=' || c === '{' || c === '}' || c === ',') {
      out.push({ kind: c, text: c, line })
      i++
    } else if (c === '"') {
      let j = i + 1
      while (j < text.length && text[j] !== '"' && text[j] !== '\n') j += text[j] === '\\' ? 2 : 1
      if (text[j] !== '"') throw new AclRulesError(`rules: line ${line}: unterminated string`)
      let s: string
      try {
        s = JSON.parse(text.slice(i, j + 1)) as string
      } catch {
        throw new AclRulesError(`rules: line ${line}: bad escape in string`)
      }
      out.push({ kind: 'string', text: s, line })
      i = j + 1
    } else if (/[A-Za-z_]/.test(c)) {
      let j = i + 1
      while (j < text.length && /[A-Za-z0-9_-]/.test(text[j]!)) j++
      out.push({ kind: 'ident', text: text.slice(i, j), line })
      i = j
    } else {
      throw new AclRulesError(`rules: line ${line}: unexpected ${JSON.stringify(c)}`)
    }
  }
  return out
}

/**
 * `service "web" { policy = "read" }` → `{ service: [{ web: { policy: "read" } }] }`;
 * `operator = "read"` → `{ operator: "read" }`. Nothing else of HCL (no lists, heredocs,
 * numbers or nested blocks) appears in rules, so nothing else is accepted.
 */
function parseHclSubset(text: string): Record<string, unknown> {
  const toks = tokenize(text)
  let p = 0
  const doc: Record<string, unknown> = Object.create(null)
  const expect = (kind: Token['kind'], what: string): Token => {
    const t = toks[p]
    if (t === undefined) throw new AclRulesError(`rules: unexpected end, expected ${what}`)
    if (t.kind !== kind)
      throw new AclRulesError(`rules: line ${t.line}: expected ${what}, found ${JSON.stringify(t.text)}`)
    p++
    return t
  }
  while (p < toks.length) {
    const key = expect('ident', 'a rule such as service "name" { ... } or operator = "read"')
    const next = toks[p]
    if (next?.kind === '=') {
      p++
      const v = expect('string', 'a quoted level')
      if (Object.hasOwn(doc, key.text))
        throw new AclRulesError(
          `rules: line ${key.line}: ${key.text} ${Array.isArray(doc[key.text]) ? 'used two ways' : 'given twice'}`,
        )
      doc[key.text] = v.text
      continue
    }
    const label = expect('string', `a quoted name after ${key.text}`)
    if (toks[p]?.kind === '=') p++
    expect('{', '"{"')
    const body: Record<string, string> = Object.create(null)
    while (toks[p]?.kind !== '}') {
      const f = expect('ident', 'a field such as policy = "read" or "}"')
      expect('=', `"=" after ${f.text}`)
      const v = expect('string', `a quoted value for ${f.text}`)
      body[f.text] = v.text
      if (toks[p]?.kind === ',') p++
    }
    p++
    if (!Object.hasOwn(doc, key.text)) doc[key.text] = []
    const list = doc[key.text]
    if (!Array.isArray(list)) throw new AclRulesError(`rules: line ${key.line}: ${key.text} used two ways`)
    list.push({ [label.text]: body })
  }
  return doc
}
