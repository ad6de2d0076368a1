/** Waiting on a real condition, with a deadline: how the demo synchronises with its cluster. */
import { PeermeshError } from '../../common/errors.ts'

/** What the demo waited for did not happen in time. */
export class DemoTimeoutError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_DEMO_TIMEOUT'
}

export interface WaitOptions {
  timeoutMs: number
  everyMs?: number
  /** Aborts the wait (the demo is stopping). */
  signal?: AbortSignal
  /** Errors that end the wait at once (others count as "not yet"). */
  fatal?: (err: unknown) => boolean
}

/**
 * Polls `check` until it returns true; resolves with the elapsed milliseconds. A check that throws
 * counts as false (an agent briefly unreachable), unless `fatal` says otherwise.
 */
export async function waitUntil(
  what: string,
  check: () => Promise<boolean>,
  o: WaitOptions,
): Promise<number> {
  const started = Date.now()
  const deadline = started + o.timeoutMs
  for (;;) {
    o.signal?.throwIfAborted()
    try {
      if (await check()) return Date.now() - started
    } catch (err) {
      if (o.fatal?.(err)) throw err
    }
    if (Date.now() >= deadline)
      throw new DemoTimeoutError(`timed out after ${o.timeoutMs} ms waiting for ${what}`)
    await sleep(o.everyMs ?? 100, o.signal)
  }
}

/** Resolves after `ms`, or rejects when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason)
    const onAbort = (): void => {
      clearTimeout(t)
      reject(signal!.reason)
    }
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort)
      resolve()
    }, ms)
    signal?.addEventListener('abort', onAbort, { once: true })
  })
}
