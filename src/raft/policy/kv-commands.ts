import { z } from 'zod'

/**
 * The commands of the replicated KV store and its sessions (Consul's KV, sessions and `/v1/txn`),
 * their schema and bounds. Applied by `KvState` (kv-state.ts) inside the policy store.
 *
 * Times (`now`) are the proposing agent's wall clock in milliseconds, carried in the command so
 * that every agent applies the same entry to the same outcome (TTL renewals, lock-delay).
 */

/** Bounds of the KV state: rules of the state machine (changing them is a protocol change). */
export const KV_LIMITS = Object.freeze({
  /** Longest key, in UTF-16 code units (Consul has no explicit cap; paths this long are misuse). */
  maxKeyLength: 1024,
  /** Largest value, in bytes: Consul's `kv_max_value_size` default (512 KiB). */
  maxValueBytes: 512 * 1024,
  /** Most operations in one transaction: Consul's `maxTxnOps` (64). */
  maxTxnOps: 64,
  /** Most sessions at once (each agent's clients create a few; a flood must not grow the state). */
  maxSessions: 16_384,
  /** Most health checks a session may name. */
  maxSessionChecks: 64,
  /** Session TTL bounds: Consul's 10 s to 86400 s. */
  minTtlMs: 10_000,
  maxTtlMs: 86_400_000,
  /** Longest lock-delay: Consul caps it at 60 s. */
  maxLockDelayMs: 60_000,
  /** Consul's default lock-delay (15 s). */
  defaultLockDelayMs: 15_000,
})

/** Base64 of at most `maxValueBytes` bytes. */
const MAX_VALUE_BASE64 = Math.ceil(KV_LIMITS.maxValueBytes / 3) * 4
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/

/**
 * Whether `s` has a lone surrogate: not text (JSON allows it), and msgpack encodes it as U+FFFD, so
 * the key an ACL check saw and the key a Raft entry writes would differ.
 */
export function hasLoneSurrogate(s: string): boolean {
  return LONE_SURROGATE.test(s)
}

/** A string of well-formed UTF-16 (see `hasLoneSurrogate`). */
const text = (max: number) =>
  z
    .string()
    .max(max)
    .refine((s) => !hasLoneSurrogate(s), 'not well-formed text (a lone surrogate)')

export const kvKey = text(KV_LIMITS.maxKeyLength).refine((k) => k.length > 0, 'key: empty')
/** A prefix (recursive operations): may be empty (the whole store). */
export const kvPrefix = text(KV_LIMITS.maxKeyLength)
export const kvValue = z
  .string()
  .max(MAX_VALUE_BASE64)
  .refine((v) => v.length % 4 === 0 && BASE64.test(v), 'value: not base64')
/**
 * Consul's flags are a uint64, kept as its decimal digits: clients use values past 2^53 (the Go
 * client's lock marks its key with 0x2ddccbc058a50c18), which a JS number would round.
 */
export const MAX_UINT64 = (1n << 64n) - 1n
export const kvFlags = z
  .string()
  .regex(/^(0|[1-9]\d{0,19})$/, 'flags: not a canonical unsigned integer')
  .refine((v) => BigInt(v) <= MAX_UINT64, 'flags: larger than a uint64')
const kvIndex = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER)
export const sessionId = z
  .string()
  .regex(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/, 'session: not a UUID')
const now = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER)
const nodeName = text(256).refine((n) => n.length > 0, 'node: empty')

/** One operation of a transaction (Consul's `KV` ops; the verbs are Consul's). */
export const txnOpSchema = z
  .object({
    verb: z.enum([
      'set',
      'cas',
      'lock',
      'unlock',
      'get',
      'get-tree',
      'check-index',
      'check-session',
      'check-not-exists',
      'delete',
      'delete-tree',
      'delete-cas',
    ]),
    key: kvPrefix,
    value: kvValue.optional(),
    flags: kvFlags.optional(),
    index: kvIndex.optional(),
    session: text(64).optional(),
  })
  .strict()

export type TxnOp = z.infer<typeof txnOpSchema>

export const kvCommandSchemas = [
  z.object({
    op: z.literal('kv.set'),
    key: kvKey,
    value: kvValue,
    flags: kvFlags.optional(),
    /** Compare-and-set: 0 = only if absent, else only if its ModifyIndex equals this. */
    cas: kvIndex.optional(),
    /** Take the key's lock for this session (and set the value), unless another holds it. */
    acquire: sessionId.optional(),
    /** Give up this session's lock on the key (and set the value). */
    release: sessionId.optional(),
    now,
  }),
  z.object({
    op: z.literal('kv.delete'),
    key: kvPrefix,
    /** Every key starting with `key` (Consul's `?recurse`). */
    recurse: z.boolean().optional(),
    cas: kvIndex.optional(),
  }),
  z.object({ op: z.literal('kv.delete-tree'), prefix: kvPrefix }),
  z.object({
    op: z.literal('session.create'),
    id: sessionId,
    name: text(256),
    node: nodeName,
    lockDelayMs: z.number().int().nonnegative().max(KV_LIMITS.maxLockDelayMs),
    behavior: z.enum(['release', 'delete']),
    /** 0: no TTL. */
    ttlMs: z
      .number()
      .int()
      .nonnegative()
      .max(KV_LIMITS.maxTtlMs)
      .refine((t) => t === 0 || t >= KV_LIMITS.minTtlMs, 'ttl: at least 10s'),
    /** Health checks of `node` that invalidate the session when critical (`serfHealth`: gossip). */
    checks: z.array(text(256).refine((c) => c.length > 0, 'check: empty')).max(KV_LIMITS.maxSessionChecks),
    now,
  }),
  z.object({
    op: z.literal('session.destroy'),
    id: sessionId,
    /** The session's node (what ACLs check: `session "node"`); must match the stored one. */
    node: nodeName,
    now,
    /** Why (for the log): `destroy`, `ttl`, `node`, `check`. */
    reason: z.enum(['destroy', 'ttl', 'node', 'check']).optional(),
  }),
  z.object({ op: z.literal('session.renew'), id: sessionId, node: nodeName, now }),
  z.object({ op: z.literal('txn'), ops: z.array(txnOpSchema).min(1).max(KV_LIMITS.maxTxnOps), now }),
] as const

/** Size a KV entry counts for in the policy state's cap: its key, value and a record's overhead. */
export function kvEntryBytes(e: { key: string; value: string; session?: string }): number {
  return 64 + e.key.length * 3 + e.value.length + (e.session?.length ?? 0)
}

/** Size a session counts for in the policy state's cap. */
export function sessionBytes(s: { name: string; node: string; checks: readonly string[] }): number {
  return 128 + s.name.length * 3 + s.node.length * 3 + s.checks.reduce((n, c) => n + 8 + c.length * 3, 0)
}
