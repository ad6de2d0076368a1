/** Binary min-heap of simulation events ordered by (time, insertion order): deterministic ties. */
export interface Scheduled {
  time: number
  seq: number
}

export class SimEventQueue<T extends Scheduled> {
  private readonly heap: T[] = []
  private counter = 0

  get size(): number {
    return this.heap.length
  }

  /** Stamps `ev.seq` and inserts it. */
  push(ev: T): void {
    ev.seq = this.counter++
    const h = this.heap
    h.push(ev)
    let i = h.length - 1
    while (i > 0) {
      const p = (i - 1) >> 1
      if (!less(h[i]!, h[p]!)) break
      const t = h[i]!
      h[i] = h[p]!
      h[p] = t
      i = p
    }
  }

  peek(): T | undefined {
    return this.heap[0]
  }

  pop(): T | undefined {
    const h = this.heap
    const top = h[0]
    const last = h.pop()
    if (top === undefined || last === undefined || h.length === 0) return top
    h[0] = last
    let i = 0
    const n = h.length
    for (;;) {
      const l = 2 * i + 1
      const r = l + 1
      let m = i
      if (l < n && less(h[l]!, h[m]!)) m = l
      if (r < n && less(h[r]!, h[m]!)) m = r
      if (m === i) break
      const t = h[i]!
      h[i] = h[m]!
      h[m] = t
      i = m
    }
    return top
  }
}

function less(a: Scheduled, b: Scheduled): boolean {
  return a.time < b.time || (a.time === b.time && a.seq < b.seq)
}
