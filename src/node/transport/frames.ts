import type { Stream } from '@libp2p/interface'
import { PeermeshError } from '../../common/errors.ts'

/**
 * Length-prefixed framing for libp2p streams: a 4-byte big-endian length, then the payload.
 * The decoder never trusts the length field: a frame over `maxFrameBytes` is an error and the
 * caller resets the stream.
 */
export class FrameTooLargeError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_FRAME_TOO_LARGE'
}

const NO_HEAD = new Uint8Array(0)

export function encodeFrame(payload: Uint8Array): Uint8Array {
  return encodeFrameWithHead(NO_HEAD, payload)
}

/**
 * The frame of the payload `head` then `body`, built in one allocation and one copy of the body
 * (a message is not first copied into a payload, then again into its frame). The stream sends it
 * as one write.
 */
export function encodeFrameWithHead(head: Uint8Array, body: Uint8Array): Uint8Array {
  const length = head.length + body.length
  const out = new Uint8Array(4 + length)
  out[0] = length >>> 24
  out[1] = (length >>> 16) & 0xff
  out[2] = (length >>> 8) & 0xff
  out[3] = length & 0xff
  out.set(head, 4)
  out.set(body, 4 + head.length)
  return out
}

export class FrameDecoder {
  private chunks: Uint8Array[] = []
  private buffered = 0

  constructor(private readonly maxFrameBytes: number) {}

  /** Bytes received but not yet returned as a frame. */
  get bufferedBytes(): number {
    return this.buffered
  }

  /** Adds bytes; returns every complete frame. Throws `FrameTooLargeError` on an oversize frame. */
  push(data: Uint8Array): Uint8Array[] {
    this.chunks.push(data)
    this.buffered += data.length
    const frames: Uint8Array[] = []
    while (this.buffered >= 4) {
      const head = this.peek(4)
      const len = new DataView(head.buffer, head.byteOffset, 4).getUint32(0)
      if (len > this.maxFrameBytes)
        throw new FrameTooLargeError(`frame of ${len} bytes over the ${this.maxFrameBytes} limit`)
      if (this.buffered < 4 + len) break
      const all = this.take(4 + len)
      frames.push(all.subarray(4))
    }
    return frames
  }

  private peek(n: number): Uint8Array {
    const first = this.chunks[0]!
    if (first.length >= n) return first.subarray(0, n)
    this.compact()
    return this.chunks[0]!.subarray(0, n)
  }

  private take(n: number): Uint8Array {
    if (this.chunks[0]!.length < n) this.compact()
    const first = this.chunks[0]!
    const out = first.subarray(0, n)
    if (first.length === n) this.chunks.shift()
    else this.chunks[0] = first.subarray(n)
    this.buffered -= n
    return out
  }

  private compact(): void {
    const all = new Uint8Array(this.buffered)
    let off = 0
    for (const c of this.chunks) {
      all.set(c, off)
      off += c.length
    }
    this.chunks = [all]
  }
}

/** Kinds of multiplexed request frames: `u32 id | u8 kind | payload`. */
export const MUX_REQUEST = 0
export const MUX_REPLY = 1
/** The request failed on the serving side; the payload is a UTF-8 message. */
export const MUX_ERROR = 2
export const MUX_HEADER_BYTES = 5

/** The frame of a multiplexed request, reply or error: `u32 id | u8 kind | payload`. */
export function encodeMuxFrame(id: number, kind: number, payload: Uint8Array): Uint8Array {
  const head = new Uint8Array(MUX_HEADER_BYTES)
  head[0] = id >>> 24
  head[1] = (id >>> 16) & 0xff
  head[2] = (id >>> 8) & 0xff
  head[3] = id & 0xff
  head[4] = kind
  return encodeFrameWithHead(head, payload)
}

export function parseMuxHeader(frame: Uint8Array): { id: number; kind: number } | undefined {
  if (frame.length < MUX_HEADER_BYTES) return undefined
  const view = new DataView(frame.buffer, frame.byteOffset, MUX_HEADER_BYTES)
  const kind = view.getUint8(4)
  if (kind > MUX_ERROR) return undefined
  return { id: view.getUint32(0), kind }
}

/** Reads up to `count` frames from a stream, or fewer if it ends first. */
export async function readFrames(
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
  signal.throwIfAborted()
  return frames.slice(0, count)
}
