import { createPrivateKey, type KeyObject, sign, verify, X509Certificate } from 'node:crypto'
import { pack, unpackRecord } from './msgpack.ts'
import type { Message, RequestId } from './types.ts'

/**
 * Signed policy entries: once the mesh CA exists, every policy command in the Raft log travels in
 * an envelope signed by a trusted CA root over (Raft index, request id, command). The leader signs
 * as it appends (it alone knows the index then); every agent verifies before applying. So:
 * - an entry forged by an agent without the CA key (a learner: the root key is sealed to voters
 *   only, see connect-ca.ts) fails verification;
 * - a genuine entry replayed at another index (or with another request id) fails verification;
 * - an entry signed by a root that is no longer trusted (dropped after a rotation) fails.
 * A rejected entry leaves the state unchanged (it is applied as an error result, the same on every
 * agent, so the state machine stays deterministic).
 *
 * Before the first CA root is committed there is nothing to verify against: commands are accepted
 * unsigned, and the entry that creates the CA is trusted on first use (like SSH's known_hosts).
 */

const ENTRY_DOMAIN = Buffer.from('peermesh/policy-entry/1\u0000')
const SNAPSHOT_DOMAIN = Buffer.from('peermesh/policy-snapshot/1\u0000')
const ENVELOPE_VERSION = 1

/** A root that can sign: its id, key type and private key (PEM). */
export interface PolicySigningRoot {
  id: string
  keyType: 'ed25519' | 'ecdsa-p256'
  keyPem: string
}

/** A root that is trusted to have signed: its id and certificate (PEM). */
export interface TrustedRoot {
  id: string
  certPem: string
}

interface Envelope {
  pm: number
  root: string
  sig: Uint8Array
  cmd: Uint8Array
}

const privateKeys = new Map<string, KeyObject>()
const publicKeys = new Map<string, KeyObject | null>()

function privateKeyOf(root: PolicySigningRoot): KeyObject {
  const k = privateKeys.get(root.id)
  if (k !== undefined) return k
  const key = createPrivateKey(root.keyPem)
  if (privateKeys.size > 64) privateKeys.clear()
  privateKeys.set(root.id, key)
  return key
}

function publicKeyOf(root: TrustedRoot): KeyObject | undefined {
  const cacheKey = `${root.id}\u0000${root.certPem.length}\u0000${root.certPem.slice(-64)}`
  const cached = publicKeys.get(cacheKey)
  if (cached !== undefined) return cached ?? undefined
  let key: KeyObject | null = null
  try {
    key = new X509Certificate(root.certPem).publicKey
  } catch {
    key = null
  }
  if (publicKeys.size > 256) publicKeys.clear()
  publicKeys.set(cacheKey, key)
  return key ?? undefined
}

/** Ed25519 signs the message itself; ECDSA P-256 signs its SHA-256 digest. */
const digestOf = (key: KeyObject): string | null => (key.asymmetricKeyType === 'ed25519' ? null : 'sha256')

function u64(n: number): Buffer {
  const b = Buffer.alloc(8)
  b.writeBigUInt64BE(BigInt(n))
  return b
}

function entryMessage(index: number, requestId: RequestId | undefined, cmd: Uint8Array): Buffer {
  const rid =
    requestId === undefined
      ? Buffer.of(0)
      : Buffer.concat([Buffer.of(1), Buffer.from(requestId.clientId), Buffer.of(0), u64(requestId.seq)])
  return Buffer.concat([ENTRY_DOMAIN, u64(index), rid, cmd])
}

/** The envelope of `cmd` for Raft index `index`, signed by `root`. */
export function signPolicyEntry(
  root: PolicySigningRoot,
  index: number,
  requestId: RequestId | undefined,
  cmd: Uint8Array,
): Uint8Array {
  const key = privateKeyOf(root)
  const sig = sign(digestOf(key), entryMessage(index, requestId, cmd), key)
  return pack({ pm: ENVELOPE_VERSION, root: root.id, sig, cmd } satisfies Envelope)
}

function decodeEnvelope(data: Uint8Array): Envelope | undefined {
  const o = unpackRecord(data)
  if (o === undefined || o['pm'] === undefined) return undefined
  if (
    o['pm'] !== ENVELOPE_VERSION ||
    typeof o['root'] !== 'string' ||
    !(o['sig'] instanceof Uint8Array) ||
    !(o['cmd'] instanceof Uint8Array)
  )
    return { pm: -1, root: '', sig: new Uint8Array(), cmd: new Uint8Array() }
  return { pm: ENVELOPE_VERSION, root: o['root'], sig: o['sig'], cmd: o['cmd'] }
}

export type OpenedEntry = { ok: true; cmd: Uint8Array; signedBy?: string } | { ok: false; reason: string }

/**
 * The command carried by entry (`index`, `requestId`, `data`) if it may be applied given the
 * roots trusted at this point of the log; see the module comment for the rules.
 */
export function openPolicyEntry(
  trusted: readonly TrustedRoot[],
  index: number,
  requestId: RequestId | undefined,
  data: Uint8Array,
): OpenedEntry {
  const env = decodeEnvelope(data)
  if (trusted.length === 0) {
    if (env !== undefined) return { ok: false, reason: 'signed entry before any CA root exists' }
    return { ok: true, cmd: data }
  }
  if (env === undefined) return { ok: false, reason: 'entry is not signed by a CA root' }
  if (env.pm !== ENVELOPE_VERSION) return { ok: false, reason: 'malformed policy entry envelope' }
  const root = trusted.find((r) => r.id === env.root)
  if (root === undefined)
    return { ok: false, reason: `entry signed by root ${env.root}, which is not trusted` }
  const key = publicKeyOf(root)
  if (key === undefined) return { ok: false, reason: `trusted root ${root.id} has no readable certificate` }
  let good = false
  try {
    good = verify(digestOf(key), entryMessage(index, requestId, env.cmd), key, env.sig)
  } catch {
    good = false
  }
  if (!good) return { ok: false, reason: `bad signature for index ${index} (forged, or replayed elsewhere)` }
  return { ok: true, cmd: env.cmd, signedBy: root.id }
}

// ---- snapshots ----------------------------------------------------------------------------------

function snapshotMessage(index: number, term: number, data: Uint8Array): Buffer {
  return Buffer.concat([SNAPSHOT_DOMAIN, u64(index), u64(term), data])
}

/** A detached signature of a snapshot (index, term, data) by `root`: `{ root, sig }` packed. */
export function signSnapshot(
  root: PolicySigningRoot,
  index: number,
  term: number,
  data: Uint8Array,
): Uint8Array {
  const key = privateKeyOf(root)
  return pack({ root: root.id, sig: sign(digestOf(key), snapshotMessage(index, term, data), key) })
}

/** Whether `signature` (from signSnapshot) is a trusted root's signature of this snapshot. */
export function verifySnapshot(
  trusted: readonly TrustedRoot[],
  index: number,
  term: number,
  data: Uint8Array,
  signature: Uint8Array | undefined,
): boolean {
  if (signature === undefined) return false
  const o = unpackRecord(signature)
  if (o === undefined) return false
  const root = trusted.find((r) => r.id === o['root'])
  const sig = o['sig']
  if (root === undefined || !(sig instanceof Uint8Array)) return false
  const key = publicKeyOf(root)
  if (key === undefined) return false
  try {
    return verify(digestOf(key), snapshotMessage(index, term, data), key, sig)
  } catch {
    return false
  }
}

/**
 * `msg` (a `snap` message) with `root`'s signature of its snapshot in `context`, which snapshot
 * messages do not otherwise use. Without a root (no CA yet, or no key here) it goes unsigned.
 */
export function withSnapshotSignature(msg: Message, root: PolicySigningRoot | undefined): Message {
  const snap = msg.snapshot
  if (snap === undefined || root === undefined) return msg
  const sig = signSnapshot(root, snap.metadata.index, snap.metadata.term, snap.data)
  return { ...msg, context: Buffer.from(sig).toString('base64') }
}

/**
 * Whether a received `snap` message may be installed: once a root is trusted here, only with a
 * trusted root's signature (withSnapshotSignature); with no root yet, taken on first use.
 */
export function snapshotMessageTrusted(msg: Message, trusted: readonly TrustedRoot[]): boolean {
  const snap = msg.snapshot
  if (snap === undefined) return false
  if (trusted.length === 0) return true
  const sig = msg.context.length > 0 ? Buffer.from(msg.context, 'base64') : undefined
  return verifySnapshot(trusted, snap.metadata.index, snap.metadata.term, snap.data, sig)
}

/** The roots of a replicated CA state that can be verified against (id + certificate). */
export function trustedRootsOf(roots: readonly unknown[]): TrustedRoot[] {
  const out: TrustedRoot[] = []
  for (const r of roots) {
    if (r === null || typeof r !== 'object') continue
    const o = r as Record<string, unknown>
    if (typeof o['id'] === 'string' && typeof o['certPem'] === 'string')
      out.push({ id: o['id'], certPem: o['certPem'] })
  }
  return out
}
