import { isIP } from 'node:net'
import { ChangeIndex } from './change-index.ts'
import { type AnnouncedService, decodeNodePayload } from './node-payload.ts'
import type { CheckStatus } from './service-definition.ts'
import { type Clock, systemClock } from '../../common/clock.ts'
import { TypedEmitter, type Unsubscribe } from '../../common/events.ts'

export type MemberStatus = 'alive' | 'suspect' | 'dead' | 'left'

/** What the gossip layer reports about a member (the local node included). */
export interface MemberUpdate {
  /** Member id (peer id). */
  id: string
  name: string
  /** The member's address: a multiaddr (`/ip4/10.0.0.5/tcp/4001/p2p/...`) or a bare IP / host. */
  address: string
  status: MemberStatus
  /** Record version; the owner bumps it on every change of its record. */
  version: number
  /** The record's `meta[CATALOG_META_KEY]`, unvalidated (undefined: no services). */
  payload: unknown
}

export interface ApplyResult {
  /** The catalog's view changed (and `index` was bumped). */
  changed: boolean
  /** The update was older than what the catalog holds and was ignored. */
  stale?: true
  /** The payload was invalid and treated as "no services"; why. */
  rejected?: string
}

export interface NodeRef {
  name: string
  peerId: string
  /** IP or host name derived from the member address. */
  address: string
}

export interface HealthCheckView {
  node: string
  checkId: string
  name: string
  status: CheckStatus
  /** Empty for remote checks: only statuses travel in gossip. */
  output: string
  serviceId: string
  serviceName: string
}

export interface InstanceService {
  id: string
  name: string
  /** The service's own address, or the node's. */
  address: string
  port: number
  tags: string[]
  meta: Record<string, string>
  weights: { passing: number; warning: number }
  sidecar?: { port: number; protocol: 'tcp' | 'http' }
}

/** One service instance with its health, shaped like a Consul `/v1/health/service` entry. */
export interface HealthEntry {
  node: NodeRef
  service: InstanceService
  /** The node's gossip health check first, then the service's checks. */
  checks: HealthCheckView[]
  /** The worst of `checks`. */
  status: CheckStatus
}

/** Id of the synthetic per-node check that reflects gossip health: Consul's, which tools look for. */
export const NODE_CHECK_ID = 'serfHealth'
/** Its name, as Consul names it. */
export const NODE_CHECK_NAME = 'Serf Health Status'

export interface CatalogEvents {
  /** A change a query can see; the new index. */
  'catalog:change': { index: number }
  /** A member's payload was invalid and ignored. */
  'payload:reject': { id: string; reason: string }
}

export interface CatalogInit {
  /** For blocking-query timeouts. */
  clock?: Clock
  /**
   * Whether member `peerId` may publish an instance of `service` (issue #12: service identity is
   * granted); instances it may not are ignored: not listed, not resolved, not routed to. Asked
   * again on `refilter()`. Absent: every instance counts.
   */
  entitled?: (peerId: string, service: string) => boolean
}

/** An instance a member announces but may not publish (see `CatalogInit.entitled`). */
export interface IgnoredInstance {
  peerId: string
  node: string
  serviceId: string
  service: string
}

interface NodeEntry {
  id: string
  name: string
  address: string
  host: string
  status: MemberStatus
  version: number
  /** What the member's record announces (none once it left). */
  announced: AnnouncedService[]
  /** The announced instances it may publish: what queries see. */
  services: AnnouncedService[]
  /** JSON of everything a query can see of this node: compared to detect real changes. */
  view: string
}

/**
 * The cluster-wide service catalog, built from gossip member updates. Each node owns its
 * entries; the catalog only believes the newest version of a node's record, makes every
 * instance of a `dead` node critical at once (a `suspect` node is still trusted), and drops the
 * instances of a node that `left` or was reaped. `index` rises only on a change a query can see;
 * `waitForChange` serves blocking queries. Emits `catalog:change` with the new index and
 * `payload:reject` when a member's payload is invalid.
 */
export class Catalog {
  private readonly events = new TypedEmitter<CatalogEvents>()
  private readonly nodes = new Map<string, NodeEntry>()
  private readonly changes: ChangeIndex
  /** Per service name: the index of the last change a query on that service could see. */
  private readonly serviceIndexes = new Map<string, number>()
  private readonly clock: Clock
  private readonly entitled: ((peerId: string, service: string) => boolean) | undefined

  constructor(init: CatalogInit = {}) {
    this.clock = init.clock ?? systemClock
    this.changes = new ChangeIndex(this.clock)
    this.entitled = init.entitled
  }

  on<K extends keyof CatalogEvents>(type: K, listener: (detail: CatalogEvents[K]) => void): Unsubscribe {
    return this.events.on(type, listener)
  }

  get index(): number {
    return this.changes.current
  }

  /**
   * Applies a member's state. An update with an older version than the one held is ignored;
   * one with the same version may change the status (alive -> dead) but not the services.
   */
  applyMember(u: MemberUpdate): ApplyResult {
    const old = this.nodes.get(u.id)
    if (old !== undefined && u.version < old.version) return { changed: false, stale: true }
    const result: ApplyResult = { changed: false }
    let services = old?.announced ?? []
    if (old === undefined || u.version > old.version) {
      const decoded = decodeNodePayload(u.payload)
      if (decoded.ok) services = decoded.services
      else {
        services = []
        result.rejected = decoded.reason
        this.events.emit('payload:reject', { id: u.id, reason: decoded.reason })
      }
    }
    const entry: NodeEntry = {
      id: u.id,
      name: u.name,
      address: u.address,
      host: hostOf(u.address),
      status: u.status,
      version: u.version,
      announced: u.status === 'left' ? [] : services,
      services: [],
      view: '',
    }
    entry.services = this.published(entry)
    entry.view = viewOf(entry)
    this.nodes.set(u.id, entry)
    if (old?.view !== entry.view) {
      result.changed = true
      this.bump(changedServices(old, entry))
    }
    return result
  }

  /**
   * Asks `entitled` again for every instance (the ACL state changed: a grant arrived, a token was
   * deleted). Returns whether anything a query sees changed (the index was then bumped).
   */
  refilter(): boolean {
    const names = new Set<string>()
    for (const entry of this.nodes.values()) {
      const next = this.published(entry)
      if (sameItems(next, entry.services)) continue
      for (const s of [...next, ...entry.services]) names.add(s.name)
      entry.services = next
      entry.view = viewOf(entry)
    }
    if (names.size > 0) this.bump(names)
    return names.size > 0
  }

  /** Instances members announce but may not publish, by node name then service id. */
  ignoredInstances(): IgnoredInstance[] {
    const out: IgnoredInstance[] = []
    for (const n of this.visibleNodes()) {
      if (n.services.length === n.announced.length) continue
      const shown = new Set(n.services)
      for (const s of n.announced) {
        if (!shown.has(s)) out.push({ peerId: n.id, node: n.name, serviceId: s.id, service: s.name })
      }
    }
    return out
  }

  private published(entry: NodeEntry): AnnouncedService[] {
    const entitled = this.entitled
    if (entitled === undefined) return entry.announced
    return entry.announced.filter((s) => entitled(entry.id, s.name))
  }

  /** Forgets a member entirely (gossip reaped it). Returns whether anything changed. */
  removeMember(id: string): boolean {
    const old = this.nodes.get(id)
    if (old === undefined) return false
    this.nodes.delete(id)
    if (old.status !== 'left') this.bump(new Set(old.services.map((s) => s.name)))
    return old.status !== 'left'
  }

  /**
   * Resolves with the index once it is above `afterIndex`, or after `waitMs`, or when `signal`
   * aborts (never rejects). See `ChangeIndex.wait`.
   */
  waitForChange(afterIndex: number, waitMs: number, signal?: AbortSignal): Promise<number> {
    return this.changes.wait(afterIndex, waitMs, signal)
  }

  /**
   * The index of the last change to what a query on service `name` returns (its instances, their
   * health, their nodes): what `X-Consul-Index` carries for it. 1 for a service never seen.
   */
  serviceIndex(name: string): number {
    return this.serviceIndexes.get(name) ?? 1
  }

  /**
   * `waitForChange` for one service: resolves once `serviceIndex(name)` differs from `afterIndex`,
   * after `waitMs`, or when `signal` aborts; changes to other services do not end the wait.
   */
  async waitForService(
    name: string,
    afterIndex: number,
    waitMs: number,
    signal?: AbortSignal,
  ): Promise<number> {
    const deadline = this.clock.now() + waitMs
    for (;;) {
      const current = this.serviceIndex(name)
      const left = deadline - this.clock.now()
      if (current !== afterIndex || left <= 0 || signal?.aborted === true) return current
      await this.changes.wait(this.changes.current, left, signal)
    }
  }

  /** Blocking queries currently waiting (for metrics). */
  get blockedQueries(): number {
    return this.changes.waiting
  }

  /** Every service name with the union of its instances' tags (`GET /v1/catalog/services`). */
  services(): Record<string, string[]> {
    const tags = new Map<string, Set<string>>()
    for (const n of this.visibleNodes()) {
      for (const s of n.services) {
        let set = tags.get(s.name)
        if (set === undefined) {
          set = new Set()
          tags.set(s.name, set)
        }
        for (const t of s.tags) set.add(t)
      }
    }
    const out: Record<string, string[]> = {}
    for (const name of [...tags.keys()].sort()) out[name] = [...tags.get(name)!].sort()
    return out
  }

  /** Whether any node (dead ones included) registers a service with this name. */
  hasService(name: string): boolean {
    for (const n of this.visibleNodes()) if (n.services.some((s) => s.name === name)) return true
    return false
  }

  /**
   * Instances of `name` with their health, sorted by node name then service id. `tag` keeps
   * those with the tag; `minStatus` those at least that healthy ('passing': passing only,
   * 'warning': passing or warning).
   */
  health(name: string, filter: { tag?: string; minStatus?: CheckStatus } = {}): HealthEntry[] {
    const rank = filter.minStatus === undefined ? 2 : STATUS_RANK[filter.minStatus]
    const out: HealthEntry[] = []
    for (const n of this.visibleNodes()) {
      for (const s of n.services) {
        if (s.name !== name || (filter.tag !== undefined && !s.tags.includes(filter.tag))) continue
        const e = entryOf(n, s)
        if (STATUS_RANK[e.status] <= rank) out.push(e)
      }
    }
    return out
  }

  /** Every instance with its health, sorted by node name then service id (`/v1/catalog/node`, `/v1/health/state`). */
  entries(): HealthEntry[] {
    return this.visibleNodes().flatMap((n) => n.services.map((s) => entryOf(n, s)))
  }

  /** The node's gossip health check (Consul's `serfHealth`), by node name; undefined if unknown. */
  nodeCheck(nodeName: string): HealthCheckView | undefined {
    const n = this.visibleNodes().find((x) => x.name === nodeName)
    return n === undefined ? undefined : nodeCheckOf(n)
  }

  /** Members the catalog knows (left ones excluded), sorted by name. */
  members(): (NodeRef & { status: MemberStatus; version: number; services: number })[] {
    return this.visibleNodes().map((n) => ({
      name: n.name,
      peerId: n.id,
      address: n.host,
      status: n.status,
      version: n.version,
      services: n.services.length,
    }))
  }

  private visibleNodes(): NodeEntry[] {
    return [...this.nodes.values()]
      .filter((n) => n.status !== 'left')
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : a.id < b.id ? -1 : 1))
  }

  /** Records a change to the services `names` (their per-service indexes move with it). */
  private bump(names: ReadonlySet<string>): void {
    const index = this.changes.current + 1
    for (const n of names) this.serviceIndexes.set(n, index)
    this.changes.bump()
    this.events.emit('catalog:change', { index })
  }
}

/** Service names whose instances, health or node a query would see differently after a member update. */
function changedServices(old: NodeEntry | undefined, next: NodeEntry): Set<string> {
  const before = old?.status === 'left' || old === undefined ? [] : old.services
  const after = next.status === 'left' ? [] : next.services
  const nodeChanged =
    old === undefined ||
    old.name !== next.name ||
    old.host !== next.host ||
    (old.status === 'dead') !== (next.status === 'dead')
  const names = new Set<string>()
  const key = (list: readonly AnnouncedService[], name: string) =>
    JSON.stringify(list.filter((s) => s.name === name))
  for (const s of [...before, ...after]) {
    if (names.has(s.name)) continue
    if (nodeChanged || key(before, s.name) !== key(after, s.name)) names.add(s.name)
  }
  return names
}

function sameItems<T>(a: readonly T[], b: readonly T[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i])
}

const STATUS_RANK: Record<CheckStatus, number> = { passing: 0, warning: 1, critical: 2 }

function nodeCheckOf(n: NodeEntry): HealthCheckView {
  const dead = n.status === 'dead'
  return {
    node: n.name,
    checkId: NODE_CHECK_ID,
    name: NODE_CHECK_NAME,
    status: dead ? 'critical' : 'passing',
    // Consul's outputs.
    output: dead ? 'Agent not live or unreachable' : 'Agent alive and reachable',
    serviceId: '',
    serviceName: '',
  }
}

function entryOf(n: NodeEntry, s: AnnouncedService): HealthEntry {
  const nodeCheck = nodeCheckOf(n)
  const checks = [
    nodeCheck,
    ...s.checks.map(
      (c): HealthCheckView => ({
        node: n.name,
        checkId: c.id,
        name: c.name,
        status: c.status,
        output: '',
        serviceId: s.id,
        serviceName: s.name,
      }),
    ),
  ]
  let worst: CheckStatus = 'passing'
  for (const c of checks) if (STATUS_RANK[c.status] > STATUS_RANK[worst]) worst = c.status
  const service: InstanceService = {
    id: s.id,
    name: s.name,
    // An app address only its own node can reach (loopback, unspecified) means "at my node".
    address: s.address === undefined || nodeLocalAddress(s.address) ? n.host : s.address,
    port: s.port,
    tags: [...s.tags],
    meta: { ...s.meta },
    weights: { ...s.weights },
  }
  if (s.sidecar !== undefined) service.sidecar = { ...s.sidecar }
  return { node: { name: n.name, peerId: n.id, address: n.host }, service, checks, status: worst }
}

/** Whether an address means nothing off its own node: loopback, unspecified or `localhost`. */
export function nodeLocalAddress(address: string): boolean {
  const a = address.toLowerCase()
  return (
    a.startsWith('127.') ||
    a === '::1' ||
    a === '0.0.0.0' ||
    a === '::' ||
    a === 'localhost' ||
    a.endsWith('.localhost')
  )
}

function viewOf(n: NodeEntry): string {
  if (n.status === 'left') return 'left'
  // suspect looks like alive: only `dead` changes what queries return.
  return JSON.stringify([n.name, n.host, n.status === 'dead', n.services])
}

/**
 * The IP or host name in a member address: `/ip4/10.0.0.5/tcp/4001/p2p/...` -> `10.0.0.5`,
 * `/dns4/db.local/...` -> `db.local`; a bare IP or host is returned as is.
 */
export function hostOf(address: string): string {
  const m = /^\/(?:ip4|ip6|dns|dns4|dns6)\/([^/]+)/.exec(address)
  if (m !== null) return m[1]!
  if (isIP(address) !== 0) return address
  const hp = /^\[?([^\]]+?)\]?:\d+$/.exec(address)
  return hp !== null ? hp[1]! : address
}
