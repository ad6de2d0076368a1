/**
 * A tiny in-memory Raft network with virtual time (in ticks) for tests, after etcd's `raft_test.go`
 * `network`: `drop`, `cut`, `isolate`, `recover`, random loss/delay/duplication (which reorders),
 * crash/restart from the node's MemoryStorage. Deterministic for a given seed. Every message goes
 * through the wire codec. Invariants are checked as the run goes; a violation throws.
 */
import { decodeMessage, encodeMessage } from '../../src/raft/codec.ts'
import { DEFAULT_RAFT_CONFIG, type RaftConfig } from '../../src/raft/config.ts'
import { MemoryStorage } from '../../src/raft/storage/memory-storage.ts'
import { pack, unpack } from '../../src/common/msgpack.ts'
import { Raft } from '../../src/raft/raft.ts'
import type { Entry, Message, NodeId, ReadState } from '../../src/raft/types.ts'
import { SeededRng } from '../sim/rng.ts'

export interface SimOptions {
  seed?: number
  config?: Partial<Omit<RaftConfig, 'id' | 'rng'>>
  /** Take a state-machine snapshot and compact when this many entries were applied since the last. */
  snapshotEvery?: number
  /** Entries kept behind a compaction point. */
  trailing?: number
  /**
   * Write entries as the production driver does, off the event loop (Raft `accept`/`appendDone`):
   * each write completes 0-2 ticks later, meanwhile the node applies what commits and sends what
   * need not wait; a crash loses a write not yet done.
   */
  asyncWrites?: boolean
  /** Voters to bootstrap with; defaults to all ids. Other ids start empty (to be added). */
  voters?: NodeId[]
}

export interface SimNode {
  id: NodeId
  raft: Raft
  storage: MemoryStorage
  up: boolean
  /** Applied normal entries with data, in order, as "term:index:data" (the state machine). */
  applied: string[]
  appliedIndex: number
  readStates: ReadState[]
  /** An entry write under way (asyncWrites): stored, and its messages sent, at `doneAt`. */
  write?: { entries: Entry[]; after: Message[]; doneAt: number }
}

interface InFlight {
  deliverAt: number
  seq: number
  bytes: Uint8Array
  to: NodeId
}

const enc = new TextEncoder()
const dec = new TextDecoder()

export class SimCluster {
  readonly rng: SeededRng
  readonly nodes = new Map<NodeId, SimNode>()
  now = 0
  /** Probability that a message is lost / duplicated; max extra delay in ticks. */
  lossRate = 0
  dupRate = 0
  maxDelay = 0
  private queue: InFlight[] = []
  private seq = 0
  private readonly dropped = new Set<string>()
  private readonly dropRate = new Map<string, number>()
  private readonly leaderOfTerm = new Map<number, NodeId>()
  /** index -> "term:data" of the entry first applied there, by any node. */
  private readonly appliedAt = new Map<number, string>()
  private readonly opts: SimOptions
  delivered = 0
  /** Extra per-message filter for scripted scenarios: return false to drop. */
  filter: ((m: Message) => boolean) | undefined

  constructor(ids: NodeId[], opts: SimOptions = {}) {
    this.opts = opts
    this.rng = new SeededRng(opts.seed ?? 1)
    for (const id of ids) {
      const storage = new MemoryStorage()
      const raft = this.makeRaft(id, storage)
      const voters = opts.voters ?? ids
      if (voters.includes(id)) raft.bootstrap(voters)
      this.nodes.set(id, { id, raft, storage, up: true, applied: [], appliedIndex: 0, readStates: [] })
      // The founding entries are written synchronously, as RaftNode does (see its `founding`).
      this.process(this.nodes.get(id)!, { sync: true })
    }
  }

  private makeRaft(id: NodeId, storage: MemoryStorage): Raft {
    const cfg: RaftConfig = {
      ...DEFAULT_RAFT_CONFIG,
      electionTick: 10,
      heartbeatTick: 1,
      ...this.opts.config,
      id,
      rng: this.rng.next,
    }
    return new Raft(cfg, storage.initialState())
  }

  /** Adds a fresh, empty node (to be added to the configuration by a conf change). */
  addNode(id: NodeId): SimNode {
    const storage = new MemoryStorage()
    const n: SimNode = {
      id,
      raft: this.makeRaft(id, storage),
      storage,
      up: true,
      applied: [],
      appliedIndex: 0,
      readStates: [],
    }
    this.nodes.set(id, n)
    return n
  }

  node(id: NodeId): SimNode {
    const n = this.nodes.get(id)
    if (n === undefined) throw new Error(`no node ${id}`)
    return n
  }

  // ---- faults -----------------------------------------------------------------------------------

  /** Drops messages from -> to with probability p (1 = always). */
  drop(from: NodeId, to: NodeId, p: number): void {
    this.dropRate.set(`${from}>${to}`, p)
  }

  /** Cuts the link both ways. */
  cut(a: NodeId, b: NodeId): void {
    this.dropped.add(`${a}>${b}`)
    this.dropped.add(`${b}>${a}`)
  }

  /** Cuts a node off from everyone. */
  isolate(id: NodeId): void {
    for (const other of this.nodes.keys()) if (other !== id) this.cut(id, other)
  }

  /** Heals every cut and drop rule (random loss settings stay). */
  recover(): void {
    this.dropped.clear()
    this.dropRate.clear()
  }

  /** Splits the cluster into groups that cannot talk to each other. */
  partition(groups: NodeId[][]): void {
    for (const g of groups)
      for (const h of groups) if (g !== h) for (const a of g) for (const b of h) this.cut(a, b)
  }

  crash(id: NodeId): void {
    const n = this.node(id)
    n.up = false
    n.write = undefined // not durable yet: lost
    this.queue = this.queue.filter((m) => m.to !== id)
  }

  /** Restarts from what the node's storage holds; volatile state (and the state machine) is rebuilt. */
  restart(id: NodeId): void {
    const n = this.node(id)
    const st = n.storage.initialState()
    n.raft = this.makeRaft(id, n.storage)
    n.applied = st.snapshot === undefined ? [] : (unpack(st.snapshot.data) as string[])
    n.appliedIndex = st.snapshot?.metadata.index ?? 0
    n.readStates = []
    n.up = true
    this.process(n)
  }

  // ---- driving ----------------------------------------------------------------------------------

  private send(msgs: Message[]): void {
    for (const m of msgs) {
      const key = `${m.from}>${m.to}`
      if (this.dropped.has(key)) continue
      if (this.filter !== undefined && !this.filter(m)) continue
      const p = this.dropRate.get(key) ?? 0
      if (p > 0 && this.rng.next() < p) continue
      if (this.lossRate > 0 && this.rng.chance(this.lossRate)) continue
      const bytes = encodeMessage(m)
      const copies = this.dupRate > 0 && this.rng.chance(this.dupRate) ? 2 : 1
      for (let i = 0; i < copies; i++) {
        const delay = this.maxDelay > 0 ? this.rng.int(this.maxDelay + 1) : 0
        this.queue.push({ deliverAt: this.now + delay, seq: this.seq++, bytes, to: m.to })
      }
    }
  }

  /**
   * Handles every Ready of a node: persist -> send -> apply -> advance; with asyncWrites, a Ready
   * with entries starts their write and is accepted, and the write completes on a later tick.
   */
  process(n: SimNode, opts: { sync?: boolean } = {}): void {
    for (let guard = 0; guard < 1000; guard++) {
      const rd = n.raft.ready()
      if (rd === undefined) return
      if (rd.snapshot !== undefined) {
        n.storage.installSnapshot(rd.snapshot)
        n.applied = unpack(rd.snapshot.data) as string[]
        n.appliedIndex = rd.snapshot.metadata.index
      }
      const deferred = this.opts.asyncWrites === true && opts.sync !== true && rd.entries.length > 0
      if (rd.entries.length > 0 && !deferred) n.storage.append(rd.entries)
      // As the driver does: a commit saved while entries are being written stops before them.
      if (rd.hardState !== undefined)
        n.storage.setHardState(
          deferred
            ? { ...rd.hardState, commit: Math.min(rd.hardState.commit, rd.entries[0]!.index - 1) }
            : rd.hardState,
        )
      if (rd.softState?.role === 'leader') {
        const term = n.raft.term
        const prev = this.leaderOfTerm.get(term)
        if (prev !== undefined && prev !== n.id) {
          throw new Error(`two leaders in term ${term}: ${prev} and ${n.id} (Raft §5.2 Election Safety)`)
        }
        this.leaderOfTerm.set(term, n.id)
      }
      if (deferred) {
        if (n.write !== undefined) throw new Error(`${n.id}: a second write while one is under way`)
        this.send(rd.messages)
        n.raft.accept(rd)
        n.write = { entries: rd.entries, after: rd.messagesAfterAppend, doneAt: this.now + this.rng.int(3) }
      } else {
        this.send([...rd.messages, ...rd.messagesAfterAppend])
      }
      for (const e of rd.committedEntries) this.apply(n, e)
      n.readStates.push(...rd.readStates)
      if (deferred) continue
      n.raft.advance(rd)
      if (n.write !== undefined) continue // the storage lags the log until the write completes
      this.checkStorage(n)
      this.maybeSnapshot(n)
    }
    throw new Error('ready loop did not settle')
  }

  /** Completes a node's entry write: stored, its acknowledgements sent, reported to the core. */
  private completeWrite(n: SimNode): void {
    const w = n.write
    if (w === undefined || w.doneAt > this.now) return
    n.write = undefined
    n.storage.append(w.entries)
    this.send(w.after)
    const last = w.entries.at(-1)!
    n.raft.appendDone(last.index, last.term)
    this.process(n)
  }

  /**
   * Every Ready is persisted before `advance`, so the storage must hold the core's whole log,
   * without a gap after the snapshot: otherwise a restart loses entries this node acknowledged.
   */
  private checkStorage(n: SimNode): void {
    const st = n.storage.initialState()
    const snapIndex = st.snapshot?.metadata.index ?? 0
    let expected = st.entries[0]?.index ?? snapIndex + 1
    if (expected > snapIndex + 1) {
      throw new Error(`${n.id} stores entries from ${expected} after a snapshot at ${snapIndex}`)
    }
    for (const e of st.entries) {
      if (e.index !== expected) throw new Error(`${n.id} stores ${e.index} after ${expected - 1}`)
      expected++
    }
    if (n.storage.lastIndex() !== n.raft.log.lastIndex()) {
      throw new Error(
        `${n.id} stores up to ${n.storage.lastIndex()}, its log ends at ${n.raft.log.lastIndex()}`,
      )
    }
  }

  private apply(n: SimNode, e: Entry): void {
    if (e.index !== n.appliedIndex + 1) {
      throw new Error(`${n.id} applied ${e.index} after ${n.appliedIndex}: committed entries out of order`)
    }
    n.appliedIndex = e.index
    const sig = `${e.term}:${e.type}:${dec.decode(e.data)}`
    const prev = this.appliedAt.get(e.index)
    if (prev === undefined) this.appliedAt.set(e.index, sig)
    else if (prev !== sig) {
      throw new Error(
        `index ${e.index} applied as ${prev} and as ${sig} on ${n.id} (State Machine Safety, §5.4.3)`,
      )
    }
    if (e.type === 'normal' && e.data.length > 0) n.applied.push(`${e.term}:${e.index}:${dec.decode(e.data)}`)
  }

  private maybeSnapshot(n: SimNode): void {
    const every = this.opts.snapshotEvery
    if (every === undefined) return
    const last = n.raft.snapshot()?.metadata.index ?? 0
    if (n.appliedIndex - last < every) return
    const snap = n.raft.createSnapshot(n.appliedIndex, pack(n.applied))
    n.storage.saveSnapshot(snap)
    // Applied entries may not be stored yet (asyncWrites): compact only stored ones.
    const to = Math.max(0, Math.min(n.appliedIndex - (this.opts.trailing ?? 0), n.raft.stabledIndex()))
    n.raft.compact(to)
    n.storage.compact(to)
  }

  private deliver(item: InFlight): void {
    const n = this.nodes.get(item.to)
    if (n === undefined || !n.up) return
    const r = decodeMessage(item.bytes)
    if (!r.ok) throw new Error(`codec round trip failed: ${r.reason}`)
    this.delivered++
    n.raft.step(r.message)
    this.process(n)
  }

  /** Delivers queued messages (ignoring delays) until the network is quiet, like etcd's network.send. */
  stabilize(maxMessages = 100_000): void {
    for (let i = 0; i < maxMessages; i++) {
      const item = this.queue.shift()
      if (item === undefined) return
      this.deliver(item)
    }
    throw new Error('network did not quiesce')
  }

  /** Advances virtual time: every live node ticks, then messages due by now are delivered. */
  tick(n = 1): void {
    for (let i = 0; i < n; i++) {
      this.now++
      for (const node of this.nodes.values()) {
        if (!node.up) continue
        this.completeWrite(node)
        node.raft.tick()
        this.process(node)
      }
      this.deliverDue()
    }
  }

  private deliverDue(): void {
    for (let guard = 0; guard < 100_000; guard++) {
      let best = -1
      for (let i = 0; i < this.queue.length; i++) {
        const q = this.queue[i]!
        if (q.deliverAt > this.now) continue
        if (best < 0 || q.deliverAt < this.queue[best]!.deliverAt) best = i
        else if (q.deliverAt === this.queue[best]!.deliverAt && q.seq < this.queue[best]!.seq) best = i
      }
      if (best < 0) return
      const [item] = this.queue.splice(best, 1)
      this.deliver(item!)
    }
  }

  /** Ticks until `pred` holds, failing after `max` ticks. */
  tickUntil(pred: () => boolean, max = 500): void {
    for (let i = 0; i < max; i++) {
      if (pred()) return
      this.tick()
    }
    if (!pred()) throw new Error(`condition not reached within ${max} ticks`)
  }

  /** Forces `id` to campaign and delivers everything (etcd's MsgHup). */
  campaign(id: NodeId): void {
    const n = this.node(id)
    n.raft.campaign()
    this.process(n)
    this.stabilize()
  }

  /** Proposes on `id` and processes its Ready. */
  propose(
    id: NodeId,
    data: string,
    requestId?: { clientId: string; seq: number },
  ): { index: number; term: number } {
    const n = this.node(id)
    const r = n.raft.propose(enc.encode(data), requestId)
    this.process(n)
    return r
  }

  /** The live leader with the highest term, if any. */
  leader(): SimNode | undefined {
    let best: SimNode | undefined
    for (const n of this.nodes.values()) {
      if (!n.up || n.raft.role !== 'leader') continue
      if (best === undefined || n.raft.term > best.raft.term) best = n
    }
    return best
  }

  /** Runs until some live node leads, and returns it. */
  electLeader(max = 500): SimNode {
    this.tickUntil(() => this.leader() !== undefined, max)
    return this.leader()!
  }

  /** Applied data strings of a node (without term:index prefix). */
  data(id: NodeId): string[] {
    return this.node(id).applied.map((s) => s.split(':').slice(2).join(':'))
  }

  /** Checks that applied sequences of all nodes are prefixes of one another. */
  checkAppliedPrefixes(): void {
    const lists = [...this.nodes.values()].map((n) => n.applied)
    const longest = lists.reduce((a, b) => (b.length > a.length ? b : a), [])
    for (const [id, n] of this.nodes) {
      for (let i = 0; i < n.applied.length; i++) {
        if (n.applied[i] !== longest[i])
          throw new Error(`${id} applied ${n.applied[i]} at ${i}, others ${longest[i]}`)
      }
    }
  }
}
