import type { Clock } from '../common/clock.ts'
/**
 * The endpoints of one upstream as seen by one outbound listener: the healthy set from the
 * `EndpointSource`, with per-endpoint load (outstanding connections or requests) and outlier state,
 * and the choice of an endpoint for the next connection or request (split, then P2C over the
 * endpoints that are not ejected).
 *
 * An endpoint that leaves the healthy set is dropped from the choice at once; its record lives
 * on, marked `removed`, until its last outstanding connection or request ends.
 */
import { type Loaded, p2cPick, weightedPick } from './balancer.ts'
import type { Http1Pool } from './http1-client.ts'
import {
  isEjected,
  newOutlierState,
  type OutlierConfig,
  type OutlierState,
  recordFailure,
  recordSuccess,
} from './outlier.ts'
import { pickSplit, type SplitConfig } from './split.ts'
import { type EndpointSelector, hash32, type LoadBalancerConfig } from './traffic.ts'
import type { Endpoint, EndpointSource, Unsubscribe } from './types.ts'

export interface EndpointRecord extends Loaded {
  readonly endpoint: Endpoint
  /** `id@address:port`: an instance that moves is a new endpoint. */
  readonly key: string
  readonly weight: number
  outstanding: number
  readonly outlier: OutlierState
  /** Left the healthy set: no new work; dropped when `outstanding` reaches 0. */
  removed: boolean
  /** HTTP mode: this endpoint's keep-alive connection pool. */
  connections: Http1Pool | undefined
  /** The pool the record belongs to (failure reports go to it). */
  readonly pool: EndpointPool
}

export interface EndpointPoolInit {
  source: EndpointSource
  outlier: OutlierConfig
  clock: Clock
  /** Uniform [0, 1). */
  rng: () => number
  /** Called for every new endpoint record (HTTP mode attaches its connection pool here). */
  onAdded?: (record: EndpointRecord) => void
  /** Called once a removed record has no outstanding work (HTTP mode closes its connection pool). */
  onRetired?: (record: EndpointRecord) => void
  onEjected?: (record: EndpointRecord, untilMs: number) => void
}

export class EndpointPool {
  private records: EndpointRecord[] = []
  private byKey = new Map<string, EndpointRecord>()
  private split: SplitConfig | undefined
  /** Per split entry, the records in its subset. */
  private subsets: EndpointRecord[][] = []
  private unsubscribe: Unsubscribe | undefined
  /** Records per subset selector, rebuilt lazily after each change of the healthy set. */
  private bySelector = new Map<EndpointSelector, EndpointRecord[]>()
  private roundRobin = 0
  private outlier: OutlierConfig
  // Scratch state of the current pick, read by `eligible` (one closure for the pool's lifetime).
  private pickNow = 0
  private pickTried: readonly EndpointRecord[] | undefined
  private readonly eligible = (r: EndpointRecord): boolean =>
    !isEjected(r.outlier, this.pickNow) && (this.pickTried === undefined || !this.pickTried.includes(r))

  constructor(private readonly init: EndpointPoolInit) {
    this.outlier = init.outlier
  }

  /** Replaces the outlier settings; endpoints keep their state. */
  setOutlier(config: OutlierConfig): void {
    this.outlier = config
  }

  start(): void {
    if (this.unsubscribe) return
    this.unsubscribe = this.init.source.on('endpoints:change', (list) => this.update(list))
    this.update(this.init.source.current())
  }

  stop(): void {
    this.unsubscribe?.()
    this.unsubscribe = undefined
    for (const r of this.byKey.values()) {
      r.removed = true
      this.init.onRetired?.(r)
    }
    this.byKey.clear()
    this.records = []
    this.subsets = []
  }

  /** Endpoints that may receive new work (ejected ones included). */
  get current(): readonly EndpointRecord[] {
    return this.records
  }

  setSplit(split: SplitConfig | undefined): void {
    this.split = split && split.length > 0 ? split : undefined
    this.rebuildSubsets()
  }

  /**
   * The endpoint for the next connection or request: a split subset chosen by weight (falling
   * back to all endpoints when it has none usable), then P2C among the endpoints that are not
   * ejected and not in `tried` — or, when every usable endpoint was tried, among all of them.
   */
  pick(tried?: readonly EndpointRecord[], retryTried = true): EndpointRecord | undefined {
    this.pickNow = this.init.clock.now()
    const rng = this.init.rng
    let list: readonly EndpointRecord[] = this.records
    if (this.split !== undefined) {
      const subset = this.subsets[pickSplit(this.split, rng())]
      if (subset !== undefined && subset.length > 0) list = subset
    }
    let chosen = this.choose(list, tried, rng, retryTried)
    if (chosen === undefined && list !== this.records)
      chosen = this.choose(this.records, tried, rng, retryTried)
    return chosen
  }

  /**
   * The endpoint for the next request to a target: among the instances `select` accepts (all
   * when undefined; when none and `lenient`, all), by `lb` — least-request (P2C) by default,
   * round robin, weighted random, or consistent hashing of `hashKey` (rendezvous hashing, so
   * a key keeps its endpoint while that endpoint stays) — skipping ejected and `tried` ones
   * while others remain.
   */
  pickFrom(
    select: EndpointSelector | undefined,
    lenient: boolean,
    tried: readonly EndpointRecord[] | undefined,
    lb: LoadBalancerConfig | undefined,
    hashKey: string | undefined,
    retryTried = true,
  ): EndpointRecord | undefined {
    this.pickNow = this.init.clock.now()
    let list = this.records
    if (select !== undefined) {
      let subset = this.bySelector.get(select)
      if (subset === undefined) {
        // Each new policy brings new selectors: keep the cache from growing without bound.
        if (this.bySelector.size >= 256) this.bySelector.clear()
        subset = this.records.filter((r) => select(r.endpoint))
        this.bySelector.set(select, subset)
      }
      list = subset.length === 0 && lenient ? this.records : subset
    }
    const chosen = this.pickIn(list, tried, lb, hashKey, retryTried)
    // A tag subset (lenient) none of whose instances is usable now (all tried, ejected or gone)
    // lets the whole service serve, as an empty one does: a retry after its only instance died
    // goes to another instance instead of failing.
    if (chosen === undefined && lenient && list !== this.records)
      return this.pickIn(this.records, tried, lb, hashKey, retryTried)
    return chosen
  }

  private pickIn(
    list: readonly EndpointRecord[],
    tried: readonly EndpointRecord[] | undefined,
    lb: LoadBalancerConfig | undefined,
    hashKey: string | undefined,
    retryTried: boolean,
  ): EndpointRecord | undefined {
    const policy = lb?.policy ?? 'least_request'
    if (policy === 'least_request') return this.choose(list, tried, this.init.rng, retryTried)
    this.pickTried = tried !== undefined && tried.length > 0 ? tried : undefined
    let chosen = this.pickBy(list, policy, hashKey)
    if (chosen === undefined && this.pickTried !== undefined && retryTried) {
      this.pickTried = undefined
      chosen = this.pickBy(list, policy, hashKey)
    }
    this.pickTried = undefined
    return chosen
  }

  private pickBy(
    list: readonly EndpointRecord[],
    policy: LoadBalancerConfig['policy'],
    hashKey: string | undefined,
  ): EndpointRecord | undefined {
    if ((policy === 'ring_hash' || policy === 'maglev') && hashKey !== undefined) {
      let best: EndpointRecord | undefined
      let bestScore = Number.NEGATIVE_INFINITY
      for (const r of list) {
        if (!(r.weight > 0) || !this.eligible(r)) continue
        // Weighted rendezvous hashing: -w / ln(u), u uniform in (0, 1) from the key and endpoint.
        const u = (hash32(`${hashKey}\u0000${r.key}`) + 1) / 4294967297
        const score = -r.weight / Math.log(u)
        if (score > bestScore) {
          bestScore = score
          best = r
        }
      }
      return best
    }
    if (policy === 'round_robin') {
      const n = list.length
      for (let i = 0; i < n; i++) {
        const r = list[(this.roundRobin + i) % n]!
        if (r.weight > 0 && this.eligible(r)) {
          this.roundRobin = (this.roundRobin + i + 1) % n
          return r
        }
      }
      return undefined
    }
    if (policy === 'random') return weightedPick(list, this.init.rng(), this.eligible)
    return p2cPick(list, this.init.rng(), this.init.rng(), this.eligible)
  }

  private choose(
    list: readonly EndpointRecord[],
    tried: readonly EndpointRecord[] | undefined,
    rng: () => number,
    retryTried: boolean,
  ): EndpointRecord | undefined {
    this.pickTried = tried !== undefined && tried.length > 0 ? tried : undefined
    let chosen = p2cPick(list, rng(), rng(), this.eligible)
    if (chosen === undefined && this.pickTried !== undefined && retryTried) {
      this.pickTried = undefined
      chosen = p2cPick(list, rng(), rng(), this.eligible)
    }
    this.pickTried = undefined
    return chosen
  }

  acquire(record: EndpointRecord): void {
    record.outstanding++
  }

  release(record: EndpointRecord): void {
    record.outstanding--
    if (record.removed && record.outstanding <= 0) this.init.onRetired?.(record)
  }

  reportSuccess(record: EndpointRecord): void {
    recordSuccess(record.outlier, this.init.clock.now(), this.outlier)
  }

  /** Records a failure; returns true when it ejected the endpoint. */
  reportFailure(record: EndpointRecord): boolean {
    if (record.removed) return false
    const now = this.init.clock.now()
    let ejected = 0
    for (const r of this.records) if (isEjected(r.outlier, now)) ejected++
    const didEject = recordFailure(record.outlier, now, this.outlier, ejected, this.records.length)
    if (didEject) this.init.onEjected?.(record, record.outlier.ejectedUntil)
    return didEject
  }

  /** True while the endpoint is ejected. */
  isEjected(record: EndpointRecord): boolean {
    return isEjected(record.outlier, this.init.clock.now())
  }

  private update(list: readonly Endpoint[]): void {
    const next = new Map<string, EndpointRecord>()
    for (const endpoint of list) {
      if (!(endpoint.weight > 0)) continue
      const key = `${endpoint.id}@${endpoint.address}:${endpoint.port}`
      if (next.has(key)) continue
      const old = this.byKey.get(key)
      if (
        old !== undefined &&
        old.weight === endpoint.weight &&
        old.endpoint.passing === endpoint.passing &&
        sameTags(old.endpoint.tags, endpoint.tags) &&
        sameMeta(old.endpoint.meta, endpoint.meta)
      ) {
        next.set(key, old)
        continue
      }
      const record: EndpointRecord = {
        endpoint: {
          ...endpoint,
          tags: [...endpoint.tags],
          ...(endpoint.meta ? { meta: { ...endpoint.meta } } : {}),
        },
        key,
        weight: endpoint.weight,
        outstanding: 0,
        // A changed weight or tag set keeps the endpoint's outlier history.
        outlier: old?.outlier ?? newOutlierState(),
        removed: false,
        connections: undefined,
        pool: this,
      }
      this.init.onAdded?.(record)
      next.set(key, record)
    }
    for (const [key, old] of this.byKey) {
      if (next.get(key) === old) continue
      old.removed = true
      if (old.outstanding <= 0) this.init.onRetired?.(old)
    }
    this.byKey = next
    this.records = [...next.values()]
    this.bySelector.clear()
    this.rebuildSubsets()
  }

  private rebuildSubsets(): void {
    this.subsets = (this.split ?? []).map((e) =>
      this.records.filter((r) => r.endpoint.tags.includes(e.subset)),
    )
  }
}

function sameTags(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((t, i) => t === b[i])
}

function sameMeta(
  a: Readonly<Record<string, string>> | undefined,
  b: Readonly<Record<string, string>> | undefined,
): boolean {
  if (a === b) return true
  const ka = Object.keys(a ?? {})
  if (ka.length !== Object.keys(b ?? {}).length) return false
  return ka.every((k) => a![k] === b?.[k])
}
