/**
 * A simulated peermesh cluster for catalog tests: N `Swim` cores in a `SimNetwork` (virtual time,
 * seeded, ed25519-signed records), each node with what `CatalogModule` gives an agent — a local
 * service registry, a check runner and a payload publisher on the simulation's clock, and a
 * `Catalog` fed from that node's gossip events through the production glue (`gossip-glue.ts`).
 */
import { generateKeyPairSync, type KeyObject } from 'node:crypto'
import { join } from 'node:path'
import { makeTempDir, removeTempDir } from '../../temp-dir.ts'
import {
  ed25519Signer,
  ed25519Verifier,
  SimNetwork,
  type SimNetworkOptions,
  type SwimEvent,
} from '../../../src/gossip/index.ts'
import {
  Catalog,
  CheckRunner,
  LocalPayloadPublisher,
  LocalServiceRegistry,
  type NodePayload,
} from '../../../src/node/catalog/index.ts'
import type { Cancel, Clock } from '../../../src/common/clock.ts'
import { applyGossipEvent, catalogMeta, memberUpdateOf } from '../../../src/node/catalog/gossip-glue.ts'

/**
 * A `Clock` on the simulation's virtual time (the network's own event queue, so timers interleave
 * with message delivery). A cancelled timer's event still fires, as a no-op.
 */
export function simClock(sim: SimNetwork): Clock {
  const at = (ms: number, fn: () => void, every: number | undefined): Cancel => {
    const handle = { cancelled: false }
    const arm = (delay: number): void =>
      sim.schedule(sim.now + Math.max(0, delay), () => {
        if (handle.cancelled) return
        if (every !== undefined) arm(every)
        fn()
      })
    arm(ms)
    return () => {
      handle.cancelled = true
    }
  }
  return {
    now: () => sim.now,
    wallNow: () => sim.now,
    setTimeout: (fn, ms) => at(ms, fn, undefined),
    setInterval: (fn, ms) => at(ms, fn, Math.max(1, ms)),
    defer: (fn) => at(0, fn, undefined),
  }
}

/** One simulated agent's catalog side (what `CatalogModule.start` wires up). */
export interface SimCatalogNode {
  id: string
  catalog: Catalog
  registry: LocalServiceRegistry
  checks: CheckRunner
  publisher: LocalPayloadPublisher
  /** Gossip events this node emitted (for assertions on what the core did). */
  events: SwimEvent[]
}

export interface SimCatalogClusterOptions extends Omit<SimNetworkOptions, 'crypto' | 'onEvent'> {
  n: number
}

export class SimCatalogCluster {
  readonly sim: SimNetwork
  readonly ids: string[]
  private readonly nodes = new Map<string, SimCatalogNode>()
  private readonly keys = new Map<string, { publicKey: KeyObject; privateKey: KeyObject }>()
  private readonly dir = makeTempDir('sim-catalog')

  constructor(opts: SimCatalogClusterOptions) {
    const { n, ...simOpts } = opts
    const verifier = ed25519Verifier((id) => this.keys.get(id)?.publicKey)
    this.sim = new SimNetwork({
      ...simOpts,
      crypto: (id) => ({ signer: ed25519Signer(this.keyOf(id).privateKey), verifier }),
      onEvent: (id, e) => {
        const node = this.nodes.get(id)
        if (node === undefined) return
        node.events.push(e)
        applyGossipEvent(node.catalog, e)
      },
    })
    this.ids = Array.from({ length: n }, (_, i) => `n${i}`)
    for (const [i, id] of this.ids.entries()) {
      // As in the agent: gossip starts first, then the catalog module.
      this.sim.join(id, i === 0 ? [] : [this.ids[0]!])
      this.startCatalog(id)
    }
  }

  node(id: string): SimCatalogNode {
    const n = this.nodes.get(id)
    if (n === undefined) throw new Error(`unknown node ${id}`)
    return n
  }

  catalog(id: string): Catalog {
    return this.node(id).catalog
  }

  /** The owner's private key: lets a test sign what the owner once signed (a replay). */
  privateKey(id: string): KeyObject {
    return this.keyOf(id).privateKey
  }

  /** Every node's gossip view is complete and alive. */
  converged(): boolean {
    return this.ids.every((o) => this.ids.every((t) => this.sim.node(o).member(t)?.status === 'alive'))
  }

  /** The agent's process dies: its gossip and its check timers stop. */
  crash(id: string): void {
    this.node(id).publisher.stop()
    this.sim.crash(id)
  }

  /**
   * Runs the simulation until `seen(catalog, id)` holds on every node in `observers` (default:
   * all), checking each catalog whenever it changes. Returns, per node, the virtual ms from now
   * until it first held, or undefined if some node did not get there within `maxMs`.
   */
  propagation(
    seen: (catalog: Catalog, id: string) => boolean,
    opts: { maxMs?: number; observers?: string[] } = {},
  ): Map<string, number> | undefined {
    const observers = opts.observers ?? this.ids
    const t0 = this.sim.now
    const times = new Map<string, number>()
    const offs: (() => void)[] = []
    for (const id of observers) {
      const catalog = this.catalog(id)
      const check = (): void => {
        if (!times.has(id) && seen(catalog, id)) times.set(id, this.sim.now - t0)
      }
      check()
      offs.push(catalog.on('catalog:change', check))
    }
    const done = this.sim.runUntilCondition(() => times.size === observers.length, opts.maxMs ?? 30_000, 5)
    for (const off of offs) off()
    return done === undefined ? undefined : times
  }

  close(): void {
    for (const n of this.nodes.values()) n.publisher.stop()
    removeTempDir(this.dir)
  }

  private keyOf(id: string): { publicKey: KeyObject; privateKey: KeyObject } {
    let k = this.keys.get(id)
    if (k === undefined) {
      k = generateKeyPairSync('ed25519')
      this.keys.set(id, k)
    }
    return k
  }

  /** Mirrors `CatalogModule.start`, with the simulation's clock and network in place of the agent's. */
  private startCatalog(id: string): void {
    const clock = simClock(this.sim)
    const catalog = new Catalog({ clock })
    const registry = LocalServiceRegistry.open({ dataDir: join(this.dir, id), clock })
    const checks = new CheckRunner({ clock })
    const publisher = new LocalPayloadPublisher({ registry, checks })
    this.nodes.set(id, { id, catalog, registry, checks, publisher, events: [] })
    const publish = (payload: NodePayload): void => {
      this.sim.act(id, (swim) => swim.updateLocalRecord({ meta: catalogMeta(payload) }))
      catalog.applyMember(memberUpdateOf(this.sim.node(id).member(id)!))
    }
    for (const m of this.sim.node(id).members()) catalog.applyMember(memberUpdateOf(m))
    publisher.on('payload:change', publish)
    publisher.start()
    publish(publisher.payload())
  }
}
