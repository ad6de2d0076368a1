import type { PeerId } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import type { MemberView } from '../../gossip/index.ts'
import type { Clock } from '../../common/clock.ts'
import type { GossipUdpTransport } from '../transport/gossip-udp.ts'
import type { Host } from '../transport/host.ts'
import type { GossipTransport } from './swim-driver.ts'
import { GOSSIP_WIRING_DEFAULTS } from '../agent/defaults.ts'

/**
 * Reserved: the best-effort stream channel of earlier versions, never used (SWIM datagrams travel
 * over UDP, `gossip-udp.ts`) and no longer handled.
 */
export const SWIM_PROTOCOL = '/peermesh/swim/1'
/** Reliable path: push/pull anti-entropy and joins, one libp2p stream per exchange. */
export const SWIM_PUSHPULL_PROTOCOL = '/peermesh/swim/pushpull/1'
/** Protocols that may still run on a connection opened only for push/pull (see `closeIfIdle`). */
const HOUSEKEEPING_PROTOCOLS = new Set([SWIM_PUSHPULL_PROTOCOL, '/ipfs/id/1.0.0', '/ipfs/id/push/1.0.0'])
const { pushPullCloseDelayMs: PUSHPULL_CLOSE_DELAY_MS, pushPullTimeoutMs: PUSHPULL_TIMEOUT_MS } =
  GOSSIP_WIRING_DEFAULTS

/** Push/pull counters (metrics). */
export interface PushPullStats {
  exchanges: number
  failures: number
  bytesSent: number
  connectionsClosed: number
}

export interface Libp2pGossipTransportInit {
  selfId: string
  host: Host
  udp: GossipUdpTransport
  /** One push/pull exchange over a libp2p stream (`PushPullStreams.request`). */
  exchange: { request(to: string, state: Uint8Array, options: { signal: AbortSignal }): Promise<Uint8Array> }
  clock: Clock
  /** Status of a member as gossip knows it (no DHT lookup for dead or departed members). */
  statusOf(peer: string): MemberView['status'] | undefined
  log: { debug(fields: object, message: string): void }
}

/**
 * SWIM over the agent's networks: datagrams on the sealed UDP socket, push/pull on a libp2p
 * stream. Connections stay bounded: probing and gossip open none, and a connection that push/pull
 * opened is closed after the exchange unless another protocol (Raft, RPC, DHT) uses it by then.
 * Addresses gossip learns go to the libp2p peer store; a failed exchange asks the DHT.
 */
export class Libp2pGossipTransport implements GossipTransport {
  readonly pushPullStats: PushPullStats = { exchanges: 0, failures: 0, bytesSent: 0, connectionsClosed: 0 }
  /** Addresses last merged into the libp2p peer store, per member. */
  private readonly rememberedAddresses = new Map<string, string>()
  /** Seeds whose connection was opened just to join (closed after the join's push/pull). */
  private readonly joinConnections = new Set<string>()
  private stopped = false

  constructor(private readonly init: Libp2pGossipTransportInit) {}

  send(to: string, msg: Uint8Array): void {
    this.init.udp.send(to, msg)
  }

  /** One push/pull exchange; a connection opened just for it is closed afterwards if idle. */
  async pushPull(to: string, state: Uint8Array): Promise<Uint8Array> {
    const { host, clock } = this.init
    const peer = peerIdFromString(to)
    const hadConnection = !this.joinConnections.delete(to) && host.getConnections(peer).length > 0
    this.pushPullStats.exchanges++
    this.pushPullStats.bytesSent += state.length
    try {
      return await this.init.exchange.request(to, state, {
        signal: AbortSignal.timeout(PUSHPULL_TIMEOUT_MS),
      })
    } catch (err) {
      this.pushPullStats.failures++
      this.init.log.debug({ peer: to, err: (err as Error).message }, 'push/pull failed')
      throw err
    } finally {
      if (!hadConnection) clock.setTimeout(() => this.closeIfIdle(peer), PUSHPULL_CLOSE_DELAY_MS)
    }
  }

  /** Counts the bytes of a push/pull reply this agent sends. */
  countReply(reply: Uint8Array): void {
    this.pushPullStats.bytesSent += reply.length
  }

  /**
   * The seed dialer opened this connection only to join: close it after the exchange, like a
   * push/pull connection, or a seed that a whole cluster joined through holds them all.
   */
  markJoinConnection(peerId: string): void {
    this.joinConnections.add(peerId)
  }

  /** Keeps the libp2p side in line with a membership change. */
  onMemberEvent(type: string, m: MemberView): void {
    if (
      (type === 'member:join' || type === 'member:update' || type === 'member:alive') &&
      m.addresses.length > 0
    )
      this.rememberAddresses(m)
    if (type === 'member:reap') this.rememberedAddresses.delete(m.id)
    if (type === 'member:fail' || type === 'member:leave' || type === 'member:reap')
      this.init.udp.forget(m.id)
  }

  stop(): void {
    this.stopped = true
  }

  /**
   * Closes connections to `peer` that carry no stream other than push/pull and identify. Random
   * push/pull partners would otherwise leave a connection to every member behind (N per agent);
   * a connection that Raft, RPC or the DHT opened a stream on in the meantime stays open.
   */
  private closeIfIdle(peer: PeerId): void {
    if (this.stopped) return
    for (const conn of this.init.host.getConnections(peer)) {
      if (conn.status !== 'open') continue
      if (conn.streams.some((s) => !HOUSEKEEPING_PROTOCOLS.has(s.protocol ?? ''))) continue
      this.pushPullStats.connectionsClosed++
      void conn.close().catch(() => conn.abort(new Error('close failed')))
    }
  }

  private rememberAddresses(m: MemberView): void {
    if (m.id === this.init.selfId) return
    // The peer store re-encodes the whole peer on each merge: only when the addresses changed.
    const key = m.addresses.join(' ')
    if (this.rememberedAddresses.get(m.id) === key) return
    this.rememberedAddresses.set(m.id, key)
    try {
      const peer = peerIdFromString(m.id)
      const addrs = m.addresses.map((a) => multiaddr(a.replace(/\/p2p\/[^/]+$/, '')))
      void this.init.host.peerStore.merge(peer, { multiaddrs: addrs }).catch(() => {})
    } catch {
      // A record with an unparsable id or address cannot be dialed; the core already verified it.
    }
  }
}
