import { PeermeshError } from '../../common/errors.ts'
import { encodeFrameWithHead, FrameDecoder } from './frames.ts'

/**
 * Messages larger than one frame, on a channel that chunks (StreamMessengerInit.chunking): each
 * frame's payload starts with a kind byte,
 *   0 | message                      a whole message;
 *   1 | u32 total length | bytes     the first chunk of a message of `total` bytes;
 *   2 | bytes                        the next chunk of the message in progress,
 * and a message is complete when its chunks add up to its total. A sender writes a message's
 * frames back to back on one stream, so a stream has at most one message in progress. Frames stay
 * small (`maxFrameBytes`), while a message may be as large as `maxMessageBytes` (a snapshot).
 *
 * What a peer may make this side hold is bounded per peer, over all its streams
 * (`PartialBudget`): bytes of partly received messages (reserved at their declared total, when the
 * first chunk arrives) and frames, and the number of messages in progress.
 */

const WHOLE = 0
const FIRST = 1
const MORE = 2
const FIRST_HEADER = 5
const WHOLE_HEAD = Uint8Array.of(WHOLE)
const MORE_HEAD = Uint8Array.of(MORE)

/** A chunk that does not fit the message in progress (or the kind byte is unknown). */
export class MalformedChunkError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_MALFORMED_CHUNK'
}

/** The frames (length-prefixed) that carry `message`, none larger than `maxFrameBytes`. */
export function encodeMessageFrames(message: Uint8Array, maxFrameBytes: number): Uint8Array[] {
  if (1 + message.length <= maxFrameBytes) return [encodeFrameWithHead(WHOLE_HEAD, message)]
  const first = new Uint8Array(FIRST_HEADER)
  first[0] = FIRST
  new DataView(first.buffer).setUint32(1, message.length)
  const frames = [encodeFrameWithHead(first, message.subarray(0, maxFrameBytes - FIRST_HEADER))]
  for (let at = maxFrameBytes - FIRST_HEADER; at < message.length; at += maxFrameBytes - 1)
    frames.push(encodeFrameWithHead(MORE_HEAD, message.subarray(at, at + maxFrameBytes - 1)))
  return frames
}

/** Reassembles the messages of one stream from its frames' payloads. */
export class ChunkAssembler {
  private parts: Uint8Array[] = []
  private received = 0
  /** Declared length of the message in progress; 0 when none. */
  private total = 0

  constructor(private readonly maxMessageBytes: number) {}

  /** Bytes reserved for the message in progress (its declared total), 0 when none. */
  get reservedBytes(): number {
    return this.total
  }

  /** The message this frame completes, if any. Throws MalformedChunkError. */
  push(frame: Uint8Array): Uint8Array | undefined {
    const kind = frame[0]
    if (kind === WHOLE && this.total === 0) return frame.subarray(1)
    if (kind === FIRST && this.total === 0 && frame.length > FIRST_HEADER) {
      const total = new DataView(frame.buffer, frame.byteOffset + 1, 4).getUint32(0)
      if (total > this.maxMessageBytes)
        throw new MalformedChunkError(`message of ${total} bytes over the ${this.maxMessageBytes} limit`)
      this.total = total
      return this.add(frame.subarray(FIRST_HEADER))
    }
    if (kind === MORE && this.total > 0 && frame.length > 1) return this.add(frame.subarray(1))
    throw new MalformedChunkError(
      `unexpected chunk (kind ${kind}, ${this.total > 0 ? 'a' : 'no'} message in progress)`,
    )
  }

  private add(part: Uint8Array): Uint8Array | undefined {
    this.received += part.length
    if (this.received > this.total)
      throw new MalformedChunkError(`chunks exceed the declared ${this.total} bytes`)
    this.parts.push(part)
    if (this.received < this.total) return undefined
    const out = Buffer.concat(this.parts, this.total)
    this.parts = []
    this.received = 0
    this.total = 0
    return out
  }
}

export interface PartialBudgetLimits {
  /** Bytes held per peer for partly received messages and frames, over all its streams. */
  maxBytes: number
  /** Messages in progress per peer (at most one per stream). */
  maxMessages: number
  /**
   * Bytes held for all peers together. Peer ids cost nothing to make (a cluster-key holder can
   * connect under as many as the connection limit allows), so the per-peer limit alone bounds
   * nothing; absent: no such limit.
   */
  maxTotalBytes?: number
}

/** How many peers' worth of partial messages a messenger holds at most (see maxTotalBytes). */
export const PARTIAL_BUDGET_PEERS = 4

/** What each peer's streams hold partly received, against the per-peer and overall limits. */
export class PartialBudget {
  private readonly peers = new Map<string, Map<object, { bytes: number; messages: number }>>()
  private total = 0

  constructor(private readonly limits: PartialBudgetLimits) {}

  /** Bytes held for all peers now. */
  get totalBytes(): number {
    return this.total
  }

  /**
   * Records what `stream` of `peer` now holds; false when the peer is then over a limit (the
   * caller resets the stream, then calls `release`).
   */
  set(peer: string, stream: object, bytes: number, messages: number): boolean {
    let streams = this.peers.get(peer)
    if (streams === undefined) {
      if (bytes === 0 && messages === 0) return true
      streams = new Map()
      this.peers.set(peer, streams)
    }
    this.total += bytes - (streams.get(stream)?.bytes ?? 0)
    streams.set(stream, { bytes, messages })
    if (this.limits.maxTotalBytes !== undefined && this.total > this.limits.maxTotalBytes) return false
    let totalBytes = 0
    let totalMessages = 0
    for (const s of streams.values()) {
      totalBytes += s.bytes
      totalMessages += s.messages
    }
    return totalBytes <= this.limits.maxBytes && totalMessages <= this.limits.maxMessages
  }

  release(peer: string, stream: object): void {
    const streams = this.peers.get(peer)
    if (streams === undefined) return
    this.total -= streams.get(stream)?.bytes ?? 0
    streams.delete(stream)
    if (streams.size === 0) this.peers.delete(peer)
  }

  /** Bytes held for `peer` now (for tests and metrics). */
  heldBy(peer: string): number {
    let n = 0
    for (const s of this.peers.get(peer)?.values() ?? []) n += s.bytes
    return n
  }
}

/** A peer went over its budget for partly received messages (see PartialBudget). */
export class PartialBudgetExceededError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_PARTIAL_BUDGET'
}

/**
 * One inbound message stream of `peer`: frames, reassembled into messages when the channel
 * chunks, within the peer's budget. The caller resets the stream when `push` throws, then calls
 * `release` (also on close).
 */
export class MessageStreamReader {
  private readonly decoder: FrameDecoder
  private readonly assembler: ChunkAssembler | undefined

  constructor(
    private readonly peer: string,
    private readonly budget: PartialBudget,
    limits: { maxMessageBytes: number; maxFrameBytes?: number },
  ) {
    this.decoder = new FrameDecoder(limits.maxFrameBytes ?? limits.maxMessageBytes)
    this.assembler =
      limits.maxFrameBytes === undefined ? undefined : new ChunkAssembler(limits.maxMessageBytes)
  }

  /**
   * The messages `data` completes. Throws FrameTooLargeError or MalformedChunkError (a bad
   * frame) or PartialBudgetExceededError (the peer holds too much here).
   */
  push(data: Uint8Array): Uint8Array[] {
    const messages: Uint8Array[] = []
    for (const f of this.decoder.push(data)) {
      const m = this.assembler === undefined ? f : this.assembler.push(f)
      if (m !== undefined) messages.push(m)
    }
    const reserved = this.assembler?.reservedBytes ?? 0
    if (!this.budget.set(this.peer, this, this.decoder.bufferedBytes + reserved, reserved > 0 ? 1 : 0))
      throw new PartialBudgetExceededError(`${this.peer} is over its budget for partly received messages`)
    return messages
  }

  release(): void {
    this.budget.release(this.peer, this)
  }
}
