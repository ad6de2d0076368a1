/**
 * The reliable path of SWIM: push/pull anti-entropy and joins, one libp2p stream per exchange on
 * `/peermesh/swim/pushpull/1`. The requester writes one length-prefixed frame (`frames.ts`) with
 * its state, the responder answers with one frame of its own, and both close: the framing of
 * `StreamMessenger`'s request mode, so agents running either implementation interoperate.
 *
 * Served here rather than by the shared messenger because a push/pull state is the largest thing
 * a peer may send (up to the core's `maxPushPullBytes`), so the responder bounds what one peer can
 * make it hold: at most `maxStreamsPerConnection` exchanges at once per connection (more are
 * reset), at most `connectionBudgetBytes` read and not yet handled across one connection's
 * exchanges, and `totalBudgetBytes` across all connections; an exchange past a budget is reset
 * and counted. Nothing a peer sends can throw out of here.
 */
import type { Connection, Stream } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { PeermeshError } from '../../common/errors.ts'
import { encodeFrame, FrameDecoder } from '../transport/frames.ts'
import type { Host } from '../transport/host.ts'

/** How much one peer, and all peers together, may make this agent read for push/pull. */
export interface PushPullStreamLimits {
  /** Largest state in either direction (the core's `maxPushPullBytes`). */
  maxStateBytes: number
  /** Inbound exchanges served at once per connection: a peer's periodic push/pull and a join. */
  maxStreamsPerConnection: number
  /** Bytes read and not yet handled across one connection's inbound exchanges. */
  connectionBudgetBytes: number
  /** The same across all connections: a flood from many peers cannot take more. */
  totalBudgetBytes: number
  /** Longest an inbound exchange may take, reading to replying. */
  timeoutMs: number
}

/** Defaults around a core's `maxPushPullBytes`, with their reasons. */
export function pushPullStreamLimits(maxStateBytes: number, timeoutMs: number): PushPullStreamLimits {
  return {
    maxStateBytes,
    maxStreamsPerConnection: 2, // one periodic push/pull and one join in flight; a third is a flood
    connectionBudgetBytes: maxStateBytes, // one whole state at a time per peer (2 × 32 MiB before)
    totalBudgetBytes: 2 * maxStateBytes, // two whole states at once for the agent; the rest retry later
    timeoutMs,
  }
}

/** Why an inbound exchange was refused (label of the metric). */
export type PushPullRefusal = 'streams' | 'bytes' | 'frame' | 'timeout' | 'dropped'

export class PushPullBudgetError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_PUSHPULL_BUDGET'
}

/** The core's answer to a request: our state, or undefined if it dropped the request. */
export type PushPullHandler = (from: string, state: Uint8Array) => Uint8Array | undefined

interface ConnectionUse {
  streams: number
  bytes: number
}

export class PushPullStreams {
  readonly stats = {
    served: 0,
    refused: { streams: 0, bytes: 0, frame: 0, timeout: 0, dropped: 0 } satisfies Record<
      PushPullRefusal,
      number
    >,
  }
  private handler: PushPullHandler = () => undefined
  private readonly connections = new Map<string, ConnectionUse>()
  private readonly inbound = new Set<Stream>()
  private totalBytes = 0
  private stopped = false

  constructor(
    private readonly init: {
      host: Host
      protocol: string
      limits: PushPullStreamLimits
      log: { debug(fields: object, message: string): void }
    },
  ) {}

  onRequest(handler: PushPullHandler): void {
    this.handler = handler
  }

  async start(): Promise<void> {
    const { host, protocol, limits } = this.init
    // libp2p's own per-connection cap is the backstop; ours counts the refusals first.
    await host.handle(protocol, (stream, connection) => this.serve(stream, connection), {
      maxInboundStreams: limits.maxStreamsPerConnection + 2,
    })
  }

  async stop(): Promise<void> {
    this.stopped = true
    await this.init.host.unhandle(this.init.protocol).catch(() => {})
    for (const s of this.inbound) s.abort(new Error('stopping'))
  }

  /** Bytes currently held by inbound exchanges (tests and metrics). */
  get bufferedBytes(): number {
    return this.totalBytes
  }

  /** One exchange with `to`: sends our state, returns its reply (at most `maxStateBytes`). */
  async request(to: string, state: Uint8Array, options: { signal: AbortSignal }): Promise<Uint8Array> {
    const { host, protocol, limits } = this.init
    const { signal } = options
    const stream = await host.dialProtocol(peerIdFromString(to), protocol, { signal })
    try {
      stream.send(encodeFrame(state))
      const reply = await readOneFrame(stream, limits.maxStateBytes, signal, () => {})
      if (reply === undefined) throw new PushPullBudgetError('peer closed the stream without a reply')
      return reply
    } finally {
      await stream.close({ signal }).catch(() => stream.abort(new Error('close failed')))
    }
  }

  private async serve(stream: Stream, connection: Connection): Promise<void> {
    const { limits } = this.init
    const from = connection.remotePeer.toString()
    let use = this.connections.get(connection.id)
    if (use === undefined) {
      use = { streams: 0, bytes: 0 }
      this.connections.set(connection.id, use)
    }
    if (this.stopped || use.streams >= limits.maxStreamsPerConnection) {
      this.refuse(stream, from, 'streams')
      if (use.streams === 0) this.connections.delete(connection.id)
      return
    }
    const conn = use
    conn.streams++
    this.inbound.add(stream)
    let held = 0
    const release = (): void => {
      conn.bytes -= held
      this.totalBytes -= held
      held = 0
    }
    const signal = AbortSignal.timeout(limits.timeoutMs)
    try {
      const request = await readOneFrame(stream, limits.maxStateBytes, signal, (n) => {
        if (conn.bytes + n > limits.connectionBudgetBytes || this.totalBytes + n > limits.totalBudgetBytes)
          throw new PushPullBudgetError('push/pull byte budget exceeded')
        conn.bytes += n
        this.totalBytes += n
        held += n
      })
      if (request === undefined) return this.refuse(stream, from, 'frame')
      const reply = this.handler(from, request)
      release()
      if (reply === undefined) return this.refuse(stream, from, 'dropped')
      stream.send(encodeFrame(reply))
      await stream.close({ signal })
      this.stats.served++
    } catch (err) {
      const reason: PushPullRefusal =
        err instanceof PushPullBudgetError ? 'bytes' : signal.aborted ? 'timeout' : 'frame'
      this.refuse(stream, from, reason, err)
    } finally {
      release()
      conn.streams--
      if (conn.streams === 0) this.connections.delete(connection.id)
      this.inbound.delete(stream)
    }
  }

  private refuse(stream: Stream, from: string, reason: PushPullRefusal, err?: unknown): void {
    this.stats.refused[reason]++
    this.init.log.debug({ peer: from, reason, err: (err as Error | undefined)?.message }, 'push/pull refused')
    stream.abort(new PushPullBudgetError(`push/pull refused: ${reason}`))
  }
}

/**
 * Reads the first frame of `stream` (undefined if it ends before one). `account(n)` is told of
 * every chunk before it is buffered and may throw to stop reading.
 */
async function readOneFrame(
  stream: Stream,
  maxBytes: number,
  signal: AbortSignal,
  account: (bytes: number) => void,
): Promise<Uint8Array | undefined> {
  const decoder = new FrameDecoder(maxBytes)
  const onAbort = (): void => stream.abort(new Error('timed out'))
  signal.addEventListener('abort', onAbort, { once: true })
  try {
    for await (const chunk of stream) {
      account(chunk.byteLength)
      const [frame] = decoder.push(chunk.subarray())
      if (frame !== undefined) return frame
    }
  } finally {
    signal.removeEventListener('abort', onAbort)
  }
  signal.throwIfAborted()
  return undefined
}
