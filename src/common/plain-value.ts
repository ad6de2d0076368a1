/**
 * Data, not object graphs: a value that came from a peer, a client or a file is accepted only if
 * it is a tree of null, booleans, finite numbers, strings, byte arrays, arrays and plain objects,
 * within depth, node-count and size caps. Checked iteratively, so a hostile depth cannot overflow
 * the stack here (or anywhere later: nothing deeper than `maxDepth` gets past).
 */

export interface PlainValueLimits {
  /** Deepest nesting of arrays and objects (the value itself is depth 0). */
  maxDepth: number
  /** Most values in the whole tree, containers included. */
  maxNodes: number
  /** Longest string, in UTF-16 code units. */
  maxStringLength: number
  /** Whether Uint8Array leaves are allowed (msgpack bin); JSON has none. */
  allowBytes: boolean
}

/** JSON bodies of the HTTP API and values inside policy commands. */
export const JSON_VALUE_LIMITS: PlainValueLimits = Object.freeze({
  maxDepth: 32,
  maxNodes: 100_000,
  maxStringLength: 1 << 20,
  allowBytes: false,
})

/**
 * Why `v` is not plain data within `limits`, or undefined when it is. The reason names the path
 * of the first offending value (`$.value.a[3]`).
 */
export function plainValueProblem(v: unknown, limits: PlainValueLimits): string | undefined {
  // Paths are built only for the value that fails: each stack item links to its parent.
  interface Item {
    v: unknown
    depth: number
    parent: Item | undefined
    key: string | number
  }
  const pathOf = (it: Item): string => {
    const parts: string[] = []
    for (let x: Item | undefined = it; x?.parent !== undefined; x = x.parent)
      parts.push(typeof x.key === 'number' ? `[${x.key}]` : `.${x.key}`)
    return `$${parts.reverse().join('')}`
  }
  const stack: Item[] = [{ v, depth: 0, parent: undefined, key: '' }]
  let nodes = 0
  while (stack.length > 0) {
    const it = stack.pop()!
    const { v: x, depth } = it
    if (++nodes > limits.maxNodes) return `more than ${limits.maxNodes} values`
    if (x === null || typeof x === 'boolean') continue
    if (typeof x === 'number') {
      if (!Number.isFinite(x)) return `${pathOf(it)}: not a finite number`
      continue
    }
    if (typeof x === 'string') {
      if (x.length > limits.maxStringLength)
        return `${pathOf(it)}: string longer than ${limits.maxStringLength} characters`
      continue
    }
    if (x instanceof Uint8Array) {
      if (!limits.allowBytes) return `${pathOf(it)}: binary data not allowed here`
      continue
    }
    if (typeof x !== 'object') return `${pathOf(it)}: a ${typeof x} is not data`
    if (depth >= limits.maxDepth) return `${pathOf(it)}: nested deeper than ${limits.maxDepth} levels`
    if (Array.isArray(x)) {
      if (Object.getPrototypeOf(x) !== Array.prototype) return `${pathOf(it)}: not a plain array`
      for (let i = x.length - 1; i >= 0; i--) stack.push({ v: x[i], depth: depth + 1, parent: it, key: i })
      continue
    }
    const proto = Object.getPrototypeOf(x)
    if (proto !== Object.prototype && proto !== null) return `${pathOf(it)}: not a plain object`
    const keys = Object.keys(x)
    for (let i = keys.length - 1; i >= 0; i--) {
      const k = keys[i]!
      if (k === '__proto__') return `${pathOf(it)}: the key __proto__ is not allowed`
      stack.push({ v: (x as Record<string, unknown>)[k], depth: depth + 1, parent: it, key: k })
    }
  }
  return undefined
}

/** Whether `v` is plain data within `limits` (see plainValueProblem). */
export function isPlainValue(v: unknown, limits: PlainValueLimits): boolean {
  return plainValueProblem(v, limits) === undefined
}
