import type { DecodeFailure } from './codec.ts'

/** Why an inbound message (or part of one) was dropped. */
export type DropReason =
  | DecodeFailure
  | 'forged' // a signature that does not verify, or a record for another id
  | 'incarnation' // an accusation above what the accused has signed + 1
  | 'sender' // an ack or nack from a member other than the one probed or asked to relay
  | 'members' // a push/pull with more entries than `maxPushPullMembers` (refused whole)
  | 'newMembers' // push/pull entries past `maxPushPullNewMembers` new members (dropped)
  | 'verifyBudget' // push/pull entries past `maxPushPullVerifications` signature checks (skipped)
  | 'tableFull' // an unknown member's alive while the table holds `maxPushPullMembers` members

/** Counters of one `Swim` instance (monotonic, except `localHealth`). */
export interface SwimStats {
  messagesSent: number
  bytesSent: number
  messagesReceived: number
  bytesReceived: number
  pushPullSent: number
  pushPullBytesSent: number
  pushPullReceived: number
  pushPullBytesReceived: number
  dropped: Record<DropReason, number>
  /** Probes started by this node. */
  probes: number
  /** Probes that got no ack, direct or indirect, within the probe interval. */
  probeFailures: number
  /** Probes that needed ping-req through other members. */
  indirectProbes: number
  /**
   * Probes not sent: the member had been heard from over an authenticated channel of the
   * embedding application (`Swim.heardFrom`) within the probe interval, or its relay had
   * (`Swim.setRelayed`, counted in `probesSkippedRelayed` too).
   */
  probesSkipped: number
  /** Of `probesSkipped`, those skipped on relayed evidence (`Swim.setRelayed`). */
  probesSkippedRelayed: number
  /** Ping-req received and forwarded for other members. */
  pingReqsServed: number
  acksReceived: number
  nacksReceived: number
  nacksSent: number
  /** Members this node moved to suspect / dead. */
  suspicions: number
  deaths: number
  /** Times this node refuted a suspicion, death or stale record about itself. */
  refutations: number
  /** Anti-entropy digest checks started (`sync`): one per push/pull period. */
  stateSyncs: number
  /** Digest checks that found both states equal: the full push/pull exchange was skipped. */
  stateSyncMatches: number
  /** Updates piggybacked or gossiped (one per copy sent). */
  updatesSent: number
  /** Signature verifications run (Ed25519 in production). */
  signatureChecks: number
  /** Signature verifications answered from the cache (same member, incarnation and record). */
  signatureCacheHits: number
  /** Protocol timers that fired late enough to suspect this node itself (Lifeguard §IV-A). */
  lateTimers: number
  /** Current probe timeout and protocol period (measured round trips and local health). */
  probeTimeoutMs: number
  probeIntervalMs: number
  /** Current Local Health Multiplier score (Lifeguard §IV-A). */
  localHealth: number
}

export function emptyStats(): SwimStats {
  return {
    messagesSent: 0,
    bytesSent: 0,
    messagesReceived: 0,
    bytesReceived: 0,
    pushPullSent: 0,
    pushPullBytesSent: 0,
    pushPullReceived: 0,
    pushPullBytesReceived: 0,
    dropped: {
      oversize: 0,
      decode: 0,
      type: 0,
      shape: 0,
      forged: 0,
      incarnation: 0,
      sender: 0,
      members: 0,
      newMembers: 0,
      verifyBudget: 0,
      tableFull: 0,
    },
    probes: 0,
    probeFailures: 0,
    indirectProbes: 0,
    probesSkipped: 0,
    probesSkippedRelayed: 0,
    pingReqsServed: 0,
    acksReceived: 0,
    nacksReceived: 0,
    nacksSent: 0,
    suspicions: 0,
    deaths: 0,
    refutations: 0,
    stateSyncs: 0,
    stateSyncMatches: 0,
    updatesSent: 0,
    signatureChecks: 0,
    signatureCacheHits: 0,
    lateTimers: 0,
    probeTimeoutMs: 0,
    probeIntervalMs: 0,
    localHealth: 0,
  }
}
