/**
 * Passive HTTP/1.x framing for the inbound listener's metrics: it reads a copy of the bytes each
 * way (the relay itself stays a byte pipe) and reports every final response's status, so the
 * inbound side of an `http` service counts requests by code like the outbound side does.
 *
 * Requests are framed to learn their methods (a response to HEAD has no body) and when each
 * began; responses by Content-Length, chunked encoding, or the end of the connection. 1xx
 * responses are interim (not counted); a 101 or a CONNECT ends the sniffing, as does anything
 * that is not HTTP/1.x or a head over 64 KiB: from there the bytes are only relayed. Never throws.
 */

/** Longest request or response head read; past it the sniffer gives up. */
const MAX_HEAD_BYTES = 64 * 1024

type BodyState =
  | { kind: 'none' }
  | { kind: 'length'; left: number }
  | { kind: 'chunked'; phase: 'size' | 'data' | 'data-crlf' | 'trailers'; left: number; line: string }
  | { kind: 'close' }

/** Reads one direction's messages; `onHead` gets each head's first line and headers. */
class MessageFramer {
  private head = ''
  private body: BodyState = { kind: 'none' }
  dead = false

  constructor(
    private readonly onHead: (firstLine: string, headers: Map<string, string>) => BodyState | 'stop',
  ) {}

  push(chunk: Buffer): void {
    let i = 0
    while (i < chunk.length && !this.dead) {
      const b = this.body
      if (b.kind === 'close') return
      if (b.kind === 'length') {
        const n = Math.min(b.left, chunk.length - i)
        b.left -= n
        i += n
        if (b.left === 0) this.body = { kind: 'none' }
        continue
      }
      if (b.kind === 'chunked') {
        i = this.chunked(b, chunk, i)
        continue
      }
      // Reading a head: up to the blank line.
      const text = chunk.toString('latin1', i)
      const combined = this.head + text
      const end = combined.indexOf('\r\n\r\n')
      if (end < 0) {
        this.head = combined
        if (this.head.length > MAX_HEAD_BYTES) this.dead = true
        return
      }
      const consumed = end + 4 - this.head.length
      const headText = combined.slice(0, end)
      this.head = ''
      i += consumed
      if (headText.length === 0) continue // stray CRLF between messages
      const lines = headText.split('\r\n')
      const headers = new Map<string, string>()
      for (const line of lines.slice(1)) {
        const colon = line.indexOf(':')
        if (colon > 0) headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim())
      }
      const next = this.onHead(lines[0]!, headers)
      if (next === 'stop') {
        this.dead = true
        return
      }
      this.body = next
    }
  }

  private chunked(b: Extract<BodyState, { kind: 'chunked' }>, chunk: Buffer, start: number): number {
    let i = start
    while (i < chunk.length) {
      if (b.phase === 'data') {
        const n = Math.min(b.left, chunk.length - i)
        b.left -= n
        i += n
        if (b.left === 0) b.phase = 'data-crlf'
        continue
      }
      const c = chunk[i++]!
      b.line += String.fromCharCode(c)
      if (b.line.length > 4096) {
        this.dead = true
        return chunk.length
      }
      if (!b.line.endsWith('\r\n')) continue
      const line = b.line.slice(0, -2)
      b.line = ''
      if (b.phase === 'data-crlf') {
        b.phase = 'size'
      } else if (b.phase === 'size') {
        const size = Number.parseInt(line.split(';')[0]!.trim(), 16)
        if (!Number.isFinite(size) || size < 0) {
          this.dead = true
          return chunk.length
        }
        if (size === 0) b.phase = 'trailers'
        else {
          b.phase = 'data'
          b.left = size
        }
      } else if (line === '') {
        this.body = { kind: 'none' } // end of trailers: message done
        return i
      }
    }
    return i
  }
}

function bodyOf(headers: Map<string, string>): BodyState | undefined {
  if (headers.get('transfer-encoding')?.toLowerCase().includes('chunked'))
    return { kind: 'chunked', phase: 'size', left: 0, line: '' }
  const length = headers.get('content-length')
  if (length !== undefined) {
    const n = Number(length)
    if (!Number.isSafeInteger(n) || n < 0) return undefined
    return n === 0 ? { kind: 'none' } : { kind: 'length', left: n }
  }
  return undefined
}

/**
 * Sniffs one connection: `request(chunk)` for bytes from the client, `response(chunk)` for bytes
 * from the app; `onResponse(status, startedAt)` for each final response, with the time its
 * request began (`now()` when the request head was read).
 */
export class HttpExchangeSniffer {
  private readonly pending: { method: string; at: number }[] = []
  private readonly requests: MessageFramer
  private readonly responses: MessageFramer

  constructor(now: () => number, onResponse: (status: number, startedAt: number) => void) {
    this.requests = new MessageFramer((line, headers) => {
      const m = /^([A-Z]+) \S+ HTTP\/1\.[01]$/.exec(line)
      if (!m) return 'stop'
      if (m[1] === 'CONNECT' || this.pending.length > 1024) return 'stop'
      this.pending.push({ method: m[1]!, at: now() })
      return bodyOf(headers) ?? { kind: 'none' }
    })
    this.responses = new MessageFramer((line, headers) => {
      const m = /^HTTP\/1\.[01] (\d{3})(?: |$)/.exec(line)
      if (!m) return 'stop'
      const status = Number(m[1])
      if (status === 101) return 'stop'
      if (status < 200) return { kind: 'none' } // interim
      const req = this.pending.shift()
      if (req === undefined) return 'stop' // a response to nothing: not HTTP as we know it
      onResponse(status, req.at)
      if (req.method === 'HEAD' || status === 204 || status === 304) return { kind: 'none' }
      return bodyOf(headers) ?? { kind: 'close' }
    })
  }

  request(chunk: Buffer): void {
    if (!this.requests.dead) this.requests.push(chunk)
  }

  response(chunk: Buffer): void {
    if (!this.responses.dead) this.responses.push(chunk)
  }

  /** True once both directions gave up (the caller may stop feeding it). */
  get done(): boolean {
    return this.requests.dead && this.responses.dead
  }
}
