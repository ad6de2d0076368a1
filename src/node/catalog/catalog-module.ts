import type { Logger } from 'pino'
import { Gauge } from 'prom-client'
import type { PublishEntitlement } from '../../acl/entitlement.ts'
import type { MemberView, SwimEvent } from '../../gossip/index.ts'
import type { Unsubscribe } from '../../common/events.ts'
import type { AgentContext, AgentModule } from '../agent/agent.ts'
import { ListenError } from '../agent/errors.ts'
import { applyGossipEvent, catalogMeta, memberUpdateOf } from './gossip-glue.ts'
import {
  Catalog,
  CheckRunner,
  DnsServer,
  hostOf,
  LocalPayloadPublisher,
  type LocalPayloadPublisherInit,
  LocalServiceRegistry,
  type NodePayload,
  parseServiceDefinition,
} from './index.ts'
import { registerCatalogRoutes } from '../api/catalog-routes.ts'
import type { IgnoredInstance } from './catalog.ts'
import { type RequestServiceGrant, ServiceGrants } from './service-grants.ts'

/**
 * Instances other members announce but may not publish are logged at most once per this interval
 * (how many, and a few of them), and only when some are new since the last line.
 */
export const IGNORED_INSTANCES_LOG_INTERVAL_MS = 30_000
/** How many ignored instances a log line names. */
const IGNORED_INSTANCES_LOGGED = 5

/** What the catalog needs from gossip (the gossip module implements it). */
export interface CatalogGossip {
  members(): MemberView[]
  /** This node's own member view. */
  self(): MemberView | undefined
  /** Replaces this node's gossiped metadata. */
  updateLocalMeta(meta: Record<string, unknown>): void
  onEvent(listener: (e: SwimEvent) => void): Unsubscribe
}

export interface CatalogModuleComponents {
  gossip: CatalogGossip
  /**
   * Who may publish which service (issue #12), on the committed ACL state; other members'
   * instances that fail it are ignored, and looked at again when the ACL state changes. Absent:
   * every instance counts (as with ACLs off).
   */
  entitlement?: PublishEntitlement
  /**
   * Asks the leader for a grant when a service is registered through the API with a token this
   * agent's enrollment does not cover (RaftModule.requestServiceGrant). Absent: no grants asked.
   */
  requestServiceGrant?: RequestServiceGrant
  /** Checks added to local instances by their sidecars (a sidecar that cannot bind: critical). */
  extraChecks?: LocalPayloadPublisherInit['extraChecks']
}

/**
 * The service catalog: local registrations and their health checks ride in this node's signed
 * gossip record; every member's record feeds the cluster-wide `Catalog`, which the HTTP API
 * (with blocking queries) and the DNS interface answer from. No server is asked, ever.
 */
export class CatalogModule implements AgentModule {
  readonly name = 'catalog'
  readonly catalog: Catalog
  /** This agent's own registrations (set once started). */
  local?: LocalServiceRegistry
  private publisher?: LocalPayloadPublisher
  private dns?: DnsServer
  private log?: Logger
  /** Where DNS actually listens (port 0 resolved), when enabled. */
  dnsAddress?: { host: string; udpPort: number; tcpPort: number }

  private readonly gossip: CatalogGossip
  private readonly entitlement: PublishEntitlement | undefined
  private subscriptions: Unsubscribe[] = []
  /** This agent's peer id, once started: its own instances are never ignored here. */
  private selfId?: string
  /** Registration grants being asked for (set once started, with a grant requester). */
  grants?: ServiceGrants
  /** The ignored instances last logged (peer id + service id). */
  private ignoredLogged = new Set<string>()

  constructor(private readonly components: CatalogModuleComponents) {
    this.gossip = components.gossip
    const entitlement = components.entitlement
    this.entitlement = entitlement
    this.catalog = new Catalog(
      entitlement === undefined
        ? {}
        : {
            entitled: (peerId, service) => peerId === this.selfId || entitlement.mayPublish(peerId, service),
          },
    )
  }

  async start(ctx: AgentContext): Promise<void> {
    const log = ctx.log.child({ component: 'catalog' })
    this.log = log
    this.selfId = ctx.identity.id
    const local = LocalServiceRegistry.open({ dataDir: ctx.config.dataDir })
    this.local = local
    // Services from the agent config file replace earlier registrations with the same id.
    for (const [i, json] of (ctx.config.services ?? []).entries()) {
      local.register(parseServiceDefinition(json, `config field "services.${i}"`))
    }
    const checks = new CheckRunner()
    const extraChecks = this.components.extraChecks
    const publisher = new LocalPayloadPublisher({
      registry: local,
      checks,
      ...(extraChecks ? { extraChecks } : {}),
    })
    this.publisher = publisher
    this.subscriptions.push(
      this.catalog.on('payload:reject', ({ id, reason }) =>
        log.warn({ peerId: id, reason }, 'ignored a malformed service payload'),
      ),
    )
    if (this.entitlement !== undefined) {
      this.subscriptions.push(
        this.entitlement.onChange(() => this.catalog.refilter()),
        ctx.clock.setInterval(() => this.logIgnored(), IGNORED_INSTANCES_LOG_INTERVAL_MS),
      )
    }
    for (const m of this.gossip.members()) this.applyMember(m)
    this.subscriptions.push(
      this.gossip.onEvent((e) => applyGossipEvent(this.catalog, e)),
      publisher.on('payload:change', (p) => this.publish(p)),
    )
    publisher.start()
    this.publish(publisher.payload())

    const nodeAddress = (): string => hostOf(ctx.host.getMultiaddrs()[0]?.toString() ?? '127.0.0.1')
    const { entitlement, requestServiceGrant } = this.components
    if (entitlement !== undefined && requestServiceGrant !== undefined) {
      const self = ctx.identity.id
      this.grants = new ServiceGrants({
        request: requestServiceGrant,
        entitled: (service) => entitlement.mayPublish(self, service),
        registered: (service) => local.list().some((d) => d.name === service),
        clock: ctx.clock,
        log,
      })
    }
    registerCatalogRoutes(ctx.http, {
      catalog: this.catalog,
      local,
      checks,
      nodeAddress,
      nodeName: () => ctx.config.name,
      selfId: () => ctx.identity.id,
      ...(this.grants !== undefined
        ? {
            grants: this.grants,
            ...(ctx.config.defaultToken !== undefined ? { defaultToken: ctx.config.defaultToken } : {}),
          }
        : {}),
    })
    if (ctx.config.dns !== undefined) {
      const http = ctx.http
      const dns = new DnsServer({
        catalog: this.catalog,
        ...(ctx.config.dnsDomain !== undefined ? { domain: ctx.config.dnsDomain } : {}),
        datacenter: ctx.config.datacenter,
        // DNS queries carry no token: they see what the anonymous token may read.
        authorizer: () => http.anonymousAuthorizer(),
      })
      this.dns = dns
      try {
        this.dnsAddress = await dns.start(ctx.config.dns)
      } catch (err) {
        const { host, port } = ctx.config.dns
        const why =
          (err as NodeJS.ErrnoException).code === 'EADDRINUSE' ? 'address already in use' : String(err)
        throw new ListenError(
          `cannot listen for DNS on ${host}:${port}: ${why} (use --dns HOST:PORT or --dns off)`,
          {
            cause: err,
          },
        )
      }
      log.info({ dns: this.dnsAddress }, 'DNS interface listening')
    }
    const catalog = this.catalog
    new Gauge({
      name: 'peermesh_catalog_index',
      help: 'Catalog change index (blocking queries wait for it to pass theirs)',
      registers: [ctx.metrics],
      collect() {
        this.set(catalog.index)
      },
    })
    new Gauge({
      name: 'peermesh_catalog_instances_ignored',
      help: 'Service instances other members announce but may not publish (no enrollment or grant covers them), ignored here',
      registers: [ctx.metrics],
      collect() {
        this.set(catalog.ignoredInstances().length)
      },
    })
  }

  /** Logs the ignored instances when some are new since the last line (see the interval). */
  logIgnored(): IgnoredInstance[] {
    const ignored = this.catalog.ignoredInstances()
    const keys = new Set(ignored.map((i) => `${i.peerId}/${i.serviceId}`))
    const fresh = [...keys].some((k) => !this.ignoredLogged.has(k))
    this.ignoredLogged = keys
    if (fresh) {
      this.log?.warn(
        { count: ignored.length, instances: ignored.slice(0, IGNORED_INSTANCES_LOGGED) },
        'ignoring service instances their members may not publish (no enrollment or grant gives them service:write)',
      )
    }
    return ignored
  }

  async stop(): Promise<void> {
    for (const off of this.subscriptions) off()
    this.subscriptions = []
    this.publisher?.stop()
    this.grants?.stop()
    await this.dns?.stop()
  }

  private publish(payload: NodePayload): void {
    this.gossip.updateLocalMeta(catalogMeta(payload))
    const self = this.gossip.self()
    if (self !== undefined) this.applyMember(self)
  }

  private applyMember(m: MemberView): void {
    this.catalog.applyMember(memberUpdateOf(m))
  }
}
