/** Timers, injected so that simulations drive virtual time and production uses real timers. */
export interface RaftClock {
  /** Calls `fn` every `ms` milliseconds until the returned cancel function is called. */
  setInterval(fn: () => void, ms: number): () => void
  /** Calls `fn` once after `ms` milliseconds unless the returned cancel function is called first. */
  setTimeout(fn: () => void, ms: number): () => void
}

/** Real timers (node:timers). */
export const systemClock: RaftClock = {
  setInterval(fn, ms) {
    const h = setInterval(fn, ms)
    return () => clearInterval(h)
  },
  setTimeout(fn, ms) {
    const h = setTimeout(fn, ms)
    return () => clearTimeout(h)
  },
}
