import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import type { PeerId } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import type { Logger } from 'pino'
import { Counter, Gauge } from 'prom-client'
import {
  ed25519Signer,
  ed25519Verifier,
  type MemberView,
  type Output,
  Swim,
  type SwimConfig,
  type SwimEvent,
  swimConfig,
  type SwimProfile,
} from '../../gossip/index.ts'
import { LatestFileWriter } from '../../common/fs-atomic.ts'
import { publicKeyOfPeerId } from '../../identity/keys/node-key.ts'
import type { AgentContext, AgentModule } from '../agent/agent.ts'
import {
  deriveDatagramKey,
  GossipUdpTransport,
  UDP_PORT_TAG,
  udpEndpointOf,
} from '../transport/gossip-udp.ts'
import { counterFrom } from '../agent/metrics.ts'
import { StreamMessenger } from '../transport/stream-messenger.ts'

/**
 * Best-effort channel of the push/pull messenger; unused (StreamMessenger needs one): SWIM
 * datagrams travel over UDP (`gossip-udp.ts`) since issue #3.
 */
export const SWIM_PROTOCOL = '/peermesh/swim/1'
/** Reliable path: push/pull anti-entropy and joins, one libp2p stream per exchange. */
export const SWIM_PUSHPULL_PROTOCOL = '/peermesh/swim/pushpull/1'
/** Protocols that may still run on a connection opened only for push/pull (see `closeIfIdle`). */
const HOUSEKEEPING_PROTOCOLS = new Set([SWIM_PUSHPULL_PROTOCOL, '/ipfs/id/1.0.0', '/ipfs/id/push/1.0.0'])
/** After an exchange on a connection it opened, the initiator closes it this much later if idle. */
const PUSHPULL_CLOSE_DELAY_MS = 1_000
/** Persisted incarnation and record version, so a restarted node starts above both. */
export const GOSSIP_STATE_FILE = 'gossip.json'
/**
 * Members remembered across restarts (like Serf's snapshot): an agent restarted without seeds,
 * or whose seeds are gone, rejoins through any member it knew.
 */
export const KNOWN_PEERS_FILE = 'peers.json'
/** Most members remembered; a few live ones are enough to rejoin. */
const KNOWN_PEERS_MAX = 32
/** Rewrite the known-peers file at most this often. */
const KNOWN_PEERS_WRITE_MS = 5_000
/** How long a graceful leave may spend disseminating before the agent stops anyway. */
const LEAVE_BUDGET_MS = 600
/** First and longest pause between join attempts while no live member is known. */
const JOIN_RETRY_MIN_MS = 2_000
const JOIN_RETRY_MAX_MS = 30_000
/** At most one DHT address lookup per member in this period. */
const DHT_LOOKUP_INTERVAL_MS = 10_000

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
}

/** Monotonic milliseconds for the SWIM core: wall-clock jumps must not fire or stall timers. */
const now = (): number => performance.now()

/**
 * Wires the pure SWIM core to the agent: sealed UDP datagrams carry probes, acks and gossip
 * (best-effort, `GossipUdpTransport`), libp2p streams carry push/pull exchanges (reliable), one
 * timer drives `tick`, seeds the agent joined through start the join, events go to the log and
 * the agent's event bus, and the local incarnation is persisted.
 *
 * Connections stay bounded: probing and gossip open none, and a connection that push/pull opened
 * is closed after the exchange unless another protocol (Raft, RPC, DHT) uses it by then.
 */
export class GossipModule implements AgentModule {
  readonly name = 'gossip'
  private swim?: Swim
  private messenger?: StreamMessenger
  private udp?: GossipUdpTransport
  private readonly pushPullStats = { exchanges: 0, failures: 0, bytesSent: 0, connectionsClosed: 0 }
  private ctx?: AgentContext
  private log?: Logger
  private timer?: NodeJS.Timeout
  private timerAt = Number.POSITIVE_INFINITY
  private persisted = { incarnation: -1, version: -1 }
  private readonly dhtLookups = new Map<string, number>()
  private stopped = false
  private peersWrittenAt = Number.NEGATIVE_INFINITY
  /** The known-peers list as last written, so an unchanged list is not written again. */
  private peersWritten = ''
  /** Seeds this agent reached (peer ids); asked again while the agent knows no live member. */
  private readonly seedPeers = new Set<string>()
  private joinTimer?: NodeJS.Timeout
  /** Addresses last merged into the libp2p peer store, per member. */
  private readonly rememberedAddresses = new Map<string, string>()
  /** Seeds whose connection was opened just to join (closed after the join's push/pull). */
  private readonly joinConnections = new Set<string>()
  private peersWriter?: LatestFileWriter
  private stateWriter?: LatestFileWriter
  private peersTimer?: NodeJS.Timeout
  private readonly listeners: ((e: SwimEvent) => void)[] = []

  constructor(private readonly init: GossipModuleInit = {}) {}

  /** Subscribes to membership events (`member:join`, `member:fail`...). */
  onEvent(listener: (e: SwimEvent) => void): void {
    this.listeners.push(listener)
  }

  members(): MemberView[] {
    return this.swim?.members() ?? []
  }

  /** This node as the other members see it (its record, version and meta). */
  self(): MemberView | undefined {
    const id = this.ctx?.identity.id
    return this.members().find((m) => m.id === id)
  }

  /** Replaces this node's gossiped metadata (e.g. its services); disseminated right away. */
  updateLocalMeta(meta: Record<string, unknown>): void {
    if (this.swim === undefined) throw new Error('gossip not started')
    this.process(this.swim.updateLocalRecord({ meta }))
  }

  get core(): Swim | undefined {
    return this.swim
  }

  async start(ctx: AgentContext): Promise<void> {
    this.ctx = ctx
    const log = ctx.log.child({ component: 'gossip' })
    this.log = log
    const cfg = swimConfig(this.init.profile ?? 'lan', this.init.overrides ?? {})
    const saved = this.loadState(ctx.config.dataDir)
    const addresses = ctx.host.getMultiaddrs().map((m) => m.toString())
    const udp = await this.startUdp(ctx, addresses, cfg.maxMessageBytes)
    // Peers derive our UDP endpoint from our first TCP address; the tag only when that is wrong.
    const derived = udpEndpointOf(addresses, {})
    const tags: Record<string, string> =
      derived?.port === udp.port ? {} : { [UDP_PORT_TAG]: String(udp.port) }
    this.swim = new Swim({
      self: { id: ctx.identity.id, name: ctx.config.name, addresses, tags },
      config: cfg,
      // The driver may use ambient randomness; the core only sees this function.
      rng: Math.random,
      signer: ed25519Signer(ctx.identity.signingKey),
      verifier: ed25519Verifier(publicKeyOfPeerId),
      ...(saved !== undefined ? { lastIncarnation: saved.incarnation, lastVersion: saved.version } : {}),
    })
    const messenger = new StreamMessenger({
      host: ctx.host,
      protocol: SWIM_PROTOCOL,
      requestProtocol: SWIM_PUSHPULL_PROTOCOL,
      log,
      maxMessageBytes: cfg.maxMessageBytes,
      maxRequestBytes: cfg.maxPushPullBytes,
    })
    this.messenger = messenger
    udp.onMessage((from, bytes) => {
      if (this.swim !== undefined && !this.stopped) this.process(this.swim.handleMessage(from, bytes, now()))
    })
    messenger.onRequest(async (from, bytes) => {
      const res = this.swim!.handlePushPull(from, bytes, now())
      this.process(res)
      if (res.reply === undefined) throw new Error('push/pull request dropped')
      this.pushPullStats.bytesSent += res.reply.length
      return res.reply
    })
    await messenger.start()
    ctx.addSeeds(loadKnownPeers(ctx.config.dataDir, ctx.identity.id))
    this.registerMetrics(ctx)
    ctx.http.route('GET', '/v1/agent/members', () => this.members().map(memberJson))
    ctx.events.on('seed:joined', (peerId: string) => {
      if (this.swim === undefined || this.stopped) return
      this.seedPeers.add(peerId)
      // The seed dialer opened this connection only to join: close it after the exchange, like a
      // push/pull connection, or a seed that a whole cluster joined through holds them all.
      this.joinConnections.add(peerId)
      this.process(this.swim.join([peerId], now()))
      this.scheduleJoinCheck(JOIN_RETRY_MIN_MS)
    })
    this.process(this.swim.start(now()))
  }

  async stop(): Promise<void> {
    const swim = this.swim
    if (swim === undefined || this.stopped) return
    // Graceful leave: disseminate a signed `left` so nobody reports this node as failed.
    this.process(swim.leave(now()))
    const deadline = now() + LEAVE_BUDGET_MS
    while (swim.pendingBroadcasts() > 0 && now() < deadline) {
      await new Promise((r) => setTimeout(r, 20))
    }
    this.stopped = true
    clearTimeout(this.timer)
    clearTimeout(this.peersTimer)
    clearTimeout(this.joinTimer)
    await this.messenger?.stop()
    await this.udp?.stop()
    await this.stateWriter?.flush()
    await this.peersWriter?.flush()
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
        const m = this.swim?.member(peer)
        return m === undefined ? undefined : udpEndpointOf(m.addresses, m.tags)
      },
    })
    await udp.start()
    this.udp = udp
    return udp
  }

  private process(out: Output): void {
    if (this.stopped) return
    const udp = this.udp!
    for (const { to, msg } of out.send) udp.send(to, msg)
    for (const { to, state } of out.pushPull) void this.pushPull(to, state)
    for (const e of out.events) this.onSwimEvent(e)
    this.persistIfChanged()
    this.schedule()
  }

  /** One push/pull exchange; a connection opened just for it is closed afterwards if idle. */
  private async pushPull(to: string, state: Uint8Array): Promise<void> {
    const host = this.ctx!.host
    let peer: PeerId
    try {
      peer = peerIdFromString(to)
    } catch {
      return
    }
    const hadConnection = !this.joinConnections.delete(to) && host.getConnections(peer).length > 0
    this.pushPullStats.exchanges++
    this.pushPullStats.bytesSent += state.length
    try {
      const reply = await this.messenger!.request(to, state, { signal: AbortSignal.timeout(5_000) })
      if (this.swim !== undefined && !this.stopped)
        this.process(this.swim.handlePushPullReply(to, reply, now()))
    } catch (err) {
      this.pushPullStats.failures++
      this.log?.debug({ peer: to, err: (err as Error).message }, 'push/pull failed')
      this.lookupInDht(to)
    }
    if (!hadConnection) setTimeout(() => this.closeIfIdle(peer), PUSHPULL_CLOSE_DELAY_MS).unref()
  }

  /**
   * Closes connections to `peer` that carry no stream other than push/pull and identify. Random
   * push/pull partners would otherwise leave a connection to every member behind (N per agent);
   * a connection that Raft, RPC or the DHT opened a stream on in the meantime stays open.
   */
  private closeIfIdle(peer: PeerId): void {
    if (this.stopped) return
    for (const conn of this.ctx!.host.getConnections(peer)) {
      if (conn.status !== 'open') continue
      if (conn.streams.some((s) => !HOUSEKEEPING_PROTOCOLS.has(s.protocol ?? ''))) continue
      this.pushPullStats.connectionsClosed++
      void conn.close().catch(() => conn.abort(new Error('close failed')))
    }
  }

  private schedule(): void {
    const swim = this.swim
    if (swim === undefined || this.stopped) return
    const at = swim.nextDeadline()
    if (at >= this.timerAt && this.timer !== undefined) return
    clearTimeout(this.timer)
    this.timerAt = at
    if (!Number.isFinite(at)) return
    this.timer = setTimeout(
      () => {
        this.timer = undefined
        this.timerAt = Number.POSITIVE_INFINITY
        if (this.swim !== undefined && !this.stopped) this.process(this.swim.tick(now()))
      },
      Math.max(0, at - now()),
    )
  }

  private onSwimEvent(e: SwimEvent): void {
    const m = e.member
    const log = this.log!
    const fields = { member: m.name, peerId: m.id, incarnation: m.incarnation }
    if (e.type === 'member:fail' || e.type === 'member:suspect' || e.type === 'member:conflict')
      log.warn(fields, e.type)
    else if (e.type === 'member:update') log.debug(fields, e.type)
    else log.info(fields, e.type)
    if (
      (e.type === 'member:join' || e.type === 'member:update' || e.type === 'member:alive') &&
      m.addresses.length > 0
    ) {
      this.rememberAddresses(m)
    }
    if (e.type === 'member:reap') this.rememberedAddresses.delete(m.id)
    if (e.type === 'member:fail' || e.type === 'member:leave' || e.type === 'member:reap') {
      this.messenger?.forget(m.id)
      this.udp?.forget(m.id)
    }
    if (e.type === 'member:join' || e.type === 'member:leave' || e.type === 'member:reap')
      this.scheduleKnownPeers()
    this.ctx?.events.emit(e.type, m)
    for (const l of this.listeners) l(e)
  }

  private rememberAddresses(m: MemberView): void {
    const host = this.ctx?.host
    if (host === undefined || m.id === this.ctx?.identity.id) return
    // The peer store re-encodes the whole peer on each merge: only when the addresses changed.
    const key = m.addresses.join(' ')
    if (this.rememberedAddresses.get(m.id) === key) return
    this.rememberedAddresses.set(m.id, key)
    try {
      const peer = peerIdFromString(m.id)
      const addrs = m.addresses.map((a) => multiaddr(a.replace(/\/p2p\/[^/]+$/, '')))
      void host.peerStore.merge(peer, { multiaddrs: addrs }).catch(() => {})
    } catch {
      // A record with an unparsable id or address cannot be dialed; the core already verified it.
    }
  }

  /** When a direct dial fails, ask the DHT for the member's current addresses. */
  private lookupInDht(peer: string): void {
    const host = this.ctx?.host
    const last = this.dhtLookups.get(peer) ?? Number.NEGATIVE_INFINITY
    if (host === undefined || this.stopped || now() - last < DHT_LOOKUP_INTERVAL_MS) return
    this.dhtLookups.set(peer, now())
    const status = this.swim?.member(peer)?.status
    if (status === 'dead' || status === 'left') return
    void host.peerRouting
      .findPeer(peerIdFromString(peer), { signal: AbortSignal.timeout(3_000) })
      .then((info) => host.peerStore.merge(info.id, { multiaddrs: info.multiaddrs }))
      .catch(() => {})
  }

  /**
   * Reaching a seed is not joining: its push/pull can still fail (a seed flooded by a whole cluster
   * starting at once prunes connections). While this agent knows no other live member it asks its
   * seeds again, backing off up to JOIN_RETRY_MAX_MS (Consul's retry_join, but until it has a
   * member rather than until a dial succeeds); it keeps checking at that pace afterwards, so an
   * agent left alone (every member gone) goes back to its seeds too.
   */
  private scheduleJoinCheck(delayMs: number): void {
    if (this.stopped) return
    clearTimeout(this.joinTimer)
    this.joinTimer = setTimeout(
      () => {
        const swim = this.swim
        if (swim === undefined || this.stopped) return
        const self = this.ctx?.identity.id
        const alone = !this.members().some(
          (m) => m.id !== self && (m.status === 'alive' || m.status === 'suspect'),
        )
        if (!alone) return this.scheduleJoinCheck(JOIN_RETRY_MAX_MS)
        this.log?.info({ seeds: this.seedPeers.size }, 'no live member yet; asking the seeds again')
        this.process(swim.join([...this.seedPeers], now()))
        this.scheduleJoinCheck(Math.min(delayMs * 2, JOIN_RETRY_MAX_MS))
      },
      delayMs * (0.8 + 0.4 * Math.random()),
    )
    this.joinTimer.unref()
  }

  /** Saves a few live members' addresses (throttled), for rejoining after a restart. */
  private scheduleKnownPeers(): void {
    if (this.peersTimer !== undefined || this.stopped) return
    const delay = Math.max(0, this.peersWrittenAt + KNOWN_PEERS_WRITE_MS - now())
    this.peersTimer = setTimeout(() => {
      this.peersTimer = undefined
      this.peersWrittenAt = now()
      const self = this.ctx?.identity.id
      const addresses = this.members()
        .filter((m) => m.id !== self && m.status === 'alive' && m.address !== '')
        .slice(0, KNOWN_PEERS_MAX)
        .map((m) => (m.address.includes('/p2p/') ? m.address : `${m.address}/p2p/${m.id}`))
      const text = JSON.stringify(addresses)
      // Membership churn that ends where it began (a member flapping) rewrites nothing: each
      // write is an fsync on the event loop.
      if (text === this.peersWritten) return
      this.peersWritten = text
      this.peersWriter ??= new LatestFileWriter(join(this.ctx!.config.dataDir, KNOWN_PEERS_FILE), (err) =>
        this.log?.warn({ err }, 'cannot save known peers'),
      )
      this.peersWriter.write(text)
    }, delay)
    this.peersTimer.unref()
  }

  private loadState(dataDir: string): { incarnation: number; version: number } | undefined {
    const path = join(dataDir, GOSSIP_STATE_FILE)
    if (!existsSync(path)) return undefined
    try {
      const s = JSON.parse(readFileSync(path, 'utf8')) as { incarnation?: unknown; version?: unknown }
      if (typeof s.incarnation === 'number' && typeof s.version === 'number')
        return { incarnation: s.incarnation, version: s.version }
    } catch {
      // A damaged file only costs us a jump in incarnation: refutation fixes it on the wire.
    }
    this.log?.warn({ path }, 'ignoring unreadable gossip state file')
    return undefined
  }

  private persistIfChanged(): void {
    const swim = this.swim
    const ctx = this.ctx
    if (swim === undefined || ctx === undefined) return
    const incarnation = swim.localIncarnation
    const version = swim.localRecord.version
    if (incarnation === this.persisted.incarnation && version === this.persisted.version) return
    this.persisted = { incarnation, version }
    // Off the event loop: under churn (refutations) a blocking fsync per change stalled every
    // agent of a process. The messages that use the new incarnation are already sent by now
    // either way; a restart reads whatever reached the disk and starts above it.
    this.stateWriter ??= new LatestFileWriter(join(ctx.config.dataDir, GOSSIP_STATE_FILE), (err) =>
      this.log?.error({ err }, 'cannot persist gossip state'),
    )
    this.stateWriter.write(JSON.stringify(this.persisted))
  }

  private registerMetrics(ctx: AgentContext): void {
    const self = this
    new Gauge({
      name: 'peermesh_gossip_members',
      help: 'Members known to gossip, by status',
      labelNames: ['status'],
      registers: [ctx.metrics],
      collect() {
        this.reset()
        const counts: Record<string, number> = { alive: 0, suspect: 0, dead: 0, left: 0 }
        for (const m of self.members()) counts[m.status] = (counts[m.status] ?? 0) + 1
        for (const [status, n] of Object.entries(counts)) this.set({ status }, n)
      },
    })
    const stat = (name: string, help: string, pick: () => number): void =>
      counterFrom(ctx.metrics, name, help, pick)
    stat('peermesh_gossip_messages_sent_total', 'SWIM UDP datagrams sent', () => self.udp?.stats.sent ?? 0)
    stat(
      'peermesh_gossip_bytes_sent_total',
      'SWIM UDP datagram bytes sent (sealed envelope included)',
      () => self.udp?.stats.sentBytes ?? 0,
    )
    stat(
      'peermesh_gossip_messages_received_total',
      'SWIM UDP datagrams received and authenticated',
      () => self.udp?.stats.received ?? 0,
    )
    stat(
      'peermesh_gossip_bytes_received_total',
      'SWIM UDP datagram bytes received and authenticated (envelope included)',
      () => self.udp?.stats.receivedBytes ?? 0,
    )
    stat(
      'peermesh_gossip_send_dropped_total',
      'SWIM datagrams not sent (member endpoint unknown, oversize, socket error)',
      () => self.udp?.stats.sendDropped ?? 0,
    )
    stat(
      'peermesh_gossip_pushpull_total',
      'Push/pull exchanges this agent started',
      () => self.pushPullStats.exchanges,
    )
    stat(
      'peermesh_gossip_pushpull_failures_total',
      'Push/pull exchanges this agent started that failed',
      () => self.pushPullStats.failures,
    )
    stat(
      'peermesh_gossip_pushpull_bytes_sent_total',
      'Push/pull state bytes sent (requests and replies)',
      () => self.pushPullStats.bytesSent,
    )
    stat(
      'peermesh_gossip_pushpull_connections_closed_total',
      'Idle connections closed after a push/pull exchange that opened them',
      () => self.pushPullStats.connectionsClosed,
    )
    new Counter({
      name: 'peermesh_gossip_datagrams_rejected_total',
      help: 'Inbound UDP datagrams dropped before the SWIM core, by reason (truncated, oversize, version, auth, sender)',
      labelNames: ['reason'],
      registers: [ctx.metrics],
      collect() {
        this.reset()
        for (const [reason, n] of Object.entries(self.udp?.stats.rejected ?? {})) this.inc({ reason }, n)
      },
    })
    new Counter({
      name: 'peermesh_gossip_dropped_total',
      help: 'Messages dropped by the gossip core, by reason (decode, type, oversize, forged, ...)',
      labelNames: ['reason'],
      registers: [ctx.metrics],
      collect() {
        this.reset()
        const dropped = (self.swim?.stats().dropped ?? {}) as Record<string, number>
        for (const [reason, n] of Object.entries(dropped)) this.inc({ reason }, n)
      },
    })
  }
}

/** Addresses of members known before a restart (never our own); an unreadable file is ignored. */
export function loadKnownPeers(dataDir: string, selfId: string): string[] {
  const path = join(dataDir, KNOWN_PEERS_FILE)
  if (!existsSync(path)) return []
  try {
    const list = JSON.parse(readFileSync(path, 'utf8')) as unknown
    if (!Array.isArray(list)) return []
    return list
      .filter((a): a is string => typeof a === 'string' && a.length < 512 && !a.endsWith(`/p2p/${selfId}`))
      .filter((a) => {
        try {
          multiaddr(a)
          return true
        } catch {
          return false
        }
      })
      .slice(0, KNOWN_PEERS_MAX)
  } catch {
    return []
  }
}
