/**
 * One `peermesh-mux/1` session: many L4 streams over one mutual-TLS connection (frames in
 * `mux-frame.ts`). Both ends use this class; the outbound (`client` role) opens streams, the
 * inbound (`server` role) accepts them.
 *
 * Batching: frames queued during one event-loop turn go out in one TLS write (flushed by
 * `clock.defer`, after the poll phase), so 32 busy streams cost one TLS record and one syscall per
 * turn instead of 32. A session with a single stream writes at once.
 *
 * Flow control, per stream and per direction: the sender may have at most `initialWindow` bytes
 * of DATA not yet consumed by the receiver. The receiver writes DATA to the stream's local socket
 * and grants more (WINDOW) as that socket's buffer drains; a sender out of credit pauses its
 * source socket. DATA beyond the credit granted is a protocol error. Back-pressure from the
 * session itself: when the TLS socket holds more than `MUX_SESSION_HIGH_WATER` bytes unsent, every
 * stream that sends pauses its source until the socket drains. What one session can make this
 * process hold is therefore bounded: `maxStreams × initialWindow` in local sockets' buffers, the
 * high-water mark plus each stream's credit in the TLS socket (a peer that makes us queue more,
 * by sending frames that need an answer without reading the answers, loses the session), and a
 * constant in the decoder.
 *
 * A peer that does not read (server role): while the TLS socket is past the high-water mark the
 * session stops reading the peer's bytes, so its frames make us queue nothing more; and the RSTs
 * that answer OPENs refused at open (limit, GOAWAY, policy) may not pile up unsent past
 * `MUX_MAX_UNSENT_RESETS` (nghttp2 bounds its queued control frames the same way): past it the
 * session is closed (`peer_not_reading`). The frames one input chunk makes us send leave in one
 * write, not one write each.
 *
 * Stream life: OPEN; DATA and FIN each way (a FIN is a half-close, relayed as `end()`); the
 * stream is gone after both FINs and the close of its local socket, or at once after an RST
 * either way. Frames for a stream that was closed are ignored (they may cross an RST);
 * frames for a stream id never opened are a protocol error, which closes the session.
 */
import type net from 'node:net'
import type { Cancel, Clock } from '../common/clock.ts'
import {
  emptyFrame,
  FrameDecoder,
  type FrameHandler,
  FrameType,
  goAwayFrame,
  MUX_HEADER_BYTES,
  MUX_MAX_DATA_PAYLOAD,
  MUX_MAX_STREAM_ID,
  MuxResetCode,
  u32Frame,
  writeHeader,
} from './mux-frame.ts'

/** Unsent bytes in a session's TLS socket past which its streams stop reading their sources. */
export const MUX_SESSION_HIGH_WATER = 1024 * 1024

/**
 * RSTs answering the peer's OPENs (refused or reset at open) that may wait unsent in one session:
 * twice the most OPENs a conforming outbound can have unanswered (its own stream limit,
 * `DEFAULT_MUX_MAX_STREAMS`, 1024), so only a peer that opens streams without reading the answers
 * reaches it. 2048 RSTs are 32 KiB. "Unsent": not yet passed by the TLS socket to the kernel.
 */
export const MUX_MAX_UNSENT_RESETS = 2048

/** What one session holds unsent and whether it reads its peer (tests, diagnostics). */
export interface MuxBacklog {
  /** Bytes queued in the TLS socket and not yet handed to it. */
  queuedBytes: number
  /** RSTs answering OPENs not yet passed to the kernel (see `MUX_MAX_UNSENT_RESETS`). */
  unsentResets: number
  /** Reading from the peer is stopped until the socket drains. */
  inputPaused: boolean
}

/** After GOAWAY and our end of the TLS connection, how long the peer has to close before we destroy it. */
const MUX_CLOSE_LINGER_MS = 1_000

/** Largest credit a stream may hold (a WINDOW that takes it past this is a protocol error). */
const MAX_WINDOW = 0x7fff_ffff

/** Reported to a stream's owner when its session closed under it (never sent on the wire). */
export const MUX_SESSION_LOST = 256

/** What a stream's owner hears from the peer. */
export interface MuxStreamEvents {
  /** Bytes from the peer, already written to the local socket. `first`: the stream's first. */
  onData?(first: boolean): void
  /** The peer sent FIN: end the local socket's writable side. */
  onRemoteFin(): void
  /** The peer reset the stream, or the session closed (`MUX_SESSION_LOST`): the stream is gone. */
  onReset(code: number): void
}

export interface MuxSessionInit {
  socket: net.Socket
  role: 'client' | 'server'
  clock: Clock
  /** Streams open at once; an OPEN past it is refused (server role). */
  maxStreams: number
  /** Per-stream credit each way. */
  initialWindow: number
  /** The socket's bytes come through `receive` (an `onread` socket), not its `'data'` events. */
  externalReads?: boolean
  /** Server role: a stream the peer opened, within the limits. The owner wires it or resets it. */
  onOpen?(stream: MuxStream): void
  /** Server role: an OPEN refused by the stream limit or a GOAWAY already sent. */
  onRefused?(): void
  /** The peer broke the protocol; the session is being destroyed. */
  onProtocolError?(reason: string): void
  /** The peer sent GOAWAY: no new streams here. */
  onGoAway?(): void
  /** The session's last stream is gone (for idle close). */
  onIdle?(): void
  /** The TLS socket closed; every stream was reset first. */
  onClose?(): void
}

export class MuxStream {
  /** Bytes we may still send. */
  private sendCredit: number
  /** Total DATA bytes the peer may send (initial window + granted). */
  private recvLimit: number
  private recvTotal = 0
  /** Bytes beyond the credit, sent when WINDOW comes; the source is paused meanwhile. */
  private stalled: Buffer[] = []
  private finQueued = false
  /** The local socket closed after ending both ways; bytes still wait for credit, then FIN. */
  private finishAfterFin = false
  finSent = false
  finReceived = false
  private receivedAny = false
  /** Reset either way, or finished: no more frames, no more callbacks. */
  closed = false
  /** Paused by us (credit or session back-pressure). */
  private pausedSource = false
  events: MuxStreamEvents | undefined
  /** The socket at our end: its bytes are sent (owner calls `write`) and the peer's land in it. */
  private local: net.Socket | undefined

  constructor(
    readonly id: number,
    private readonly session: MuxSession,
    private readonly window: number,
  ) {
    this.sendCredit = window
    this.recvLimit = window
  }

  /** Sets the local socket: the peer's DATA is written to it, and it is paused when we cannot send. */
  attach(local: net.Socket, events: MuxStreamEvents): void {
    this.local = local
    this.events = events
    local.on('drain', this.grant)
  }

  /** Sends bytes of the local socket (the owner's `'data'`/`onread`). Pauses the source when it must. */
  write(chunk: Buffer): void {
    if (this.closed || this.finQueued) return
    if (this.stalled.length > 0) {
      this.stalled.push(chunk)
      this.pauseSource()
      return
    }
    const n = Math.min(chunk.length, this.sendCredit)
    if (n > 0) {
      this.sendCredit -= n
      this.session.sendData(this.id, n === chunk.length ? chunk : chunk.subarray(0, n))
    }
    if (n < chunk.length) {
      this.stalled.push(n === 0 ? chunk : chunk.subarray(n))
      this.pauseSource()
    } else if (this.session.blocked) {
      this.session.waitForDrain(this)
      this.pauseSource()
    }
  }

  /** The local socket ended: FIN, after any bytes still waiting for credit. */
  end(): void {
    if (this.closed || this.finQueued) return
    this.finQueued = true
    if (this.stalled.length === 0) this.sendFin()
  }

  /**
   * The local socket closed. Clean when it ended both ways: the bytes still waiting for credit
   * and the FIN go out, then the stream is gone. Otherwise the peer gets RST.
   */
  localClosed(): void {
    if (this.closed) return
    if (!this.finQueued || !this.finReceived) this.reset(MuxResetCode.CANCEL)
    else if (this.finSent) this.finish()
    else this.finishAfterFin = true
  }

  /** Resets the stream (RST to the peer); no callback follows. */
  reset(code: MuxResetCode): void {
    if (this.closed) return
    this.session.send(u32Frame(FrameType.RST, this.id, code))
    this.finish()
  }

  private sendFin(): void {
    this.finSent = true
    this.session.send(emptyFrame(FrameType.FIN, this.id))
    if (this.finishAfterFin) this.finish()
  }

  private finish(): void {
    this.closed = true
    this.stalled = []
    this.local?.off('drain', this.grant)
    this.session.forget(this)
  }

  private pauseSource(): void {
    if (this.pausedSource) return
    this.pausedSource = true
    this.local?.pause()
  }

  /** Whether the stream holds its source paused (out of credit, or the session is full). */
  get pausingSource(): boolean {
    return this.pausedSource
  }

  /** Session drained or credit came: resume the source unless still held. */
  resumeSource(): void {
    if (!this.pausedSource || this.closed || this.stalled.length > 0) return
    if (this.session.blocked) {
      this.session.waitForDrain(this)
      return
    }
    this.pausedSource = false
    this.local?.resume()
  }

  // --- from the session (the peer's frames) ---

  /** A DATA header: false when it exceeds the credit granted. */
  acceptDataHeader(length: number): boolean {
    if (this.finReceived) return false
    return length <= this.recvLimit - this.recvTotal
  }

  onData(piece: Buffer): void {
    if (this.closed) return
    this.recvTotal += piece.length
    const first = !this.receivedAny
    this.receivedAny = true
    const local = this.local
    if (local === undefined || local.destroyed) return
    if (local.write(piece)) this.grant()
    this.events?.onData?.(first)
  }

  /** More credit for the peer once the local socket took the bytes (drained into the kernel). */
  private readonly grant = (): void => {
    const local = this.local
    if (this.closed || this.finReceived || local === undefined) return
    const consumed = this.recvTotal - local.writableLength
    const increment = consumed + this.window - this.recvLimit
    // In halves of the window: one WINDOW frame per window/2 bytes, not one per DATA frame.
    if (increment < this.window / 2) return
    this.recvLimit += increment
    this.session.send(u32Frame(FrameType.WINDOW, this.id, increment))
  }

  /** False when the increment overflows the window (protocol error). */
  onWindow(increment: number): boolean {
    if (this.closed) return true
    if (increment === 0 || this.sendCredit + increment > MAX_WINDOW) return false
    this.sendCredit += increment
    while (this.stalled.length > 0 && this.sendCredit > 0) {
      const chunk = this.stalled[0]!
      const n = Math.min(chunk.length, this.sendCredit)
      this.sendCredit -= n
      if (n === chunk.length) {
        this.stalled.shift()
        this.session.sendData(this.id, chunk)
      } else {
        this.stalled[0] = chunk.subarray(n)
        this.session.sendData(this.id, chunk.subarray(0, n))
      }
    }
    if (this.stalled.length === 0) {
      if (this.finQueued && !this.finSent) this.sendFin()
      this.resumeSource()
    }
    return true
  }

  onFin(): void {
    if (this.closed || this.finReceived) return
    this.finReceived = true
    this.events?.onRemoteFin()
    if (this.finSent && (this.local === undefined || this.local.destroyed)) this.finish()
  }

  onReset(code: number): void {
    if (this.closed) return
    this.finish()
    this.events?.onReset(code)
  }
}

export class MuxSession {
  readonly socket: net.Socket
  private readonly init: MuxSessionInit
  private readonly streams = new Map<number, MuxStream>()
  private readonly decoder: FrameDecoder
  /** Client: the last id allocated. Server: the highest id the peer opened. */
  private lastId = 0
  private pending: Buffer[] = []
  private cancelFlush: Cancel | undefined
  /** The TLS socket holds more than the high-water mark. */
  blocked = false
  private readonly waiting = new Set<MuxStream>()
  /** GOAWAY sent or received (client: open no more streams). */
  goAwaySent = false
  /** Server: OPENs are refused (stopping, or a protocol error). */
  private refusing = false
  goAwayReceived = false
  /** The code of the GOAWAY received (undefined: none). */
  private goAwayCode: number | undefined
  closed = false
  /** Decoding a chunk of the peer's bytes: what it makes us send leaves in one write at its end. */
  private receiving = false
  /** Server: reading from the peer stopped while the socket is past the high-water mark. */
  private inputPaused = false
  /** RSTs answering OPENs in `pending`, and written to the socket but still queued there. */
  private pendingResets = 0
  private writtenResets = 0
  /** Bytes given to `socket.write` so far. */
  private written = 0
  /** Writes that carried RSTs answering OPENs: where each ends in `written`, and how many. */
  private resetMarks: { end: number; count: number }[] = []

  constructor(init: MuxSessionInit) {
    this.init = init
    this.socket = init.socket
    this.decoder = new FrameDecoder(this.handler)
    // A socket dialled with node's `onread` delivers its bytes through `receive` instead.
    if (!init.externalReads) this.socket.on('data', this.receive)
    this.socket.on('drain', () => {
      this.blocked = false
      this.settleResets()
      if (this.inputPaused) {
        this.inputPaused = false
        this.socket.resume()
      }
      const waiting = [...this.waiting]
      this.waiting.clear()
      for (const s of waiting) s.resumeSource()
    })
    // The peer ended its side: nothing more can come, end ours (the socket allows half-open for
    // the per-connection fallback, which shares its connect options).
    this.socket.on('end', () => this.socket.end())
    this.socket.on('error', () => {}) // 'close' follows
    this.socket.on('close', () => this.onSocketClose())
  }

  /** The peer's bytes, in chunks split anywhere (the callee keeps no reference beyond DATA pieces). */
  readonly receive = (chunk: Buffer): void => {
    this.receiving = true
    try {
      this.decoder.push(chunk)
    } finally {
      this.receiving = false
    }
    if (this.decoder.error !== undefined) {
      this.protocolError(this.decoder.error)
      return
    }
    if (this.pending.length > 0) this.scheduleFlush()
    // Server: a peer that does not read what we send makes us queue nothing more. The client
    // never stops reading (a server blocked on us would then never drain).
    if (this.blocked && this.init.role === 'server' && !this.closed && !this.inputPaused) {
      this.inputPaused = true
      this.socket.pause()
    }
  }

  /** What the session holds unsent now (tests, diagnostics). */
  get backlog(): MuxBacklog {
    let pendingBytes = 0
    for (const b of this.pending) pendingBytes += b.length
    this.settleResets()
    return {
      queuedBytes: this.socket.writableLength + pendingBytes,
      unsentResets: this.pendingResets + this.writtenResets,
      inputPaused: this.inputPaused,
    }
  }

  /** Streams open now. */
  get size(): number {
    return this.streams.size
  }

  /** Client role: whether a new stream may be opened here. */
  get acceptsStreams(): boolean {
    return (
      !this.closed &&
      !this.goAwayReceived &&
      !this.goAwaySent &&
      this.streams.size < this.init.maxStreams &&
      this.lastId < MUX_MAX_STREAM_ID
    )
  }

  /** Client role: opens a stream (check `acceptsStreams` first). */
  open(): MuxStream {
    const id = ++this.lastId
    const stream = new MuxStream(id, this, this.init.initialWindow)
    this.streams.set(id, stream)
    // Held to the end of the turn at least, so that the stream's first bytes share its write.
    this.pending.push(emptyFrame(FrameType.OPEN, id))
    this.cancelFlush ??= this.init.clock.defer(this.flush)
    return stream
  }

  /** Every open stream (for a policy re-check). */
  get openStreams(): Iterable<MuxStream> {
    return this.streams.values()
  }

  /**
   * No new streams: tells the peer (streams already open go on). `refuse` false (a drain after a
   * rotation): OPENs the peer sent before it read the GOAWAY are still served, so that the race
   * costs no retry; the peer closes the session once it has read the GOAWAY and its streams have
   * ended (the owner bounds that with its drain time).
   */
  goAway(code: MuxResetCode = MuxResetCode.SHUTDOWN, refuse = true): void {
    if (refuse) this.refusing = true
    if (this.closed || this.goAwaySent) return
    this.goAwaySent = true
    this.send(goAwayFrame(this.init.role === 'server' ? this.lastId : 0, code))
  }

  /** GOAWAY, then the TLS connection is ended once the frame is written; streams are reset. */
  close(code: MuxResetCode = MuxResetCode.SHUTDOWN): void {
    if (this.closed) return
    this.goAway(code)
    for (const s of [...this.streams.values()]) s.reset(MuxResetCode.CANCEL)
    this.flush()
    this.closeSoon()
  }

  /** Ends the TLS connection after what is queued; destroys it if the peer has not closed within a bound. */
  private closeSoon(): void {
    this.socket.end()
    const cancel = this.init.clock.setTimeout(() => this.socket.destroy(), MUX_CLOSE_LINGER_MS)
    this.socket.once('close', cancel)
  }

  /** Closes the TLS connection at once; streams' owners hear `MUX_SESSION_LOST`. */
  destroy(): void {
    this.socket.destroy()
  }

  // --- sending ---

  send(frame: Buffer): void {
    if (this.closed) return
    this.pending.push(frame)
    this.scheduleFlush()
  }

  sendData(id: number, data: Buffer): void {
    if (this.closed) return
    for (let off = 0; off < data.length; off += MUX_MAX_DATA_PAYLOAD) {
      const end = Math.min(data.length, off + MUX_MAX_DATA_PAYLOAD)
      const header = Buffer.allocUnsafe(MUX_HEADER_BYTES)
      writeHeader(header, 0, FrameType.DATA, id, end - off)
      this.pending.push(header, off === 0 && end === data.length ? data : data.subarray(off, end))
    }
    this.scheduleFlush()
  }

  private scheduleFlush(): void {
    // The frames a chunk of input makes us send go together once it is decoded (receive).
    if (this.cancelFlush !== undefined || this.receiving) return
    // A lone stream has nothing to share a write with: it goes now, without waiting for the turn
    // to end (that wait costs a lone request-response exchange CPU and latency for nothing).
    if (this.streams.size <= 1) this.flush()
    else this.cancelFlush = this.init.clock.defer(this.flush)
  }

  /** Everything queued in this turn, in one TLS write. */
  private readonly flush = (): void => {
    this.cancelFlush = undefined
    if (this.pending.length === 0 || this.socket.destroyed || this.socket.writableEnded) {
      this.pending = []
      this.pendingResets = 0
      return
    }
    const out = this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending)
    this.pending = []
    this.written += out.length
    if (this.pendingResets > 0) {
      this.resetMarks.push({ end: this.written, count: this.pendingResets })
      this.writtenResets += this.pendingResets
      this.pendingResets = 0
    }
    this.socket.write(out)
    const queued = this.socket.writableLength
    if (queued <= MUX_SESSION_HIGH_WATER) return
    this.blocked = true
    // Past what our own sending can queue (the high-water mark plus each stream's credit, the
    // most a stream sends before it sees the session blocked), the rest is control frames the peer makes us send (RST
    // for its OPENs, WINDOW for its DATA) while it does not read them: the session goes.
    if (queued > MUX_SESSION_HIGH_WATER + this.init.maxStreams * this.init.initialWindow) {
      this.abandon('peer_not_reading')
    }
  }

  waitForDrain(stream: MuxStream): void {
    this.waiting.add(stream)
  }

  forget(stream: MuxStream): void {
    this.streams.delete(stream.id)
    this.waiting.delete(stream)
    if (this.streams.size === 0 && !this.closed) this.init.onIdle?.()
  }

  // --- receiving ---

  private readonly handler: FrameHandler = {
    onControl: (type, id, value, value2) => {
      switch (type) {
        case FrameType.OPEN:
          return this.onOpen(id)
        case FrameType.GOAWAY:
          this.goAwayReceived = true
          this.goAwayCode = value2
          this.init.onGoAway?.()
          return !this.closed
        default: {
          const stream = this.streams.get(id)
          if (stream === undefined) return this.unknownStream(id)
          if (type === FrameType.FIN) stream.onFin()
          else if (type === FrameType.RST) stream.onReset(value)
          else if (!stream.onWindow(value)) return this.protocolError('window_overflow')
          return !this.closed
        }
      }
    },
    onDataHeader: (id, length) => {
      const stream = this.streams.get(id)
      if (stream === undefined) return this.unknownStream(id)
      if (!stream.acceptDataHeader(length)) return this.protocolError('data_beyond_credit')
      return true
    },
    onData: (id, piece) => {
      this.streams.get(id)?.onData(piece)
      return !this.closed
    },
  }

  /** A frame for a stream not open: ignored if it was open once, a protocol error if never. */
  private unknownStream(id: number): boolean {
    if (id <= this.lastId) return true
    return this.protocolError('unknown_stream')
  }

  private onOpen(id: number): boolean {
    if (this.init.role !== 'server') return this.protocolError('open_from_server')
    if (id <= this.lastId) return this.protocolError('stream_id_reused')
    this.lastId = id
    if (this.refusing || this.streams.size >= this.init.maxStreams) {
      this.send(u32Frame(FrameType.RST, id, MuxResetCode.REFUSED))
      this.init.onRefused?.()
      return this.resetAtOpen()
    }
    const stream = new MuxStream(id, this, this.init.initialWindow)
    this.streams.set(id, stream)
    this.init.onOpen?.(stream)
    if (this.closed) return false
    // Reset by the owner at once (denied, or past the listener's cap): an RST the peer asked for.
    return stream.closed ? this.resetAtOpen() : true
  }

  /** One more RST answering an OPEN: past `MUX_MAX_UNSENT_RESETS` unsent, the peer is not reading. */
  private resetAtOpen(): boolean {
    this.pendingResets++
    if (this.pendingResets + this.writtenResets <= MUX_MAX_UNSENT_RESETS) return true
    this.settleResets()
    if (this.pendingResets + this.writtenResets <= MUX_MAX_UNSENT_RESETS) return true
    return this.abandon('peer_not_reading')
  }

  /** Forgets the RSTs of writes the socket has passed on (its queue no longer holds them). */
  private settleResets(): void {
    const passedOn = this.written - this.socket.writableLength
    let i = 0
    while (i < this.resetMarks.length && this.resetMarks[i]!.end <= passedOn) {
      this.writtenResets -= this.resetMarks[i]!.count
      i++
    }
    if (i > 0) this.resetMarks.splice(0, i)
  }

  /** A peer that does not read: no GOAWAY it would not read either, the connection goes now. */
  private abandon(reason: string): false {
    if (!this.closed) {
      this.init.onProtocolError?.(reason)
      this.refusing = true
      this.loseStreams()
      this.socket.destroy()
    }
    return false
  }

  private protocolError(reason: string): false {
    if (!this.closed) {
      this.init.onProtocolError?.(reason)
      // A best-effort GOAWAY, then the connection goes.
      this.refusing = true
      if (!this.goAwaySent) {
        this.goAwaySent = true
        this.pending.push(goAwayFrame(this.lastId, MuxResetCode.PROTOCOL_ERROR))
      }
      this.flush()
      this.closeSoon()
      this.loseStreams()
    }
    return false
  }

  private onSocketClose(): void {
    this.cancelFlush?.()
    this.cancelFlush = undefined
    this.loseStreams()
    this.init.onClose?.()
  }

  private loseStreams(): void {
    if (this.closed) return
    this.closed = true
    this.pending = []
    this.pendingResets = 0
    this.waiting.clear()
    const streams = [...this.streams.values()]
    this.streams.clear()
    // A session its inbound closed because the source is denied: its streams were denied, not
    // lost (the caller reports a denial, and does not count the instance as failing).
    const code = this.goAwayCode === MuxResetCode.DENIED ? MuxResetCode.DENIED : MUX_SESSION_LOST
    for (const s of streams) s.onReset(code)
  }
}
