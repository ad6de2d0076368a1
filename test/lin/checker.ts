/**
 * A linearizability checker: Wing & Gong's search with Lowe's memoization, as Porcupine does it
 * (anishathalye/porcupine `checker.go`), written for our test histories.
 *
 * The history is a list of completed or pending operations. The search walks the history's call
 * and return events in time order, keeping a doubly linked list of the events not yet explained.
 * At a call it tries to linearize that operation now (the model must accept its output from the
 * current state); at a return whose operation has not been linearized it backtracks. Every
 * (set of linearized operations, model state) pair is explored at most once (Lowe, "Testing for
 * linearizability", 2017), and a model that can be split into independent parts — a key-value
 * store by key — is checked one part at a time (P-compositionality, Horn & Kroening 2015), which
 * turns one exponential search into many small ones.
 *
 * An operation that never returned (a request that timed out while the leader was killed) has
 * `return: Infinity`: it may take effect at any point after its call, or never. Its output is
 * unknown, and the model is stepped with `output === undefined`.
 */

export type ClientId = number | string

export interface Operation<I, O> {
  clientId: ClientId
  input: I
  /** What the operation returned; ignored (unknown) when `return` is `Infinity`. */
  output?: O
  /** Time the client invoked the operation. */
  call: number
  /** Time the client saw the response; `Infinity` when it never did. */
  return: number
}

export interface Model<S, I, O> {
  init(): S
  /**
   * Applies `input` to `state`; `ok` says whether `output` is what the operation could have
   * returned. `output` is `undefined` for an operation that never returned: accept it and apply
   * whatever the operation would have done. Must not mutate `state`.
   */
  step(state: S, input: I, output: O | undefined): [ok: boolean, newState: S]
  /** A string identifying a state, used to memoize; defaults to `JSON.stringify`. */
  hash?(state: S): string
  /** Used instead of `hash` when `hash` is absent. */
  equal?(a: S, b: S): boolean
  /** Splits a history into parts that are linearizable independently (e.g. by key). */
  partition?(history: readonly Operation<I, O>[]): Operation<I, O>[][]
  /**
   * True if `input` never changes the state. A pending read-only operation explains nothing
   * and is dropped before the search.
   */
  isReadOnly?(input: I): boolean
  describeOperation?(input: I, output: O | undefined): string
  describeState?(state: S): string
}

export interface CheckOptions {
  /** Wall-clock budget for the whole check; past it the answer is `'unknown'`. Default 10 s. */
  timeoutMs?: number
  /** Budget in search steps (each tries or undoes one operation); default unlimited. */
  maxSteps?: number
}

export type CheckResult<I, O> =
  | { ok: true; steps: number; partitions: number }
  | {
      ok: false
      steps: number
      partitions: number
      /** Index of the partition that failed. */
      partition: number
      /** The longest sequence of that partition's operations that could be linearized. */
      partialLinearization: Operation<I, O>[]
      /** Operations that could have come next after it; none was accepted by the model. */
      candidates: Operation<I, O>[]
      /** The operation that had to take effect before its return but could not. */
      stuck: Operation<I, O>
      explanation: string
    }
  | { ok: 'unknown'; steps: number; partitions: number; reason: 'timeout' | 'steps' }

const DEFAULT_TIMEOUT_MS = 10_000
/** The clock is read once per this many steps; reading it every step costs more than a step. */
const CLOCK_EVERY = 512

class Budget {
  steps = 0
  private readonly deadline: number
  private readonly maxSteps: number
  exceeded: 'timeout' | 'steps' | undefined

  constructor(opts: CheckOptions) {
    this.deadline = performance.now() + (opts.timeoutMs ?? DEFAULT_TIMEOUT_MS)
    this.maxSteps = opts.maxSteps ?? Number.POSITIVE_INFINITY
  }

  /** Counts one step; false once the budget is spent. */
  tick(): boolean {
    this.steps++
    if (this.steps > this.maxSteps) this.exceeded = 'steps'
    else if (this.steps % CLOCK_EVERY === 0 && performance.now() > this.deadline) this.exceeded = 'timeout'
    return this.exceeded === undefined
  }
}

type SingleResult<S> =
  | { kind: 'ok' }
  | { kind: 'unknown' }
  | { kind: 'illegal'; longest: number[]; state: S; stuck: number; candidates: number[] }

/** Deterministic per-operation random words for Zobrist hashing of the linearized set. */
function zobrist(n: number): Uint32Array {
  const out = new Uint32Array(n * 2)
  let x = 0x9e3779b9
  for (let i = 0; i < out.length; i++) {
    // splitmix32
    x = (x + 0x9e3779b9) | 0
    let z = x
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b)
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35)
    out[i] = (z ^ (z >>> 16)) >>> 0
  }
  return out
}

function bitsEqual(a: Uint32Array, b: Uint32Array): boolean {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}

function defaultHash(state: unknown): string {
  return JSON.stringify(state) ?? 'undefined'
}

/** Wing & Gong with memoization over one partition; `ops` indices are operation ids. */
function checkSingle<S, I, O>(
  model: Model<S, I, O>,
  ops: readonly Operation<I, O>[],
  budget: Budget,
): SingleResult<S> {
  const n = ops.length
  if (n === 0) return { kind: 'ok' }
  // Events 0..2n-1: event 2i is op i's call, 2i+1 its return. Sorted by time, calls before
  // returns at equal times (so operations that touch at an instant count as concurrent).
  const order = Array.from({ length: 2 * n }, (_, e) => e)
  const time = (e: number): number => (e & 1 ? ops[e >> 1]!.return : ops[e >> 1]!.call)
  order.sort((a, b) => time(a) - time(b) || (a & 1) - (b & 1) || a - b)
  // Linked list over events, with HEAD as sentinel; NIL ends it.
  const HEAD = 2 * n
  const NIL = -1
  const next = new Int32Array(2 * n + 1).fill(NIL)
  const prev = new Int32Array(2 * n + 1).fill(NIL)
  let last = HEAD
  for (const e of order) {
    next[last] = e
    prev[e] = last
    last = e
  }
  const lift = (call: number): void => {
    next[prev[call]!] = next[call]!
    prev[next[call]!] = prev[call]!
    const ret = call + 1
    next[prev[ret]!] = next[ret]!
    if (next[ret] !== NIL) prev[next[ret]!] = prev[ret]!
  }
  const unlift = (call: number): void => {
    const ret = call + 1
    next[prev[ret]!] = ret
    if (next[ret] !== NIL) prev[next[ret]!] = ret
    next[prev[call]!] = call
    prev[next[call]!] = call
  }

  const hash = model.hash?.bind(model) ?? (model.equal === undefined ? defaultHash : undefined)
  const equal = model.equal?.bind(model)
  const words = Math.ceil(n / 32)
  const linearized = new Uint32Array(words)
  const z = zobrist(n)
  let h1 = 0
  let h2 = 0
  const cache = new Map<string, { bits: Uint32Array; state: S }[]>()
  const toggle = (id: number): void => {
    linearized[id >>> 5]! ^= 1 << (id & 31)
    h1 ^= z[2 * id]!
    h2 ^= z[2 * id + 1]!
  }
  /** Adds (linearized, state) to the cache; false if it was already there. */
  const remember = (state: S): boolean => {
    const key = hash === undefined ? `${h1},${h2}` : `${h1},${h2},${hash(state)}`
    const bucket = cache.get(key)
    if (bucket === undefined) {
      cache.set(key, [{ bits: linearized.slice(), state }])
      return true
    }
    for (const seen of bucket) {
      if (bitsEqual(seen.bits, linearized) && (hash !== undefined || equal!(seen.state, state))) return false
    }
    bucket.push({ bits: linearized.slice(), state })
    return true
  }

  const calls: { event: number; state: S }[] = []
  let state = model.init()
  let best: SingleResult<S> & { kind: 'illegal' } = {
    kind: 'illegal',
    longest: [],
    state,
    stuck: -1,
    candidates: [],
  }
  let event = next[HEAD]!
  while (next[HEAD] !== NIL) {
    if (!budget.tick()) return { kind: 'unknown' }
    if ((event & 1) === 0) {
      const id = event >> 1
      const op = ops[id]!
      const [ok, newState] = model.step(state, op.input, op.output)
      if (ok) {
        toggle(id)
        if (remember(newState)) {
          calls.push({ event, state })
          state = newState
          lift(event)
          event = next[HEAD]!
          continue
        }
        toggle(id)
      }
      event = next[event]!
    } else {
      // A return whose operation is not linearized yet: the prefix chosen so far cannot be
      // extended past this point. Remember the longest such prefix for the report, then undo.
      if (best.stuck === -1 || calls.length > best.longest.length) {
        const candidates: number[] = []
        for (let e = next[HEAD]!; e !== event && e !== NIL; e = next[e]!)
          if ((e & 1) === 0) candidates.push(e >> 1)
        best = {
          kind: 'illegal',
          longest: calls.map((c) => c.event >> 1),
          state,
          stuck: event >> 1,
          candidates,
        }
      }
      const top = calls.pop()
      if (top === undefined) return best
      event = top.event
      state = top.state
      toggle(event >> 1)
      unlift(event)
      event = next[event]!
    }
  }
  return { kind: 'ok' }
}

function describeOp<S, I, O>(model: Model<S, I, O>, op: Operation<I, O>): string {
  const what =
    model.describeOperation?.(op.input, op.output) ??
    `${JSON.stringify(op.input)} -> ${op.output === undefined ? '?' : JSON.stringify(op.output)}`
  const ret = op.return === Number.POSITIVE_INFINITY ? 'pending' : String(op.return)
  return `${what} (client ${op.clientId}, ${op.call}..${ret})`
}

/**
 * Checks that `history` is linearizable with respect to `model`: that every operation can be
 * given a point between its call and return such that the model, applying them in that order,
 * produces every output that was observed.
 */
export function checkLinearizable<S, I, O>(
  model: Model<S, I, O>,
  history: readonly Operation<I, O>[],
  opts: CheckOptions = {},
): CheckResult<I, O> {
  const cleaned: Operation<I, O>[] = []
  for (const op of history) {
    if (!(op.return >= op.call)) {
      throw new RangeError(`operation returns before it is called: ${JSON.stringify(op)}`)
    }
    if (op.return === Number.POSITIVE_INFINITY) {
      if (model.isReadOnly?.(op.input)) continue
      cleaned.push({ ...op, output: undefined })
    } else {
      cleaned.push(op)
    }
  }
  const parts = model.partition?.(cleaned) ?? [cleaned]
  const budget = new Budget(opts)
  for (let p = 0; p < parts.length; p++) {
    const ops = parts[p]!
    const r = checkSingle(model, ops, budget)
    if (r.kind === 'unknown') {
      return {
        ok: 'unknown',
        steps: budget.steps,
        partitions: parts.length,
        reason: budget.exceeded ?? 'timeout',
      }
    }
    if (r.kind === 'illegal') {
      const partial = r.longest.map((id) => ops[id]!)
      const stuck = ops[r.stuck]!
      const candidates = r.candidates.map((id) => ops[id]!)
      const stateText = model.describeState?.(r.state) ?? defaultHash(r.state)
      const tail = partial.slice(-5).map((op) => describeOp(model, op))
      const explanation =
        `not linearizable (partition ${p} of ${parts.length}): ` +
        `at most ${partial.length} of its ${ops.length} operations can be linearized` +
        (tail.length > 0 ? `, ending [${partial.length > 5 ? '..., ' : ''}${tail.join('; ')}]` : '') +
        `; from state ${stateText}, ${describeOp(model, stuck)} had to take effect before it returned, ` +
        `but no candidate fits: [${candidates.map((op) => describeOp(model, op)).join('; ')}]`
      return {
        ok: false,
        steps: budget.steps,
        partitions: parts.length,
        partition: p,
        partialLinearization: partial,
        candidates,
        stuck,
        explanation,
      }
    }
  }
  return { ok: true, steps: budget.steps, partitions: parts.length }
}

/** Groups a history by a key of each operation's input, keeping time order within each group. */
export function partitionBy<I, O>(
  keyOf: (input: I) => string,
): (history: readonly Operation<I, O>[]) => Operation<I, O>[][] {
  return (history) => {
    const groups = new Map<string, Operation<I, O>[]>()
    for (const op of history) {
      const k = keyOf(op.input)
      let g = groups.get(k)
      if (g === undefined) {
        g = []
        groups.set(k, g)
      }
      g.push(op)
    }
    return [...groups.values()]
  }
}

// ---------------------------------------------------------------------------------------------
// Key-value register model

export type KvInput =
  | { op: 'put'; key: string; value: string }
  | { op: 'get'; key: string }
  /** Compare-and-swap: sets `value` if the current value is `expected` (`null`: absent). */
  | { op: 'cas'; key: string; expected: string | null; value: string }

/** put: anything (ignored, e.g. `'ok'`); get: the value or `null`; cas: whether it swapped. */
export type KvOutput = string | null | boolean

export type KvState = Readonly<Record<string, string>>

function kvRead(state: KvState, key: string): string | null {
  return Object.hasOwn(state, key) ? state[key]! : null
}

function kvWrite(state: KvState, key: string, value: string): KvState {
  const out: Record<string, string> = { ...state }
  Object.defineProperty(out, key, { value, enumerable: true, writable: true, configurable: true })
  return out
}

/**
 * A map of registers, one per key; partitioned by key, so each key's history is checked on
 * its own. `get` of an absent key returns `null`.
 */
export const kvModel: Model<KvState, KvInput, KvOutput> = {
  init: () => ({}),
  step(state, input, output) {
    const current = kvRead(state, input.key)
    switch (input.op) {
      case 'put':
        return [true, kvWrite(state, input.key, input.value)]
      case 'get':
        return [output === undefined || output === current, state]
      case 'cas': {
        const swaps = current === input.expected
        const next = swaps ? kvWrite(state, input.key, input.value) : state
        if (output === undefined) return [true, next]
        return [output === swaps, next]
      }
    }
  },
  hash: (state) =>
    JSON.stringify(
      Object.keys(state)
        .sort()
        .map((k) => [k, state[k]]),
    ),
  partition: partitionBy<KvInput, KvOutput>((input) => input.key),
  isReadOnly: (input) => input.op === 'get',
  describeOperation(input, output) {
    const out = output === undefined ? '?' : JSON.stringify(output)
    switch (input.op) {
      case 'put':
        return `put(${input.key}, ${JSON.stringify(input.value)})`
      case 'get':
        return `get(${input.key}) -> ${out}`
      case 'cas':
        return `cas(${input.key}, ${JSON.stringify(input.expected)}, ${JSON.stringify(input.value)}) -> ${out}`
    }
  },
  describeState: (state) => JSON.stringify(state),
}
