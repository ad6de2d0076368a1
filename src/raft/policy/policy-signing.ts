import { createHash, createPrivateKey, type KeyObject, sign, verify, X509Certificate } from 'node:crypto'
import { pack, unpackRecord } from '../../common/msgpack.ts'
import type { Message, RequestId, SealRequest } from '../types.ts'

/**
 * Signed policy entries: once the mesh CA exists, every policy command in the Raft log travels in
 * an envelope sealed by a trusted CA root. The leader seals as it appends (it alone knows the
 * indexes then), a batch of entries at a time with one signature over a hash chain:
 *
 *     link(e) = SHA-256(domain | index | request id | root id | link of the next entry of the batch
 *               (none on the last) | command)
 *
 * computed from the batch's last entry back to its first, so the first entry's link covers the
 * whole batch. The first entry (the head) carries the root's signature of its link; every later
 * entry carries only the link of its successor (`next`). Every agent opens entries in log order:
 * a head by its signature, a later entry by the `next` of the entry before it (`ChainLink`, kept
 * by the store and in its snapshot). So:
 * - an entry forged by an agent without the CA key (a learner: the root key is sealed to voters
 *   only, see identity/connect/ca-state.ts) fails: a head needs a signature, any other entry must
 *   hash to what its signed predecessor named, so a forged or altered entry anywhere in a batch,
 *   or one spliced after it, breaks the chain;
 * - a genuine entry replayed at another index (or with another request id) fails: both are hashed;
 * - an entry sealed by a root that is no longer trusted (dropped after a rotation) fails, even
 *   inside a batch whose head was applied while it was trusted.
 * A rejected entry leaves the state unchanged (it is applied as an error result, the same on every
 * agent, so the state machine stays deterministic) and ends the chain: no later entry links to it.
 *
 * Signatures are checked ahead of apply, off the event loop (`verifyAhead`: node:crypto's
 * callback form runs in the libuv pool), as soon as a node appends entries; applying then reuses
 * the verdict, and verifies synchronously only what was not checked yet (the same answer either
 * way).
 *
 * Before the first CA root is committed there is nothing to verify against: commands are accepted
 * unsigned, and the entry that creates the CA is trusted on first use (like SSH's known_hosts).
 */

const LINK_DOMAIN = Buffer.from('peermesh/policy-link/2\u0000')
const BATCH_DOMAIN = Buffer.from('peermesh/policy-batch/2\u0000')
const SNAPSHOT_DOMAIN = Buffer.from('peermesh/policy-snapshot/1\u0000')
const ENVELOPE_VERSION = 2
/** Bytes of a link (SHA-256). */
const LINK_BYTES = 32

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

/**
 * What the entry at `index` must link to, named by the entry before it in its batch: an entry
 * without a signature is accepted only if its link is `hash` and it is sealed by `root`.
 */
export interface ChainLink {
  index: number
  hash: Uint8Array
  root: string
}

interface Envelope {
  pm: number
  root: string
  cmd: Uint8Array
  /** Link of the next entry of the batch; absent on its last entry. */
  next?: Uint8Array
  /** The root's signature of this entry's link; only on a batch's first entry. */
  sig?: Uint8Array
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

/** Root id -> the PEM it was parsed from and its private key. */
const privateKeys = new Map<string, { keyPem: string; key: CachedKey }>()
/** Root id -> the certificate it was parsed from and its public key (undefined: unreadable). */
const publicKeys = new Map<string, { certPem: string; key: CachedKey | undefined }>()

function privateKeyOf(root: PolicySigningRoot): CachedKey {
  const hit = privateKeys.get(root.id)
  if (hit !== undefined && hit.keyPem === root.keyPem) return hit.key
  const key = cached(createPrivateKey(root.keyPem))
  if (privateKeys.size > 64) privateKeys.clear()
  privateKeys.set(root.id, { keyPem: root.keyPem, key })
  return key
}

/** Runs on every verified batch: one map lookup and a string comparison when cached. */
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

/**
 * The link of an entry: SHA-256 over domain | u64 index | request id (0, or 1 | u16 length |
 * client id | u64 seq) | u16 length | root id | next (0, or 1 | 32 bytes) | command. Every
 * variable-length field but the last is length-prefixed, so no two entries hash the same bytes.
 */
function linkOf(
  index: number,
  requestId: RequestId | undefined,
  root: string,
  next: Uint8Array | undefined,
  cmd: Uint8Array,
): Buffer {
  const head = Buffer.allocUnsafe(
    8 +
      1 +
      (requestId === undefined ? 0 : 2 + Buffer.byteLength(requestId.clientId) + 8) +
      2 +
      Buffer.byteLength(root) +
      1,
  )
  let at = head.writeBigUInt64BE(BigInt(index), 0)
  if (requestId === undefined) at = head.writeUInt8(0, at)
  else {
    at = head.writeUInt8(1, at)
    at = head.writeUInt16BE(Buffer.byteLength(requestId.clientId), at)
    at += head.write(requestId.clientId, at)
    at = head.writeBigUInt64BE(BigInt(requestId.seq), at)
  }
  at = head.writeUInt16BE(Buffer.byteLength(root), at)
  at += head.write(root, at)
  head.writeUInt8(next === undefined ? 0 : 1, at)
  const h = createHash('sha256').update(LINK_DOMAIN).update(head)
  if (next !== undefined) h.update(next)
  return h.update(cmd).digest()
}

const signedMessage = (link: Uint8Array): Buffer => Buffer.concat([BATCH_DOMAIN, link])

/**
 * The envelopes of a batch of consecutive entries (`batch[i].index` = first index + i), sealed by
 * `root` with one signature (see the module comment). Empty in, empty out.
 */
export function sealPolicyBatch(root: PolicySigningRoot, batch: readonly SealRequest[]): Uint8Array[] {
  if (batch.length === 0) return []
  for (let i = 1; i < batch.length; i++)
    if (batch[i]!.index !== batch[0]!.index + i) throw new RangeError('a sealed batch must be consecutive')
  const links: Buffer[] = new Array(batch.length)
  for (let i = batch.length - 1; i >= 0; i--) {
    const b = batch[i]!
    links[i] = linkOf(b.index, b.requestId, root.id, links[i + 1], b.data)
  }
  const { key, digest } = privateKeyOf(root)
  const sig = sign(digest, signedMessage(links[0]!), key)
  return batch.map((b, i) => {
    const env: Envelope = { pm: ENVELOPE_VERSION, root: root.id, cmd: b.data }
    const next = links[i + 1]
    if (next !== undefined) env.next = next
    if (i === 0) env.sig = sig
    const bytes = pack(env)
    sealedHere.set(bytes, { index: b.index, rid: ridKey(b.requestId), env, link: links[i]! })
    return bytes
  })
}

/** The envelope of `cmd` for Raft index `index`, sealed by `root` alone (a batch of one). */
export function signPolicyEntry(
  root: PolicySigningRoot,
  index: number,
  requestId: RequestId | undefined,
  cmd: Uint8Array,
): Uint8Array {
  return sealPolicyBatch(root, [{ index, requestId, data: cmd }])[0]!
}

/**
 * Envelopes this process sealed, by identity (the very bytes object the leader appended), with
 * their links, so the leader neither verifies its own signature nor hashes its own entries again
 * when it applies them (a verify on every write was the costliest step of the apply path). Bytes
 * that came over the network or from disk are other objects and are checked.
 */
const sealedHere = new WeakMap<Uint8Array, { index: number; rid: string; env: Envelope; link: Buffer }>()

/**
 * Entries opened ahead of apply (`verifyAhead`), by identity: the decoded envelope, its link and,
 * for a head, the verdict of its signature under one root's certificate once the pool answered.
 */
const openedAhead = new WeakMap<
  Uint8Array,
  {
    index: number
    rid: string
    env: Envelope
    link: Buffer
    verdict?: { root: string; certPem: string; ok: boolean }
  }
>()

const ridKey = (r: RequestId | undefined): string => (r === undefined ? '' : `${r.clientId}\u0000${r.seq}`)

const MALFORMED: Envelope = { pm: -1, root: '', cmd: new Uint8Array() }

function decodeEnvelope(data: Uint8Array): Envelope | undefined {
  const o = unpackRecord(data)
  if (o === undefined || o['pm'] === undefined) return undefined
  const { root, cmd, next, sig } = o
  if (
    o['pm'] !== ENVELOPE_VERSION ||
    typeof root !== 'string' ||
    !(cmd instanceof Uint8Array) ||
    (next !== undefined && (!(next instanceof Uint8Array) || next.length !== LINK_BYTES)) ||
    (sig !== undefined && !(sig instanceof Uint8Array))
  )
    return MALFORMED
  const env: Envelope = { pm: ENVELOPE_VERSION, root, cmd }
  if (next !== undefined) env.next = next as Uint8Array
  if (sig !== undefined) env.sig = sig as Uint8Array
  return env
}

export type OpenedEntry =
  | { ok: true; cmd: Uint8Array; signedBy?: string; next?: ChainLink }
  | { ok: false; reason: string }

/**
 * The command carried by entry (`index`, `requestId`, `data`) if it may be applied given the
 * roots trusted at this point of the log and `chain`, what the previous entry linked to (see the
 * module comment); `next` of the result is what the following entry must link to.
 */
export function openPolicyEntry(
  trusted: readonly TrustedRoot[],
  index: number,
  requestId: RequestId | undefined,
  data: Uint8Array,
  chain?: ChainLink,
): OpenedEntry {
  const rid = ridKey(requestId)
  const sealed = sealedHere.get(data)
  // Sealed here for this very index and request id: neither decoded nor hashed again.
  const own = sealed !== undefined && sealed.index === index && sealed.rid === rid ? sealed : undefined
  const pre = own === undefined ? openedAhead.get(data) : undefined
  const early = pre !== undefined && pre.index === index && pre.rid === rid ? pre : undefined
  const env = own?.env ?? early?.env ?? decodeEnvelope(data)
  if (trusted.length === 0) {
    if (env !== undefined) return { ok: false, reason: 'signed entry before any CA root exists' }
    return { ok: true, cmd: data }
  }
  if (env === undefined) return { ok: false, reason: 'entry is not signed by a CA root' }
  if (env.pm !== ENVELOPE_VERSION) return { ok: false, reason: 'malformed policy entry envelope' }
  const root = trusted.find((r) => r.id === env.root)
  if (root === undefined)
    return { ok: false, reason: `entry signed by root ${env.root}, which is not trusted` }
  const link = own?.link ?? early?.link ?? linkOf(index, requestId, env.root, env.next, env.cmd)
  if (env.sig === undefined) {
    if (chain === undefined || chain.index !== index || chain.root !== env.root || !link.equals(chain.hash))
      return { ok: false, reason: `entry ${index} does not link to a signed batch (forged or altered)` }
  } else if (own === undefined && !headVerified(root, link, env.sig, early?.verdict)) {
    // (A head sealed here for this very index by a root still trusted is not verified: that
    // would give the same answer as on every other agent, which do verify, so the state machine
    // stays deterministic.)
    return { ok: false, reason: `bad signature for index ${index} (forged, or replayed elsewhere)` }
  }
  const out: OpenedEntry = { ok: true, cmd: env.cmd, signedBy: root.id }
  if (env.next !== undefined) out.next = { index: index + 1, hash: env.next, root: root.id }
  return out
}

function headVerified(
  root: TrustedRoot,
  link: Buffer,
  sig: Uint8Array,
  verdict: { root: string; certPem: string; ok: boolean } | undefined,
): boolean {
  if (verdict !== undefined && verdict.root === root.id && verdict.certPem === root.certPem) return verdict.ok
  const key = publicKeyOf(root)
  if (key === undefined) return false
  try {
    return verify(key.digest, signedMessage(link), key.key, sig)
  } catch {
    return false
  }
}

/**
 * Starts checking `entries` (just appended here, in log order) against the roots trusted now, so
 * that applying them later is cheap: envelopes are decoded and linked at once, the signature of
 * each batch head is verified in the libuv pool. Nothing here decides anything: `openPolicyEntry`
 * uses a verdict only for the same entry, root and certificate, and checks the rest itself.
 */
export function verifyAhead(
  trusted: readonly TrustedRoot[],
  entries: readonly { index: number; requestId?: RequestId; data: Uint8Array }[],
): void {
  if (trusted.length === 0) return
  for (const e of entries) {
    if (e.data.length === 0 || sealedHere.has(e.data) || openedAhead.has(e.data)) continue
    const env = decodeEnvelope(e.data)
    if (env === undefined || env.pm !== ENVELOPE_VERSION) continue
    const link = linkOf(e.index, e.requestId, env.root, env.next, env.cmd)
    const ahead: NonNullable<ReturnType<typeof openedAhead.get>> = {
      index: e.index,
      rid: ridKey(e.requestId),
      env,
      link,
    }
    openedAhead.set(e.data, ahead)
    const sig = env.sig
    const root = trusted.find((r) => r.id === env.root)
    if (sig === undefined || root === undefined) continue
    const key = publicKeyOf(root)
    if (key === undefined) continue
    try {
      verify(key.digest, signedMessage(link), key.key, sig, (err, ok) => {
        ahead.verdict = { root: root.id, certPem: root.certPem, ok: err === null && ok }
      })
    } catch {
      // A key and signature that node:crypto refuses outright: left to the check at apply.
    }
  }
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
