/**
 * The frames of `peermesh-mux/1` (mux-frame.ts): a run of frames decodes to the same events
 * whatever the chunk boundaries, and every malformed header stops the decoder with its error.
 */
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import {
  emptyFrame,
  FrameDecoder,
  type FrameHandler,
  FrameType,
  goAwayFrame,
  MUX_HEADER_BYTES,
  MUX_MAX_DATA_PAYLOAD,
  MuxResetCode,
  u32Frame,
  writeHeader,
} from '../../src/proxy/mux-frame.ts'

type Event = [string, number, number | string, number?]

/** A handler that records events; DATA pieces of one frame are joined (pieces may be split anywhere). */
function recorder(): { handler: FrameHandler; events: Event[] } {
  const events: Event[] = []
  let data: Buffer[] = []
  let dataId = 0
  let dataLeft = 0
  const handler: FrameHandler = {
    onControl: (type, id, v1, v2) => {
      events.push([`c${type}`, id, v1, v2])
      return true
    },
    onDataHeader: (id, length) => {
      dataId = id
      dataLeft = length
      data = []
      return true
    },
    onData: (id, piece) => {
      expect(id).toBe(dataId)
      data.push(Buffer.from(piece))
      dataLeft -= piece.length
      if (dataLeft === 0) events.push(['data', id, Buffer.concat(data).toString('hex')])
      return true
    },
  }
  return { handler, events }
}

function dataFrame(id: number, payload: Buffer): Buffer {
  const b = Buffer.alloc(MUX_HEADER_BYTES + payload.length)
  writeHeader(b, 0, FrameType.DATA, id, payload.length)
  payload.copy(b, MUX_HEADER_BYTES)
  return b
}

function header(type: number, id: number, length: number): Buffer {
  const b = Buffer.alloc(MUX_HEADER_BYTES)
  b[0] = type
  b.writeUInt32BE(id, 4)
  b.writeUInt32BE(length, 8)
  return b
}

const frameArb = fc.oneof(
  fc.integer({ min: 1, max: 1000 }).map((id) => emptyFrame(FrameType.OPEN, id)),
  fc.integer({ min: 1, max: 1000 }).map((id) => emptyFrame(FrameType.FIN, id)),
  fc
    .tuple(fc.integer({ min: 1, max: 1000 }), fc.integer({ min: 0, max: 4 }))
    .map(([id, code]) => u32Frame(FrameType.RST, id, code)),
  fc
    .tuple(fc.integer({ min: 1, max: 1000 }), fc.integer({ min: 1, max: 2 ** 31 - 1 }))
    .map(([id, inc]) => u32Frame(FrameType.WINDOW, id, inc)),
  fc.integer({ min: 0, max: 1000 }).map((last) => goAwayFrame(last, MuxResetCode.SHUTDOWN)),
  fc
    .tuple(fc.integer({ min: 1, max: 1000 }), fc.uint8Array({ minLength: 1, maxLength: 3000 }))
    .map(([id, bytes]) => dataFrame(id, Buffer.from(bytes))),
)

describe('mux frames', () => {
  it('decode to the same events whatever the chunk boundaries', () => {
    fc.assert(
      fc.property(
        fc.array(frameArb, { minLength: 1, maxLength: 30 }),
        fc.array(fc.integer({ min: 1, max: 5000 }), { minLength: 1, maxLength: 50 }),
        (frames, cuts) => {
          const whole = Buffer.concat(frames)
          const reference = recorder()
          new FrameDecoder(reference.handler).push(whole)
          const split = recorder()
          const decoder = new FrameDecoder(split.handler)
          let off = 0
          let i = 0
          while (off < whole.length) {
            const n = cuts[i++ % cuts.length]!
            decoder.push(whole.subarray(off, off + n))
            off += n
          }
          expect(decoder.error).toBeUndefined()
          expect(split.events).toEqual(reference.events)
          expect(reference.events).toHaveLength(frames.length)
        },
      ),
      { numRuns: 300 },
    )
  })

  it('byte by byte: a header, a control payload and a DATA payload split into single bytes', () => {
    const whole = Buffer.concat([
      emptyFrame(FrameType.OPEN, 7),
      dataFrame(7, Buffer.from('hello')),
      u32Frame(FrameType.WINDOW, 7, 65_536),
      goAwayFrame(7, MuxResetCode.SHUTDOWN),
    ])
    const { handler, events } = recorder()
    const decoder = new FrameDecoder(handler)
    for (let i = 0; i < whole.length; i++) decoder.push(whole.subarray(i, i + 1))
    expect(events).toEqual([
      [`c${FrameType.OPEN}`, 7, 0, 0],
      ['data', 7, Buffer.from('hello').toString('hex')],
      [`c${FrameType.WINDOW}`, 7, 65_536, 0],
      [`c${FrameType.GOAWAY}`, 0, 7, MuxResetCode.SHUTDOWN],
    ])
  })

  it.each([
    ['an unknown type', header(9, 1, 0), 'bad_type'],
    ['type 0', header(0, 1, 0), 'bad_type'],
    ['non-zero flags', Buffer.from([FrameType.OPEN, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]), 'bad_header'],
    ['an oversized DATA frame', header(FrameType.DATA, 1, MUX_MAX_DATA_PAYLOAD + 1), 'bad_length'],
    ['a 4 GiB length', header(FrameType.DATA, 1, 0xffff_ffff), 'bad_length'],
    ['an empty DATA frame', header(FrameType.DATA, 1, 0), 'bad_length'],
    ['an OPEN with a payload', header(FrameType.OPEN, 1, 4), 'bad_length'],
    ['a WINDOW without its increment', header(FrameType.WINDOW, 1, 0), 'bad_length'],
    ['a stream frame on stream 0', header(FrameType.OPEN, 0, 0), 'bad_stream_id'],
    ['a GOAWAY on a stream', header(FrameType.GOAWAY, 3, 8), 'bad_stream_id'],
  ])('stops on %s, and ignores what follows', (_what, bad, error) => {
    const { handler, events } = recorder()
    const decoder = new FrameDecoder(handler)
    decoder.push(Buffer.concat([emptyFrame(FrameType.OPEN, 1), bad, emptyFrame(FrameType.OPEN, 2)]))
    expect(decoder.error).toBe(error)
    expect(events).toEqual([[`c${FrameType.OPEN}`, 1, 0, 0]])
    decoder.push(emptyFrame(FrameType.OPEN, 3))
    expect(events).toHaveLength(1)
  })

  it('a handler that refuses a DATA header stops the decoder before any payload', () => {
    const pieces: Buffer[] = []
    const decoder = new FrameDecoder({
      onControl: () => true,
      onDataHeader: () => false,
      onData: (_id, p) => {
        pieces.push(p)
        return true
      },
    })
    decoder.push(dataFrame(1, Buffer.from('xyz')))
    expect(decoder.stopped).toBe(true)
    expect(decoder.error).toBeUndefined()
    expect(pieces).toEqual([])
  })

  it('random garbage never throws', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 2000 }), (bytes) => {
        const { handler } = recorder()
        new FrameDecoder(handler).push(Buffer.from(bytes))
      }),
      { numRuns: 300 },
    )
  })
})
