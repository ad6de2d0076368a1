/**
 * The base of peermesh's errors. Each subclass declares a static `code` (`PEERMESH_ERR_NOT_LEADER`)
 * that its instances carry too, so callers and tests compare `err.code === NotLeaderError.code`
 * (also across a process boundary, where only the code travels), never message text. `name` is the
 * class name.
 */
export class PeermeshError extends Error {
  static readonly code: string = 'PEERMESH_ERR_INTERNAL'
  readonly code: string

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options)
    const cls = new.target as typeof PeermeshError
    this.code = cls.code
    this.name = cls.name
  }
}

/** The `code` of an error-like value, if it has a string one (replies decoded from peers too). */
export function errorCode(err: unknown): string | undefined {
  const code = typeof err === 'object' && err !== null ? (err as { code?: unknown }).code : undefined
  return typeof code === 'string' ? code : undefined
}
