/** A `SwimConfig` that cannot work (e.g. probe timeout not shorter than the probe interval). */
export class InvalidConfigError extends Error {
  override readonly name = 'InvalidConfigError'
  readonly code = 'PEERMESH_ERR_INVALID_CONFIG'
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options)
  }
}

/** The local node record (tags + meta) does not fit in `maxRecordBytes` once encoded. */
export class RecordTooLargeError extends Error {
  override readonly name = 'RecordTooLargeError'
  readonly code = 'PEERMESH_ERR_RECORD_TOO_LARGE'
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options)
  }
}

/** The local node record is not valid (bad id, name, address, tag or meta value). */
export class InvalidRecordError extends Error {
  override readonly name = 'InvalidRecordError'
  readonly code = 'PEERMESH_ERR_INVALID_RECORD'
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options)
  }
}
