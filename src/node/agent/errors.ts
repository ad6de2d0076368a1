/**
 * Errors of the agent. Each has a stable `name` and `code`; tests check `code`.
 * `UserError`s are printed by the CLI as one line, without a stack trace.
 */
export class ConfigError extends Error {
  override name = 'ConfigError'
  readonly code = 'PEERMESH_ERR_INVALID_CONFIG'
  constructor(
    message: string,
    readonly field?: string,
    options?: { cause?: unknown },
  ) {
    super(message, options)
  }
}

export class ListenError extends Error {
  override name = 'ListenError'
  readonly code = 'PEERMESH_ERR_LISTEN'
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options)
  }
}

export class AgentUnreachableError extends Error {
  override name = 'AgentUnreachableError'
  readonly code = 'PEERMESH_ERR_AGENT_UNREACHABLE'
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options)
  }
}

export class ApiError extends Error {
  override name = 'ApiError'
  readonly code = 'PEERMESH_ERR_API'
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
