import type { Unsubscribe } from '../../common/events.ts'
import type { PolicySigningRoot, RelayedContact, RequestId } from '../../raft/index.ts'
import type { GossipStatus } from './autopilot.ts'

/** What Raft needs from CA key custody (implemented by the identity layer's KeyCustody). */
export interface PolicySigner {
  /** Signs a policy entry this agent appends as leader, for its index; unchanged without a key. */
  sealEntry(index: number, requestId: RequestId | undefined, data: Uint8Array): Uint8Array
  /** The root (with its key) that signs snapshots sent from here; undefined: sent unsigned. */
  snapshotSigningRoot(): PolicySigningRoot | undefined
}

/** Awaited by autopilot before it makes `peerId` a voter (the CA manager seals the key to it). */
export interface VoterKeyGrant {
  grantKeyTo(peerId: string, signal: AbortSignal): Promise<void>
}

/** A member as the Raft wiring reads it from gossip. */
export interface RaftMember {
  /** libp2p peer id, the Raft node id. */
  id: string
  name: string
  /** First libp2p address ("" if none). */
  address: string
  status: GossipStatus
}

/** Gossip events after which a member may be gone. */
export type MemberFailureEvent = 'member:suspect' | 'member:fail' | 'member:leave'

/** The gossip membership view the Raft wiring reads (GossipModule provides it). */
export interface RaftMembers {
  /** Every member gossip knows, self included. */
  members(): readonly RaftMember[]
  /** Subscribes to a failure event; returns the unsubscribe. */
  on(type: MemberFailureEvent, listener: (member: { id: string }) => void): Unsubscribe
  /**
   * A Raft message from member `id` arrived over an authenticated connection: evidence for gossip
   * that it is alive (GossipModule.heardFrom). Absent: nothing is told.
   */
  heardFrom?(id: string): void
  /**
   * The leader this agent follows heard from these voters `ageMs` ago (relayed on its heartbeats,
   * `EvidenceRelay`); replaces what the last call said (GossipModule.setRelayed). Absent: nothing
   * is told.
   */
  setRelayed?(entries: readonly RelayedContact[]): void
  /** Every connection to member `id` closed: what `heardFrom` told gossip no longer holds. */
  lostContact?(id: string): void
}
