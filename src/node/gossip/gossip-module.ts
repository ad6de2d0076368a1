import type { Logger } from 'pino'
import {
  ed25519Signer,
  ed25519Verifier,
  type MemberView,
  Swim,
  type SwimConfig,
  type SwimEvent,
  type SwimEventType,
  swimConfig,
  type SwimProfile,
  type UserEvent,
} from '../../gossip/index.ts'
import { type Clock, systemClock } from '../../common/clock.ts'
import type { Unsubscribe } from '../../common/events.ts'
import { publicKeyOfPeerId } from '../../identity/keys/node-key.ts'
import { need } from '../../acl/index.ts'
import type { AgentContext, AgentModule } from '../agent/agent.ts'
import { ApiError } from '../agent/errors.ts'
import { memberView } from '../api/consul-views.ts'
import {
  deriveDatagramKey,
  GossipUdpTransport,
  UDP_PORT_TAG,
  udpEndpointOf,
} from '../transport/gossip-udp.ts'
import { GossipStateWriter, KnownPeersWriter, loadGossipState, loadKnownPeers } from './gossip-state.ts'
import { GOSSIP_WIRING_DEFAULTS } from '../agent/defaults.ts'
import { Libp2pGossipTransport, SWIM_PUSHPULL_PROTOCOL } from './libp2p-glue.ts'
import { registerGossipMetrics } from './metrics.ts'
import { PushPullStreams, pushPullStreamLimits } from './push-pull-streams.ts'
import { SwimDriver } from './swim-driver.ts'

/**
 * What the gossip module emits on the agent's bus: SWIM's membership events, each with the
 * member's current view.
 */
export type GossipEvents = { [K in SwimEventType]: MemberView }

/** A member as the API and CLI show it (`GET /v1/agent/members`, `peermesh members --json`). */
export interface MemberJson {
  name: string
  peerId: string
  address: string
  status: MemberView['status']
  incarnation: number
  tags: Record<string, string>
}

export function memberJson(m: MemberView): MemberJson {
  return {
    name: m.name,
    peerId: m.id,
    address: m.address,
    status: m.status,
    incarnation: m.incarnation,
    tags: m.tags,
  }
}

export interface GossipModuleInit {
  profile?: SwimProfile
  overrides?: Partial<SwimConfig>
  /** Default `systemClock` (monotonic: wall-clock jumps must not fire or stall SWIM timers). */
  clock?: Clock
}

/**
 * Wires SWIM to the agent: sealed UDP datagrams carry probes, acks and gossip (best-effort),
 * libp2p streams carry push/pull exchanges (reliable, `libp2p-glue.ts`), `SwimDriver` runs the
 * core on the clock, seeds the agent reached start the join, events go to the log and the agent's
 * event bus, and the local incarnation and known peers are persisted (`gossip-state.ts`).
 */
export class GossipModule implements AgentModule {
  readonly name = 'gossip'
  private readonly clock: Clock
  private driver?: SwimDriver
  private transport?: Libp2pGossipTransport
  private pushPulls?: PushPullStreams
  private udp?: GossipUdpTransport
  private ctx?: AgentContext
  private log?: Logger
  private stateWriter?: GossipStateWriter
  private peersWriter?: KnownPeersWriter
  private readonly listeners = new Set<(e: SwimEvent) => void>()
  private readonly userEventListeners = new Set<(e: UserEvent) => void>()
  private offSeedJoined?: () => void
  private stopped = false

  constructor(private readonly init: GossipModuleInit = {}) {
    this.clock = init.clock ?? systemClock
  }

  /** Subscribes to membership events (`member:join`, `member:fail`...). */
  onEvent(listener: (e: SwimEvent) => void): Unsubscribe {
    this.listeners.add(listener)
    return () => {
      this.listeners.delete(listener)
    }
  }

  /** Subscribes to user events new to this node, its own included (`fireUserEvent`). */
  onUserEvent(listener: (e: UserEvent) => void): Unsubscribe {
    this.userEventListeners.add(listener)
    return () => {
      this.userEventListeners.delete(listener)
    }
  }

  /**
   * Fires a user event to every member: signed with the node key, carried by gossip; returns it
   * with its Lamport time. Throws `InvalidUserEventError` (nothing sent) on a bad id or body.
   */
  fireUserEvent(id: string, body: Uint8Array): UserEvent {
    if (this.driver === undefined || this.stopped) throw new Error('gossip not started')
    return this.driver.fireUserEvent(id, body)
  }

  members(): MemberView[] {
    return this.driver?.members() ?? []
  }

  /**
   * Member `peerId` was just heard from over a channel the caller authenticated (the Raft module:
   * a message from that peer over mutual TLS): this agent's next probe of it may be skipped
   * (`Swim.heardFrom`). An idle Raft leader hears from every member every 150 ms, and they from it.
   */
  heardFrom(peerId: string): void {
    this.driver?.heardFrom(peerId)
  }

  /**
   * The Raft leader this agent follows heard from these voters `ageMs` ago (on its heartbeats):
   * this agent's probes of them may be skipped too (`Swim.setRelayed`); a voter left out is
   * probed again. Followers otherwise probe each other by UDP, with nothing else telling them.
   */
  setRelayed(entries: readonly { id: string; ageMs: number }[]): void {
    this.driver?.setRelayed(entries)
  }

  /** Every connection to `peerId` closed: what `heardFrom` said of it no longer holds. */
  lostContact(peerId: string): void {
    this.driver?.lostContact(peerId)
  }

  /**
   * Consul's force-leave: the member named `name`, failed, is held `left` here and by gossip on
   * every agent that also holds it failed (its services leave the catalog); `prune` also forgets
   * it here at once. A member seen alive or suspect is refused (`not-failed`): see `Swim.forceLeave`.
   */
  forceLeave(
    name: string,
    options: { prune?: boolean } = {},
  ): 'left' | 'already-left' | 'not-failed' | 'unknown' {
    if (this.driver === undefined || this.stopped) throw new Error('gossip not started')
    const m = this.members().find((x) => x.name === name)
    return m === undefined ? 'unknown' : this.driver.forceLeave(m.id, options)
  }

  /** This node as the other members see it (its record, version and meta). */
  self(): MemberView | undefined {
    const id = this.ctx?.identity.id
    return id === undefined ? undefined : this.driver?.member(id)
  }

  /** Replaces this node's gossiped metadata (e.g. its services); disseminated right away. */
  updateLocalMeta(meta: Record<string, unknown>): void {
    if (this.driver === undefined) throw new Error('gossip not started')
    this.driver.updateLocalMeta(meta)
  }

  async start(ctx: AgentContext): Promise<void> {
    this.ctx = ctx
    const log = ctx.log.child({ component: 'gossip' })
    this.log = log
    const clock = this.clock
    const { dataDir } = ctx.config
    const selfId = ctx.identity.id
    const cfg = swimConfig(this.init.profile ?? 'lan', this.init.overrides ?? {})
    const saved = loadGossipState(dataDir, log) // repaired (and logged) if out of range
    const addresses = ctx.host.getMultiaddrs().map((m) => m.toString())
    const udp = await this.startUdp(ctx, addresses, cfg.maxMessageBytes)
    // Peers derive our UDP endpoint from our first TCP address; the tag only when that is wrong.
    const derived = udpEndpointOf(addresses, {})
    const tags: Record<string, string> =
      derived?.port === udp.port ? {} : { [UDP_PORT_TAG]: String(udp.port) }
    const swim = new Swim({
      self: { id: selfId, name: ctx.config.name, addresses, tags },
      config: cfg,
      // The driver may use ambient randomness; the core only sees this function.
      rng: Math.random,
      signer: ed25519Signer(ctx.identity.signingKey),
      verifier: ed25519Verifier(publicKeyOfPeerId),
      ...(saved !== undefined ? { lastIncarnation: saved.incarnation, lastVersion: saved.version } : {}),
      ...(saved?.eventTime !== undefined ? { lastUserEventTime: saved.eventTime } : {}),
    })
    const pushPulls = new PushPullStreams({
      host: ctx.host,
      protocol: SWIM_PUSHPULL_PROTOCOL,
      limits: pushPullStreamLimits(cfg.maxPushPullBytes, GOSSIP_WIRING_DEFAULTS.pushPullTimeoutMs),
      log,
    })
    this.pushPulls = pushPulls
    const transport = new Libp2pGossipTransport({
      selfId,
      host: ctx.host,
      udp,
      exchange: pushPulls,
      clock,
      statusOf: (peer) => swim.member(peer)?.status,
      log,
    })
    this.transport = transport
    const stateWriter = new GossipStateWriter(dataDir, log)
    this.stateWriter = stateWriter
    this.peersWriter = new KnownPeersWriter({ dataDir, selfId, clock, members: () => this.members(), log })
    const driver = new SwimDriver({
      swim,
      clock,
      transport,
      onEvent: (e) => this.onSwimEvent(e),
      onUserEvent: (e) => {
        for (const l of [...this.userEventListeners]) l(e)
      },
      onLocalState: (incarnation, version, eventTime) => stateWriter.save(incarnation, version, eventTime),
      log,
    })
    this.driver = driver
    udp.onMessage((from, bytes) => {
      if (!this.stopped) driver.receive(from, bytes)
    })
    pushPulls.onRequest((from, bytes) => {
      if (this.stopped) return undefined
      const reply = driver.answerPushPull(from, bytes)
      if (reply !== undefined) transport.countReply(reply)
      return reply
    })
    await pushPulls.start()
    ctx.addSeeds(loadKnownPeers(dataDir, selfId))
    registerGossipMetrics(ctx.metrics, {
      members: () => this.members(),
      udpStats: () => this.udp?.stats,
      pushPullStats: () => this.transport?.pushPullStats,
      pushPullRefused: () => this.pushPulls?.stats.refused ?? {},
      coreStats: () => this.driver?.stats(),
      dropped: () => this.driver?.dropped() ?? {},
    })
    ctx.http.route('GET', '/v1/agent/members', (req) => {
      const authz = req.auth.authorizer()
      return this.members()
        .filter((m) => authz.nodeRead(m.name))
        .map((m) => memberView(m, ctx.config.datacenter))
    })
    // Consul's force-leave (operator:write): a failed member becomes `left` everywhere it is held
    // failed, and its services leave the catalog; `?prune` forgets it here at once.
    ctx.http.route('PUT', '/v1/agent/force-leave/:node', (req) => {
      req.auth.require(...need.operatorWrite())
      const node = req.params['node']!
      const prune = req.query.has('prune') && req.query.get('prune') !== 'false'
      const result = this.forceLeave(node, { prune })
      if (result === 'unknown') throw new ApiError(`agent: No node found with name '${node}'`, 404)
      if (result === 'not-failed')
        throw new ApiError(
          `node ${node} is not failed: force-leave removes failed members only (a live member leaves by itself: peermesh leave on it)`,
          400,
        )
      return null
    })
    this.offSeedJoined = ctx.events.on('seed:joined', (peerId) => {
      if (this.stopped) return
      transport.markJoinConnection(peerId)
      driver.joinSeed(peerId)
    })
    driver.start()
  }

  async stop(): Promise<void> {
    const driver = this.driver
    if (driver === undefined || this.stopped) return
    await driver.leave()
    this.stopped = true
    this.offSeedJoined?.()
    this.transport?.stop()
    await this.pushPulls?.stop()
    await this.udp?.stop()
    await this.stateWriter?.flush()
    await this.peersWriter?.stop()
  }

  /**
   * Binds the gossip UDP socket on the host and port number of the first TCP address (one port
   * for TCP and UDP, as memberlist does), or on any port if that one is busy for UDP.
   */
  private async startUdp(
    ctx: AgentContext,
    addresses: string[],
    maxMessageBytes: number,
  ): Promise<GossipUdpTransport> {
    const self = udpEndpointOf(addresses, {})
    if (self === undefined)
      this.log?.warn({ addresses }, 'no TCP address to share a port with; gossip UDP on any port')
    const wildcard = ctx.config.listen.map((l) => /^\/ip[46]\/(0\.0\.0\.0|::)\//.exec(l)?.[1]).find((h) => h)
    const udp = new GossipUdpTransport({
      selfId: ctx.identity.id,
      key: deriveDatagramKey(ctx.clusterKey),
      bindHost: wildcard ?? self?.host ?? '0.0.0.0',
      port: self?.port ?? 0,
      maxMessageBytes,
      log: this.log!,
      resolve: (peer) => {
        const m = this.driver?.member(peer)
        return m === undefined ? undefined : udpEndpointOf(m.addresses, m.tags)
      },
    })
    await udp.start()
    this.udp = udp
    return udp
  }

  private onSwimEvent(e: SwimEvent): void {
    const m = e.member
    const fields = { member: m.name, peerId: m.id, incarnation: m.incarnation }
    if (e.type === 'member:fail' || e.type === 'member:suspect' || e.type === 'member:conflict')
      this.log?.warn(fields, e.type)
    else if (e.type === 'member:update') this.log?.debug(fields, e.type)
    else this.log?.info(fields, e.type)
    this.transport?.onMemberEvent(e.type, m)
    if (e.type === 'member:join' || e.type === 'member:leave' || e.type === 'member:reap')
      this.peersWriter?.schedule()
    this.ctx?.events.emit(e.type, m)
    for (const l of [...this.listeners]) l(e)
  }
}
