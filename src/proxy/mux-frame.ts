/**
 * The frames of `peermesh-mux/1`, the multiplexed L4 protocol between an outbound sidecar and an
 * instance's inbound over one mutual-TLS connection (see `mux-session.ts`). Pure: encoding, and a
 * decoder that takes the session's bytes in arbitrary chunks. No I/O, no timers.
 *
 * Every frame starts with a 12-byte header:
 *
 *     0      1      2      4            8            12
 *     | type | 0    | 0  0 | stream id  | length     | payload (length bytes)
 *
 * - OPEN (1), stream id > 0, no payload: the outbound opens a stream (ids strictly increasing).
 * - DATA (2), stream id > 0, 1..MUX_MAX_DATA_PAYLOAD bytes: stream bytes, within the sender's credit.
 * - FIN (3), no payload: the sender will send no more DATA on the stream (a half-close).
 * - RST (4), payload u32 code (`MuxResetCode`): the stream is gone both ways.
 * - WINDOW (5), payload u32 increment: the receiver grants that many more DATA bytes on the stream.
 *   Every stream starts with 64 KiB of credit each way (`DEFAULT_MUX_INITIAL_WINDOW`): version 1
 *   fixes it, as nothing on the wire announces another.
 * - GOAWAY (6), stream id 0, payload u32 last stream id + u32 code: no new streams on this
 *   session; streams above the last id were not processed (and may be retried elsewhere).
 *
 * Anything else (an unknown type, non-zero flags or reserved bytes, a wrong length, stream id 0
 * where one is needed) is a protocol error: the decoder stops and the session is closed.
 *
 * DATA payloads are handed out in pieces as they arrive (never reassembled), so the decoder holds
 * at most one header and one control payload: its memory is constant whatever the peer sends.
 */

export const MUX_ALPN = 'peermesh-mux/1'

export const MUX_HEADER_BYTES = 12

/** Largest DATA payload: libuv's read size, so one read of a client socket is one frame. */
export const MUX_MAX_DATA_PAYLOAD = 64 * 1024

export const FrameType = {
  OPEN: 1,
  DATA: 2,
  FIN: 3,
  RST: 4,
  WINDOW: 5,
  GOAWAY: 6,
} as const
export type FrameType = (typeof FrameType)[keyof typeof FrameType]

/** Why a stream was reset (RST) or a session goes away (GOAWAY). */
export const MuxResetCode = {
  /** The stream's local socket closed before the exchange ended both ways. */
  CANCEL: 0,
  /** Not processed (stream limit, draining session): safe to retry elsewhere. */
  REFUSED: 1,
  /** Intentions deny the session's source service. */
  DENIED: 2,
  /** The inbound could not connect to its local app. */
  APP_CONNECT_FAILED: 3,
  /** The peer broke the protocol (the session is closed). */
  PROTOCOL_ERROR: 4,
  /** GOAWAY: the sender is stopping or rotating its certificate. */
  SHUTDOWN: 5,
} as const
export type MuxResetCode = (typeof MuxResetCode)[keyof typeof MuxResetCode]

const LAST_TYPE = FrameType.GOAWAY
const MAX_STREAM_ID = 0xffff_ffff
export { MAX_STREAM_ID as MUX_MAX_STREAM_ID }

/** The payload length a control frame must have; DATA is checked apart. */
function controlPayloadBytes(type: FrameType): number {
  switch (type) {
    case FrameType.RST:
    case FrameType.WINDOW:
      return 4
    case FrameType.GOAWAY:
      return 8
    default:
      return 0
  }
}

/** Writes a frame header into `into` at `offset`. */
export function writeHeader(
  into: Buffer,
  offset: number,
  type: FrameType,
  streamId: number,
  length: number,
): void {
  into[offset] = type
  into[offset + 1] = 0
  into[offset + 2] = 0
  into[offset + 3] = 0
  into.writeUInt32BE(streamId, offset + 4)
  into.writeUInt32BE(length, offset + 8)
}

/** A frame without payload (OPEN, FIN). */
export function emptyFrame(type: FrameType, streamId: number): Buffer {
  const b = Buffer.allocUnsafe(MUX_HEADER_BYTES)
  writeHeader(b, 0, type, streamId, 0)
  return b
}

/** A frame whose payload is one u32 (RST code, WINDOW increment). */
export function u32Frame(type: FrameType, streamId: number, value: number): Buffer {
  const b = Buffer.allocUnsafe(MUX_HEADER_BYTES + 4)
  writeHeader(b, 0, type, streamId, 4)
  b.writeUInt32BE(value, MUX_HEADER_BYTES)
  return b
}

export function goAwayFrame(lastStreamId: number, code: MuxResetCode): Buffer {
  const b = Buffer.allocUnsafe(MUX_HEADER_BYTES + 8)
  writeHeader(b, 0, FrameType.GOAWAY, 0, 8)
  b.writeUInt32BE(lastStreamId, MUX_HEADER_BYTES)
  b.writeUInt32BE(code, MUX_HEADER_BYTES + 4)
  return b
}

/** What the decoder reports, in order of arrival. Each returns false to stop decoding (session closed). */
export interface FrameHandler {
  /** OPEN, FIN, RST, WINDOW, GOAWAY. `value`/`value2`: the u32 fields of the payload (0 when none). */
  onControl(type: FrameType, streamId: number, value: number, value2: number): boolean
  /** A DATA frame's header, before any of its payload: credit and stream checks go here. */
  onDataHeader(streamId: number, length: number): boolean
  /** A piece of the current DATA frame's payload; the callee owns it. */
  onData(streamId: number, piece: Buffer): boolean
}

/** Why the decoder stopped on bad input (its `error`). */
export type DecodeError = 'bad_type' | 'bad_header' | 'bad_length' | 'bad_stream_id'

/**
 * Decodes frames from chunks split anywhere. After a protocol error (`error` set) or a handler
 * returning false, it ignores all further input.
 */
export class FrameDecoder {
  private readonly header = Buffer.alloc(MUX_HEADER_BYTES)
  private headerFill = 0
  /** The frame being read: its type, stream and payload bytes still to come. */
  private type: FrameType = FrameType.OPEN
  private streamId = 0
  private remaining = 0
  private inPayload = false
  private readonly control = Buffer.alloc(8)
  private controlFill = 0
  stopped = false
  error: DecodeError | undefined

  constructor(private readonly handler: FrameHandler) {}

  push(chunk: Buffer): void {
    let off = 0
    const n = chunk.length
    while (off < n && !this.stopped) {
      if (!this.inPayload) {
        const take = Math.min(MUX_HEADER_BYTES - this.headerFill, n - off)
        if (take === MUX_HEADER_BYTES) {
          // Fast path: the whole header is in this chunk.
          if (!this.startFrame(chunk, off)) return
        } else {
          chunk.copy(this.header, this.headerFill, off, off + take)
          this.headerFill += take
          if (this.headerFill < MUX_HEADER_BYTES) return
          if (!this.startFrame(this.header, 0)) return
        }
        off += take
        this.headerFill = 0
        if (this.remaining === 0 && !this.finishControl()) return
        continue
      }
      const take = Math.min(this.remaining, n - off)
      if (this.type === FrameType.DATA) {
        this.remaining -= take
        if (this.remaining === 0) this.inPayload = false
        if (!this.handler.onData(this.streamId, chunk.subarray(off, off + take))) {
          this.stop()
          return
        }
      } else {
        chunk.copy(this.control, this.controlFill, off, off + take)
        this.controlFill += take
        this.remaining -= take
        if (this.remaining === 0 && !this.finishControl()) return
      }
      off += take
    }
  }

  private stop(): void {
    this.stopped = true
  }

  private fail(error: DecodeError): false {
    this.error = error
    this.stopped = true
    return false
  }

  /** Validates a header; false when decoding must stop. */
  private startFrame(b: Buffer, at: number): boolean {
    const type = b[at]!
    if (type < FrameType.OPEN || type > LAST_TYPE) return this.fail('bad_type')
    if (b[at + 1] !== 0 || b[at + 2] !== 0 || b[at + 3] !== 0) return this.fail('bad_header')
    const streamId = b.readUInt32BE(at + 4)
    const length = b.readUInt32BE(at + 8)
    const t = type as FrameType
    if ((t === FrameType.GOAWAY) !== (streamId === 0)) return this.fail('bad_stream_id')
    if (t === FrameType.DATA) {
      if (length === 0 || length > MUX_MAX_DATA_PAYLOAD) return this.fail('bad_length')
    } else if (length !== controlPayloadBytes(t)) {
      return this.fail('bad_length')
    }
    this.type = t
    this.streamId = streamId
    this.remaining = length
    this.controlFill = 0
    this.inPayload = length > 0
    if (t === FrameType.DATA && !this.handler.onDataHeader(streamId, length)) {
      this.stop()
      return false
    }
    return true
  }

  /** A control frame is complete: hand it out. */
  private finishControl(): boolean {
    this.inPayload = false
    const c = this.control
    const value = this.controlFill >= 4 ? c.readUInt32BE(0) : 0
    const value2 = this.controlFill >= 8 ? c.readUInt32BE(4) : 0
    if (!this.handler.onControl(this.type, this.streamId, value, value2)) {
      this.stop()
      return false
    }
    return true
  }
}
