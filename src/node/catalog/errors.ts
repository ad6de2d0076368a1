/**
 * Errors of the service catalog. Each has a stable `name` and `code`; tests check `code`.
 * All are user-facing (`PEERMESH_ERR_` prefix): the CLI prints their message as one line.
 */
import { PeermeshError } from '../../common/errors.ts'

/** A service definition (file, HTTP body or config) is not valid; `field` names the bad field. */
export class ServiceDefinitionError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_INVALID_SERVICE'
  constructor(
    message: string,
    /** Dotted path of the first bad field (`checks.0.interval`), '' for the whole document. */
    readonly field: string,
    options?: { cause?: unknown },
  ) {
    super(message, options)
  }
}

/** The node's services and check states do not fit in the gossip payload limit once encoded. */
export class PayloadTooLargeError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_CATALOG_PAYLOAD_TOO_LARGE'
  constructor(
    message: string,
    readonly bytes: number,
    readonly limit: number,
    options?: { cause?: unknown },
  ) {
    super(message, options)
  }
}

/** No local service with this id. */
export class ServiceNotFoundError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_SERVICE_NOT_FOUND'
  constructor(
    message: string,
    readonly serviceId: string,
  ) {
    super(message)
  }
}

/** A refused operation on one local check; `checkId` names it. */
export abstract class CheckError extends PeermeshError {
  constructor(
    message: string,
    readonly checkId: string,
  ) {
    super(message)
  }
}

/** No local check with this id. */
export class CheckNotFoundError extends CheckError {
  static override readonly code = 'PEERMESH_ERR_CHECK_NOT_FOUND'
}

/** A TTL update (`pass`/`warn`/`fail`) was sent to a check that is not a TTL check. */
export class CheckNotTtlError extends CheckError {
  static override readonly code = 'PEERMESH_ERR_CHECK_NOT_TTL'
}

/** `<dataDir>/services.json` exists but cannot be read back (corrupt, or edited by hand badly). */
export class ServicesFileError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_SERVICES_FILE'
}
