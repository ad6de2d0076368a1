import type { Logger } from 'pino'
import type { Cancel, Clock } from '../../common/clock.ts'
import type { Unsubscribe } from '../../common/events.ts'
import type { KvState } from '../../raft/policy/kv-state.ts'
import type { PolicyCommand, PolicyResult } from '../../raft/policy/policy-commands.ts'
import type { AgentContext, AgentModule } from '../agent/agent.ts'
import type { NodeHealth, KvApi } from '../api/kv-http.ts'
import { registerKvRoutes } from '../api/kv-routes.ts'
import { registerSessionRoutes } from '../api/session-routes.ts'
import { registerTxnRoutes } from '../api/txn-routes.ts'
import type { Catalog } from '../catalog/catalog.ts'
import type { CatalogModule } from '../catalog/catalog-module.ts'
import type { RaftModule } from '../raft/raft-module.ts'
import { PolicyIndexWaiters } from '../connect/policy-waiters.ts'
import { sessionsToInvalidate } from './session-invalidation.ts'

/** What the KV module uses of the Raft module. */
export interface KvRaft {
  readonly store: {
    readonly kv: KvState
    readonly index: number
    onChange(listener: (index: number) => void): () => void
  }
  write(
    cmd: PolicyCommand,
    options: { signal: AbortSignal; token?: string },
  ): Promise<{ index: number; result: PolicyResult }>
  linearizableRead(options: { signal: AbortSignal }): Promise<unknown>
  leaderId(): string | undefined
  /** Whether this agent leads now. */
  isLeader(): boolean
}

export interface KvModuleSettings {
  /** How often the leader looks for sessions to invalidate. 1 s: a TTL or a failed node is seen within a second. */
  invalidateEveryMs: number
  /**
   * How long an agent must have led before a session's node missing from its catalog counts as
   * gone: a new leader's catalog is still learning the members. 30 s: several gossip rounds.
   */
  missingNodeGraceMs: number
  /** Time an invalidation write may take before it is tried again on the next round. */
  writeTimeoutMs: number
}

export const KV_MODULE_DEFAULTS: KvModuleSettings = {
  invalidateEveryMs: 1000,
  missingNodeGraceMs: 30_000,
  writeTimeoutMs: 5000,
}

/**
 * Consul's KV store, sessions and transactions on the HTTP API (kv-routes.ts, session-routes.ts,
 * txn-routes.ts) over the replicated state in the policy store (raft/policy/kv-state.ts).
 *
 * On the Raft leader it also invalidates sessions (session-invalidation.ts): past their TTL, on a
 * node that failed in gossip, or with a critical health check. Only the leader proposes these, so
 * each invalidation is committed once; a new leader picks up where the old one stopped (the TTLs
 * are in the replicated state).
 */
export class KvModule implements AgentModule, KvApi {
  readonly name = 'kv'
  private ctx?: AgentContext
  private log?: Logger
  private waiters?: PolicyIndexWaiters
  private readonly subscriptions: Unsubscribe[] = []
  /** The invalidation timer: it runs only while the store holds a session (see `keepInvalidating`). */
  private stopInterval?: Cancel
  /** The sessions' index when `keepInvalidating` last looked. */
  private sessionsSeen = -1
  private stopped = false
  private readonly inFlight = new Set<string>()
  private leaderSince: number | undefined
  /** The wall clock when this agent began leading (session TTLs count from here at the earliest). */
  private leaderSinceWall = 0
  private readonly settings: KvModuleSettings

  constructor(
    private readonly raft: KvRaft,
    private readonly catalog: () => Catalog,
    settings: Partial<KvModuleSettings> = {},
  ) {
    this.settings = { ...KV_MODULE_DEFAULTS, ...settings }
  }

  start(ctx: AgentContext): void {
    this.ctx = ctx
    this.log = ctx.log.child({ component: 'kv' })
    const waiters = new PolicyIndexWaiters(ctx.clock)
    this.waiters = waiters
    waiters.advance(this.raft.store.index)
    this.subscriptions.push(
      this.raft.store.onChange((i) => {
        waiters.advance(i)
        this.keepInvalidating()
      }),
    )
    registerKvRoutes(ctx.http, this)
    registerSessionRoutes(ctx.http, this)
    registerTxnRoutes(ctx.http, this)
    this.keepInvalidating()
  }

  stop(): void {
    this.stopInterval?.()
    this.stopInterval = undefined
    this.stopped = true
    for (const off of this.subscriptions.splice(0)) off()
    this.waiters?.close()
  }

  private get clock(): Clock {
    if (this.ctx === undefined) throw new Error('kv module not started')
    return this.ctx.clock
  }

  // ---- KvApi ------------------------------------------------------------------------------------

  get kv(): KvState {
    return this.raft.store.kv
  }

  get stateIndex(): number {
    return this.raft.store.index
  }

  get nodeName(): string {
    return this.ctx?.config.name ?? ''
  }

  waitForChange(after: number, waitMs: number, signal?: AbortSignal): Promise<number> {
    if (this.waiters === undefined) return Promise.resolve(this.stateIndex)
    return this.waiters.wait(after, waitMs, signal)
  }

  write(
    cmd: PolicyCommand,
    options: { signal: AbortSignal; token?: string },
  ): Promise<{ index: number; result: PolicyResult }> {
    return this.raft.write(cmd, options)
  }

  linearizableRead(options: { signal: AbortSignal }): Promise<unknown> {
    return this.raft.linearizableRead(options)
  }

  knownLeader(): boolean {
    return this.raft.leaderId() !== undefined
  }

  wallNow(): number {
    return Math.floor(this.clock.wallNow())
  }

  nodeHealth(node: string): NodeHealth | undefined {
    return nodeHealthOf(this.catalog(), node)
  }

  // ---- session invalidation (leader) ---------------------------------------------------------------

  /**
   * Runs the invalidation timer while the store holds a session and stops it when the last one is
   * gone: an agent without sessions (most) is not woken every `invalidateEveryMs` for nothing. A
   * stopped timer forgets when this agent began leading, so a later one counts from its first round
   * (later than the real start: a new session's TTL and the missing-node grace only get longer).
   */
  private keepInvalidating(): void {
    const ctx = this.ctx
    if (ctx === undefined || this.stopped) return
    const kv = this.kv
    if (kv.sessionIndex === this.sessionsSeen) return
    this.sessionsSeen = kv.sessionIndex
    const any = kv.listSessions().length > 0
    if (any && this.stopInterval === undefined)
      this.stopInterval = ctx.clock.setInterval(() => this.invalidate(), this.settings.invalidateEveryMs)
    else if (!any && this.stopInterval !== undefined) {
      this.stopInterval()
      this.stopInterval = undefined
      this.leaderSince = undefined
    }
  }

  /** Whether the invalidation timer runs (tests). */
  get invalidating(): boolean {
    return this.stopInterval !== undefined
  }

  private invalidate(): void {
    if (!this.raft.isLeader()) {
      this.leaderSince = undefined
      return
    }
    const now = this.wallNow()
    if (this.leaderSince === undefined) {
      this.leaderSince = this.clock.now()
      this.leaderSinceWall = now
    }
    const settled = this.clock.now() - this.leaderSince >= this.settings.missingNodeGraceMs
    const sessions = this.kv.listSessions()
    if (sessions.length === 0) return
    const health = catalogHealth(this.catalog())
    const due = sessionsToInvalidate(sessions, now, (n) => health.get(n), settled, this.leaderSinceWall)
    for (const { session, reason } of due) {
      if (this.inFlight.has(session.id)) continue
      this.inFlight.add(session.id)
      const signal = AbortSignal.timeout(this.settings.writeTimeoutMs)
      this.raft
        .write({ op: 'session.destroy', id: session.id, node: session.node, now, reason }, { signal })
        .then(
          (out) => {
            if (out.result.ok)
              this.log?.info({ session: session.id, node: session.node, reason }, 'session invalidated')
          },
          (err: unknown) =>
            this.log?.debug({ err, session: session.id }, 'session invalidation not committed; next round'),
        )
        .finally(() => this.inFlight.delete(session.id))
    }
  }
}

/**
 * Every node's health in `catalog`, in one pass over it: gossip status (suspect still counts as
 * alive) and the status of each of its checks by id.
 */
export function catalogHealth(catalog: Catalog): Map<string, NodeHealth> {
  const out = new Map<string, NodeHealth>()
  for (const m of catalog.members())
    out.set(m.name, { alive: m.status === 'alive' || m.status === 'suspect', checks: new Map() })
  for (const svc of Object.keys(catalog.services()))
    for (const e of catalog.health(svc)) {
      const h = out.get(e.node.name)
      if (h !== undefined) for (const c of e.checks) h.checks.set(c.checkId, c.status)
    }
  return out
}

/** One node's health in `catalog` (see `catalogHealth`), or undefined if it does not know the node. */
export function nodeHealthOf(catalog: Catalog, node: string): NodeHealth | undefined {
  const m = catalog.members().find((x) => x.name === node)
  if (m === undefined) return undefined
  const checks = new Map<string, string>()
  if (m.services > 0)
    for (const svc of Object.keys(catalog.services()))
      for (const e of catalog.health(svc))
        if (e.node.name === node) for (const c of e.checks) checks.set(c.checkId, c.status)
  return { alive: m.status === 'alive' || m.status === 'suspect', checks }
}

/** The KV module of an agent, over its Raft and catalog modules. */
export function kvModuleOf(raft: RaftModule, catalog: CatalogModule): KvModule {
  return new KvModule(
    {
      store: raft.store,
      write: (cmd, options) => raft.write(cmd, options),
      linearizableRead: (options) => raft.linearizableRead(options),
      leaderId: () => raft.leaderId(),
      isLeader: () => raft.raft?.isLeader() === true,
    },
    () => catalog.catalog,
  )
}
