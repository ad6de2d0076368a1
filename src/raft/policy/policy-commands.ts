import { z } from 'zod'
import { pack } from '../../common/msgpack.ts'

/**
 * The commands of the policy store (what a client proposes through Raft), their schema and
 * encoding, and the results the store answers with.
 */

/**
 * The codes a command fails with. They are results, not thrown errors: every agent applies the
 * same entry to the same outcome. Compare against these, never against a string.
 */
export const PolicyErrorCodes = {
  invalidCommand: 'PEERMESH_ERR_INVALID_COMMAND',
  notFound: 'PEERMESH_ERR_NOT_FOUND',
  casFailed: 'PEERMESH_ERR_CAS_FAILED',
  staleRequest: 'PEERMESH_ERR_STALE_REQUEST',
  /** Unsigned, or not signed by a root trusted at this point of the log (policy-signing.ts). */
  signature: 'PEERMESH_ERR_POLICY_SIGNATURE',
} as const

export type PolicyErrorCode = (typeof PolicyErrorCodes)[keyof typeof PolicyErrorCodes]

export type PolicyResult = { ok: true; index: number } | { ok: false; code: PolicyErrorCode; message: string }

const name = z.string().min(1).max(512)
const meta = z.record(z.string().max(128), z.string().max(1024))

/** Service-splitter (Consul `service-splitter`): weights must add up to 100. */
const serviceSplitter = z
  .object({
    splits: z
      .array(
        z.object({
          weight: z.number().min(0).max(100),
          service: name.optional(),
          serviceSubset: name.optional(),
        }),
      )
      .min(1),
  })
  .refine(
    (v) => Math.abs(v.splits.reduce((s, x) => s + x.weight, 0) - 100) < 1e-9,
    'split weights must sum to 100',
  )

/** Config entry kinds accepted, each with the schema its value must satisfy; others are rejected. */
export const CONFIG_ENTRY_SCHEMAS: Record<string, z.ZodType> = {
  'service-splitter': serviceSplitter,
  'service-resolver': z.object({}).passthrough(),
  'service-router': z.object({}).passthrough(),
  'service-defaults': z.object({}).passthrough(),
  'proxy-defaults': z.object({}).passthrough(),
  /** A generic string value, for tools, tests and benchmarks that need a plain register. */
  kv: z.object({ value: z.string().max(65_536) }).strict(),
}

export const policyCommandSchema = z.discriminatedUnion('op', [
  z.object({
    op: z.literal('intention.upsert'),
    source: name,
    destination: name,
    action: z.enum(['allow', 'deny']),
    description: z.string().max(4096).optional(),
    meta: meta.optional(),
    /** Compare-and-set: apply only if the current modifyIndex equals this (0 = must not exist). */
    casIndex: z.number().int().nonnegative().optional(),
  }),
  z.object({ op: z.literal('intention.delete'), source: name, destination: name }),
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
])

export type PolicyCommand = z.infer<typeof policyCommandSchema>

export function encodePolicyCommand(cmd: PolicyCommand): Uint8Array {
  return pack(stripUndefined(cmd))
}

/** Drops `undefined` properties of plain objects (msgpack would keep them as an extension type). */
export function stripUndefined<T>(v: T): T {
  if (Array.isArray(v)) return v.map(stripUndefined) as T
  if (v !== null && typeof v === 'object' && Object.getPrototypeOf(v) === Object.prototype) {
    const out: Record<string, unknown> = {}
    for (const [k, x] of Object.entries(v)) if (x !== undefined) out[k] = stripUndefined(x)
    return out as T
  }
  return v
}
