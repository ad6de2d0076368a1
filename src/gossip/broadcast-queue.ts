/**
 * Piggyback dissemination queue (SWIM §4.1, memberlist `queue.go` TransmitLimitedQueue): each
 * update is sent at most `retransmitLimit(mult, n)` times, least-transmitted (then newest) first;
 * a newer update about a member replaces the queued older one.
 */

/** `retransmitMult · ceil(log10(n + 1))` — enough for an epidemic to reach all n members w.h.p. */
export function retransmitLimit(retransmitMult: number, n: number): number {
  return retransmitMult * Math.ceil(Math.log10(n + 1))
}

interface QueuedBroadcast {
  readonly key: string
  readonly bytes: Uint8Array
  readonly seq: number
  transmits: number
}

export class BroadcastQueue {
  private readonly items = new Map<string, QueuedBroadcast>()
  private seq = 0

  constructor(private readonly maxQueued: number) {}

  get size(): number {
    return this.items.size
  }

  /** Queues an encoded message about `key` (a member id), replacing any older one about it. */
  push(key: string, bytes: Uint8Array): void {
    this.items.delete(key)
    this.items.set(key, { key, bytes, seq: ++this.seq, transmits: 0 })
    if (this.items.size > this.maxQueued) this.prune()
  }

  /** Removes the queued update about `key`, if any. */
  remove(key: string): void {
    this.items.delete(key)
  }

  /**
   * Takes updates to piggyback: least transmitted first, then newest, while their sizes (plus
   * `perItemOverhead` each) fit in `budget` bytes. Each returned update counts one transmission;
   * those that reached `limit` transmissions are dropped from the queue.
   */
  take(budget: number, perItemOverhead: (len: number) => number, limit: number): Uint8Array[] {
    if (this.items.size === 0) return []
    const sorted = this.sorted()
    const out: Uint8Array[] = []
    let left = budget
    for (const b of sorted) {
      const cost = b.bytes.length + perItemOverhead(b.bytes.length)
      if (cost > left) continue
      left -= cost
      out.push(b.bytes)
      b.transmits++
      if (b.transmits >= limit) this.items.delete(b.key)
      if (left < 16) break
    }
    return out
  }

  private sorted(): QueuedBroadcast[] {
    return [...this.items.values()].sort((a, b) => a.transmits - b.transmits || b.seq - a.seq)
  }

  private prune(): void {
    const sorted = this.sorted()
    for (let i = this.maxQueued; i < sorted.length; i++) this.items.delete(sorted[i]!.key)
  }
}
