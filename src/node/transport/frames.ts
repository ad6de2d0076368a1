import { PeermeshError } from '../../common/errors.ts'

/**
 * Length-prefixed framing for libp2p streams: a 4-byte big-endian length, then the payload.
 * The decoder never trusts the length field: a frame over `maxFrameBytes` is an error and the
 * caller resets the stream.
 */
export class FrameTooLargeError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_FRAME_TOO_LARGE'
}

export function encodeFrame(payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + payload.length)
  new DataView(out.buffer).setUint32(0, payload.length)
  out.set(payload, 4)
  return out
}

export class FrameDecoder {
  private chunks: Uint8Array[] = []
  private buffered = 0

  constructor(private readonly maxFrameBytes: number) {}

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
