import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
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
} from '../gossip/index.ts'
import { writeFileAtomicSync } from '../identity/fs-atomic.ts'
import { publicKeyOfPeerId } from '../identity/node-key.ts'
import type { AgentContext, AgentModule } from './agent.ts'
import { counterFrom } from './metrics.ts'
import { StreamMessenger } from './stream-messenger.ts'

export const SWIM_PROTOCOL = '/peermesh/swim/1'
export const SWIM_PUSHPULL_PROTOCOL = '/peermesh/swim/pushpull/1'
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
 * Wires the pure SWIM core to the agent: libp2p streams carry its datagrams and push/pull
 * exchanges, one timer drives `tick`, seeds the agent joined through start the join, events
 * go to the log and the agent's event bus, and the local incarnation is persisted.
 */
export class GossipModule implements AgentModule {
  readonly name = 'gossip'
  private swim?: Swim
  private messenger?: StreamMessenger
  private ctx?: AgentContext
  private log?: Logger
  private timer?: NodeJS.Timeout
  private timerAt = Number.POSITIVE_INFINITY
  private persisted = { incarnation: -1, version: -1 }
  private readonly dhtLookups = new Map<string, number>()
  private stopped = false
  private peersWrittenAt = Number.NEGATIVE_INFINITY
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
    this.swim = new Swim({
      self: {
        id: ctx.identity.id,
        name: ctx.config.name,
        addresses: ctx.host.getMultiaddrs().map((m) => m.toString()),
      },
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
      onDialFailure: (peer) => this.lookupInDht(peer),
    })
    this.messenger = messenger
    messenger.onMessage((from, bytes) => {
      if (this.swim !== undefined) this.process(this.swim.handleMessage(from, bytes, now()))
    })
    messenger.onRequest(async (from, bytes) => {
      const res = this.swim!.handlePushPull(from, bytes, now())
      this.process(res)
      if (res.reply === undefined) throw new Error('push/pull request dropped')
      return res.reply
    })
    await messenger.start()
    ctx.addSeeds(loadKnownPeers(ctx.config.dataDir, ctx.identity.id))
    this.registerMetrics(ctx)
    ctx.http.route('GET', '/v1/agent/members', () => this.members().map(memberJson))
    ctx.events.on('seed:joined', (peerId: string) => {
      if (this.swim !== undefined && !this.stopped) this.process(this.swim.join([peerId], now()))
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
    await this.messenger?.stop()
  }

  private process(out: Output): void {
    if (this.stopped) return
    const messenger = this.messenger!
    for (const { to, msg } of out.send) messenger.send(to, msg)
    for (const { to, state } of out.pushPull) {
      messenger
        .request(to, state, { signal: AbortSignal.timeout(5_000) })
        .then((reply) => {
          if (this.swim !== undefined && !this.stopped)
            this.process(this.swim.handlePushPullReply(to, reply, now()))
        })
        .catch((err: unknown) =>
          this.log?.debug({ peer: to, err: (err as Error).message }, 'push/pull failed'),
        )
    }
    for (const e of out.events) this.onSwimEvent(e)
    this.persistIfChanged()
    this.schedule()
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
    if (e.type === 'member:fail' || e.type === 'member:leave' || e.type === 'member:reap')
      this.messenger?.forget(m.id)
    if (e.type === 'member:join' || e.type === 'member:leave' || e.type === 'member:reap')
      this.scheduleKnownPeers()
    this.ctx?.events.emit(e.type, m)
    for (const l of this.listeners) l(e)
  }

  private rememberAddresses(m: MemberView): void {
    const host = this.ctx?.host
    if (host === undefined || m.id === this.ctx?.identity.id) return
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
      try {
        writeFileAtomicSync(join(this.ctx!.config.dataDir, KNOWN_PEERS_FILE), JSON.stringify(addresses))
      } catch (err) {
        this.log?.warn({ err }, 'cannot save known peers')
      }
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
    try {
      writeFileAtomicSync(join(ctx.config.dataDir, GOSSIP_STATE_FILE), JSON.stringify(this.persisted))
    } catch (err) {
      this.log?.error({ err }, 'cannot persist gossip state')
    }
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
    stat('peermesh_gossip_messages_sent_total', 'SWIM datagrams sent', () => self.messenger?.stats.sent ?? 0)
    stat(
      'peermesh_gossip_bytes_sent_total',
      'SWIM datagram bytes sent',
      () => self.messenger?.stats.sentBytes ?? 0,
    )
    stat(
      'peermesh_gossip_messages_received_total',
      'SWIM datagrams received',
      () => self.messenger?.stats.received ?? 0,
    )
    stat(
      'peermesh_gossip_bytes_received_total',
      'SWIM datagram bytes received',
      () => self.messenger?.stats.receivedBytes ?? 0,
    )
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
