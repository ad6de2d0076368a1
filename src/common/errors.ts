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

/** What a peer that asked is told of a failure that is not one of ours (a bug, a library's or the OS's). */
export const INTERNAL_ERROR_TEXT = 'internal error'

/**
 * What another agent that asked is told of a failure: the code and message of one of our own
 * errors with a code of its own (a PeermeshError subclass: the refusals meant for callers), and
 * undefined for anything else (Node's and libraries' errors, `ENOENT: ... '/var/lib/...'`, a bug's
 * TypeError, aborts), whose messages tell the peer about this host, not about its request: the
 * caller answers those with INTERNAL_ERROR_TEXT and keeps the whole error for its own log.
 */
export function peerFacingError(err: unknown): { code: string; message: string } | undefined {
  if (!(err instanceof PeermeshError) || err.code === PeermeshError.code) return undefined
  return { code: err.code, message: err.message }
}
