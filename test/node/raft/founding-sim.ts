import pino from 'pino'
import { BootstrapExpect } from '../../../src/node/raft/bootstrap-expect.ts'
import type { RaftMember } from '../../../src/node/raft/components.ts'
import {
  decodeFoundingReply,
  decodeFoundingRequest,
  encodeFoundingReply,
  encodeFoundingRequest,
  type FoundingReply,
  MemoryFoundingRecord,
} from '../../../src/node/raft/founding.ts'
import type { FoundingChannel, FoundingHandler } from '../../../src/node/raft/founding-rpc.ts'
import type { SeededRng } from '../../sim/rng.ts'
import { VirtualClock } from '../../sim/virtual-clock.ts'

/**
 * A simulated founding: agents with fake Raft nodes and gossip views, their BootstrapExpect over an
 * in-memory channel (the real wire format) with loss, duplication and delays, on a virtual clock.
 * Shared by bootstrap-expect.test.ts and founding-proof.test.ts.
 */

const log = pino({ level: 'silent' })

export interface SimFaults {
  /** Probability that a request or a reply is lost (until `healAt`). */
  loss: number
  /** Probability that a request is delivered twice. */
  duplicate: number
  /** Message delay, uniform in [1, maxDelayMs] each way (so replies and requests reorder). */
  maxDelayMs: number
  /** From this time on: no loss, delays up to 50 ms. */
  healAt: number
}

/** One simulated agent: a fake Raft node, its gossip view and its BootstrapExpect. */
export class SimAgent {
  view = new Map<string, number>() // id -> time it becomes alive in this agent's view
  state = false
  written: string[] | undefined
  b?: BootstrapExpect
  readonly record = new MemoryFoundingRecord() // survives restarts, like the file

  /** `token`: its initial management token, when the cluster runs with ACLs on. */
  constructor(
    readonly id: string,
    readonly expect: number | undefined,
    readonly token?: string,
  ) {}
}

export class SimCluster {
  readonly clock = new VirtualClock()
  readonly agents = new Map<string, SimAgent>()
  /** Every founder set written anywhere: the invariant is that it never holds two. */
  readonly writtenSets = new Set<string>()
  /**
   * Founder sets written with their witness lists (founding.ts: writing S needs every member of
   * its witnesses W committed to S). Two sets whose W share an agent break safety; two sets whose
   * W are disjoint are the case founding.ts leaves out (two groups that did not see one common
   * agent when they founded), counted in `disjointFoundings`.
   */
  readonly writtenWitnesses = new Map<string, readonly string[]>()
  /** Two different sets written whose witness lists share an agent: a broken protocol. */
  overlappingFoundings = 0
  disjointFoundings = 0
  private readonly handlers = new Map<string, FoundingHandler>()

  /** `acl`: ACLs on, founders prove their agent's `token` (founding.ts, "Who may found"). */
  constructor(
    readonly rng: SeededRng,
    private readonly faults: SimFaults,
    private readonly eligible: (id: string) => boolean = () => true,
    private readonly acl = false,
  ) {}

  private delay(): number {
    const max = this.clock.now() >= this.faults.healAt ? 50 : this.faults.maxDelayMs
    return 1 + this.rng.int(max)
  }

  private lost(): boolean {
    return this.clock.now() < this.faults.healAt && this.rng.chance(this.faults.loss)
  }

  /** The in-memory channel of `from`: requests and replies cross the wire format. */
  channel(from: string): FoundingChannel {
    return {
      start: async (handler) => {
        this.handlers.set(from, handler)
      },
      stop: async () => {
        this.handlers.delete(from)
      },
      request: (to, req, { signal }) =>
        new Promise<FoundingReply>((resolve, reject) => {
          signal.addEventListener('abort', () => reject(signal.reason), { once: true })
          const bytes = encodeFoundingRequest(req)
          const deliver = (): void => {
            const handler = this.handlers.get(to)
            if (handler === undefined || this.lost()) return
            const reply = encodeFoundingReply(handler(from, decodeFoundingRequest(bytes)))
            if (this.lost()) return
            this.clock.setTimeout(() => {
              if (!signal.aborted) resolve(decodeFoundingReply(reply))
            }, this.delay())
          }
          if (this.lost()) return
          this.clock.setTimeout(deliver, this.delay())
          if (this.rng.chance(this.faults.duplicate)) this.clock.setTimeout(deliver, this.delay())
        }),
    }
  }

  /** Answers founding requests to `id` with `handler` (a hostile peer: no BootstrapExpect). */
  serveAs(id: string, handler: FoundingHandler): void {
    this.handlers.set(id, handler)
  }

  add(id: string, expect: number | undefined, token?: string): SimAgent {
    const a = new SimAgent(id, expect, token)
    this.agents.set(id, a)
    return a
  }

  /** Starts (or restarts, forgetting promises) an agent now. */
  async start(a: SimAgent): Promise<void> {
    await a.b?.stop()
    const node = {
      id: a.id,
      status: () => ({ term: a.state ? 1 : 0, lastIndex: a.state ? 3 : 0 }),
      bootstrap: (voters: readonly string[]) => {
        if (a.state) throw new Error('bootstrap with state')
        a.state = true
        a.written = [...voters]
        const key = voters.join(',')
        const witnesses = a.record.load()?.witnesses ?? []
        for (const [other, theirs] of this.writtenWitnesses) {
          if (other === key) continue
          if (theirs.some((id) => witnesses.includes(id))) this.overlappingFoundings++
          else this.disjointFoundings++
        }
        if (!this.writtenWitnesses.has(key)) this.writtenWitnesses.set(key, witnesses)
        this.writtenSets.add(key)
      },
    }
    const members = {
      members: (): RaftMember[] =>
        [...a.view]
          .filter(([, t]) => t <= this.clock.now())
          .map(([id]) => ({ id, name: id, address: '', status: 'alive' as const })),
    }
    a.b = new BootstrapExpect(
      {
        node,
        members,
        eligible: this.eligible,
        channel: this.channel(a.id),
        record: a.record,
        clock: this.clock,
        log,
        ...(this.acl ? { founderAuth: { initialManagementToken: a.token } } : {}),
      },
      { expect: a.expect, checkMs: 100 },
    )
    await a.b.start()
  }

  /**
   * Makes `a` and every running agent see each other after a random gossip delay; with `blind`,
   * each direction is missed with that probability (views that differ for good).
   */
  meet(a: SimAgent, maxGossipMs: number, blind = 0): void {
    const now = this.clock.now()
    for (const other of this.agents.values()) {
      if (other.b === undefined) continue
      if (other === a || !this.rng.chance(blind)) a.view.set(other.id, now + this.rng.int(maxGossipMs))
      if (other === a || !this.rng.chance(blind)) other.view.set(a.id, now + this.rng.int(maxGossipMs))
    }
    a.view.set(a.id, now)
  }

  /** Whether every two agents' views share an agent: the premise of the safety argument. */
  viewsOverlap(): boolean {
    const all = [...this.agents.values()]
    return all.every((x) => all.every((y) => [...x.view.keys()].some((id) => y.view.has(id))))
  }

  /** Runs the virtual clock `ms` forward, letting the async rounds run between timers. */
  async run(ms: number): Promise<void> {
    const end = this.clock.now() + ms
    for (;;) {
      await new Promise((r) => setImmediate(r))
      if (!this.clock.fireNext(end)) break
    }
    this.clock.setNow(end)
    await new Promise((r) => setImmediate(r))
  }

  async stopAll(): Promise<void> {
    for (const a of this.agents.values()) await a.b?.stop()
  }
}

/** Distinct random peer-id-like names (their sort order is random against start order). */
export function names(rng: SeededRng, n: number): string[] {
  const out = new Set<string>()
  while (out.size < n) out.add(`n${rng.int(1_000_000).toString().padStart(6, '0')}`)
  return [...out]
}
