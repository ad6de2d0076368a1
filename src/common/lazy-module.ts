/**
 * A module loaded at its first use, once: a dynamic import, which the build puts in a chunk of its
 * own, so that an agent that never needs the module never evaluates it.
 */
export interface LazyModule<T> {
  /** Loads the module; every call after the first shares that load. */
  load(): Promise<T>
  /** The module once loaded; undefined before. */
  readonly loaded: T | undefined
}

/** `importer` is the dynamic import itself (`() => import('./x.ts')`), so the build sees it. */
export function lazyModule<T>(importer: () => Promise<T>): LazyModule<T> {
  let loading: Promise<T> | undefined
  let loaded: T | undefined
  return {
    load: () => {
      loading ??= importer().then((m) => {
        loaded = m
        return m
      })
      return loading
    },
    get loaded() {
      return loaded
    },
  }
}
