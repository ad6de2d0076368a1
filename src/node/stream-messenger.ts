import type { Connection, PeerId, Stream } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import type { Logger } from 'pino'
import { encodeFrame, FrameDecoder } from './frames.ts'
import type { Host } from './host.ts'

export interface StreamMessengerInit {
  host: Host
  /** Protocol of the best-effort message channel, e.g. `/peermesh/swim/1`. */
  protocol: string
  /** Protocol of request/response exchanges, e.g. `/peermesh/swim/pushpull/1`. */
  requestProtocol?: string
  log: Logger
  /** Largest message accepted on the message channel. */
  maxMessageBytes: number
  /** Largest request or response. */
  maxRequestBytes?: number
  /** Frames queued per peer while its stream is being opened; older ones are dropped beyond it. */
  maxQueuedPerPeer?: number
  /** After a failed dial, don't dial that peer again for this long (messages are dropped). */
  dialBackoffMs?: number
  /** Told when a dial to a peer fails (e.g. to look its addresses up in the DHT). */
  onDialFailure?: (peer: string) => void
}

type MessageHandler = (from: string, bytes: Uint8Array) => void
type RequestHandler = (from: string, bytes: Uint8Array, signal: AbortSignal) => Promise<Uint8Array>

interface Outbound {
  stream?: Stream
  opening?: Promise<void>
  queue: Uint8Array[]
  failedUntil: number
}

/**
 * Message transport over libp2p streams, shared by the protocol layers.
 *
 * - `send()` is **best-effort** (like UDP in memberlist's `Transport`): one long-lived outbound
 *   stream per peer carries length-prefixed frames; a message to a peer that cannot be reached
 *   is dropped, never retried here. Protocols above decide what a lost message means.
 * - `request()` is **reliable** (like memberlist's TCP stream): a new stream per exchange, one
 *   request frame, one response frame, or an error.
 *
 * A frame over the size limit resets the stream. Nothing that a peer sends can throw out of here.
 */
export class StreamMessenger {
  private readonly outbound = new Map<string, Outbound>()
  private messageHandler: MessageHandler = () => {}
  private requestHandler?: RequestHandler
  private readonly inbound = new Set<Stream>()
  private stopped = false
  /** Counters for metrics and tests. */
  readonly stats = {
    sent: 0,
    sentBytes: 0,
    received: 0,
    receivedBytes: 0,
    dropped: 0,
    dialFailures: 0,
    badFrames: 0,
  }

  constructor(private readonly init: StreamMessengerInit) {}

  onMessage(handler: MessageHandler): void {
    this.messageHandler = handler
  }

  onRequest(handler: RequestHandler): void {
    this.requestHandler = handler
  }

  async start(): Promise<void> {
    const { host, protocol, requestProtocol } = this.init
    await host.handle(protocol, (stream, connection) => this.readMessages(stream, connection), {
      maxInboundStreams: 1024,
      runOnLimitedConnection: false,
    })
    if (requestProtocol !== undefined) {
      await host.handle(requestProtocol, (stream, connection) => this.serveRequest(stream, connection), {
        maxInboundStreams: 256,
      })
    }
  }

  async stop(): Promise<void> {
    this.stopped = true
    const { host, protocol, requestProtocol } = this.init
    await host.unhandle(protocol).catch(() => {})
    if (requestProtocol !== undefined) await host.unhandle(requestProtocol).catch(() => {})
    for (const out of this.outbound.values()) out.stream?.abort(new Error('stopping'))
    for (const s of this.inbound) s.abort(new Error('stopping'))
    this.outbound.clear()
  }

  /** Best-effort send. Returns false if the message was dropped right away. */
  send(to: string, bytes: Uint8Array): boolean {
    if (this.stopped) return false
    if (bytes.length > this.init.maxMessageBytes) {
      this.stats.dropped++
      return false
    }
    let out = this.outbound.get(to)
    if (out === undefined) {
      out = { queue: [], failedUntil: 0 }
      this.outbound.set(to, out)
    }
    const frame = encodeFrame(bytes)
    const stream = out.stream
    if (stream !== undefined && stream.status === 'open' && stream.writeStatus === 'writable') {
      // `send` returning false only means "buffer is above its high-water mark": the frame is
      // still queued. A peer that never drains is cut off by the buffer limit (stream error).
      stream.send(frame)
      this.stats.sent++
      this.stats.sentBytes += bytes.length
      return true
    }
    if (Date.now() < out.failedUntil) {
      this.stats.dropped++
      return false
    }
    out.queue.push(frame)
    const max = this.init.maxQueuedPerPeer ?? 64
    while (out.queue.length > max) {
      out.queue.shift()
      this.stats.dropped++
    }
    if (out.opening === undefined) out.opening = this.open(to, out)
    return true
  }

  /** Reliable request/response on a fresh stream. */
  async request(to: string, bytes: Uint8Array, options: { signal?: AbortSignal } = {}): Promise<Uint8Array> {
    const { requestProtocol } = this.init
    if (requestProtocol === undefined) throw new Error('no request protocol configured')
    const signal = options.signal ?? AbortSignal.timeout(10_000)
    const stream = await this.init.host.dialProtocol(peerIdFromString(to), requestProtocol, { signal })
    try {
      stream.send(encodeFrame(bytes))
      const [reply] = await readFrames(stream, this.init.maxRequestBytes ?? 8 << 20, 1, signal)
      if (reply === undefined) throw new Error('peer closed the stream without a reply')
      return reply
    } finally {
      await stream.close({ signal }).catch(() => stream.abort(new Error('close failed')))
    }
  }

  /** Drops the cached outbound stream to a peer (e.g. after the peer was declared dead). */
  forget(peer: string): void {
    const out = this.outbound.get(peer)
    out?.stream?.abort(new Error('forgotten'))
    this.outbound.delete(peer)
  }

  private async open(to: string, out: Outbound): Promise<void> {
    let peer: PeerId
    try {
      peer = peerIdFromString(to)
    } catch {
      this.outbound.delete(to)
      return
    }
    try {
      const stream = await this.init.host.dialProtocol(peer, this.init.protocol, {
        signal: AbortSignal.timeout(3_000),
      })
      if (this.stopped) {
        stream.abort(new Error('stopping'))
        return
      }
      out.stream = stream
      stream.addEventListener('close', () => {
        if (out.stream === stream) out.stream = undefined
      })
      // Outbound streams are write-only; discard anything the peer sends back.
      stream.addEventListener('message', () => {})
      for (const frame of out.queue) {
        stream.send(frame)
        this.stats.sent++
        this.stats.sentBytes += frame.length - 4
      }
      out.queue = []
    } catch (err) {
      this.stats.dialFailures++
      this.stats.dropped += out.queue.length
      out.queue = []
      out.failedUntil = Date.now() + (this.init.dialBackoffMs ?? 0)
      this.init.onDialFailure?.(to)
      this.init.log.trace({ peer: to, err: (err as Error).message }, 'cannot open message stream')
    } finally {
      out.opening = undefined
    }
  }

  private readMessages(stream: Stream, connection: Connection): void {
    const from = connection.remotePeer.toString()
    const decoder = new FrameDecoder(this.init.maxMessageBytes)
    this.inbound.add(stream)
    stream.addEventListener('close', () => this.inbound.delete(stream))
    stream.addEventListener('message', (evt) => {
      let frames: Uint8Array[]
      try {
        frames = decoder.push(evt.data.subarray())
      } catch (err) {
        this.stats.badFrames++
        this.init.log.debug({ peer: from, err: (err as Error).message }, 'bad frame; resetting stream')
        stream.abort(err as Error)
        return
      }
      for (const f of frames) {
        this.stats.received++
        this.stats.receivedBytes += f.length
        try {
          this.messageHandler(from, f)
        } catch (err) {
          this.init.log.error({ err, peer: from }, 'message handler threw')
        }
      }
    })
  }

  private async serveRequest(stream: Stream, connection: Connection): Promise<void> {
    const from = connection.remotePeer.toString()
    const signal = AbortSignal.timeout(10_000)
    try {
      const [req] = await readFrames(stream, this.init.maxRequestBytes ?? 8 << 20, 1, signal)
      if (req === undefined || this.requestHandler === undefined) {
        stream.abort(new Error('no request'))
        return
      }
      const reply = await this.requestHandler(from, req, signal)
      stream.send(encodeFrame(reply))
      await stream.close({ signal })
    } catch (err) {
      this.stats.badFrames++
      this.init.log.debug({ peer: from, err: (err as Error).message }, 'request failed')
      stream.abort(err instanceof Error ? err : new Error(String(err)))
    }
  }
}

/** Reads up to `count` frames from a stream, or fewer if it ends first. */
async function readFrames(
  stream: Stream,
  maxBytes: number,
  count: number,
  signal: AbortSignal,
): Promise<Uint8Array[]> {
  const decoder = new FrameDecoder(maxBytes)
  const frames: Uint8Array[] = []
  const onAbort = (): void => stream.abort(new Error('timed out'))
  signal.addEventListener('abort', onAbort, { once: true })
  try {
    for await (const chunk of stream) {
      frames.push(...decoder.push(chunk.subarray()))
      if (frames.length >= count) break
    }
  } finally {
    signal.removeEventListener('abort', onAbort)
  }
  if (signal.aborted) throw new Error('timed out')
  return frames.slice(0, count)
}
