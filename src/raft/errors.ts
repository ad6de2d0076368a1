/**
 * Errors raised by the Raft layer. One class per failure, each with a stable `name` and `code`;
 * callers and tests branch on `code`, never on message text.
 */

/** A write or read was sent to a node that is not the leader. `leader` is the known leader, if any. */
export class NotLeaderError extends Error {
  override readonly name = 'NotLeaderError'
  readonly code = 'PEERMESH_ERR_NOT_LEADER'
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
export class ProposalDroppedError extends Error {
  override readonly name = 'ProposalDroppedError'
  readonly code = 'PEERMESH_ERR_PROPOSAL_DROPPED'
}

/** The node restored a snapshot covering a pending proposal; whether it applied is unknown. */
export class ProposalOutcomeUnknownError extends Error {
  override readonly name = 'ProposalOutcomeUnknownError'
  readonly code = 'PEERMESH_ERR_PROPOSAL_OUTCOME_UNKNOWN'
}

/** The leader is handing leadership to another node and refuses new proposals meanwhile. */
export class LeadershipTransferInProgressError extends Error {
  override readonly name = 'LeadershipTransferInProgressError'
  readonly code = 'PEERMESH_ERR_LEADERSHIP_TRANSFER'
}

/** A membership change was refused (another change pending, or it makes no sense for the config). */
export class ConfChangeError extends Error {
  override readonly name = 'ConfChangeError'
  readonly code = 'PEERMESH_ERR_CONF_CHANGE'
}

/** A configuration object cannot work; the message says why. */
export class InvalidRaftConfigError extends Error {
  override readonly name = 'InvalidRaftConfigError'
  readonly code = 'PEERMESH_ERR_INVALID_RAFT_CONFIG'
}

/** A record in the middle of the on-disk log failed its checksum: the log is not trustworthy. */
export class LogCorruptedError extends Error {
  override readonly name = 'LogCorruptedError'
  readonly code = 'PEERMESH_ERR_LOG_CORRUPTED'
  readonly file: string
  readonly offset: number

  constructor(file: string, offset: number, reason: string, options?: ErrorOptions) {
    super(`raft log corrupted in ${file} at offset ${offset}: ${reason}`, options)
    this.file = file
    this.offset = offset
  }
}

/** A stored file (hard state, snapshot) failed its checksum or could not be decoded. */
export class StorageCorruptedError extends Error {
  override readonly name = 'StorageCorruptedError'
  readonly code = 'PEERMESH_ERR_STORAGE_CORRUPTED'
  readonly file: string

  constructor(file: string, reason: string, options?: ErrorOptions) {
    super(`raft storage file ${file} is corrupted: ${reason}`, options)
    this.file = file
  }
}

/** The driver was stopped while the operation was pending. */
export class RaftStoppedError extends Error {
  override readonly name = 'RaftStoppedError'
  readonly code = 'PEERMESH_ERR_RAFT_STOPPED'
}

/** A read or proposal was aborted by its signal (timeout or caller). The signal's reason is the cause. */
export class RaftAbortedError extends Error {
  override readonly name = 'RaftAbortedError'
  readonly code = 'PEERMESH_ERR_RAFT_ABORTED'
}
