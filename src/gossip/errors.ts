import { PeermeshError } from '../common/errors.ts'

/** A `SwimConfig` that cannot work (e.g. probe timeout not shorter than the probe interval). */
export class InvalidConfigError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_INVALID_CONFIG'
}

/** The local node record (tags + meta) does not fit in `maxRecordBytes` once encoded. */
export class RecordTooLargeError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_RECORD_TOO_LARGE'
}

/** The local node record is not valid (bad id, name, address, tag or meta value). */
export class InvalidRecordError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_INVALID_RECORD'
}

/** A user event to fire that the core cannot carry (body or id too long, or an empty id). */
export class InvalidUserEventError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_INVALID_USER_EVENT'
}
