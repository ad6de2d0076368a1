import { PeermeshError } from '../../common/errors.ts'

/**
 * Errors of the agent. Each has a stable `name` and `code`; tests check `code`.
 * `UserError`s are printed by the CLI as one line, without a stack trace.
 */
export class ConfigError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_INVALID_CONFIG'
  constructor(
    message: string,
    readonly field?: string,
    options?: { cause?: unknown },
  ) {
    super(message, options)
  }
}

export class ListenError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_LISTEN'
}

/** The agent was asked for something that exists only once it has started. */
export class AgentNotStartedError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_AGENT_NOT_STARTED'
}

export class AgentUnreachableError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_AGENT_UNREACHABLE'
}

/** A service was registered but its sidecar cannot listen (`peermesh register`). */
export class SidecarNotListeningError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_SIDECAR_NOT_LISTENING'
}

export class ApiError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_API'
  constructor(
    message: string,
    readonly status: number,
    options?: { cause?: unknown },
  ) {
    super(message, options)
  }
}

/** Errors whose message is meant for the user as is: the CLI prints them as one line. */
export function isUserFacing(err: unknown): err is Error & { code: string } {
  const code = err instanceof Error ? (err as { code?: unknown }).code : undefined
  return typeof code === 'string' && code.startsWith('PEERMESH_ERR_')
}
