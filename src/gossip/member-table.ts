import type { MemberStatus, NodeRecord } from './messages.ts'

/**
 * What a node knows about one other member. Immutable: changes replace the object, which lets
 * many simulated nodes share one pre-converged base table (copy-on-write).
 */
export interface MemberState {
  readonly id: string
  readonly record: NodeRecord
  /** Encoded record and the owner's signature over (recordIncarnation, recordBytes). */
  readonly recordBytes: Uint8Array
  readonly sig: Uint8Array
  readonly recordIncarnation: number
  /** Incarnation of the current state (≥ recordIncarnation: suspect/dead may carry a newer one). */
  readonly incarnation: number
  readonly status: MemberStatus
  readonly stateChangeMs: number
  /** Owner's leave signature, when status is `left`. */
  readonly leaveSig?: Uint8Array
  /** Lost a name conflict (another live member with the same name and a lower id). */
  readonly nameConflict?: boolean
}

/** A frozen member list shared by many tables (pre-converged simulations). */
export interface MemberSnapshot {
  readonly members: ReadonlyMap<string, MemberState>
  /** A shuffled order of all ids, used as every node's initial probe order (rotated). */
  readonly order: readonly string[]
}

export function createMemberSnapshot(
  members: Iterable<MemberState>,
  shuffle: (ids: string[]) => void,
): MemberSnapshot {
  const map = new Map<string, MemberState>()
  for (const m of members) map.set(m.id, m)
  const order = [...map.keys()]
  shuffle(order)
  return { members: map, order }
}

/** Names of a shared base snapshot → ids, built once per snapshot (many tables share one). */
const baseNameIndex = new WeakMap<ReadonlyMap<string, MemberState>, Map<string, string[]>>()

function nameIndexOf(base: ReadonlyMap<string, MemberState>): Map<string, string[]> {
  let index = baseNameIndex.get(base)
  if (index === undefined) {
    index = new Map()
    for (const m of base.values()) {
      const ids = index.get(m.record.name)
      if (ids === undefined) index.set(m.record.name, [m.id])
      else ids.push(m.id)
    }
    baseNameIndex.set(base, index)
  }
  return index
}

/** Member id → state, as an overlay over an optional shared base snapshot. */
export class MemberTable {
  private readonly overlay = new Map<string, MemberState | null>()
  /** Record name → ids of overlay members with that name (name conflicts are checked often). */
  private readonly overlayNames = new Map<string, Set<string>>()
  private count = 0

  constructor(
    private readonly base: ReadonlyMap<string, MemberState> | undefined,
    selfId: string,
  ) {
    if (base) {
      this.count = base.size
      if (base.has(selfId)) {
        this.overlay.set(selfId, null)
        this.count--
      }
    }
  }

  /** Members known, self excluded. */
  get size(): number {
    return this.count
  }

  get(id: string): MemberState | undefined {
    const o = this.overlay.get(id)
    if (o !== undefined) return o ?? undefined
    return this.base?.get(id)
  }

  set(m: MemberState): void {
    const prev = this.get(m.id)
    if (prev === undefined) this.count++
    const before = this.overlay.get(m.id)
    if (before) this.unindex(before)
    this.overlay.set(m.id, m)
    const ids = this.overlayNames.get(m.record.name)
    if (ids === undefined) this.overlayNames.set(m.record.name, new Set([m.id]))
    else ids.add(m.id)
  }

  delete(id: string): void {
    if (this.get(id) === undefined) return
    this.count--
    const before = this.overlay.get(id)
    if (before) this.unindex(before)
    if (this.base?.has(id)) this.overlay.set(id, null)
    else this.overlay.delete(id)
  }

  /** Members whose record carries `name` (any status), without scanning the table. */
  *named(name: string): IterableIterator<MemberState> {
    for (const id of this.overlayNames.get(name) ?? []) {
      const m = this.overlay.get(id)
      if (m && m.record.name === name) yield m
    }
    if (this.base) {
      for (const id of nameIndexOf(this.base).get(name) ?? [])
        if (!this.overlay.has(id)) yield this.base.get(id)!
    }
  }

  private unindex(m: MemberState): void {
    const ids = this.overlayNames.get(m.record.name)
    if (ids === undefined) return
    ids.delete(m.id)
    if (ids.size === 0) this.overlayNames.delete(m.record.name)
  }

  *values(): IterableIterator<MemberState> {
    for (const m of this.overlay.values()) if (m) yield m
    if (this.base) {
      for (const [id, m] of this.base) if (!this.overlay.has(id)) yield m
    }
  }
}
