/**
 * The relay of one direction of an L4 connection, from a socket we dial (`net.connect` /
 * `tls.connect`, which take node's `onread` option) to the other socket of the connection.
 *
 * `socket.pipe()` costs, per chunk: a fresh 64 KiB read allocation shrunk to the bytes read, a
 * Buffer around it, and the Readable machinery (`push`, `'data'`, the pipe's `ondata`). With
 * `onread`, node reads into one buffer that every relayed socket of the process shares, and
 * calls us with the byte count: we copy the bytes out before returning (small chunks come from
 * node's Buffer pool, so no allocation of its own) and write them on. The copy makes the shared
 * buffer safe whatever the destination does with the chunk (holds it in a queue, writes it later).
 *
 * Back-pressure as `pipe()`: when the destination's buffer is full, reading stops until it
 * drains. End of stream: the caller relays it (`'end'` is still emitted on the source).
 */
import type net from 'node:net'
import { RELAY_READ_BUFFER_BYTES } from './constants.ts'

/** Read by node, copied out in the same tick: one for the whole process. */
let sharedReadBuffer: Buffer | undefined

function readBuffer(): Buffer {
  sharedReadBuffer ??= Buffer.allocUnsafe(RELAY_READ_BUFFER_BYTES)
  return sharedReadBuffer
}

/** What the `onread` option of `net.connect` / `tls.connect` takes. */
export interface OnReadOptions {
  buffer: Buffer
  callback: (bytes: number, buffer: Buffer) => boolean
}

/**
 * The `onread` option for a socket whose bytes go to `deliver` (called with a chunk the callee
 * owns). `deliver` returns false when its destination is full: reading then stops until
 * `resume()` is called on the source (see `forward`).
 */
export function relayOnRead(deliver: (chunk: Buffer) => boolean): OnReadOptions {
  return {
    buffer: readBuffer(),
    callback: (bytes, buffer) => {
      const chunk = Buffer.allocUnsafe(bytes)
      buffer.copy(chunk, 0, 0, bytes)
      return deliver(chunk)
    },
  }
}

/**
 * Writes `chunk` from `source` to `sink`. False when `sink` is full: the caller stops reading
 * (`onread`'s callback returns false) and `source` resumes when `sink` drains. Bytes for a
 * destroyed sink cannot go anywhere: `source` is destroyed too.
 */
export function forward(source: net.Socket, sink: net.Socket, chunk: Buffer): boolean {
  if (sink.destroyed) {
    source.destroy()
    return false
  }
  if (sink.write(chunk)) return true
  if (!waitingForDrain.has(source)) {
    waitingForDrain.add(source)
    sink.once('drain', () => {
      waitingForDrain.delete(source)
      if (!source.destroyed) source.resume()
    })
  }
  return false
}

/** Sources that stopped reading until their sink drains (one 'drain' listener each). */
const waitingForDrain = new WeakSet<net.Socket>()
