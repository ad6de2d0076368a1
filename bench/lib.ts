/**
 * The benchmark convention: `npm run bench:NAME` runs `bench/NAME.ts`; progress goes to stderr,
 * a table to stdout, and with `--json` the last stdout line is one JSON object of the figures.
 */
export const jsonMode = process.argv.includes('--json')

/** Value of `--name VALUE` on the command line, or the fallback. */
export function argValue(name: string, fallback?: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback
}

export function progress(...parts: unknown[]): void {
  process.stderr.write(`${parts.map(String).join(' ')}\n`)
}

/** Prints an aligned text table to stdout. */
export function table(headers: string[], rows: (string | number)[][]): void {
  const cells = [headers, ...rows.map((r) => r.map((c) => (typeof c === 'number' ? fmt(c) : c)))]
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => String(r[i] ?? '').length)))
  const line = (r: (string | number)[]): string => r.map((c, i) => String(c).padEnd(widths[i]!)).join('  ')
  process.stdout.write(`${line(cells[0]!)}\n${widths.map((w) => '-'.repeat(w)).join('  ')}\n`)
  for (const r of cells.slice(1)) process.stdout.write(`${line(r)}\n`)
}

/** With --json, prints the figures as the last stdout line. */
export function emitJson(figures: Record<string, unknown>): void {
  if (jsonMode) process.stdout.write(`${JSON.stringify(figures)}\n`)
}

export function fmt(n: number): string {
  if (!Number.isFinite(n)) return String(n)
  if (Number.isInteger(n)) return String(n)
  return Math.abs(n) >= 100 ? n.toFixed(0) : Math.abs(n) >= 1 ? n.toFixed(2) : n.toFixed(3)
}

export function median(xs: number[]): number {
  return quantile(xs, 0.5)
}

/** Quantile by linear interpolation between closest ranks. */
export function quantile(xs: number[], q: number): number {
  if (xs.length === 0) return Number.NaN
  const s = [...xs].sort((a, b) => a - b)
  const pos = (s.length - 1) * q
  const lo = Math.floor(pos)
  const hi = Math.ceil(pos)
  return s[lo]! + (s[hi]! - s[lo]!) * (pos - lo)
}
