/**
 * Consul (Go `time.ParseDuration`) duration strings: a sequence of decimal numbers, each with a
 * unit — "10s", "500ms", "1m30s", "1.5h". Returns milliseconds, or undefined if `text` is not
 * one. Negative durations are not accepted (no caller has a use for them).
 */
export function parseDuration(text: string): number | undefined {
  if (text === '0') return 0
  if (text.length === 0 || text.length > 64) return undefined
  const re = /(\d+(?:\.\d+)?|\.\d+)(ns|us|µs|ms|s|m|h)/y
  let total = 0
  let pos = 0
  while (pos < text.length) {
    re.lastIndex = pos
    const m = re.exec(text)
    if (m === null) return undefined
    total += Number(m[1]) * UNIT_MS[m[2]!]!
    pos = re.lastIndex
  }
  return Number.isFinite(total) ? total : undefined
}

const UNIT_MS: Record<string, number> = {
  ns: 1e-6,
  us: 1e-3,
  µs: 1e-3,
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
}

/** Formats milliseconds the way `parseDuration` reads them back ("1500ms" -> "1.5s"). */
export function formatDuration(ms: number): string {
  if (ms % 3_600_000 === 0 && ms > 0) return `${ms / 3_600_000}h`
  if (ms % 60_000 === 0 && ms > 0) return `${ms / 60_000}m`
  if (ms >= 1000) return `${ms / 1000}s`
  return `${ms}ms`
}
