/**
 * The mesh CA as it is held in the Raft policy store (`ca.setRoots`): plain records, so that the
 * root certificates reach every agent. The root private key is not replicated in clear: each
 * record carries it sealed (key-seal.ts) to each Raft voter, the agents that can lead and so sign
 * leaves and policy entries. Learners hold the certificates only: they can verify, not sign.
 * Pure helpers: parsing the replicated records defensively, sealing and opening the key, the public
 * view served by `GET /v1/connect/ca/roots`, and the decision of when a root rotation is complete.
 */
import type { KeyObject } from 'node:crypto'
import type { RootCa } from '../ca/ca.ts'
import type { KeyType } from '../keys/keys.ts'
import { openSealed, sealToPeer } from '../keys/key-seal.ts'

/** One root as replicated. `crossSignedPem` is set on a new root during a rotation. */
export interface CaRootRecord {
  id: string
  name: string
  trustDomain: string
  keyType: KeyType
  certPem: string
  /** The root private key (PEM) sealed to each voter: peer id -> sealed box (key-seal.ts). */
  sealedKeys: Record<string, Uint8Array>
  serialNumber: string
  notBefore: number
  notAfter: number
  /** The new root's certificate signed by the previous root (rotation only). */
  crossSignedPem?: string
  /** Wall-clock ms when this root became active (leaves older than this are from the old root). */
  activatedAt: number
}

/** The CA part of the policy store's state (`ca.setRoots`), records parsed. */
export interface CaRoots {
  roots: CaRootRecord[]
  activeRootId: string | undefined
  /** Raft index of the CA state's last change. */
  modifyIndex: number
}

export interface CaState {
  roots: CaRootRecord[]
  active: CaRootRecord | undefined
  /** Raft index of the CA state (the CAS base for the next change). */
  modifyIndex: number
}

/** One root of `GET /v1/connect/ca/roots` (Consul's CARoot, camelCase; never the key). */
export interface CaRootJson {
  id: string
  name: string
  rootCert: string
  /** Cross-signed certificate of this root by its predecessor, while a rotation is in progress. */
  intermediateCerts: string[]
  active: boolean
  keyType: KeyType
  serialNumber: string
  notBefore: string
  notAfter: string
}

export interface CaRootsJson {
  activeRootId: string
  trustDomain: string
  roots: CaRootJson[]
  /** Raft index of the CA state. */
  index: number
}

/** Most voters a key is sealed to (Raft groups are small; this bounds a hostile record). */
export const MAX_SEALED_KEYS = 64

/** The replicated record of `root`, its key sealed to each of `voters`. */
export function rootRecordOf(
  root: RootCa,
  activatedAt: number,
  voters: Iterable<string>,
  crossSignedPem?: string,
): CaRootRecord {
  const record: CaRootRecord = {
    id: root.id,
    name: `peermesh CA ${root.id.slice(0, 16)}`,
    trustDomain: root.trustDomain,
    keyType: root.keyType,
    certPem: root.certPem,
    sealedKeys: {},
    serialNumber: root.serialNumber,
    notBefore: root.notBefore,
    notAfter: root.notAfter,
    activatedAt,
    ...(crossSignedPem !== undefined ? { crossSignedPem } : {}),
  }
  return withSealedKey(record, root.keyPem, voters)
}

/** `record` with its key (`keyPem`) also sealed to each of `voters` that lacks a copy. */
export function withSealedKey(record: CaRootRecord, keyPem: string, voters: Iterable<string>): CaRootRecord {
  const sealedKeys = { ...record.sealedKeys }
  for (const v of voters) {
    if (sealedKeys[v] === undefined) sealedKeys[v] = sealToPeer(v, Buffer.from(keyPem), record.id)
  }
  return { ...record, sealedKeys }
}

/** The voters of `voters` that hold no sealed copy of `record`'s key. */
export function votersWithoutKey(record: CaRootRecord, voters: Iterable<string>): string[] {
  return [...voters].filter((v) => record.sealedKeys[v] === undefined)
}

/**
 * The root key (PEM) of `record` as sealed to this agent (`selfId`, node key `nodeKey`), or
 * undefined when it holds no copy (a learner) or the copy does not open.
 */
export function openRootKey(record: CaRootRecord, selfId: string, nodeKey: KeyObject): string | undefined {
  const box = record.sealedKeys[selfId]
  if (box === undefined) return undefined
  try {
    return openSealed(nodeKey, selfId, box, record.id).toString()
  } catch {
    return undefined
  }
}

const str = (v: unknown, max = 65_536): v is string =>
  typeof v === 'string' && v.length > 0 && v.length <= max
const num = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v)

/** One replicated record, or undefined when it is not one of ours (it is then ignored). */
export function parseRootRecord(v: unknown): CaRootRecord | undefined {
  if (v === null || typeof v !== 'object') return undefined
  const o = v as Record<string, unknown>
  if (!str(o['id'], 256) || !str(o['name'], 256) || !str(o['trustDomain'], 253)) return undefined
  if (o['keyType'] !== 'ed25519' && o['keyType'] !== 'ecdsa-p256') return undefined
  if (!str(o['certPem']) || !str(o['serialNumber'], 256)) return undefined
  const sealed = o['sealedKeys']
  if (sealed === null || typeof sealed !== 'object' || Array.isArray(sealed)) return undefined
  const sealedKeys: Record<string, Uint8Array> = {}
  const owners = Object.keys(sealed)
  if (owners.length > MAX_SEALED_KEYS) return undefined
  for (const owner of owners) {
    const box = (sealed as Record<string, unknown>)[owner]
    if (!(box instanceof Uint8Array) || box.length > 16_384 || owner.length > 128) return undefined
    sealedKeys[owner] = box
  }
  if (!num(o['notBefore']) || !num(o['notAfter']) || !num(o['activatedAt'])) return undefined
  if (o['crossSignedPem'] !== undefined && !str(o['crossSignedPem'])) return undefined
  return {
    id: o['id'],
    name: o['name'],
    trustDomain: o['trustDomain'],
    keyType: o['keyType'],
    certPem: o['certPem'],
    sealedKeys,
    serialNumber: o['serialNumber'],
    notBefore: o['notBefore'],
    notAfter: o['notAfter'],
    activatedAt: o['activatedAt'],
    ...(typeof o['crossSignedPem'] === 'string' ? { crossSignedPem: o['crossSignedPem'] } : {}),
  }
}

/** The records of `raw` that are ours; the others are dropped. */
export function parseRootRecords(raw: readonly unknown[]): CaRootRecord[] {
  return raw.map(parseRootRecord).filter((r): r is CaRootRecord => r !== undefined)
}

export function caStateOf(ca: CaRoots): CaState {
  const roots = ca.roots
  return { roots, active: roots.find((r) => r.id === ca.activeRootId), modifyIndex: ca.modifyIndex }
}

export function caRootsJson(state: CaState): CaRootsJson {
  return {
    activeRootId: state.active?.id ?? '',
    trustDomain: state.active?.trustDomain ?? '',
    roots: state.roots.map((r) => ({
      id: r.id,
      name: r.name,
      rootCert: r.certPem,
      intermediateCerts: r.crossSignedPem !== undefined ? [r.crossSignedPem] : [],
      active: r.id === state.active?.id,
      keyType: r.keyType,
      serialNumber: r.serialNumber,
      notBefore: new Date(r.notBefore).toISOString(),
      notAfter: new Date(r.notAfter).toISOString(),
    })),
    index: state.modifyIndex,
  }
}

/**
 * How long a leaf signed under the new root is given to reach its agent and be installed in its
 * sidecar before the old root may be dropped. The leader only knows when it signed: were the old
 * root dropped at that moment, a peer applying the drop before the answer lands would refuse the
 * instance's still-current old leaf (and the instance would refuse the peer). An RPC answer on a
 * LAN takes milliseconds; 2 s also covers an agent that is briefly too busy to read it.
 */
export const ROTATION_SETTLE_MS = 2_000

/** When this leader first signed a leaf for an instance under its current root. */
export interface IssuedLeaf {
  rootId: string
  sinceMs: number
}

/** Notes a leaf signed for `key` under `rootId`; keeps the time of the first one under that root. */
export function recordIssued(
  issuedUnder: Map<string, IssuedLeaf>,
  key: string,
  rootId: string,
  nowMs: number,
): void {
  if (issuedUnder.get(key)?.rootId !== rootId) issuedUnder.set(key, { rootId, sinceMs: nowMs })
}

/**
 * Whether the old roots of a rotation can be dropped: every service instance the catalog knows
 * (`required`: `<peerId>/<service>` keys) holds a leaf signed by the active root, signed at least
 * `settleMs` ago so that it has been installed (`issuedUnder`: key -> root id and time, as this
 * leader signed), or the longest leaf lifetime has passed since the activation (every older leaf
 * has expired by then, whoever signed it: this covers a leader change, which loses `issuedUnder`).
 */
export function rotationComplete(options: {
  active: CaRootRecord
  required: Iterable<string>
  issuedUnder: ReadonlyMap<string, IssuedLeaf>
  leafTtlMs: number
  nowMs: number
  /** Default `ROTATION_SETTLE_MS`. */
  settleMs?: number
}): boolean {
  const { active, required, issuedUnder, leafTtlMs, nowMs } = options
  const settleMs = options.settleMs ?? ROTATION_SETTLE_MS
  if (nowMs >= active.activatedAt + leafTtlMs) return true
  for (const key of required) {
    const issued = issuedUnder.get(key)
    if (issued?.rootId !== active.id || nowMs < issued.sinceMs + settleMs) return false
  }
  return true
}
