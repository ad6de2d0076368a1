/**
 * The relay of one direction of an L4 connection, from a socket we dial (`net.connect` /
 * `tls.connect`, which take node's `onread` option) or one node accepted (`readAccepted`) to the
 * other socket of the connection.
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
import net from 'node:net'
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

/**
 * The socket fields through which node applies `onread` (lib/net.js: `kBuffer`, `kBufferCb`,
 * `kBufferGen`, read by `onStreamRead` in lib/internal/stream_base_commons.js on every read),
 * found once on a socket made with `onread`; null when this node does not show them.
 */
interface OnReadFields {
  buffer: symbol
  callback: symbol
  generator: symbol
}

let onReadFields: OnReadFields | null | undefined
/** Tests turn accepted sockets' `onread` off, to run the `'data'` path a later node may leave. */
let acceptedOnReadAllowed = true

function findOnReadFields(): OnReadFields | null {
  const buffer = Buffer.alloc(1)
  const callback = (): boolean => true
  const probe = new net.Socket({ onread: { buffer, callback } } as net.SocketConstructorOpts)
  const own = Object.getOwnPropertySymbols(probe)
  const field = (name: string): symbol | undefined => own.find((s) => s.description === name)
  const b = field('kBuffer')
  const c = field('kBufferCb')
  const g = field('kBufferGen')
  const fields = probe as unknown as Record<symbol, unknown>
  const found =
    b !== undefined && c !== undefined && g !== undefined && fields[b] === buffer && fields[c] === callback
      ? { buffer: b, callback: c, generator: g }
      : null
  probe.destroy()
  return found
}

/** The stream handle under a socket (`TCPWrap`, or `TLSWrap` for a TLS socket). */
interface StreamHandle {
  useUserBuffer?: (buffer: Uint8Array) => void
}

/** Whether `readAccepted` can read `socket` through `onread` (else the caller uses `'data'`). */
export function canReadAccepted(socket: net.Socket): boolean {
  if (!acceptedOnReadAllowed) return false
  onReadFields ??= findOnReadFields()
  const f = onReadFields
  const handle = (socket as unknown as { _handle?: StreamHandle | null })._handle
  const fields = socket as unknown as Record<symbol, unknown>
  return (
    f !== null &&
    typeof handle?.useUserBuffer === 'function' &&
    // Made by node's Socket constructor without `onread`: the fields are there, empty.
    Object.hasOwn(fields, f.buffer) &&
    fields[f.buffer] === null &&
    fields[f.generator] === null &&
    !socket.destroyed
  )
}

/**
 * Node's `onread` for a socket that a `net.Server` or `tls.Server` accepted: node takes the option
 * only when it makes the handle itself (`net.connect`), so accepted sockets read through the
 * Readable machinery (per chunk: for a plain socket a fresh 64 KiB allocation shrunk to the bytes
 * read, a Buffer, `push`, `'data'`), 2 to 4 µs a request more at one connection than a dialled
 * socket (bench:proxy-overhead). This sets the same fields and calls the same handle method as
 * `net.connect({ onread })` (lib/net.js, `initSocketHandle`), so from the next read on node
 * copies into the shared read buffer and calls `deliver` (as `relayOnRead`). Bytes node read
 * before are delivered first, in order. `pause()`/`resume()` and `'end'` behave as on a dialled
 * `onread` socket.
 *
 * False, changing nothing, when this node does not show those fields (`canReadAccepted`): the
 * caller reads `'data'` events as before.
 */
export function readAccepted(socket: net.Socket, deliver: (chunk: Buffer) => boolean): boolean {
  if (!canReadAccepted(socket)) return false
  const f = onReadFields!
  let full = false
  for (let chunk: Buffer | null = socket.read(); chunk !== null; chunk = socket.read()) {
    if (!deliver(chunk)) full = true
  }
  const options = relayOnRead(deliver)
  const fields = socket as unknown as Record<symbol, unknown>
  fields[f.buffer] = options.buffer
  fields[f.callback] = options.callback
  ;(socket as unknown as { _handle: Required<StreamHandle> })._handle.useUserBuffer(options.buffer)
  // A destination that filled up on those bytes: no more reads until `resume()`, as after a
  // callback that returned false.
  if (full) socket.pause()
  return true
}

/** Tests: false makes `readAccepted` decline (the `'data'` path), true restores it. */
export function allowAcceptedOnRead(allowed: boolean): void {
  acceptedOnReadAllowed = allowed
}
