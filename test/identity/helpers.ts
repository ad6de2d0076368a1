/** Shared helpers for identity tests. */
export const TD = 'example.mesh'
/** A fixed virtual "now" far from the machine's clock, so no test depends on wall time. */
export const T0 = Date.UTC(2030, 0, 1)
export const HOUR = 3_600_000
export const DAY = 24 * HOUR

/** Runs `fn` (sync or async) and returns the `code` of what it throws, or undefined. */
export async function codeOf(fn: () => unknown): Promise<string | undefined> {
  try {
    await fn()
  } catch (e) {
    return (e as { code?: string }).code ?? `uncoded: ${String(e)}`
  }
  return undefined
}

export interface Deferred<T> {
  promise: Promise<T>
  resolve: (value: T) => void
  reject: (reason?: unknown) => void
}

/** A promise with its resolvers (Promise.withResolvers is ES2024; our lib is ES2023). */
export function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void
  let reject!: (reason?: unknown) => void
  const promise = new Promise<T>((res, rej) => {
    resolve = res
    reject = rej
  })
  return { promise, resolve, reject }
}
