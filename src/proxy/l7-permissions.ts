/**
 * L7 intentions (Consul's `Permissions` on service-intentions): matching one request against the
 * permissions of the intention that covers its (source, destination) pair.
 *
 * Permissions are checked in order and the first that matches decides (`allow` or `deny`); a
 * request that matches none gets the mesh's default action (Consul: "traffic that fails to match
 * any of the provided permissions will be subject to the default intention behavior").
 *
 * A permission's `HTTP` matches when every criterion it sets matches: the path (`PathExact`,
 * `PathPrefix`, or `PathRegex` over the whole path), the method (one of `Methods`), and every
 * `Header` rule (`Present`, `Exact`, `Prefix`, `Suffix` or `Regex` on the value, `Invert` negating
 * the rule). A header sent more than once is matched on its values joined by `,` (Envoy's rule).
 *
 * Regular expressions run on V8's linear-time engine (`linear-regexp.ts`, RE2 rules as in Consul
 * and Envoy): the path and headers come from the mesh client, and a backtracking engine would let
 * one request hold the sidecar's event loop. Writes refuse a pattern that engine cannot run; one
 * stored before that rule is not compiled, and fails closed without throwing: in an `allow`
 * permission the criterion matches no request, in a `deny` permission every request. Either way
 * the permission decides no request `allow` that it would not have decided `allow` with the
 * pattern; a `deny` may cover more requests than it was written for.
 *
 * Pure: compiled once per policy (regular expressions included), then matched without allocating.
 */
import { compileLinearFullMatch } from '../common/linear-regexp.ts'
import type { IntentionAction, IntentionPermission } from './intentions.ts'
import type { GateRequest } from './request-gate.ts'

/** A compiled header rule. */
interface HeaderRule {
  /** Lower case. */
  name: string
  test: (value: string | undefined) => boolean
  invert: boolean
}

/** A compiled permission. */
export interface CompiledPermission {
  action: IntentionAction
  path: ((path: string) => boolean) | undefined
  methods: ReadonlySet<string> | undefined
  headers: readonly HeaderRule[]
}

/**
 * Compiles validated permissions (`validatePermissions`). Never throws: a regular expression the
 * linear-time engine cannot run fails closed (see above).
 */
export function compilePermissions(permissions: readonly IntentionPermission[]): CompiledPermission[] {
  return permissions.map((p) => {
    const h = p.HTTP
    // What a criterion whose pattern cannot be compiled says: never `allow` more than written.
    const uncompiled = p.Action === 'deny'
    return {
      action: p.Action,
      path: compilePathMatch(h, uncompiled),
      methods: h.Methods === undefined ? undefined : new Set(h.Methods),
      headers: (h.Header ?? []).map((rule) => compileHeaderRule(rule, uncompiled)),
    }
  })
}

/**
 * A path matcher from Consul's `PathExact` / `PathPrefix` / `PathRegex` (undefined: any path).
 * `PathRegex` matches the whole path, in linear time; a pattern the linear engine cannot run
 * (stored before writes were checked for it) gives a matcher that answers `uncompiled` for every
 * path: the caller says which answer fails closed for it.
 */
export function compilePathMatch(
  m: {
    PathExact?: string | undefined
    PathPrefix?: string | undefined
    PathRegex?: string | undefined
  },
  uncompiled = false,
): ((path: string) => boolean) | undefined {
  if (m.PathExact !== undefined) {
    const exact = m.PathExact
    return (path) => path === exact
  }
  if (m.PathPrefix !== undefined) {
    const prefix = m.PathPrefix
    return (path) => path.startsWith(prefix)
  }
  if (m.PathRegex !== undefined) {
    const re = compileLinearFullMatch(m.PathRegex)
    if (re === undefined) return () => uncompiled
    return (path) => re.test(path)
  }
  return undefined
}

/** `uncompiled`: whether a rule whose regex cannot be compiled holds (`Invert` notwithstanding). */
function compileHeaderRule(
  h: NonNullable<IntentionPermission['HTTP']['Header']>[number],
  uncompiled: boolean,
): HeaderRule {
  const name = h.Name.toLowerCase()
  const invert = h.Invert === true
  if (h.Exact !== undefined) {
    const v = h.Exact
    return { name, invert, test: (x) => x === v }
  }
  if (h.Prefix !== undefined) {
    const v = h.Prefix
    return { name, invert, test: (x) => x?.startsWith(v) === true }
  }
  if (h.Suffix !== undefined) {
    const v = h.Suffix
    return { name, invert, test: (x) => x?.endsWith(v) === true }
  }
  if (h.Regex !== undefined) {
    const re = compileLinearFullMatch(h.Regex)
    // The rule holds when test(value) !== invert: answer so that it holds exactly when `uncompiled`.
    if (re === undefined) return { name, invert, test: () => uncompiled !== invert }
    return { name, invert, test: (x) => x !== undefined && re.test(x) }
  }
  // Present (the schema requires exactly one rule).
  return { name, invert, test: (x) => x !== undefined }
}

function headerValue(headers: GateRequest['headers'], name: string): string | undefined {
  const v = headers[name]
  if (v === undefined) return undefined
  return typeof v === 'string' ? v : v.join(',')
}

/** Whether `request` matches every criterion of `p`. */
export function permissionMatches(p: CompiledPermission, request: GateRequest): boolean {
  if (p.methods !== undefined && !p.methods.has(request.method)) return false
  if (p.path !== undefined && !p.path(request.path)) return false
  for (const h of p.headers) {
    if (h.test(headerValue(request.headers, h.name)) === h.invert) return false
  }
  return true
}

/** The action of the first permission `request` matches, or `defaultAction` if none does. */
export function decidePermissions(
  permissions: readonly CompiledPermission[],
  request: GateRequest,
  defaultAction: IntentionAction,
): IntentionAction {
  for (const p of permissions) if (permissionMatches(p, request)) return p.action
  return defaultAction
}

const UNRESERVED = /[A-Za-z0-9\-._~]/

/**
 * The path a request is matched (and forwarded) with, so that the app sees what the permissions
 * saw: percent-escapes of unreserved characters decoded and the others upper-cased (RFC 3986
 * §6.2.2), runs of `/` merged, and `.` and `..` segments removed (§5.2.4). Undefined for a path
 * that cannot be matched safely: not starting with `/`, a malformed escape, or an escaped `/` or
 * `\` (`%2F`, `%5C`) or a raw `\`, which apps decode differently (the inbound answers 400).
 */
export function normalizeRequestPath(path: string): string | undefined {
  if (!path.startsWith('/') || path.includes('\\')) return undefined
  let decoded = path
  if (path.includes('%')) {
    let out = ''
    for (let i = 0; i < path.length; i++) {
      const c = path[i]!
      if (c !== '%') {
        out += c
        continue
      }
      const hex = path.slice(i + 1, i + 3)
      if (!/^[0-9A-Fa-f]{2}$/.test(hex)) return undefined
      const ch = String.fromCharCode(Number.parseInt(hex, 16))
      if (ch === '/' || ch === '\\') return undefined
      out += UNRESERVED.test(ch) ? ch : `%${hex.toUpperCase()}`
      i += 2
    }
    decoded = out
  }
  const segments = decoded.replace(/\/{2,}/g, '/').split('/')
  const out: string[] = []
  for (let i = 1; i < segments.length; i++) {
    const s = segments[i]!
    const last = i === segments.length - 1
    if (s === '.' || s === '..') {
      if (s === '..') out.pop()
      if (last) out.push('')
      continue
    }
    out.push(s)
  }
  return `/${out.join('/')}`
}
