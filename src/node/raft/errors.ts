import { PeermeshError } from '../../common/errors.ts'

/** No Raft leader was known (or reachable) before the deadline. */
export class NoLeaderError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_NO_LEADER'
}

/** A write was sent but not confirmed before the deadline; it may still be applied (once). */
export class WriteTimeoutError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_WRITE_TIMEOUT'
}

/** The Raft layer is not running (agent starting or stopping). */
export class RaftNotRunningError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_RAFT_NOT_RUNNING'
}

/** A forwarded write that the leader could not parse. */
export class BadForwardRequestError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_BAD_REQUEST'
}
