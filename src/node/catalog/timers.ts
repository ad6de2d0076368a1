/**
 * Time as the catalog sees it, injected so tests run on a virtual clock. Production uses
 * `systemTimers` (timers are unref'd: a pending check or blocking query never keeps the
 * process alive on its own).
 */
export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown
  clearTimeout(handle: unknown): void
  /** Milliseconds since the epoch (only differences matter). */
  now(): number
}

export const systemTimers: Timers = {
  setTimeout(fn, ms) {
    const t = setTimeout(fn, ms)
    t.unref()
    return t
  },
  clearTimeout(handle) {
    clearTimeout(handle as NodeJS.Timeout)
  },
  now: () => Date.now(),
}
