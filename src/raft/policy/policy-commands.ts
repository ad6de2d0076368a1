import { z } from 'zod'
import { pack, unpack } from '../../common/msgpack.ts'
import { JSON_VALUE_LIMITS, type PlainValueLimits, plainValueProblem } from '../../common/plain-value.ts'
import { AclErrorCodes, aclCommandSchemas } from './acl-state.ts'
import {
  configEntryProblem,
  intentionPermissionsSchema,
  isTrafficEntryKind,
  TRAFFIC_ENTRY_SCHEMAS,
} from './config-entries.ts'
import { kvCommandSchemas } from './kv-commands.ts'

/**
 * The commands of the policy store (what a client proposes through Raft), their schema and
 * encoding, and the results the store answers with.
 */

/**
 * The codes a command fails with. They are results, not thrown errors: every agent applies the
 * same entry to the same outcome. Compare against these, never against a string.
 */
export const PolicyErrorCodes = {
  ...AclErrorCodes,
  invalidCommand: 'PEERMESH_ERR_INVALID_COMMAND',
  notFound: 'PEERMESH_ERR_NOT_FOUND',
  casFailed: 'PEERMESH_ERR_CAS_FAILED',
  staleRequest: 'PEERMESH_ERR_STALE_REQUEST',
  /** Unsigned, or not signed by a root trusted at this point of the log (policy-signing.ts). */
  signature: 'PEERMESH_ERR_POLICY_SIGNATURE',
  /** Over an entry's size cap or the policy state's total cap (POLICY_LIMITS); HTTP 413. */
  tooLarge: 'PEERMESH_ERR_TOO_LARGE',
  /** A forwarded write whose token does not grant it (ACLs on): nothing was proposed. */
  permissionDenied: 'PEERMESH_ERR_PERMISSION_DENIED',
  /**
   * A forwarded write of an operation only the leader itself may propose (`ca.*`: the CA changes
   * only through the leader's own CA manager). Nothing was proposed.
   */
  notForwardable: 'PEERMESH_ERR_NOT_FORWARDABLE',
  /** A KV lock is held by another session, or the key is in its lock-delay (kv-state.ts). */
  kvLockHeld: 'PEERMESH_ERR_KV_LOCK_HELD',
  /** A transaction failed; the message starts `op N: ` (kv-state.ts). Nothing was applied. */
  txnFailed: 'PEERMESH_ERR_TXN_FAILED',
} as const

export type PolicyErrorCode = (typeof PolicyErrorCodes)[keyof typeof PolicyErrorCodes]

export type PolicyResult = { ok: true; index: number } | { ok: false; code: PolicyErrorCode; message: string }

const name = z.string().min(1).max(512)
const meta = z.record(z.string().max(128), z.string().max(1024))

/**
 * Config entry kinds accepted, each with the schema its value must satisfy; others are rejected.
 * Without a prototype: a kind is a caller's string, and `constructor` or `toString` must look up
 * nothing, not Object's methods.
 */
export const CONFIG_ENTRY_SCHEMAS: Readonly<Record<string, z.ZodType | undefined>> = Object.freeze(
  Object.assign(Object.create(null) as Record<string, z.ZodType>, {
    ...TRAFFIC_ENTRY_SCHEMAS,
    /** A generic string value, for tools, tests and benchmarks that need a plain register. */
    kv: z.object({ value: z.string().max(65_536) }).strict(),
  }),
)

export const policyCommandSchema = z.discriminatedUnion('op', [
  z.object({
    op: z.literal('intention.upsert'),
    source: name,
    destination: name,
    action: z.enum(['allow', 'deny']),
    /** L7 permissions (checked against their schema in `checkPolicyCommand`); action is then `deny`. */
    permissions: z.array(z.unknown()).optional(),
    description: z.string().max(4096).optional(),
    meta: meta.optional(),
    /** Compare-and-set: apply only if the current modifyIndex equals this (0 = must not exist). */
    casIndex: z.number().int().nonnegative().optional(),
  }),
  z.object({ op: z.literal('intention.delete'), source: name, destination: name }),
  z.object({
    /** Replaces every intention to `destination` with `sources` (a `service-intentions` write). */
    op: z.literal('intention.replace'),
    destination: name,
    sources: z
      .array(
        z.object({
          source: name,
          action: z.enum(['allow', 'deny']),
          permissions: z.array(z.unknown()).optional(),
          description: z.string().max(4096).optional(),
        }),
      )
      .max(256),
  }),
  z.object({
    op: z.literal('config.set'),
    kind: name,
    name,
    value: z.record(z.string(), z.unknown()),
    casIndex: z.number().int().nonnegative().optional(),
  }),
  z.object({ op: z.literal('config.delete'), kind: name, name }),
  z.object({
    op: z.literal('ca.setRoots'),
    roots: z.array(z.unknown()).max(64),
    activeRootId: z.string().min(1).max(512).optional(),
    /** Compare-and-set on the CA state's modifyIndex (0 = no roots set yet). */
    casIndex: z.number().int().nonnegative().optional(),
  }),
  ...aclCommandSchemas,
  ...kvCommandSchemas,
])

export type PolicyCommand = z.infer<typeof policyCommandSchema>

/**
 * Bounds of the replicated policy state. They are rules of the state machine, not settings: every
 * agent must apply the same ones to the same entry (changing them is a protocol change), so they
 * live here and not in an agent's configuration.
 */
export interface PolicyLimits {
  /** Largest intention or config entry, measured by `entryBytes`. */
  maxEntryBytes: number
  /** Largest CA state (`ca.setRoots`): it has its own cap and does not count in `maxStateBytes`. */
  maxCaBytes: number
  /** Intentions and config entries together, each measured by `entryBytes`. */
  maxStateBytes: number
}

export const POLICY_LIMITS: Readonly<PolicyLimits> = Object.freeze({
  // Hand-written routing config is a few KiB; an entry that needs more is a sign of misuse (a
  // policy store is not a blob store) and would make every snapshot carry it.
  maxEntryBytes: 64 * 1024,
  // Roots (at most 64) carry a certificate, maybe a cross-signature, and a key sealed to every
  // voter: a few KiB per voter and root. 1 MiB is the largest command (RAFT_DEFAULTS.maxCommandBytes).
  maxCaBytes: 1024 * 1024,
  // With the CA (1 MiB) and the dedupe table (10k clients, results of a few hundred bytes), a
  // snapshot stays well under the 16 MiB Raft message limit, and loads in well under a second.
  maxStateBytes: 8 * 1024 * 1024,
})

/** Values inside CA commands: JSON-like, plus the sealed keys (bytes). */
const CA_VALUE_LIMITS: PlainValueLimits = Object.freeze({ ...JSON_VALUE_LIMITS, allowBytes: true })

/** Longest message kept in a result (results are replicated and remembered in the dedupe table). */
export const MAX_RESULT_MESSAGE = 256

export type PolicyRefusal = { ok: false; code: PolicyErrorCode; message: string }

export function policyRefusal(code: PolicyErrorCode, message: string): PolicyRefusal {
  const m = message.length > MAX_RESULT_MESSAGE ? `${message.slice(0, MAX_RESULT_MESSAGE - 1)}…` : message
  return { ok: false, code, message: m }
}

/** A command that passed `checkPolicyCommand`, with its size as `entryBytes` measures it (0: none). */
export type CheckedCommand = { ok: true; cmd: PolicyCommand; bytes: number } | PolicyRefusal

/** What a stored record adds to its fields in a snapshot (field names, Raft indexes), rounded up. */
const RECORD_OVERHEAD = 64

/**
 * The size an intention, config entry or CA state counts for in the caps: its defining fields
 * encoded. A pure function of the fields, so a store rebuilt from a snapshot measures exactly
 * what one that applied the log measured.
 */
export const entryBytes = {
  intention(i: {
    source: string
    destination: string
    action: string
    description?: string
    meta?: object
    permissions?: readonly unknown[]
  }) {
    const fields: unknown[] = [i.source, i.destination, i.action, i.description ?? null, i.meta ?? null]
    if (i.permissions !== undefined) fields.push(i.permissions)
    return RECORD_OVERHEAD + pack(fields).length
  },
  config(e: { kind: string; name: string; value: object }) {
    return RECORD_OVERHEAD + pack([e.kind, e.name, e.value]).length
  },
  ca(c: { roots: readonly unknown[]; activeRootId?: string | undefined }) {
    return pack([c.roots, c.activeRootId ?? null]).length
  },
}

/**
 * Whether `raw` (decoded from a log entry, a forwarded request or built by a caller) is a command
 * the store accepts: data within the value limits (checked first, iteratively, so nothing after
 * it recurses over a hostile shape), the schema, the config kind's schema and the entry's cap.
 * Never throws. The state-dependent cap (`maxStateBytes`) is the store's to check.
 */
export function checkPolicyCommand(raw: unknown, limits: PolicyLimits = POLICY_LIMITS): CheckedCommand {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw))
    return policyRefusal(PolicyErrorCodes.invalidCommand, 'command is not a map')
  const op = (raw as Record<string, unknown>)['op']
  const isCa = typeof op === 'string' && op.startsWith('ca.')
  const problem = plainValueProblem(raw, isCa ? CA_VALUE_LIMITS : JSON_VALUE_LIMITS)
  if (problem !== undefined)
    return policyRefusal(PolicyErrorCodes.invalidCommand, `command is not data: ${problem}`)
  const parsed = policyCommandSchema.safeParse(raw)
  if (!parsed.success)
    return policyRefusal(
      PolicyErrorCodes.invalidCommand,
      parsed.error.issues[0]?.message ?? 'invalid command',
    )
  const cmd = parsed.data
  let bytes = 0
  switch (cmd.op) {
    case 'intention.upsert': {
      const refusal = canonicalPermissions(cmd, 'permissions')
      if (refusal !== undefined) return refusal
      bytes = entryBytes.intention(cmd)
      break
    }
    case 'intention.replace': {
      const seen = new Set<string>()
      for (const [i, src] of cmd.sources.entries()) {
        if (seen.has(src.source))
          return policyRefusal(
            PolicyErrorCodes.invalidCommand,
            `sources.${i}.source: ${src.source} is listed twice`,
          )
        seen.add(src.source)
        const refusal = canonicalPermissions(src, `sources.${i}.permissions`)
        if (refusal !== undefined) return refusal
        bytes += entryBytes.intention({ ...src, destination: cmd.destination })
      }
      break
    }
    case 'config.set': {
      const schema = CONFIG_ENTRY_SCHEMAS[cmd.kind]
      if (schema === undefined)
        return policyRefusal(PolicyErrorCodes.invalidCommand, `unknown config entry kind ${cmd.kind}`)
      const problem = isTrafficEntryKind(cmd.kind)
        ? configEntryProblem(cmd.kind, cmd.name, cmd.value)
        : schema.safeParse(cmd.value).error?.issues[0]?.message
      if (problem !== undefined) return policyRefusal(PolicyErrorCodes.invalidCommand, problem)
      bytes = entryBytes.config(cmd)
      break
    }
    case 'ca.setRoots':
      bytes = entryBytes.ca(cmd)
      if (bytes > limits.maxCaBytes)
        return policyRefusal(
          PolicyErrorCodes.tooLarge,
          `CA state of ${bytes} bytes over ${limits.maxCaBytes}`,
        )
      return { ok: true, cmd, bytes }
    default:
      return { ok: true, cmd, bytes }
  }
  if (bytes > limits.maxEntryBytes)
    return policyRefusal(
      PolicyErrorCodes.tooLarge,
      `${cmd.op} of ${bytes} bytes over ${limits.maxEntryBytes}`,
    )
  return { ok: true, cmd, bytes }
}

/**
 * Checks an intention's permissions against their schema and puts them in canonical form (the
 * PascalCase every reader parses); an L7 intention's action must be `deny` (see `Intention`).
 */
function canonicalPermissions(
  it: { action: string; permissions?: unknown[] | undefined },
  field: string,
): PolicyRefusal | undefined {
  if (it.permissions === undefined) return undefined
  const r = intentionPermissionsSchema.safeParse(it.permissions)
  if (!r.success) {
    const issue = r.error.issues[0]!
    const keys = issue.code === 'unrecognized_keys' ? issue.keys.slice(0, 1) : []
    const path = [field, ...issue.path, ...keys].map(String).join('.')
    return policyRefusal(
      PolicyErrorCodes.invalidCommand,
      `${path}: ${issue.code === 'unrecognized_keys' ? 'unknown field' : issue.message}`,
    )
  }
  if (it.action !== 'deny')
    return policyRefusal(PolicyErrorCodes.invalidCommand, 'action: must be deny with permissions')
  it.permissions = r.data
  return undefined
}

/** `checkPolicyCommand` of encoded bytes (strict msgpack: no extension types, bounded nesting). */
export function decodePolicyCommand(data: Uint8Array, limits: PolicyLimits = POLICY_LIMITS): CheckedCommand {
  let raw: unknown
  try {
    raw = unpack(data)
  } catch (err) {
    return policyRefusal(
      PolicyErrorCodes.invalidCommand,
      `command is not plain msgpack: ${(err as Error).message}`,
    )
  }
  return checkPolicyCommand(raw, limits)
}

/**
 * A caller's command checked and encoded canonically (the schema's fields only, no undefined):
 * what a client proposes and what a leader proposes for a forwarded write. Never throws.
 */
export function preparePolicyCommand(
  cmd: unknown,
  limits: PolicyLimits = POLICY_LIMITS,
): { ok: true; cmd: PolicyCommand; data: Uint8Array } | PolicyRefusal {
  let plain: unknown
  try {
    plain = stripUndefined(cmd)
  } catch (err) {
    return policyRefusal(PolicyErrorCodes.invalidCommand, `command is not data: ${(err as Error).message}`)
  }
  const checked = checkPolicyCommand(plain, limits)
  if (!checked.ok) return checked
  return { ok: true, cmd: checked.cmd, data: pack(stripUndefined(checked.cmd)) }
}

export function encodePolicyCommand(cmd: PolicyCommand): Uint8Array {
  return pack(stripUndefined(cmd))
}

/** Deepest nesting and most values `stripUndefined` walks before giving up (a cycle hits these). */
const STRIP_LIMITS = { maxDepth: 64, maxNodes: 1_000_000 }

/**
 * A copy of `v` without the `undefined` properties of its plain objects (msgpack would keep them
 * as an extension type, which decoders refuse). Iterative; throws a RangeError past 64 levels or
 * a million values (a cycle is one), instead of overflowing the stack.
 */
export function stripUndefined<T>(v: T): T {
  const copy = (x: unknown): unknown => {
    if (Array.isArray(x)) return new Array(x.length)
    if (x !== null && typeof x === 'object' && Object.getPrototypeOf(x) === Object.prototype) return {}
    return x
  }
  const root = copy(v)
  const stack: { from: unknown; to: unknown; depth: number }[] = [{ from: v, to: root, depth: 0 }]
  let nodes = 0
  while (stack.length > 0) {
    const { from, to, depth } = stack.pop()!
    if (to === from) continue
    if (depth >= STRIP_LIMITS.maxDepth)
      throw new RangeError(`nested deeper than ${STRIP_LIMITS.maxDepth} levels`)
    const entries: [string | number, unknown][] = Array.isArray(from)
      ? from.map((x, i) => [i, x])
      : Object.entries(from as object)
    nodes += entries.length
    if (nodes > STRIP_LIMITS.maxNodes) throw new RangeError(`more than ${STRIP_LIMITS.maxNodes} values`)
    for (const [k, x] of entries) {
      if (x === undefined && !Array.isArray(from)) continue
      const c = copy(x)
      ;(to as Record<string | number, unknown>)[k] = c
      if (c !== x) stack.push({ from: x, to: c, depth: depth + 1 })
    }
  }
  return root as T
}
