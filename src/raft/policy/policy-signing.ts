import { createPrivateKey, type KeyObject, sign, verify, X509Certificate } from 'node:crypto'
import { pack, unpackRecord } from '../../common/msgpack.ts'
import type { Message, RequestId } from '../types.ts'

/**
 * Signed policy entries: once the mesh CA exists, every policy command in the Raft log travels in
 * an envelope signed by a trusted CA root over (Raft index, request id, command). The leader signs
 * as it appends (it alone knows the index then); every agent verifies before applying. So:
 * - an entry forged by an agent without the CA key (a learner: the root key is sealed to voters
 *   only, see identity/connect/ca-state.ts) fails verification;
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

/** A key with the digest its algorithm signs with: none for Ed25519, SHA-256 for ECDSA P-256. */
interface CachedKey {
  key: KeyObject
  digest: string | null
}

const cached = (key: KeyObject): CachedKey => ({
  key,
  digest: key.asymmetricKeyType === 'ed25519' ? null : 'sha256',
})

const privateKeys = new Map<string, CachedKey>()
/** Root id -> the certificate it was parsed from and its public key (undefined: unreadable). */
const publicKeys = new Map<string, { certPem: string; key: CachedKey | undefined }>()

function privateKeyOf(root: PolicySigningRoot): CachedKey {
  const k = privateKeys.get(root.id)
  if (k !== undefined) return k
  const key = cached(createPrivateKey(root.keyPem))
  if (privateKeys.size > 64) privateKeys.clear()
  privateKeys.set(root.id, key)
  return key
}

/** Runs on every applied entry: one map lookup and a string comparison when cached. */
function publicKeyOf(root: TrustedRoot): CachedKey | undefined {
  const hit = publicKeys.get(root.id)
  if (hit !== undefined && hit.certPem === root.certPem) return hit.key
  let key: CachedKey | undefined
  try {
    key = cached(new X509Certificate(root.certPem).publicKey)
  } catch {
    key = undefined
  }
  if (publicKeys.size > 256) publicKeys.clear()
  publicKeys.set(root.id, { certPem: root.certPem, key })
  return key
}

function u64(n: number): Buffer {
  const b = Buffer.alloc(8)
  b.writeBigUInt64BE(BigInt(n))
  return b
}

function entryMessage(index: number, requestId: RequestId | undefined, cmd: Uint8Array): Buffer {
  // domain | index | 0, or 1 | clientId | 0 | seq | command: one allocation per entry.
  const client = requestId === undefined ? 0 : Buffer.byteLength(requestId.clientId)
  const ridBytes = requestId === undefined ? 1 : 1 + client + 1 + 8
  const out = Buffer.allocUnsafe(ENTRY_DOMAIN.length + 8 + ridBytes + cmd.length)
  let at = ENTRY_DOMAIN.copy(out, 0)
  at = out.writeBigUInt64BE(BigInt(index), at)
  if (requestId === undefined) at = out.writeUInt8(0, at)
  else {
    at = out.writeUInt8(1, at)
    at += out.write(requestId.clientId, at)
    at = out.writeUInt8(0, at)
    at = out.writeBigUInt64BE(BigInt(requestId.seq), at)
  }
  out.set(cmd, at)
  return out
}

/** The envelope of `cmd` for Raft index `index`, signed by `root`. */
export function signPolicyEntry(
  root: PolicySigningRoot,
  index: number,
  requestId: RequestId | undefined,
  cmd: Uint8Array,
): Uint8Array {
  const { key, digest } = privateKeyOf(root)
  const sig = sign(digest, entryMessage(index, requestId, cmd), key)
  const envelope = pack({ pm: ENVELOPE_VERSION, root: root.id, sig, cmd } satisfies Envelope)
  sealedHere.set(envelope, { index, root: root.id, rid: ridKey(requestId) })
  return envelope
}

/**
 * Envelopes this process signed, by identity (the very bytes object the leader appended), so the
 * leader does not verify its own signature again when it applies the entry (a verify on every
 * write is the costliest step of the apply path). Bytes that came over the network or from disk are other
 * objects and are verified.
 */
const sealedHere = new WeakMap<Uint8Array, { index: number; root: string; rid: string }>()

const ridKey = (r: RequestId | undefined): string => (r === undefined ? '' : `${r.clientId}\u0000${r.seq}`)

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
  // Signed here for this very index by a root still trusted: verifying would give the same answer
  // as on every other agent (which do verify), so the state machine stays deterministic.
  const own = sealedHere.get(data)
  if (own !== undefined && own.index === index && own.root === root.id && own.rid === ridKey(requestId))
    return { ok: true, cmd: env.cmd, signedBy: root.id }
  const key = publicKeyOf(root)
  if (key === undefined) return { ok: false, reason: `trusted root ${root.id} has no readable certificate` }
  let good = false
  try {
    good = verify(key.digest, entryMessage(index, requestId, env.cmd), key.key, env.sig)
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
  const { key, digest } = privateKeyOf(root)
  return pack({ root: root.id, sig: sign(digest, snapshotMessage(index, term, data), key) })
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
    return verify(key.digest, snapshotMessage(index, term, data), key.key, sig)
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
