/**
 * One process of `bench/proxy-relay-floor.ts`: a prototype relay, NOT the product. Two designs of
 * the L4 sidecar pair, each stripped to what moves bytes, to measure what node costs per request
 * below our sidecars' code:
 *
 * - `lean-*`: one mutual-TLS connection per client connection, as our sidecars and HAProxy do;
 *   every socket read through node's `onread` (the accepted ones through `readAccepted`, as our
 *   sidecars read them since session 24; `'data'` events where this node does not allow it) and
 *   written with `write`, nothing else (no policy, retries, metrics, back-pressure or half-close).
 * - `mux-*`: every client connection of the outbound multiplexed over ONE mutual-TLS connection to
 *   the inbound, in frames `[stream id u32][length u32][bytes]`; the frames a side has to send in
 *   one event-loop turn go out in one TLS write (flushed by `setImmediate`, after the poll phase).
 *   No flow control, no stream close, no policy: it only shows what batching would save.
 *
 *   node --import tsx bench/relay-floor-runner.ts <config.json>
 *
 * Prints one JSON line `{"port": N, "pid": P}` when listening; exits when stdin closes.
 */
import { readFileSync } from 'node:fs'
import net, { type AddressInfo } from 'node:net'
import tls from 'node:tls'
import { readAccepted } from '../src/proxy/relay.ts'
import type { ServiceCertificate } from '../src/proxy/types.ts'

export type FloorRunnerConfig =
  | { role: 'lean-inbound' | 'mux-inbound'; cert: ServiceCertificate; appPort: number }
  | { role: 'lean-outbound' | 'mux-outbound'; cert: ServiceCertificate; inboundPort: number }

const FRAME_HEAD = 8
const shared = Buffer.allocUnsafe(64 * 1024)

function tlsOptions(cert: ServiceCertificate): tls.SecureContextOptions {
  return { key: cert.keyPem, cert: cert.certPem, ca: [...cert.rootsPem], minVersion: 'TLSv1.3' }
}

/** node's `onread`: bytes copied out of the shared buffer and handed to `deliver`. */
function onread(deliver: (chunk: Buffer) => void): {
  buffer: Buffer
  callback: (n: number, b: Buffer) => boolean
} {
  return {
    buffer: shared,
    callback: (n, b) => {
      const chunk = Buffer.allocUnsafe(n)
      b.copy(chunk, 0, 0, n)
      deliver(chunk)
      return true
    },
  }
}

/** Frames queued in one event-loop turn, written to `socket` as one buffer after the poll phase. */
function framer(socket: net.Socket): (id: number, data: Buffer) => void {
  let pending: Buffer[] = []
  let scheduled = false
  const flush = (): void => {
    scheduled = false
    const out = pending.length === 1 ? pending[0]! : Buffer.concat(pending)
    pending = []
    socket.write(out)
  }
  return (id, data) => {
    const frame = Buffer.allocUnsafe(FRAME_HEAD + data.length)
    frame.writeUInt32BE(id, 0)
    frame.writeUInt32BE(data.length, 4)
    data.copy(frame, FRAME_HEAD)
    pending.push(frame)
    if (!scheduled) {
      scheduled = true
      setImmediate(flush)
    }
  }
}

/** Reassembles frames across chunks; `onFrame` gets a view that is valid until it returns. */
function deframer(onFrame: (id: number, payload: Buffer) => void): (chunk: Buffer) => void {
  let rest: Buffer | undefined
  return (chunk) => {
    const buf = rest ? Buffer.concat([rest, chunk]) : chunk
    let off = 0
    while (buf.length - off >= FRAME_HEAD) {
      const len = buf.readUInt32BE(off + 4)
      if (buf.length - off < FRAME_HEAD + len) break
      onFrame(buf.readUInt32BE(off), buf.subarray(off + FRAME_HEAD, off + FRAME_HEAD + len))
      off += FRAME_HEAD + len
    }
    rest = off === buf.length ? undefined : buf.subarray(off)
  }
}

/**
 * The rest of a lean relay's pair of sockets: the accepted `from`'s bytes written to `to` (the
 * other way goes through `to`'s `onread`), errors ignored, and either closing closes the other.
 */
function wire(from: net.Socket, to: net.Socket): void {
  const deliver = (c: Buffer): boolean => {
    to.write(c)
    return true
  }
  if (!readAccepted(from, deliver)) from.on('data', deliver)
  from.on('error', () => {})
  to.on('error', () => {})
  from.on('close', () => to.destroy())
  to.on('close', () => from.destroy())
}

function leanInbound(cert: ServiceCertificate, appPort: number): net.Server {
  return tls.createServer(
    { ...tlsOptions(cert), requestCert: true, rejectUnauthorized: true, noDelay: true },
    (socket) => {
      const local = net.connect({
        host: '127.0.0.1',
        port: appPort,
        noDelay: true,
        onread: onread((c) => socket.write(c)),
      })
      wire(socket, local)
    },
  )
}

function leanOutbound(cert: ServiceCertificate, inboundPort: number): net.Server {
  const context = tls.createSecureContext(tlsOptions(cert))
  return net.createServer({ noDelay: true }, (client) => {
    const up = tls.connect({
      host: '127.0.0.1',
      port: inboundPort,
      secureContext: context,
      checkServerIdentity: () => undefined,
      onread: onread((c) => client.write(c)),
    } as tls.ConnectionOptions)
    up.setNoDelay(true)
    wire(client, up)
  })
}

function muxInbound(cert: ServiceCertificate, appPort: number): net.Server {
  return tls.createServer(
    { ...tlsOptions(cert), requestCert: true, rejectUnauthorized: true, noDelay: true },
    (session) => {
      const send = framer(session)
      const streams = new Map<number, net.Socket>()
      session.on(
        'data',
        deframer((id, payload) => {
          let local = streams.get(id)
          if (local === undefined) {
            local = net.connect({
              host: '127.0.0.1',
              port: appPort,
              noDelay: true,
              onread: onread((c) => send(id, c)),
            })
            local.on('error', () => {})
            streams.set(id, local)
          }
          local.write(Buffer.from(payload))
        }),
      )
      session.on('error', () => {})
      session.on('close', () => {
        for (const s of streams.values()) s.destroy()
      })
    },
  )
}

function muxOutbound(cert: ServiceCertificate, inboundPort: number): net.Server {
  const clients = new Map<number, net.Socket>()
  let nextId = 1
  const session = tls.connect({
    host: '127.0.0.1',
    port: inboundPort,
    secureContext: tls.createSecureContext(tlsOptions(cert)),
    checkServerIdentity: () => undefined,
  })
  session.setNoDelay(true)
  session.on('error', () => {})
  const send = framer(session)
  session.on(
    'data',
    deframer((id, payload) => clients.get(id)?.write(Buffer.from(payload))),
  )
  return net.createServer({ noDelay: true }, (client) => {
    const id = nextId++
    clients.set(id, client)
    client.on('data', (c: Buffer) => send(id, c))
    client.on('error', () => {})
    client.on('close', () => clients.delete(id))
  })
}

function main(): void {
  const path = process.argv[2]
  if (!path) throw new Error('usage: relay-floor-runner.ts <config.json>')
  const config = JSON.parse(readFileSync(path, 'utf8')) as FloorRunnerConfig
  let server: net.Server
  switch (config.role) {
    case 'lean-inbound':
    case 'mux-inbound':
      server = (config.role === 'lean-inbound' ? leanInbound : muxInbound)(config.cert, config.appPort)
      break
    case 'lean-outbound':
    case 'mux-outbound':
      server = (config.role === 'lean-outbound' ? leanOutbound : muxOutbound)(config.cert, config.inboundPort)
      break
  }
  server.listen(0, '127.0.0.1', () => {
    const { port } = server.address() as AddressInfo
    process.stdout.write(`${JSON.stringify({ port, pid: process.pid })}\n`)
  })
  const exit = (): void => process.exit(0)
  process.stdin.on('end', exit)
  process.stdin.on('close', exit)
  process.on('SIGTERM', exit)
  process.stdin.resume()
}

main()
