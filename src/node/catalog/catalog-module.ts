import type { Logger } from 'pino'
import { Gauge } from 'prom-client'
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
  LocalServiceRegistry,
  type NodePayload,
  parseServiceDefinition,
} from './index.ts'
import { registerCatalogRoutes } from '../api/catalog-routes.ts'

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
}

/**
 * The service catalog: local registrations and their health checks ride in this node's signed
 * gossip record; every member's record feeds the cluster-wide `Catalog`, which the HTTP API
 * (with blocking queries) and the DNS interface answer from. No server is asked, ever.
 */
export class CatalogModule implements AgentModule {
  readonly name = 'catalog'
  readonly catalog = new Catalog()
  /** This agent's own registrations (set once started). */
  local?: LocalServiceRegistry
  private publisher?: LocalPayloadPublisher
  private dns?: DnsServer
  private log?: Logger
  /** Where DNS actually listens (port 0 resolved), when enabled. */
  dnsAddress?: { host: string; udpPort: number; tcpPort: number }

  private readonly gossip: CatalogGossip
  private subscriptions: Unsubscribe[] = []

  constructor(components: CatalogModuleComponents) {
    this.gossip = components.gossip
  }

  async start(ctx: AgentContext): Promise<void> {
    const log = ctx.log.child({ component: 'catalog' })
    this.log = log
    const local = LocalServiceRegistry.open({ dataDir: ctx.config.dataDir })
    this.local = local
    // Services from the agent config file replace earlier registrations with the same id.
    for (const [i, json] of (ctx.config.services ?? []).entries()) {
      local.register(parseServiceDefinition(json, `config field "services.${i}"`))
    }
    const checks = new CheckRunner()
    const publisher = new LocalPayloadPublisher({ registry: local, checks })
    this.publisher = publisher
    this.subscriptions.push(
      this.catalog.on('payload:reject', ({ id, reason }) =>
        log.warn({ peerId: id, reason }, 'ignored a malformed service payload'),
      ),
    )
    for (const m of this.gossip.members()) this.applyMember(m)
    this.subscriptions.push(
      this.gossip.onEvent((e) => applyGossipEvent(this.catalog, e)),
      publisher.on('payload:change', (p) => this.publish(p)),
    )
    publisher.start()
    this.publish(publisher.payload())

    const nodeAddress = (): string => hostOf(ctx.host.getMultiaddrs()[0]?.toString() ?? '127.0.0.1')
    registerCatalogRoutes(ctx.http, { catalog: this.catalog, local, checks, nodeAddress })
    if (ctx.config.dns !== undefined) {
      const dns = new DnsServer({ catalog: this.catalog })
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
  }

  async stop(): Promise<void> {
    for (const off of this.subscriptions) off()
    this.subscriptions = []
    this.publisher?.stop()
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
