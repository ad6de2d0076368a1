import type { Logger } from 'pino'
import type { Clock } from '../../common/clock.ts'
import type { Host } from './host.ts'

/** What a StreamMessenger is built with (stream-messenger.ts). */
export interface StreamMessengerInit {
  host: Host
  /** Protocol of the best-effort message channel, e.g. `/peermesh/swim/1`. */
  protocol: string
  /** Protocol of request/response exchanges, e.g. `/peermesh/swim/pushpull/1`. */
  requestProtocol?: string
  /**
   * How requests travel on `requestProtocol`:
   * - `'stream'` (default): a new stream per exchange. Right for rare, large exchanges (push/pull);
   * - `'multiplexed'`: one long-lived stream per peer, requests and replies tagged with an id, many
   *   in flight. Right for frequent small ones (forwarded Raft writes): no stream open, protocol
   *   negotiation and close per request, a round trip through both event loops each.
   * Both ends must agree: the mode is part of the protocol (give the two modes different ids).
   */
  requestMode?: 'stream' | 'multiplexed'
  /** Multiplexed mode: requests served at once per inbound stream; more are refused (busy). */
  maxConcurrentRequests?: number
  log: Logger
  /** Largest message accepted on the message channel (reassembled, when it is chunked). */
  maxMessageBytes: number
  /**
   * Messages larger than `maxFrameBytes` travel as chunks on the message channel and are
   * reassembled here (see message-chunks.ts); part of the protocol: both ends must agree.
   * Unset: one frame per message, up to `maxMessageBytes`.
   */
  chunking?: { maxFrameBytes: number }
  /**
   * Per peer, over all its inbound message streams: bytes held for partly received messages and
   * frames, and messages in progress. A stream that takes its peer over either is reset (counted
   * in `stats.overBudget`). Default: one largest message and two frames; two messages.
   */
  maxPartialBytesPerPeer?: number
  maxPartialMessagesPerPeer?: number
  /** Inbound message streams per connection (default 1024). */
  maxInboundStreams?: number
  /** Largest request or response. */
  maxRequestBytes?: number
  /** Frames queued per peer while its stream is being opened; older ones are dropped beyond it. */
  maxQueuedPerPeer?: number
  /** After a failed dial, don't dial that peer again for this long (messages are dropped). */
  dialBackoffMs?: number
  /** Told when a dial to a peer fails (e.g. to look its addresses up in the DHT). */
  onDialFailure?: (peer: string) => void
  /** Times the dial backoff (default: the system clock). */
  clock?: Clock
}
