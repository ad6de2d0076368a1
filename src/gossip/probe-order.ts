/**
 * SWIM §4.3 round-robin probe order: members are probed in a random permutation, re-shuffled at
 * the end of each round, and new members are inserted at a random position, so every member is
 * probed once per round (bounded worst-case detection time) yet the order is unpredictable.
 *
 * Pre-converged simulations start every node on a random rotation of one shared shuffled order
 * (no per-node copy of 10,000 ids); a node takes a private copy on its first insertion or round end.
 */
export class ProbeOrder {
  private ids: string[]
  private shared: boolean
  private offset: number
  private index = 0

  constructor(
    private readonly rng: () => number,
    initial?: { order: readonly string[]; exclude: string },
  ) {
    if (initial) {
      this.ids = initial.order as string[]
      this.shared = true
      this.offset = Math.floor(rng() * Math.max(1, initial.order.length))
      this.exclude = initial.exclude
    } else {
      this.ids = []
      this.shared = false
      this.offset = 0
    }
  }

  private exclude: string | undefined

  get length(): number {
    return this.ids.length
  }

  /** Id at position `i` (0 ≤ i < length); may be a member since removed, or self. */
  at(i: number): string {
    const n = this.ids.length
    return this.ids[(i + this.offset) % n]!
  }

  /** Adds a member at a uniformly random position (swap with the one there, as memberlist). */
  add(id: string): void {
    this.own()
    const n = this.ids.length
    this.ids.push(id)
    const j = Math.floor(this.rng() * (n + 1))
    const t = this.ids[j]!
    this.ids[j] = id
    this.ids[n] = t
  }

  /**
   * The id the next call of `next` returns, without taking it; at the end of a round, the next
   * round starts now (as `next` would start it). Returns undefined if empty.
   */
  peek(keep: (id: string) => boolean): string | undefined {
    if (this.index >= this.ids.length) this.newRound(keep)
    if (this.ids.length === 0) return undefined
    return this.at(this.index)
  }

  /**
   * Next id of the round; at the end of the round keeps only ids for which `keep` is true,
   * re-shuffles and starts again. Returns undefined if empty.
   */
  next(keep: (id: string) => boolean): string | undefined {
    if (this.index >= this.ids.length) this.newRound(keep)
    if (this.ids.length === 0) return undefined
    return this.at(this.index++)
  }

  private newRound(keep: (id: string) => boolean): void {
    this.own()
    this.ids = this.ids.filter((id) => id !== this.exclude && keep(id))
    shuffle(this.ids, this.rng)
    this.index = 0
  }

  private own(): void {
    if (!this.shared) return
    const n = this.ids.length
    const copy = new Array<string>(n)
    for (let i = 0; i < n; i++) copy[i] = this.at(i)
    this.ids = copy.filter((id) => id !== this.exclude)
    this.index = Math.min(this.index, this.ids.length)
    this.offset = 0
    this.shared = false
  }
}

/** Fisher–Yates shuffle in place with `rng`. */
export function shuffle<T>(a: T[], rng: () => number): void {
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1))
    const t = a[i]!
    a[i] = a[j]!
    a[j] = t
  }
}
