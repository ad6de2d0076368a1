/**
 * A deterministic simulated network with a virtual clock that drives many `Swim` cores in one
 * process (tests and the large-cluster bench). Event-driven: a priority queue of (time, event);
 * each node's `nextDeadline()` schedules its ticks. Every message goes through the codec as
 * bytes, so byte counts are real.
 *
 * Faults: loss, latency range, duplication, reordering, partitions, crash/restart and pause (an
 * overloaded node: inbound messages and timers wait until the pause ends, then the queued
 * messages are handled in arrival order, then its timers run).
 * Datagrams (`send`) suffer loss, duplication and reordering; push/pull is reliable (a stream)
 * but still blocked by partitions, crashes and pauses.
 */
import { lanConfig, type SwimConfig } from './config.ts'
import { createMemberSnapshot, type MemberSnapshot } from './member-table.ts'
import type { NodeRecord } from './messages.ts'
import { shuffle } from './probe-order.ts'
import { seededRng } from '../common/rng.ts'
import { acceptAllVerifier, nullSigner, type Signer, type Verifier } from './signing.ts'
import { SimEventQueue } from './sim-event-queue.ts'
import { aliveMemberState, type Output, Swim, type SwimEvent } from './swim.ts'
import type { UserEvent } from './user-events.ts'

export interface SimNetworkOptions {
  seed: number
  /** Config of every node (default: `lan`). */
  config?: SwimConfig
  /** One-way latency range of each message (default 0.2–2 ms). */
  latencyMs?: { min: number; max: number }
  /** Probability that a datagram is lost. */
  loss?: number
  /** Probability that a datagram is delivered twice. */
  duplicate?: number
  /** Probability that a datagram is delayed by up to 5× the max latency (overtaken by later ones). */
  reorder?: number
  /** Per-node signer/verifier (default: `nullSigner` / `acceptAllVerifier`). */
  crypto?: (id: string) => { signer: Signer; verifier: Verifier }
  /** Called for every event any node emits. */
  onEvent?: (nodeId: string, event: SwimEvent, nowMs: number) => void
  /** Called for every user event any node delivers (its own included). */
  onUserEvent?: (nodeId: string, event: UserEvent, nowMs: number) => void
  /** Sees every datagram a node sends (an on-path observer holding the cluster key; attack tests). */
  tap?: (from: string, to: string, bytes: Uint8Array, nowMs: number) => void
}

export interface SimNodeSpec {
  name?: string
  tags?: Record<string, string>
  meta?: Record<string, unknown>
  lastIncarnation?: number
  config?: SwimConfig
}

interface SimNode {
  id: string
  spec: SimNodeSpec
  swim: Swim
  crashed: boolean
  pausedUntil: number
  pending: SimEvent[]
  scheduledTick: number
  gen: number
  /** Timer events that ran this node's `tick` (its wake-ups, those that found nothing due too). */
  wakeups: number
}

const TICK = 0
const MSG = 1
const PP_REQ = 2
const PP_REPLY = 3
const RESUME = 4
const CALL = 5

interface SimEvent {
  time: number
  seq: number
  kind: number
  to: string
  from: string
  bytes: Uint8Array | undefined
  gen: number
  fn: (() => void) | undefined
}

/** Totals over the whole network. */
export interface SimNetworkStats {
  delivered: number
  lost: number
  partitioned: number
  toCrashed: number
  pushPulls: number
}

export class SimNetwork {
  private readonly rng: () => number
  private readonly cfg: SwimConfig
  private readonly latency: { min: number; max: number }
  private readonly loss: number
  private readonly duplicate: number
  private readonly reorder: number
  private readonly crypto: (id: string) => { signer: Signer; verifier: Verifier }
  private readonly nodes = new Map<string, SimNode>()
  /** Nodes handed out by `node()` since the last event: their timers may have moved. */
  private readonly touched = new Set<SimNode>()
  private readonly queue = new SimEventQueue<SimEvent>()
  private groups = new Map<string, number>()
  private clock = 0
  readonly totals: SimNetworkStats = { delivered: 0, lost: 0, partitioned: 0, toCrashed: 0, pushPulls: 0 }
  onEvent: ((nodeId: string, event: SwimEvent, nowMs: number) => void) | undefined
  onUserEvent: ((nodeId: string, event: UserEvent, nowMs: number) => void) | undefined
  private readonly tap: SimNetworkOptions['tap']

  constructor(opts: SimNetworkOptions) {
    this.rng = seededRng(opts.seed)
    this.cfg = opts.config ?? { ...lanConfig }
    this.latency = opts.latencyMs ?? { min: 0.2, max: 2 }
    this.loss = opts.loss ?? 0
    this.duplicate = opts.duplicate ?? 0
    this.reorder = opts.reorder ?? 0
    this.crypto = opts.crypto ?? (() => ({ signer: nullSigner, verifier: acceptAllVerifier }))
    this.onEvent = opts.onEvent
    this.onUserEvent = opts.onUserEvent
    this.tap = opts.tap
  }

  get now(): number {
    return this.clock
  }

  /** Creates a node (not started). */
  addNode(id: string, spec: SimNodeSpec = {}, initialMembers?: MemberSnapshot): Swim {
    const swim = this.createSwim(id, spec, initialMembers)
    this.nodes.set(id, {
      id,
      spec,
      swim,
      crashed: false,
      pausedUntil: 0,
      pending: [],
      scheduledTick: Number.POSITIVE_INFINITY,
      wakeups: 0,
      gen: 0,
    })
    return swim
  }

  private createSwim(id: string, spec: SimNodeSpec, initialMembers?: MemberSnapshot): Swim {
    const { signer, verifier } = this.crypto(id)
    return new Swim({
      self: {
        id,
        name: spec.name ?? id,
        addresses: [`sim://${id}`],
        tags: spec.tags ?? {},
        meta: spec.meta ?? {},
      },
      config: spec.config ?? this.cfg,
      rng: seededRng(Math.floor(this.rng() * 0x100000000)),
      signer,
      verifier,
      ...(spec.lastIncarnation !== undefined ? { lastIncarnation: spec.lastIncarnation } : {}),
      ...(initialMembers ? { initialMembers } : {}),
    })
  }

  /** Adds, starts and joins a node through `seeds`. */
  join(id: string, seeds: string[], spec: SimNodeSpec = {}): Swim {
    const swim = this.nodes.get(id)?.swim ?? this.addNode(id, spec)
    this.apply(this.mustGet(id), swim.join(seeds, this.clock))
    return swim
  }

  /**
   * Creates `ids.length` nodes that start already converged: every node begins with the full,
   * alive member list (one shared copy-on-write snapshot, records signed by `nullSigner`), so no
   * join traffic is simulated. Only valid with the default null crypto.
   */
  bootstrapConverged(ids: string[], spec: SimNodeSpec = {}): void {
    const states = ids.map((id) => {
      const record: NodeRecord = {
        id,
        name: spec.name ?? id,
        addresses: [`sim://${id}`],
        tags: spec.tags ?? {},
        meta: spec.meta ?? {},
        version: 1,
      }
      return aliveMemberState(record, 1, nullSigner, this.clock)
    })
    const snapshot = createMemberSnapshot(states, (a) => shuffle(a, this.rng))
    for (const id of ids) {
      const swim = this.addNode(id, spec, snapshot)
      this.apply(this.mustGet(id), swim.start(this.clock))
    }
  }

  /**
   * The node's core, for calls from outside the simulation (`heardFrom`, `setRelayed`, ...): its
   * timer is re-armed before the next event, as a driver re-arms after such a call.
   */
  node(id: string): Swim {
    const n = this.mustGet(id)
    this.touched.add(n)
    return n.swim
  }

  /** How many times `id`'s timer woke it (including wake-ups that found nothing due). */
  wakeups(id: string): number {
    return this.mustGet(id).wakeups
  }

  private rescheduleTouched(): void {
    for (const n of this.touched) this.reschedule(n)
    this.touched.clear()
  }

  ids(): string[] {
    return [...this.nodes.keys()]
  }

  /** Ids of nodes that are not crashed. */
  liveIds(): string[] {
    return [...this.nodes.values()].filter((n) => !n.crashed).map((n) => n.id)
  }

  isCrashed(id: string): boolean {
    return this.mustGet(id).crashed
  }

  /** Lets a node act on its own (e.g. `updateLocalRecord`, `leave`) and routes the output. */
  act(id: string, f: (swim: Swim, nowMs: number) => Output): void {
    const n = this.mustGet(id)
    this.apply(n, f(n.swim, this.clock))
  }

  /** Stops a node abruptly: it sends and receives nothing until `restart`. */
  crash(id: string): void {
    const n = this.mustGet(id)
    n.crashed = true
    n.pending = []
    n.scheduledTick = Number.POSITIVE_INFINITY
    n.gen++
  }

  /** Restarts a crashed node with fresh state (optionally its last incarnation) and joins via `seeds`. */
  restart(id: string, opts: { seeds?: string[]; lastIncarnation?: number } = {}): Swim {
    const n = this.mustGet(id)
    const spec = {
      ...n.spec,
      ...(opts.lastIncarnation !== undefined ? { lastIncarnation: opts.lastIncarnation } : {}),
    }
    n.swim = this.createSwim(id, spec)
    n.crashed = false
    n.pausedUntil = 0
    n.pending = []
    n.scheduledTick = Number.POSITIVE_INFINITY
    n.gen++
    const seeds =
      opts.seeds ??
      this.liveIds()
        .filter((x) => x !== id)
        .slice(0, 1)
    this.apply(n, n.swim.join(seeds, this.clock))
    return n.swim
  }

  /**
   * Delivers `bytes` to `to` as a datagram from `from` at `atMs` (default: now): an attacker's
   * datagram, with `from` being whatever the transport would authenticate (any id, even one that
   * is not a node). No loss, no partition.
   */
  inject(from: string, to: string, bytes: Uint8Array, atMs = this.clock): void {
    this.push(Math.max(atMs, this.clock), MSG, to, from, bytes, 0)
  }

  /** Freezes a node's processing for `ms`: inbound messages and timers wait until then. */
  pause(id: string, ms: number): void {
    const n = this.mustGet(id)
    n.pausedUntil = Math.max(n.pausedUntil, this.clock + ms)
    this.push(n.pausedUntil, RESUME, id, '', undefined, n.gen)
  }

  /** Cuts all traffic between `a` and `b` (nodes in neither group are unaffected). */
  partition(a: string[], b: string[]): void {
    this.groups = new Map()
    for (const id of a) this.groups.set(id, 1)
    for (const id of b) this.groups.set(id, 2)
  }

  heal(): void {
    this.groups = new Map()
  }

  /** Runs `fn` at virtual time `atMs`. */
  schedule(atMs: number, fn: () => void): void {
    this.queue.push({ time: atMs, seq: 0, kind: CALL, to: '', from: '', bytes: undefined, gen: 0, fn })
  }

  runUntil(t: number): void {
    for (;;) {
      this.rescheduleTouched()
      const ev = this.queue.peek()
      if (ev === undefined || ev.time > t) break
      this.queue.pop()
      if (ev.time > this.clock) this.clock = ev.time
      this.process(ev)
    }
    if (t > this.clock) this.clock = t
  }

  runFor(ms: number): void {
    this.runUntil(this.clock + ms)
  }

  /** Runs until `pred()` holds (checked every `stepMs`) or `maxMs` passed; returns the time or undefined. */
  runUntilCondition(pred: () => boolean, maxMs: number, stepMs = 10): number | undefined {
    const deadline = this.clock + maxMs
    if (pred()) return this.clock
    while (this.clock < deadline) {
      this.runUntil(Math.min(deadline, this.clock + stepMs))
      if (pred()) return this.clock
    }
    return undefined
  }

  private mustGet(id: string): SimNode {
    const n = this.nodes.get(id)
    if (!n) throw new Error(`unknown simulated node ${id}`)
    return n
  }

  private push(
    time: number,
    kind: number,
    to: string,
    from: string,
    bytes: Uint8Array | undefined,
    gen: number,
  ): void {
    this.queue.push({ time, seq: 0, kind, to, from, bytes, gen, fn: undefined })
  }

  private blocked(a: string, b: string): boolean {
    if (this.groups.size === 0) return false
    const ga = this.groups.get(a)
    const gb = this.groups.get(b)
    return ga !== undefined && gb !== undefined && ga !== gb
  }

  private sampleLatency(): number {
    return this.latency.min + this.rng() * (this.latency.max - this.latency.min)
  }

  private apply(n: SimNode, out: Output): void {
    for (const s of out.send) this.sendDatagram(n.id, s.to, s.msg)
    for (const p of out.pushPull) {
      this.totals.pushPulls++
      if (this.blocked(n.id, p.to)) continue
      this.push(this.clock + 2 * this.sampleLatency(), PP_REQ, p.to, n.id, p.state, n.gen)
    }
    if (this.onEvent) for (const e of out.events) this.onEvent(n.id, e, this.clock)
    if (this.onUserEvent) for (const u of out.userEvents) this.onUserEvent(n.id, u, this.clock)
    this.reschedule(n)
  }

  private sendDatagram(from: string, to: string, bytes: Uint8Array): void {
    this.tap?.(from, to, bytes, this.clock)
    if (this.blocked(from, to)) {
      this.totals.partitioned++
      return
    }
    const copies = this.duplicate > 0 && this.rng() < this.duplicate ? 2 : 1
    for (let i = 0; i < copies; i++) {
      if (this.loss > 0 && this.rng() < this.loss) {
        this.totals.lost++
        continue
      }
      let lat = this.sampleLatency()
      if (this.reorder > 0 && this.rng() < this.reorder) lat += this.rng() * 5 * this.latency.max
      this.push(this.clock + lat, MSG, to, from, bytes, 0)
    }
  }

  private reschedule(n: SimNode): void {
    if (n.crashed) return
    const d = n.swim.nextDeadline()
    if (d === Number.POSITIVE_INFINITY) return
    const at = Math.max(d, this.clock)
    if (at < n.scheduledTick) {
      n.scheduledTick = at
      this.push(at, TICK, n.id, '', undefined, n.gen)
    }
  }

  private process(ev: SimEvent): void {
    if (ev.kind === CALL) {
      ev.fn?.()
      return
    }
    const n = this.nodes.get(ev.to)
    if (!n) return
    if (n.crashed) {
      if (ev.kind === MSG) this.totals.toCrashed++
      return
    }
    switch (ev.kind) {
      case TICK:
        if (ev.gen !== n.gen || ev.time !== n.scheduledTick) return
        n.scheduledTick = Number.POSITIVE_INFINITY
        if (this.clock < n.pausedUntil) return // the RESUME event runs the timers
        n.wakeups++
        this.apply(n, n.swim.tick(this.clock))
        return
      case RESUME:
        if (ev.gen !== n.gen || this.clock < n.pausedUntil) return
        this.resume(n)
        return
      default:
        if (ev.kind === PP_REPLY && ev.gen !== n.gen) return
        if (this.clock < n.pausedUntil) {
          n.pending.push(ev)
          return
        }
        this.deliver(n, ev)
    }
  }

  private resume(n: SimNode): void {
    const pending = n.pending
    n.pending = []
    for (const ev of pending) this.deliver(n, ev)
    n.scheduledTick = Number.POSITIVE_INFINITY
    this.apply(n, n.swim.tick(this.clock))
  }

  private deliver(n: SimNode, ev: SimEvent): void {
    const bytes = ev.bytes!
    if (ev.kind === MSG) {
      this.totals.delivered++
      this.apply(n, n.swim.handleMessage(ev.from, bytes, this.clock))
    } else if (ev.kind === PP_REQ) {
      const res = n.swim.handlePushPull(ev.from, bytes, this.clock)
      this.apply(n, res)
      const requester = this.nodes.get(ev.from)
      if (res.reply && requester && !this.blocked(n.id, ev.from)) {
        this.push(this.clock + this.sampleLatency(), PP_REPLY, ev.from, n.id, res.reply, ev.gen)
      }
    } else if (ev.kind === PP_REPLY) {
      this.apply(n, n.swim.handlePushPullReply(ev.from, bytes, this.clock))
    }
  }
}
