/**
 * The best-effort path of SWIM (probe, ack, ping-req, piggybacked gossip) over UDP, like
 * memberlist's `NetTransport` with encryption on: one datagram per message, no connection, no
 * handshake, so probing a random member costs one packet instead of a libp2p dial.
 *
 * Envelope (every field authenticated, everything after the nonce encrypted):
 *
 *   version (1 byte, also the AEAD's additional data) | nonce (12 random bytes) |
 *   ChaCha20-Poly1305( senderIdLength (1 byte) | senderId (UTF-8) | SWIM message ) | tag (16 bytes)
 *
 * The key is derived from the cluster key (the libp2p private-network PSK every agent already
 * has) with HKDF-SHA256 and a peermesh-specific info string, so it is never the PSK itself.
 *
 * Trust model, as in memberlist with `SecretKey` set: a datagram proves only that its sender
 * holds the cluster key. The sender id inside the envelope is *not* bound to that node's key (a
 * member could claim to be another member when it probes or acks). What such a member cannot
 * do is forge another node's record, incarnation bump or leave: those are signed by the owner's
 * node key and verified by the SWIM core whatever path they arrive on. There is no replay
 * window either (memberlist has none): a replayed alive/suspect/dead is idempotent in SWIM, and
 * a replayed ack only matches a probe still waiting for that sequence number.
 *
 * The sender id is therefore the strongest per-datagram identity available, and the SWIM core
 * uses it as such: an ack counts only from the member probed or a helper asked to relay (and
 * sequence numbers are random, so only a member that saw the ping can answer it), a Lifeguard
 * confirmation counts once per sender, and accusations cannot carry an incarnation beyond what
 * the accused signed + 1. What remains open to a cluster-key holder on the path is claiming the
 * probed member's own id in an ack; binding the sender id to the node key (a signature per
 * datagram, 64 bytes of the 1,472-byte budget) would close it.
 *
 * A datagram that is truncated, oversize, of another version, sealed with another key, tampered
 * with, or has a malformed sender id is dropped and counted by reason; nothing a peer sends can
 * throw out of here.
 */
import { ClusterKeyError } from '../../identity/errors.ts'
import {
  createCipheriv,
  createDecipheriv,
  createSecretKey,
  hkdfSync,
  type KeyObject,
  randomBytes,
} from 'node:crypto'
import { createSocket, type RemoteInfo, type Socket } from 'node:dgram'
import { isIPv6 } from 'node:net'
import type { Logger } from 'pino'

/** Envelope version; bumped if the layout or the key derivation ever changes. */
export const DATAGRAM_VERSION = 1
/** HKDF info: binds the derived key to this one use of the cluster key. */
export const DATAGRAM_KEY_INFO = 'peermesh gossip datagram v1 chacha20-poly1305'
const NONCE_BYTES = 12
const TAG_BYTES = 16
/** A libp2p Ed25519 peer id string is 52 bytes; anything longer than this is not a peer id. */
export const MAX_SENDER_ID_BYTES = 128
/** Envelope bytes around a message whose sender id is `idBytes` long. */
export const datagramOverhead = (idBytes: number): number => 1 + NONCE_BYTES + 1 + idBytes + TAG_BYTES
const MIN_DATAGRAM = datagramOverhead(1)

/** Why an inbound datagram was dropped (label of `peermesh_gossip_datagrams_rejected_total`). */
export type DatagramRejectReason =
  | 'truncated' // shorter than an empty envelope
  | 'oversize' // longer than the largest envelope we would send
  | 'version' // unknown version byte
  | 'auth' // wrong key, tampered, or garbage: the AEAD tag does not verify
  | 'sender' // authentic, but the sender id is empty, too long or overruns the plaintext

export type OpenResult =
  | { ok: true; from: string; payload: Uint8Array }
  | { ok: false; reason: DatagramRejectReason }

/**
 * The raw 32-byte PSK inside a cluster key in swarm.key format (`/key/swarm/psk/1.0.0/`,
 * `/base16/`, 64 hex digits), as `parseClusterKey` returns it.
 */
export function pskOfClusterKey(clusterKey: Uint8Array): Uint8Array {
  const hex = Buffer.from(clusterKey).toString('utf8').split(/\r?\n/)[2]?.trim() ?? ''
  if (!/^[0-9a-fA-F]{64}$/.test(hex))
    throw new ClusterKeyError('cluster key: expected 64 hex digits on line 3')
  return Buffer.from(hex, 'hex')
}

/** The datagram AEAD key: HKDF-SHA256(PSK, info = `DATAGRAM_KEY_INFO`), 32 bytes. */
export function deriveDatagramKey(clusterKey: Uint8Array): Buffer {
  const psk = pskOfClusterKey(clusterKey)
  return Buffer.from(hkdfSync('sha256', psk, new Uint8Array(0), DATAGRAM_KEY_INFO, 32))
}

const AAD = Buffer.from([DATAGRAM_VERSION])

/** Random bytes at the front of each sealer's nonces; the rest is a per-datagram counter. */
const NONCE_PREFIX_BYTES = 8

/**
 * Seals the datagrams of one sender with one key (see the envelope layout above), with what every
 * datagram shares made once: the key object, the sender id's bytes and the nonce. Nonces are a
 * random 64-bit prefix and a 32-bit counter (a fresh prefix when it wraps): never repeated by one
 * sealer, and two sealers (every member shares the key) collide only if their random prefixes do.
 */
export class DatagramSealer {
  private readonly key: KeyObject
  private readonly header: Buffer
  private readonly nonce = Buffer.alloc(NONCE_BYTES)
  private counter = 0

  constructor(key: Uint8Array | KeyObject, senderId: string) {
    const id = Buffer.from(senderId, 'utf8')
    if (id.length === 0 || id.length > MAX_SENDER_ID_BYTES)
      throw new RangeError('sender id length out of range')
    this.key = isKeyObject(key) ? key : createSecretKey(key)
    this.header = Buffer.concat([Buffer.from([id.length]), id])
    randomBytes(NONCE_PREFIX_BYTES).copy(this.nonce)
  }

  /** The envelope around `payload`, as the parts to send in one datagram (no copy into one). */
  sealParts(payload: Uint8Array): Buffer[] {
    if (this.counter === 0xffffffff) {
      randomBytes(NONCE_PREFIX_BYTES).copy(this.nonce)
      this.counter = 0
    }
    this.nonce.writeUInt32BE(++this.counter, NONCE_PREFIX_BYTES)
    const nonce = Buffer.from(this.nonce)
    const cipher = createCipheriv('chacha20-poly1305', this.key, nonce, { authTagLength: TAG_BYTES })
    cipher.setAAD(AAD, { plaintextLength: this.header.length + payload.length })
    const head = cipher.update(this.header)
    const body = cipher.update(payload)
    cipher.final()
    return [AAD, nonce, head, body, cipher.getAuthTag()]
  }

  /** The whole datagram in one buffer. */
  seal(payload: Uint8Array): Buffer {
    return Buffer.concat(this.sealParts(payload))
  }
}

function isKeyObject(k: Uint8Array | KeyObject): k is KeyObject {
  return !(k instanceof Uint8Array)
}

/** Seals one SWIM message from `senderId` (see the envelope layout above). */
export function sealDatagram(key: Uint8Array | KeyObject, senderId: string, payload: Uint8Array): Buffer {
  return new DatagramSealer(key, senderId).seal(payload)
}

/**
 * Opens a datagram; never throws. `maxPayloadBytes` bounds the SWIM message (anything longer
 * than the largest envelope around it is rejected before any decryption).
 */
export function openDatagram(
  key: Uint8Array | KeyObject,
  datagram: Uint8Array,
  maxPayloadBytes: number,
): OpenResult {
  if (datagram.length < MIN_DATAGRAM) return { ok: false, reason: 'truncated' }
  if (datagram.length > maxPayloadBytes + datagramOverhead(MAX_SENDER_ID_BYTES))
    return { ok: false, reason: 'oversize' }
  if (datagram[0] !== DATAGRAM_VERSION) return { ok: false, reason: 'version' }
  const buf = Buffer.from(datagram.buffer, datagram.byteOffset, datagram.length)
  const nonce = buf.subarray(1, 1 + NONCE_BYTES)
  const body = buf.subarray(1 + NONCE_BYTES, buf.length - TAG_BYTES)
  const tag = buf.subarray(buf.length - TAG_BYTES)
  let plain: Buffer
  try {
    const decipher = createDecipheriv('chacha20-poly1305', key, nonce, { authTagLength: TAG_BYTES })
    decipher.setAAD(buf.subarray(0, 1), { plaintextLength: body.length })
    decipher.setAuthTag(tag)
    plain = decipher.update(body)
    decipher.final() // a stream cipher: nothing more, but it checks the tag
  } catch {
    return { ok: false, reason: 'auth' }
  }
  const idLength = plain[0] ?? 0
  if (idLength === 0 || idLength > MAX_SENDER_ID_BYTES || 1 + idLength > plain.length)
    return { ok: false, reason: 'sender' }
  const payload = plain.subarray(1 + idLength)
  if (payload.length > maxPayloadBytes) return { ok: false, reason: 'oversize' }
  return { ok: true, from: plain.toString('utf8', 1, 1 + idLength), payload }
}

/** Where a member receives datagrams. */
export interface UdpEndpoint {
  host: string
  port: number
}

/**
 * Record tag naming the UDP port, present only when it differs from the TCP port of the
 * member's first address (the agent could not bind UDP on its TCP port number).
 */
export const UDP_PORT_TAG = 'swim.udp'

const TCP_ADDR_RE = /^\/(ip4|ip6)\/([^/]+)\/tcp\/(\d+)(?:\/|$)/

/**
 * A member's UDP endpoint from its record: the host and port of its first `/ip4|ip6/…/tcp/PORT`
 * address (one port number for TCP and UDP, like memberlist), the port replaced by the
 * `swim.udp` tag when present. Undefined if the record has no such address.
 */
export function udpEndpointOf(
  addresses: readonly string[],
  tags: Record<string, string>,
): UdpEndpoint | undefined {
  for (const a of addresses) {
    const m = TCP_ADDR_RE.exec(a)
    if (m === null) continue
    const tagged = tags[UDP_PORT_TAG]
    const port = tagged !== undefined ? Number(tagged) : Number(m[3])
    if (!Number.isInteger(port) || port <= 0 || port > 65535) return undefined
    return { host: m[2]!, port }
  }
  return undefined
}

export interface GossipUdpInit {
  /** This node's id, sent inside every envelope. */
  selfId: string
  /** The datagram key (`deriveDatagramKey(clusterKey)`). */
  key: Uint8Array
  /** Address to bind (e.g. `127.0.0.1`, `0.0.0.0`, `::`). */
  bindHost: string
  /** Port to bind first (the libp2p TCP port); 0 for any. */
  port: number
  /** Largest SWIM message sent or accepted (the core's `maxMessageBytes`). */
  maxMessageBytes: number
  /** Where to send to a member; undefined if unknown (the message is dropped). */
  resolve: (peer: string) => UdpEndpoint | undefined
  log: Logger
  /** Most sender addresses remembered from authentic datagrams (fallback for `resolve`). */
  maxObserved?: number
}

type MessageHandler = (from: string, bytes: Uint8Array) => void

/**
 * SWIM's best-effort transport: `send()` seals and sends one datagram and never waits; a
 * message to a member whose endpoint is unknown is dropped. Inbound datagrams are opened and
 * handed to `onMessage` with the sender id from the envelope.
 */
export class GossipUdpTransport {
  private socket?: Socket
  private readonly sealer: DatagramSealer
  private readonly key: KeyObject
  private handler: MessageHandler = () => {}
  /** Source address of the last authentic datagram per sender (replies to not-yet-known members). */
  private readonly observed = new Map<string, UdpEndpoint>()
  private stopped = false
  /** Bound port (after `start`). */
  port = 0
  /** True if the preferred port was busy and an ephemeral one was bound instead. */
  fellBack = false
  /** Counters for metrics, bench and tests; bytes are whole datagrams (envelope included). */
  readonly stats = {
    sent: 0,
    sentBytes: 0,
    received: 0,
    receivedBytes: 0,
    /** Dropped on send: unknown endpoint, oversize, or a socket error. */
    sendDropped: 0,
    rejected: {
      truncated: 0,
      oversize: 0,
      version: 0,
      auth: 0,
      sender: 0,
    } satisfies Record<DatagramRejectReason, number>,
  }

  constructor(private readonly init: GossipUdpInit) {
    this.key = createSecretKey(init.key)
    this.sealer = new DatagramSealer(this.key, init.selfId)
  }

  onMessage(handler: MessageHandler): void {
    this.handler = handler
  }

  /** Binds the preferred port, or any port if it is taken (see `fellBack`). */
  async start(): Promise<void> {
    const { bindHost, port } = this.init
    try {
      this.socket = await bind(bindHost, port)
    } catch (err) {
      if (port === 0 || (err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err
      this.init.log.warn({ port }, 'UDP port busy; gossip datagrams use another port (advertised in a tag)')
      this.socket = await bind(bindHost, 0)
      this.fellBack = true
    }
    this.port = this.socket.address().port
    this.socket.on('message', (msg, rinfo) => this.receive(msg, rinfo))
    this.socket.on('error', (err) => this.init.log.warn({ err: err.message }, 'gossip UDP socket error'))
  }

  async stop(): Promise<void> {
    this.stopped = true
    const s = this.socket
    this.socket = undefined
    if (s !== undefined) await new Promise<void>((resolve) => s.close(() => resolve()))
  }

  /** Best-effort send. Returns false if the message was dropped right away. */
  send(to: string, bytes: Uint8Array): boolean {
    const socket = this.socket
    if (socket === undefined || this.stopped || bytes.length > this.init.maxMessageBytes) {
      this.stats.sendDropped++
      return false
    }
    const ep = this.init.resolve(to) ?? this.observed.get(to)
    if (ep === undefined) {
      this.stats.sendDropped++
      return false
    }
    const parts = this.sealer.sealParts(bytes)
    this.stats.sent++
    for (const p of parts) this.stats.sentBytes += p.length
    socket.send(parts, ep.port, ep.host, (err) => {
      if (err) this.stats.sendDropped++
    })
    return true
  }

  /** Forgets what was learned about a member (after it failed, left or was reaped). */
  forget(peer: string): void {
    this.observed.delete(peer)
  }

  private receive(msg: Buffer, rinfo: RemoteInfo): void {
    if (this.stopped) return
    const r = openDatagram(this.key, msg, this.init.maxMessageBytes)
    if (!r.ok) {
      this.stats.rejected[r.reason]++
      this.init.log.trace({ from: `${rinfo.address}:${rinfo.port}`, reason: r.reason }, 'datagram rejected')
      return
    }
    this.stats.received++
    this.stats.receivedBytes += msg.length
    if (r.from !== this.init.selfId) this.observe(r.from, { host: rinfo.address, port: rinfo.port })
    try {
      this.handler(r.from, r.payload)
    } catch (err) {
      this.init.log.error({ err, peer: r.from }, 'gossip message handler threw')
    }
  }

  private observe(peer: string, ep: UdpEndpoint): void {
    const known = this.observed.get(peer)
    if (known !== undefined && known.host === ep.host && known.port === ep.port) return
    this.observed.delete(peer)
    this.observed.set(peer, ep)
    const max = this.init.maxObserved ?? 4096
    while (this.observed.size > max) {
      const oldest = this.observed.keys().next().value
      if (oldest === undefined) break
      this.observed.delete(oldest)
    }
  }
}

function bind(host: string, port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = createSocket({ type: isIPv6(host) ? 'udp6' : 'udp4' })
    const onError = (err: Error): void => {
      socket.close()
      reject(err)
    }
    socket.once('error', onError)
    socket.bind({ address: host, port, exclusive: true }, () => {
      socket.off('error', onError)
      resolve(socket)
    })
  })
}
