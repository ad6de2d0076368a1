/**
 * Custody of the CA root key on this agent. The key is replicated only sealed to each Raft voter
 * (ca-state.ts): a voter opens its copy with its node key; a learner holds none, so it can verify
 * but never sign. What Raft asks of custody (`PolicySigner`): sign each policy entry this agent
 * appends as leader, and the snapshots it sends.
 */
import type { KeyObject } from 'node:crypto'
import type { CaStateSource } from './components.ts'
import { type CaRootRecord, openRootKey } from './ca-state.ts'

/** A root with its private key (PEM), as opened from this agent's sealed copy. */
export type SigningRoot = CaRootRecord & { keyPem: string }

/** This agent's identity: its peer id and the node key that opens its sealed copies. */
export interface CustodyIdentity {
  readonly id: string
  readonly signingKey: KeyObject
}

/** A Raft request id, as the policy entry envelope covers it. */
export interface EntryRequestId {
  clientId: string
  seq: number
}

/** Signs a policy entry for its Raft index (src/raft/policy/policy-signing.ts `signPolicyEntry`). */
export type PolicyEntrySigner = (
  root: SigningRoot,
  index: number,
  requestId: EntryRequestId | undefined,
  data: Uint8Array,
) => Uint8Array

export interface KeyCustodyComponents {
  ca: CaStateSource
  /** Undefined until the agent has loaded its node key. */
  identity: () => CustodyIdentity | undefined
  signEntry: PolicyEntrySigner
}

export class KeyCustody {
  /** Root keys opened from this agent's sealed copies: root id -> PKCS#8 PEM. */
  private readonly opened = new Map<string, string>()

  constructor(private readonly components: KeyCustodyComponents) {}

  /** `record` with its private key, when this agent holds a sealed copy (a voter); else undefined. */
  signingRoot(record: CaRootRecord | undefined): SigningRoot | undefined {
    const self = this.components.identity()
    if (record === undefined || self === undefined) return undefined
    let keyPem = this.opened.get(record.id)
    if (keyPem === undefined) {
      keyPem = openRootKey(record, self.id, self.signingKey)
      if (keyPem === undefined) return undefined
      this.opened.set(record.id, keyPem)
    }
    return { ...record, keyPem }
  }

  /** Whether this agent can sign with the active root. */
  holdsActiveKey(): boolean {
    return this.snapshotSigningRoot() !== undefined
  }

  /**
   * Signs a policy entry this agent appends as leader with the active root, for the entry's index.
   * Without a root (before the CA exists) or a copy of its key, the entry goes unsigned, and every
   * agent refuses it once the CA exists.
   */
  readonly sealEntry = (
    index: number,
    requestId: EntryRequestId | undefined,
    data: Uint8Array,
  ): Uint8Array => {
    const root = this.snapshotSigningRoot()
    return root === undefined ? data : this.components.signEntry(root, index, requestId, data)
  }

  /** The active root with its key, which signs what this agent sends; undefined: unsigned. */
  snapshotSigningRoot(): SigningRoot | undefined {
    return this.signingRoot(this.components.ca.caState().active)
  }
}
