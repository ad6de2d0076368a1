/**
 * Errors of the mesh CA's lifecycle (signing leaves, rotating roots). Codes travel in the signing
 * RPC's replies, so an agent rebuilds the leader's refusal from its code alone.
 */
import { PeermeshError } from '../../common/errors.ts'

/** This agent is not the Raft leader, which alone signs leaves and changes the CA. */
export class NotSigningLeaderError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_NOT_LEADER'
}

/** The CA has not been created yet (the cluster has not bootstrapped, or no leader yet). */
export class CaNotReadyError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_CA_NOT_READY'
}

/** `POST /v1/connect/ca/rotate` while an earlier rotation still trusts two roots, or a racing change. */
export class CaRotationConflictError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_CA_ROTATION_CONFLICT'
}

/** A leaf was asked for a service that the requesting agent does not register in gossip. */
export class ServiceNotRegisteredError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_SERVICE_NOT_REGISTERED'
}

/** A signing RPC request that does not decode. */
export class BadSignRequestError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_BAD_REQUEST'
}

/** The agent is stopping: no more leaf requests. */
export class AgentStoppingError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_STOPPING'
}

/** Sealing the root key to a new voter did not commit (the CA changed meanwhile, or the write failed). */
export class KeyGrantFailedError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_CA_KEY_GRANT'
}

/** The CA key is sealed only to voter-eligible voters (issue #12); this peer is not one. */
export class KeyHolderNotEligibleError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_CA_KEY_HOLDER_NOT_ELIGIBLE'
}

/** A coded refusal of a leaf signing (or rotation) request, as the leader answered it. */
export class LeafSigningRefusedError extends PeermeshError {
  /** The leader's code, not a static one: any refusal the leader may send. */
  override readonly code: string

  constructor(code: string, message: string) {
    super(message)
    this.code = code
  }
}

/** The refusal a reply `{ ok: false, code, message }` stands for, as its own class where there is one. */
export function refusalError(code: string, message: string): PeermeshError {
  if (code === CaNotReadyError.code) return new CaNotReadyError(message)
  if (code === CaRotationConflictError.code) return new CaRotationConflictError(message)
  return new LeafSigningRefusedError(code, message)
}
