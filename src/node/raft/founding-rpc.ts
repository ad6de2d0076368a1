import type { Logger } from 'pino'
import type { NodeId } from '../../raft/index.ts'
import type { Host } from '../transport/host.ts'
import { StreamMessenger } from '../transport/stream-messenger.ts'
import {
  decodeFoundingReply,
  decodeFoundingRequest,
  encodeFoundingReply,
  encodeFoundingRequest,
  FOUNDING_PROTOCOL,
  type FoundingReply,
  type FoundingRequest,
  MAX_FOUNDING_BYTES,
} from './founding.ts'

/** Handles one founding request from a peer (synchronous: the acceptor decides at once). */
export type FoundingHandler = (from: NodeId, req: FoundingRequest) => FoundingReply

/**
 * How founding talks to other agents: **reliable** request/response (one reply or a rejection:
 * unreachable, timed out, malformed reply). The libp2p one is `FoundingRpc`; tests use an
 * in-memory one with loss and reordering.
 */
export interface FoundingChannel {
  start(handler: FoundingHandler): Promise<void>
  stop(): Promise<void>
  request(to: NodeId, req: FoundingRequest, options: { signal: AbortSignal }): Promise<FoundingReply>
  /** Peer requests refused before reaching the handler (malformed). */
  readonly stats?: { refused: number }
}

/**
 * Founding requests over libp2p on their own protocol (`/peermesh/raft/founding/1`, a stream per
 * exchange: a founding is a handful of requests per agent, once). A peer's request that does not
 * decode (size, shape, ids; founding.ts) is refused by resetting the stream and counted in
 * `stats.refused`; nothing it sends can throw out of here.
 */
export class FoundingRpc implements FoundingChannel {
  private readonly messenger: StreamMessenger
  readonly stats = { refused: 0 }

  constructor(host: Host, log: Logger) {
    this.messenger = new StreamMessenger({
      host,
      // StreamMessenger always serves a message channel too; founding sends nothing on it.
      protocol: `${FOUNDING_PROTOCOL}/unused`,
      requestProtocol: FOUNDING_PROTOCOL,
      requestMode: 'stream',
      log,
      maxMessageBytes: 64,
      maxRequestBytes: MAX_FOUNDING_BYTES,
    })
  }

  async start(handler: FoundingHandler): Promise<void> {
    this.messenger.onRequest(async (from, bytes) => {
      let req: FoundingRequest
      try {
        req = decodeFoundingRequest(bytes)
      } catch (err) {
        this.stats.refused++
        throw err
      }
      return encodeFoundingReply(handler(from, req))
    })
    await this.messenger.start()
  }

  async stop(): Promise<void> {
    await this.messenger.stop()
  }

  async request(to: NodeId, req: FoundingRequest, options: { signal: AbortSignal }): Promise<FoundingReply> {
    return decodeFoundingReply(await this.messenger.request(to, encodeFoundingRequest(req), options))
  }
}
