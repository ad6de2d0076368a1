/**
 * The L4 relay (relay.ts) between the outbound listener and the inbound listener: bytes arrive
 * whole and in order on many connections at once (they share one read buffer), half-closes are
 * relayed both ways, and a client that stops reading stops the app's sending instead of filling
 * the sidecars' memory. Every case runs multiplexed over one `peermesh-mux/1` session (the
 * default) and with one TLS connection per client connection (`mux: false`), each with accepted
 * sockets read through `onread` (node 20) and through `'data'` events (a node without it).
 */
import { createHash, randomBytes } from 'node:crypto'
import net from 'node:net'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { InboundListener } from '../../src/proxy/inbound.ts'
import { OutboundListener } from '../../src/proxy/outbound-tcp.ts'
import { allowAcceptedOnRead } from '../../src/proxy/relay.ts'
import {
  IntentionAuthorizer,
  StaticCertificateSource,
  StaticEndpointSource,
} from '../../src/proxy/sources.ts'
import type { ServiceCertificate } from '../../src/proxy/types.ts'
import { endpoint, leafFor, listenLoopback, makeRoot, pumpInto, TD, waitFor } from './helpers.ts'

let apiCert: ServiceCertificate
let webCert: ServiceCertificate
const authorizer = IntentionAuthorizer.from([{ source: 'web', destination: 'api', action: 'allow' }])

beforeAll(async () => {
  const root = await makeRoot()
  ;[apiCert, webCert] = await Promise.all([leafFor(root, 'api'), leafFor(root, 'web')])
})

const cleanups: (() => Promise<void>)[] = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

/** A raw TCP app on 127.0.0.1 (half-open allowed); every accepted socket goes to `onSocket`. */
async function startApp(onSocket: (socket: net.Socket) => void): Promise<number> {
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    socket.on('error', () => {})
    onSocket(socket)
  })
  const { port, close } = await listenLoopback(server)
  cleanups.push(close)
  return port
}

/** web's outbound listener (L4) -> api's inbound listener -> the app on `appPort`; returns the outbound port. */
async function meshTo(appPort: number, mux: boolean): Promise<number> {
  const inbound = new InboundListener({
    service: 'api',
    trustDomain: TD,
    port: 0,
    bindAddress: '127.0.0.1',
    localServicePort: appPort,
    certificates: new StaticCertificateSource(apiCert),
    authorizer,
    mux,
  })
  await inbound.start()
  cleanups.push(() => inbound.stop())
  const outbound = new OutboundListener({
    sourceService: 'web',
    destinationService: 'api',
    trustDomain: TD,
    bindPort: 0,
    certificates: new StaticCertificateSource(webCert),
    endpoints: new StaticEndpointSource([endpoint('api-1', inbound.port)]),
    mux,
  })
  await outbound.start()
  cleanups.push(() => outbound.stop())
  return outbound.port
}

function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true }, () => resolve(socket))
    socket.once('error', reject)
    cleanups.push(async () => {
      socket.destroy()
    })
  })
}

const sha256 = (chunks: Buffer[]): string => {
  const h = createHash('sha256')
  for (const c of chunks) h.update(c)
  return h.digest('hex')
}

describe.each([
  { mode: 'multiplexed', mux: true, onRead: true },
  { mode: 'per connection', mux: false, onRead: true },
  { mode: 'multiplexed, accepted sockets read by data events', mux: true, onRead: false },
  { mode: 'per connection, accepted sockets read by data events', mux: false, onRead: false },
])('L4 relay through an outbound and an inbound listener ($mode)', ({ mux, onRead }) => {
  // Accepted sockets read through onread where node allows it (relay.ts `readAccepted`), through
  // 'data' events where it does not: both paths relay the same.
  beforeAll(() => allowAcceptedOnRead(onRead))
  afterAll(() => allowAcceptedOnRead(true))
  it('echoes 4 MiB on each of 6 connections at once, every byte in order', async () => {
    // The app echoes every byte and ends when the caller ends.
    const port = await meshTo(await startApp((s) => s.pipe(s)), mux)
    const total = 4 * 1024 * 1024
    const results = await Promise.all(
      Array.from({ length: 6 }, async () => {
        const socket = await connect(port)
        const sent: Buffer[] = []
        const received: Buffer[] = []
        let receivedBytes = 0
        const done = new Promise<void>((resolve, reject) => {
          socket.on('data', (d: Buffer) => {
            received.push(d)
            receivedBytes += d.length
          })
          socket.on('end', () => resolve())
          socket.on('error', reject)
        })
        // Chunks of varied sizes (1 byte to 96 KiB), written with back-pressure.
        for (let n = 0; n < total; ) {
          const size = Math.min(total - n, 1 + Math.floor(Math.random() * 96 * 1024))
          const chunk = randomBytes(size)
          sent.push(chunk)
          n += size
          if (!socket.write(chunk)) await new Promise((r) => socket.once('drain', r))
        }
        socket.end()
        await done
        return { sent: sha256(sent), received: sha256(received), receivedBytes }
      }),
    )
    for (const r of results) {
      expect(r.receivedBytes).toBe(total)
      expect(r.received).toBe(r.sent)
    }
  })

  it('relays a half-close both ways: the app answers after the caller ended, then ends too', async () => {
    const port = await meshTo(
      await startApp((s) => {
        let bytes = 0
        s.on('data', (d: Buffer) => {
          bytes += d.length
        })
        // Only after the caller's end (relayed by both sidecars) does the app answer.
        s.on('end', () => s.end(`got ${bytes} bytes`))
      }),
      mux,
    )
    // A small request, and one past the replay buffer (64 KiB) sent before the handshake ends.
    for (const size of [10, 200_000]) {
      const socket = await connect(port)
      let reply = ''
      const ended = new Promise<void>((resolve) => socket.on('end', resolve))
      socket.setEncoding('utf8')
      socket.on('data', (d: string) => {
        reply += d
      })
      socket.end('x'.repeat(size))
      await ended
      expect(reply).toBe(`got ${size} bytes`)
    }
  })

  it("a client gone after its half-close: the app's next bytes tear the connection down to the app", async () => {
    const app = { socket: undefined as net.Socket | undefined, closed: false }
    const port = await meshTo(
      await startApp((s) => {
        app.socket = s
        s.on('close', () => {
          app.closed = true
        })
        s.once('data', () => s.write('first'))
      }),
      mux,
    )
    const socket = await connect(port)
    const first = new Promise<void>((resolve) => socket.once('data', () => resolve()))
    socket.end('hello')
    await first
    socket.destroy()
    await waitFor(() => app.socket?.readableEnded === true, 5_000, 'the app to see the end')
    // The app keeps talking; nobody can take it: both sidecars close, and so does the app's socket.
    const talk = setInterval(() => app.socket!.write('more'), 50)
    try {
      await waitFor(() => app.closed, 5_000, "the app's connection to close")
    } finally {
      clearInterval(talk)
    }
  })

  it('a client that stops reading stops the app (back-pressure), and then gets every byte', async () => {
    const cap = 128 * 1024 * 1024
    const chunk = randomBytes(64 * 1024)
    const app = { written: 0, blocked: false, socket: undefined as net.Socket | undefined }
    const port = await meshTo(
      await startApp((s) => {
        app.socket = s
        // Writes as fast as the connection takes it, up to `cap`.
        pumpInto(s, chunk, cap, app)
      }),
      mux,
    )
    const socket = await connect(port)
    socket.pause()
    socket.write('start')
    // The app stalls: blocked on a full connection, and its count stays put between two looks.
    let last = -1
    await waitFor(
      async () => {
        const settled = app.blocked && app.written === last
        last = app.written
        if (!settled) await new Promise((r) => setTimeout(r, 200))
        return settled
      },
      20_000,
      'the app to stall on back-pressure',
    )
    const stalledAt = app.written
    // Held by socket buffers along the way (kernel and node's), far from what the app would send.
    expect(stalledAt).toBeLessThan(cap / 2)

    // Reading again drains everything: the app finishes, ends, and the client gets it all.
    let received = 0
    let corrupt = false
    const ended = new Promise<void>((resolve) => socket.on('end', resolve))
    socket.on('data', (d: Buffer) => {
      // Every byte of the stream is `chunk` repeated: check each piece against its offset.
      const offset = received % chunk.length
      for (let i = 0; i < d.length; i += 4096) {
        if (d[i] !== chunk[(offset + i) % chunk.length]) corrupt = true
      }
      received += d.length
    })
    socket.resume()
    await waitFor(() => app.written >= cap && !app.blocked, 120_000, 'the app to finish')
    app.socket!.end()
    await ended
    expect(corrupt).toBe(false)
    expect(received).toBe(cap)
  }, 180_000)
})
