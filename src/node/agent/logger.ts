import pino, { type Logger } from 'pino'

/** Structured JSON logs on stderr, so stdout stays free for command output. */
export function createLogger(level: string, base: Record<string, unknown> = {}): Logger {
  return pino(
    { level, base: { ...base }, timestamp: pino.stdTimeFunctions.isoTime },
    pino.destination({ dest: 2, sync: true }),
  )
}
