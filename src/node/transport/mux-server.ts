import { setMaxListeners } from 'node:events'
import type { Logger } from 'pino'
import { INTERNAL_ERROR_TEXT, peerFacingError } from '../../common/errors.ts'
import {
  encodeMuxFrame,
  MUX_ERROR,
  MUX_HEADER_BYTES,
  MUX_REPLY,
  MUX_REQUEST,
  parseMuxHeader,
} from './frames.ts'

/**
 * Serves one request: the reply, or a throw. What of a throw goes back to the peer is
 * `peerErrorText`'s: a coded PeermeshError's code and message, `internal error` for anything else.
 */
export type MuxRequestHandler = (from: string, bytes: Uint8Array, signal: AbortSignal) => Promise<Uint8Array>

export interface MuxServerInit {
  /** The peer id the connection or stream authenticated: every request is served as its. */
  from: string
  /** Requests served at once; more are refused (`busy`). */
  maxConcurrent: number
  /** The handler now (undefined, or `refusing()`: every request is refused `busy`). */
  handler: () => MuxRequestHandler | undefined
  refusing?: () => boolean
  /** Writes one frame to the peer, if the connection can still take it. */
  write: (frame: Uint8Array) => void
  /** A frame that is not a request. */
  onBadFrame: () => void
  log: Logger
}

/** How long a request may run before its signal aborts. */
const REQUEST_TIMEOUT_MS = 10_000
const encoder = new TextEncoder()

/** Longest message sent back with a code (a message is for people; the code is for code). */
const MAX_PEER_MESSAGE_CHARS = 512

/**
 * The text a request's failure is reported to the peer with (the MUX_ERROR payload, which the
 * requester wraps in a RemoteRequestError): `<code>: <message>` for what `peerFacingError` lets
 * through, `internal error` for anything else.
 */
export function peerErrorText(err: unknown): string {
  const e = peerFacingError(err)
  if (e === undefined) return INTERNAL_ERROR_TEXT
  const message =
    e.message.length > MAX_PEER_MESSAGE_CHARS ? `${e.message.slice(0, MAX_PEER_MESSAGE_CHARS)}…` : e.message
  return `${e.code}: ${message}`
}

/**
 * The serving side of multiplexed requests (frames.ts' `MUX_*`), one per inbound connection or
 * stream, shared by the libp2p transport (stream-messenger.ts) and the direct one
 * (direct-messenger.ts). Requests run concurrently, each with a signal that aborts when it times
 * out or when `close()` is called (the connection closed); replies go back tagged with the
 * request's id, in the order they finish.
 */
export class MuxServer {
  private readonly closed = new AbortController()
  private inFlight = 0

  constructor(private readonly init: MuxServerInit) {
    // One listener per request in flight (see `serve`), up to `maxConcurrent`: not a listener leak.
    setMaxListeners(init.maxConcurrent + 1, this.closed.signal)
  }

  /** Frames read from the peer (each a mux header and its payload). */
  receive(frames: Uint8Array[]): void {
    for (const f of frames) {
      const head = parseMuxHeader(f)
      if (head === undefined || head.kind !== MUX_REQUEST) {
        this.init.onBadFrame()
        continue
      }
      const handler = this.init.handler()
      if (
        handler === undefined ||
        this.init.refusing?.() === true ||
        this.inFlight >= this.init.maxConcurrent
      ) {
        this.reply(head.id, MUX_ERROR, encoder.encode('busy'))
        continue
      }
      void this.serve(handler, head.id, f.subarray(MUX_HEADER_BYTES))
    }
  }

  /** The connection closed: requests in flight see their signals abort with `reason`. */
  close(reason: Error): void {
    this.closed.abort(reason)
  }

  private reply(id: number, kind: number, payload: Uint8Array): void {
    this.init.write(encodeMuxFrame(id, kind, payload))
  }

  private async serve(handler: MuxRequestHandler, id: number, req: Uint8Array): Promise<void> {
    const { closed } = this
    this.inFlight++
    // Not `AbortSignal.any([closed.signal, ...])`: on Node 20 every signal combined with a
    // long-lived one stays referenced from it (nodejs/node#55351), one per request for as long
    // as the connection lives. A listener removed when the request ends holds nothing afterwards.
    const request = new AbortController()
    const onClosed = (): void => request.abort(closed.signal.reason)
    closed.signal.addEventListener('abort', onClosed, { once: true })
    const timeout = AbortSignal.timeout(REQUEST_TIMEOUT_MS)
    const onTimeout = (): void => request.abort(timeout.reason)
    timeout.addEventListener('abort', onTimeout, { once: true })
    try {
      if (closed.signal.aborted) onClosed()
      this.reply(id, MUX_REPLY, await handler(this.init.from, req, request.signal))
    } catch (err) {
      // The whole story stays here; the peer gets what is meant for it (`peerErrorText`).
      this.init.log.debug(
        {
          peer: this.init.from,
          err: err instanceof Error ? err.message : String(err),
          ...(err instanceof Error && err.stack !== undefined ? { stack: err.stack } : {}),
        },
        'request failed',
      )
      this.reply(id, MUX_ERROR, encoder.encode(peerErrorText(err)))
    } finally {
      closed.signal.removeEventListener('abort', onClosed)
      timeout.removeEventListener('abort', onTimeout)
      this.inFlight--
    }
  }
}
