/**
 * Errors raised by the Raft layer. One class per failure, each with a stable static `code`;
 * callers and tests compare `err.code === NotLeaderError.code`, never message text.
 */
import { PeermeshError } from '../common/errors.ts'

/** A write or read was sent to a node that is not the leader. `leader` is the known leader, if any. */
export class NotLeaderError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_NOT_LEADER'
  readonly leader: string | undefined

  constructor(leader: string | undefined, options?: ErrorOptions) {
    super(
      leader === undefined ? 'not the leader; no leader known' : `not the leader; leader is ${leader}`,
      options,
    )
    this.leader = leader
  }
}

/** A proposal was appended but a different entry was committed at its index (leadership changed). */
export class ProposalDroppedError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_PROPOSAL_DROPPED'
}

/** The node restored a snapshot covering a pending proposal; whether it applied is unknown. */
export class ProposalOutcomeUnknownError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_PROPOSAL_OUTCOME_UNKNOWN'
}

/** The leader is handing leadership to another node and refuses new proposals meanwhile. */
export class LeadershipTransferInProgressError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_LEADERSHIP_TRANSFER'
}

/** A membership change was refused (another change pending, or it makes no sense for the config). */
export class ConfChangeError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_CONF_CHANGE'
}

/** A configuration object cannot work; the message says why. */
export class InvalidRaftConfigError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_INVALID_RAFT_CONFIG'
}

/** A record in the middle of the on-disk log failed its checksum: the log is not trustworthy. */
export class LogCorruptedError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_LOG_CORRUPTED'
  readonly file: string
  readonly offset: number

  constructor(file: string, offset: number, reason: string, options?: ErrorOptions) {
    super(`raft log corrupted in ${file} at offset ${offset}: ${reason}`, options)
    this.file = file
    this.offset = offset
  }
}

/** A stored file (hard state, snapshot) failed its checksum or could not be decoded. */
export class StorageCorruptedError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_STORAGE_CORRUPTED'
  readonly file: string

  constructor(file: string, reason: string, options?: ErrorOptions) {
    super(`raft storage file ${file} is corrupted: ${reason}`, options)
    this.file = file
  }
}

/** The driver was stopped while the operation was pending. */
export class RaftStoppedError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_RAFT_STOPPED'
}

/** A read or proposal was aborted by its signal (timeout or caller). The signal's reason is the cause. */
export class RaftAbortedError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_RAFT_ABORTED'
}

/** The driver found the core in a state it cannot be in: a bug, never a runtime condition. */
export class RaftInvariantError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_RAFT_INVARIANT'
}
