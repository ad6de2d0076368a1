import { need } from '../../acl/index.ts'
import { existsSync, mkdirSync } from 'node:fs'
import { isIP } from 'node:net'
import { multiaddr } from '@multiformats/multiaddr'
import { join } from 'node:path'
import type { StreamHandler, StreamHandlerOptions } from '@libp2p/interface'
import type { Logger } from 'pino'
import type { Registry } from 'prom-client'
import { generateClusterKey, parseClusterKey, readClusterKeyFile } from '../../identity/keys/cluster-key.ts'
import { ClusterKeyError } from '../../identity/errors.ts'
import { type Clock, systemClock } from '../../common/clock.ts'
import { sharedIntervals } from '../../common/shared-intervals.ts'
import { TypedEmitter } from '../../common/events.ts'
import { writeFileAtomicSync } from '../../common/fs-atomic.ts'
import { loadOrCreateNodeIdentity, type NodeIdentity } from '../../identity/keys/node-key.ts'
import type { AgentConfig } from './config.ts'
import { RAFT_DEFAULTS, raftTimingFor } from './defaults.ts'
import { AgentNotStartedError, ApiError, ListenError } from './errors.ts'
import type { AgentEventBus, AgentEvents } from './events.ts'
import { createHost, type Host } from '../transport/host.ts'
import { addressInUse } from '../transport/free-port.ts'
import { swimConfig } from '../../gossip/config.ts'
import { agentMetricsJson, agentSelfView } from '../api/consul-views.ts'
import { ApiReply, HttpApi } from '../api/server.ts'
import { createMetrics } from './metrics.ts'
import { checkSecretsAtRest } from './secrets-at-rest.ts'
import { SeedDialer } from '../transport/seeds.ts'
import { VERSION } from './version.ts'

/** Copy of the cluster key inside the data dir, used when `--cluster-key` is not given. */
export const CLUSTER_KEY_FILE = 'cluster.key'

/**
 * What a layer (gossip, raft, catalog, proxy...) gets from the agent. Everything is shared:
 * one libp2p host, one HTTP API, one metrics registry, one typed event bus, one clock.
 */
export interface AgentContext {
  readonly config: AgentConfig
  readonly identity: NodeIdentity
  /** The cluster key (pnet pre-shared key, 32 bytes); gossip derives its datagram key from it. */
  readonly clusterKey: Uint8Array
  readonly host: Host
  readonly http: HttpApi
  readonly metrics: Registry
  /** Agent-level events (AgentEvents); a module releases its subscriptions in `stop()`. */
  readonly events: AgentEventBus
  readonly clock: Clock
  readonly log: Logger
  /**
   * Adds addresses to dial at start, after the configured seeds (e.g. peers remembered from a
   * previous run). Only effective while modules start.
   */
  addSeeds(addresses: string[]): void
  /** Registers a libp2p protocol handler; the agent unregisters it on stop. */
  handle(protocol: string, handler: StreamHandler, options?: StreamHandlerOptions): Promise<void>
}

/**
 * A layer plugged into the agent. Modules start in the order they were added, after the host
 * and HTTP API are up, and stop in reverse order before them.
 */
export interface AgentModule {
  readonly name: string
  start(ctx: AgentContext): Promise<void> | void
  stop(): Promise<void> | void
}

export interface AgentInit {
  config: AgentConfig
  log: Logger
  /** Timers and time for the agent and its modules (default: the system's). */
  clock?: Clock
}

/** How long `PUT /v1/agent/join/:address` waits for the dial. */
const JOIN_TIMEOUT_MS = 10_000

/** A join address as a multiaddr: a multiaddr as is, Consul's `ip:port` as `/ip4|ip6/.../tcp/port`. */
export function joinTarget(address: string): string | undefined {
  if (address.startsWith('/')) {
    try {
      return multiaddr(address).toString()
    } catch {
      return undefined
    }
  }
  const m = /^(?:\[([0-9a-fA-F:]+)\]|([0-9.]+)):(\d{1,5})$/.exec(address)
  if (m === null || Number(m[3]) < 1 || Number(m[3]) > 65535) return undefined
  if (m[1] !== undefined) return isIP(m[1]) === 6 ? `/ip6/${m[1]}/tcp/${m[3]}` : undefined
  return isIP(m[2]!) === 4 ? `/ip4/${m[2]}/tcp/${m[3]}` : undefined
}

export class Agent {
  readonly config: AgentConfig
  readonly log: Logger
  private clusterKey?: Uint8Array
  /** A listener that throws is logged; it does not stop the emitter or the other listeners. */
  readonly events: TypedEmitter<AgentEvents>
  readonly clock: Clock
  private readonly modules: AgentModule[] = []
  private readonly started: AgentModule[] = []
  private readonly protocols: string[] = []
  private readonly extraSeeds: string[] = []
  private host?: Host
  private identity?: NodeIdentity
  private http: HttpApi
  private seeds?: SeedDialer
  readonly metrics: Registry
  /** Stops the metrics' own sampling (the event-loop delay histogram, while scraped). */
  private readonly stopMetrics: () => void
  /** Address the HTTP API actually listens on (port 0 resolved). */
  httpAddress?: { host: string; port: number }

  constructor(init: AgentInit) {
    this.config = init.config
    this.log = init.log
    this.events = new TypedEmitter<AgentEvents>((err) =>
      this.log.warn({ err: (err as Error).message }, 'agent event listener failed'),
    )
    // Same-period intervals of every module share one timer (the Raft module's and the CA's).
    this.clock = init.clock ?? sharedIntervals(systemClock)
    this.http = new HttpApi(init.log.child({ component: 'http' }))
    this.http.datacenter = init.config.datacenter
    const metrics = createMetrics(() => this.host)
    this.metrics = metrics
    this.stopMetrics = () => metrics.stopSampling()
    this.addCoreRoutes()
  }

  /** Adds a layer; call before `start()`. */
  use(module: AgentModule): this {
    this.modules.push(module)
    return this
  }

  get peerId(): string {
    if (this.identity === undefined) throw new AgentNotStartedError('agent not started')
    return this.identity.id
  }

  /** This agent's node identity, once `start()` has loaded it. */
  nodeIdentity(): NodeIdentity | undefined {
    return this.identity
  }

  get libp2p(): Host {
    if (this.host === undefined) throw new AgentNotStartedError('agent not started')
    return this.host
  }

  async start(): Promise<void> {
    const { config, log } = this
    // Secrets at rest (#12): a data dir left readable by others is tightened before use.
    checkSecretsAtRest({ dataDir: config.dataDir, clusterKeyFile: config.clusterKey }, log)
    // The cluster key first: a bad key must not leave a new data dir behind.
    const clusterKey = this.loadClusterKey()
    this.clusterKey = clusterKey
    this.identity = await loadOrCreateNodeIdentity(config.dataDir)
    this.host = await createHost({
      identity: this.identity,
      clusterKey,
      listen: config.listen,
      ...(config.advertise !== undefined ? { advertise: config.advertise } : {}),
    })
    try {
      await this.host.start()
    } catch (err) {
      await Promise.resolve(this.host.stop()).catch(() => {})
      // libp2p reports a busy port only in its message text: ask the OS instead.
      const inUse =
        (err as NodeJS.ErrnoException).code === 'EADDRINUSE' || (await addressInUse(config.listen))
      const why = inUse ? 'address already in use' : String(err)
      throw new ListenError(`cannot listen on ${config.listen.join(', ')}: ${why}`, { cause: err })
    }
    try {
      this.httpAddress = await this.http.listen(config.http.host, config.http.port)
    } catch (err) {
      await Promise.resolve(this.host.stop()).catch(() => {})
      throw err
    }
    const ctx = this.context()
    for (const m of this.modules) {
      await m.start(ctx)
      this.started.push(m)
    }
    this.seeds = new SeedDialer({
      host: this.host,
      seeds: [...new Set([...config.seed, ...this.extraSeeds])],
      log: log.child({ component: 'seeds' }),
      clock: this.clock,
      onJoined: (peerId) => this.events.emit('seed:joined', peerId),
    })
    this.seeds.start()
    log.info(
      {
        name: config.name,
        peerId: this.identity.id,
        addresses: this.addresses(),
        http: `${this.httpAddress.host}:${this.httpAddress.port}`,
      },
      'agent started',
    )
  }

  async stop(): Promise<void> {
    await this.seeds?.stop()
    while (this.started.length > 0) {
      const m = this.started.pop()!
      try {
        await m.stop()
      } catch (err) {
        this.log.warn({ err, module: m.name }, 'module failed to stop cleanly')
      }
    }
    if (this.host !== undefined) {
      for (const p of this.protocols) await this.host.unhandle(p).catch(() => {})
      await this.host.stop()
    }
    await this.http.close()
    this.stopMetrics()
    this.log.info('agent stopped')
  }

  /** Full multiaddrs of this agent, each ending in /p2p/<peerId>. */
  addresses(): string[] {
    return this.host?.getMultiaddrs().map((ma) => ma.toString()) ?? []
  }

  /** Peer ids with an open connection. */
  connectedPeers(): string[] {
    return [...new Set(this.host?.getPeers().map((p) => p.toString()) ?? [])].sort()
  }

  private loadClusterKey(): Uint8Array {
    const { config, log } = this
    if (config.clusterKey !== undefined) return readClusterKeyFile(config.clusterKey)
    const local = join(config.dataDir, CLUSTER_KEY_FILE)
    if (existsSync(local)) return readClusterKeyFile(local)
    if (config.seed.length > 0) {
      throw new ClusterKeyError(
        `joining through a seed needs the cluster's key: pass --cluster-key FILE (the first agent wrote it to <its data dir>/${CLUSTER_KEY_FILE})`,
      )
    }
    const text = generateClusterKey()
    mkdirSync(config.dataDir, { recursive: true, mode: 0o700 })
    writeFileAtomicSync(local, text, 0o600)
    log.warn(
      { path: local },
      'no cluster key given: created a new cluster; give this key to agents that join it',
    )
    return parseClusterKey(text)
  }

  private context(): AgentContext {
    const host = this.host!
    return {
      config: this.config,
      identity: this.identity!,
      clusterKey: this.clusterKey!,
      host,
      http: this.http,
      metrics: this.metrics,
      events: this.events,
      clock: this.clock,
      log: this.log,
      addSeeds: (addresses) => {
        this.extraSeeds.push(...addresses)
      },
      handle: async (protocol, handler, options) => {
        await host.handle(protocol, handler, options)
        this.protocols.push(protocol)
      },
    }
  }

  private addCoreRoutes(): void {
    this.http.route('GET', '/v1/agent/self', (req) => {
      req.auth.require(...need.agentRead(this.config.name))
      return agentSelfView({
        datacenter: this.config.datacenter,
        name: this.config.name,
        peerId: this.identity?.id ?? '',
        addresses: this.addresses(),
        peers: this.connectedPeers(),
        version: VERSION,
        gossip: {
          profile: this.config.gossipProfile,
          config: swimConfig(this.config.gossipProfile, this.config.gossipOverrides),
        },
        raft: {
          multiplier: this.config.raftMultiplier ?? 1,
          electionTimeoutMs:
            RAFT_DEFAULTS.electionTick * raftTimingFor(this.config.raftMultiplier ?? 1).tickMs,
        },
      })
    })
    this.http.route('GET', '/metrics', async (req) => {
      req.auth.require(...need.agentRead(this.config.name))
      return new ApiReply(200, await this.metrics.metrics(), this.metrics.contentType)
    })
    // Consul's join: dial the address (a multiaddr, or Consul's "ip:port"); gossip joins through
    // the peer it reaches, as through a seed.
    this.http.route('PUT', '/v1/agent/join/:address', async (req) => {
      req.auth.require(...need.agentWrite(this.config.name))
      const target = joinTarget(req.params['address']!)
      if (target === undefined)
        throw new ApiError('address: expected a multiaddr (/ip4/10.0.0.5/tcp/4001) or IP:PORT', 400)
      if (this.host === undefined) throw new ApiError('agent not started', 503)
      try {
        const conn = await this.host.dial(multiaddr(target), {
          signal: AbortSignal.any([req.signal, AbortSignal.timeout(JOIN_TIMEOUT_MS)]),
        })
        this.events.emit('seed:joined', conn.remotePeer.toString())
      } catch (err) {
        throw new ApiError(`failed to join ${target}: ${(err as Error).message}`, 500, { cause: err })
      }
      return null
    })
    // Consul's leave: a graceful leave of the cluster, then the agent stops (the CLI stops it).
    this.http.route('PUT', '/v1/agent/leave', (req) => {
      const accessorId = req.auth.require(...need.agentWrite(this.config.name))
      setImmediate(() => this.events.emit('agent:leave', { accessorId }))
      return null
    })
    // Consul's path: Prometheus text with ?format=prometheus, else Consul's JSON summary.
    this.http.route('GET', '/v1/agent/metrics', async (req) => {
      req.auth.require(...need.agentRead(this.config.name))
      if (req.query.get('format') === 'prometheus')
        return new ApiReply(200, await this.metrics.metrics(), this.metrics.contentType)
      return agentMetricsJson(await this.metrics.getMetricsAsJSON())
    })
  }
}
