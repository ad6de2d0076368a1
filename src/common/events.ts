/**
 * Typed events named `noun:verb` (`member:join`, `leader:change`). Every subscription returns its
 * unsubscribe function; a component releases what it subscribed to in its `stop()`.
 */

export type Unsubscribe = () => void

/** The subscribing half of an emitter: what a component hands to others. */
export interface Events<E extends object> {
  on<K extends keyof E>(type: K, listener: (detail: E[K]) => void): Unsubscribe
}

/**
 * A small synchronous emitter over an event map (`{ 'leader:change': { leader, term } }`).
 * Listeners run in subscription order. A listener that throws does not stop the others or the
 * emitter: its error goes to `onListenerError` (by default it is rethrown on a later tick, as an
 * uncaught exception, so that a bug is not silently swallowed).
 */
export class TypedEmitter<E extends object> implements Events<E> {
  private readonly listeners = new Map<keyof E, Set<(detail: never) => void>>()

  constructor(private readonly onListenerError: (err: unknown) => void = rethrowLater) {}

  on<K extends keyof E>(type: K, listener: (detail: E[K]) => void): Unsubscribe {
    let set = this.listeners.get(type)
    if (set === undefined) {
      set = new Set()
      this.listeners.set(type, set)
    }
    const l = listener as (detail: never) => void
    set.add(l)
    return () => {
      set.delete(l)
    }
  }

  emit<K extends keyof E>(type: K, detail: E[K]): void {
    const set = this.listeners.get(type)
    if (set === undefined) return
    for (const l of [...set]) {
      try {
        ;(l as (d: E[K]) => void)(detail)
      } catch (err) {
        this.onListenerError(err)
      }
    }
  }

  /** Listeners currently subscribed to `type` (tests check that stop() released them). */
  listenerCount(type: keyof E): number {
    return this.listeners.get(type)?.size ?? 0
  }
}

function rethrowLater(err: unknown): void {
  setImmediate(() => {
    throw err
  })
}
