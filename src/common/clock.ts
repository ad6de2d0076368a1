/**
 * Time and timers, injected wherever code waits or measures, so that tests drive a virtual clock
 * (`test/sim/virtual-clock.ts`) instead of sleeping. The protocol cores take no clock at all: their
 * drivers turn a Clock into ticks.
 */

/** Cancels a pending timer; calling it twice, or after the timer fired, does nothing. */
export type Cancel = () => void

export interface Clock {
  /**
   * Milliseconds since the epoch, monotonic within a process and with sub-millisecond precision:
   * for durations and timers.
   */
  now(): number
  /**
   * The wall clock, milliseconds since the epoch (`Date.now()`): for timestamps compared with
   * other machines' (certificate validity, issue times, check transitions), which must follow the
   * system time even when it is stepped; `now()` is for durations.
   */
  wallNow(): number
  /**
   * Calls `fn` once after `ms` milliseconds unless cancelled first: never before `now()` has
   * advanced by `ms`, so a caller that compares `now()` with its deadline finds it due.
   */
  setTimeout(fn: () => void, ms: number): Cancel
  /** Calls `fn` every `ms` milliseconds until cancelled. */
  setInterval(fn: () => void, ms: number): Cancel
  /**
   * Calls `fn` once the I/O already queued in this event-loop turn has been handled
   * (`setImmediate`): how a driver batches every input of one turn into one unit of work.
   */
  defer(fn: () => void): Cancel
}

const origin = performance.timeOrigin

const now = (): number => origin + performance.now()

/** Node's longest timeout (about 24.8 days); a longer wait is re-armed when this one fires. */
const NODE_TIMEOUT_MAX_MS = 2 ** 31 - 1

/**
 * Node's timers. They are unref'd: an agent is kept alive by its sockets and servers, never by a
 * pending timer, so a stopped component that forgot one cannot hold the process open. (A process
 * that hosts only in-memory components must keep itself alive.)
 *
 * Node counts a timeout from the event loop's cached time, in whole milliseconds, which is already
 * behind `performance.now()` by whatever the current turn has run: a timer set for `ms` fired
 * before `now()` had advanced by `ms` in 6 of 10 trials here. A driver that re-arms until its
 * deadline is due then pays a second wake-up a millisecond later (gossip's probe timer did, 3–4
 * times a second per idle agent). So `setTimeout` arms for `ceil(ms) + 1` (1–3 ms late, measured)
 * and, should it still fire early (or `ms` is past Node's longest timeout), waits out the rest
 * before calling `fn`.
 */
export const systemClock: Clock = {
  now,
  wallNow: () => Date.now(),
  setTimeout(fn, ms) {
    const due = now() + ms
    let h: NodeJS.Timeout
    const arm = (wait: number): void => {
      h = setTimeout(fire, Math.min(Math.ceil(wait) + 1, NODE_TIMEOUT_MAX_MS))
      h.unref()
    }
    const fire = (): void => {
      const left = due - now()
      if (left > 0) arm(left)
      else fn()
    }
    arm(Math.max(0, ms))
    return () => clearTimeout(h)
  },
  setInterval(fn, ms) {
    const h = setInterval(fn, ms)
    h.unref()
    return () => clearInterval(h)
  },
  defer(fn) {
    const h = setImmediate(fn)
    return () => clearImmediate(h)
  },
}

/**
 * Resolves after `ms` on `clock`, or at once when `signal` aborts (it never rejects): for retry
 * loops that re-check their own condition after each pause.
 */
export function pause(clock: Clock, ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.resolve()
  return new Promise((resolve) => {
    const done = (): void => {
      cancel()
      signal?.removeEventListener('abort', done)
      resolve()
    }
    const cancel = clock.setTimeout(done, ms)
    signal?.addEventListener('abort', done, { once: true })
  })
}

/**
 * Runs `fn` with a signal that aborts after `ms` on `clock` (`AbortSignal.timeout` on an injected
 * clock), and drops the timer once `fn` settles.
 */
export async function withTimeout<T>(
  clock: Clock,
  ms: number,
  fn: (signal: AbortSignal) => Promise<T>,
): Promise<T> {
  const controller = new AbortController()
  const cancel = clock.setTimeout(
    () => controller.abort(new DOMException('The operation was aborted due to timeout', 'TimeoutError')),
    ms,
  )
  try {
    return await fn(controller.signal)
  } finally {
    cancel()
  }
}
