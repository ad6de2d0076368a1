/**
 * The multiplexed L4 mode (`peermesh-mux/1`) between real outbound and inbound listeners on
 * 127.0.0.1: many client connections share one session; one stream's slow reader holds neither
 * the others nor the sidecars' memory; a dead instance costs retries, not failed connections; an
 * inbound without the ALPN is served per connection; rotation and stop close sessions.
 *
 * And from the attacker's side, a raw mux client holding a valid mesh certificate: denied
 * streams, a revoked intention, a stream flood, garbage, oversized frames, DATA on an unopened
 * stream and DATA past the credit. Each case checks that nothing else changed: no app
 * connection where none was due, the counters as expected, and a good client still served.
 */
import net from 'node:net'
import tls from 'node:tls'
import { Registry } from 'prom-client'
import { afterEach, beforeAll, describe, expect, it } from 'vitest'
import { type Clock, systemClock } from '../../src/common/clock.ts'
import type { RootCa } from '../../src/identity/ca/ca.ts'
import { InboundListener, type InboundListenerInit } from '../../src/proxy/inbound.ts'
import { IntentionIndex } from '../../src/proxy/intentions.ts'
import {
  emptyFrame,
  FrameDecoder,
  FrameType,
  goAwayFrame,
  MUX_ALPN,
  MUX_HEADER_BYTES,
  MuxResetCode,
  u32Frame,
  writeHeader,
} from '../../src/proxy/mux-frame.ts'
import { MUX_MAX_UNSENT_RESETS } from '../../src/proxy/mux-session.ts'
import { OutboundListener, type OutboundListenerInit } from '../../src/proxy/outbound-tcp.ts'
import {
  IntentionAuthorizer,
  StaticCertificateSource,
  StaticEndpointSource,
} from '../../src/proxy/sources.ts'
import type { ServiceCertificate } from '../../src/proxy/types.ts'
import {
  endpoint,
  leafFor,
  listenLoopback,
  makeRoot,
  memoryLogger,
  metricValue,
  pumpInto,
  startTcpApp,
  TD,
  type TestApp,
  tcpRequest,
  waitFor,
} from './helpers.ts'

let root: RootCa
let apiCert: ServiceCertificate
let webCert: ServiceCertificate
let dbCert: ServiceCertificate

beforeAll(async () => {
  root = await makeRoot()
  ;[apiCert, webCert, dbCert] = await Promise.all([
    leafFor(root, 'api'),
    leafFor(root, 'web'),
    leafFor(root, 'db'),
  ])
})

const cleanups: (() => Promise<void>)[] = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

const allowWeb = () => IntentionAuthorizer.from([{ source: 'web', destination: 'api', action: 'allow' }])

async function apiInbound(appPort: number, extra: Partial<InboundListenerInit> = {}) {
  const registry = new Registry()
  const logger = memoryLogger()
  const certificates = new StaticCertificateSource(apiCert)
  const authorizer = (extra.authorizer as IntentionAuthorizer | undefined) ?? allowWeb()
  const inbound = new InboundListener({
    service: 'api',
    trustDomain: TD,
    port: 0,
    bindAddress: '127.0.0.1',
    localServicePort: appPort,
    certificates,
    registry,
    logger,
    ...extra,
    authorizer,
  })
  await inbound.start()
  cleanups.push(() => inbound.stop())
  return { inbound, registry, logger, certificates, authorizer }
}

async function webOutbound(ports: number[], extra: Partial<OutboundListenerInit> = {}) {
  const registry = new Registry()
  const certificates = new StaticCertificateSource(webCert)
  const endpoints = new StaticEndpointSource(ports.map((p, i) => endpoint(`api-${i + 1}`, p)))
  const outbound = new OutboundListener({
    sourceService: 'web',
    destinationService: 'api',
    trustDomain: TD,
    bindPort: 0,
    certificates,
    endpoints,
    registry,
    ...extra,
  })
  await outbound.start()
  cleanups.push(() => outbound.stop())
  return { outbound, registry, certificates, endpoints }
}

async function app(name: string, mode: 'reply' | 'echo' = 'reply'): Promise<TestApp> {
  const a = await startTcpApp(name, mode)
  cleanups.push(() => a.close())
  return a
}

/** A client connection kept open; `send` resolves with the next reply. */
async function persistent(port: number) {
  const socket = net.connect({ host: '127.0.0.1', port })
  socket.setEncoding('utf8')
  socket.on('error', () => {})
  let closed = false
  socket.on('close', () => {
    closed = true
  })
  await new Promise<void>((resolve) => socket.once('connect', () => resolve()))
  cleanups.push(async () => {
    socket.destroy()
  })
  const send = (text: string) =>
    new Promise<string>((resolve, reject) => {
      socket.once('data', resolve)
      socket.once('close', () => reject(new Error('closed')))
      socket.write(text)
    })
  return { socket, send, isClosed: () => closed }
}

interface RawFrame {
  type: number
  id: number
  value: number
}

/** A TLS connection to `port` presenting `cert`, trusting the test root, offering `alpn`. */
function meshTls(port: number, cert: ServiceCertificate, alpn: string[]): tls.TLSSocket {
  return tls.connect({
    host: '127.0.0.1',
    port,
    ca: [root.certPem],
    key: cert.keyPem,
    cert: cert.certPem,
    checkServerIdentity: () => undefined,
    ALPNProtocols: alpn,
  })
}

/**
 * A mux client written by hand: TLS with `cert` offering the mux ALPN, raw frames out, the
 * decoded frames in (`frames`). What an attacker with a valid mesh certificate can do.
 */
async function rawSession(port: number, cert: ServiceCertificate) {
  const frames: RawFrame[] = []
  const data = new Map<number, string>()
  const socket = meshTls(port, cert, [MUX_ALPN])
  let closed = false
  socket.on('close', () => {
    closed = true
  })
  socket.on('error', () => {})
  const decoder = new FrameDecoder({
    onControl: (type, id, value) => {
      frames.push({ type, id, value })
      return true
    },
    onDataHeader: () => true,
    onData: (id, piece) => {
      data.set(id, (data.get(id) ?? '') + piece.toString())
      return true
    },
  })
  socket.on('data', (chunk: Buffer) => decoder.push(chunk))
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', () => resolve())
    socket.once('error', reject)
  })
  expect(socket.alpnProtocol).toBe(MUX_ALPN)
  cleanups.push(async () => {
    socket.destroy()
  })
  return {
    socket,
    frames,
    data,
    isClosed: () => closed,
    send: (...bufs: Buffer[]) => socket.write(Buffer.concat(bufs)),
    resets: (code: number) => frames.filter((f) => f.type === FrameType.RST && f.value === code).length,
  }
}

function dataFrame(id: number, payload: Buffer | string): Buffer {
  const p = typeof payload === 'string' ? Buffer.from(payload) : payload
  const b = Buffer.alloc(MUX_HEADER_BYTES + p.length)
  writeHeader(b, 0, FrameType.DATA, id, p.length)
  p.copy(b, MUX_HEADER_BYTES)
  return b
}

/** The inbound still serves a good client through a fresh outbound (reply and echo apps alike). */
async function stillServes(inboundPort: number): Promise<void> {
  const { outbound } = await webOutbound([inboundPort])
  const c = await persistent(outbound.port)
  expect(await c.send('still')).toBe('api-app:still')
  c.socket.destroy()
}

/** One exchange on a fresh client connection (for echo apps, which never close). */
async function once(port: number, text: string): Promise<string> {
  const c = await persistent(port)
  try {
    return await c.send(text)
  } finally {
    c.socket.destroy()
  }
}

/**
 * api-1 went (its sidecar stopped or its connections were cut): the connections that were on it
 * see their close, new client connections all succeed on api-2 (the first tries of api-1 are
 * retried) with no outbound error, and the streams on api-2 are not disturbed.
 */
async function expectApi2TakesOver(
  conns: Awaited<ReturnType<typeof persistent>>[],
  replies: string[],
  outboundPort: number,
  registry: Registry,
): Promise<void> {
  const onOne = conns.filter((_, i) => replies[i] === 'api-1:x')
  await waitFor(() => onOne.every((c) => c.isClosed()), 5_000, "api-1's streams to close")
  for (let i = 0; i < 10; i++) expect(await once(outboundPort, 'y')).toBe('api-2:y')
  expect(await metricValue(registry, 'peermesh_proxy_errors_total', { direction: 'outbound' })).toBe(0)
  for (const c of conns.filter((_, i) => replies[i] === 'api-2:x')) expect(await c.send('z')).toBe('api-2:z')
}

/**
 * The system clock, except that timers of 30 s or more wait until the test fires them: the drain
 * and fallback times pass when the test says so.
 */
function heldLongTimers() {
  const held = new Set<() => void>()
  const clock: Clock = {
    ...systemClock,
    setTimeout(fn, ms) {
      if (ms < 30_000) return systemClock.setTimeout(fn, ms)
      held.add(fn)
      return () => held.delete(fn)
    },
  }
  return {
    clock,
    held: () => held.size,
    fireAll: () => {
      for (const fn of [...held]) {
        held.delete(fn)
        fn()
      }
    },
  }
}

describe('multiplexed L4 mode', () => {
  it('50 concurrent client connections share one session; each gets its own app connection', async () => {
    const a = await app('api-app')
    const { inbound, registry } = await apiInbound(a.port)
    const { outbound } = await webOutbound([inbound.port])
    const replies = await Promise.all(
      Array.from({ length: 50 }, (_, i) => tcpRequest(outbound.port, `hello-${i}`)),
    )
    expect(replies).toEqual(Array.from({ length: 50 }, (_, i) => `api-app:hello-${i}`))
    expect(a.hits).toBe(50)
    expect(inbound.muxSessions).toBe(1)
    expect(outbound.mux?.size).toBe(1)
    expect(await metricValue(registry, 'peermesh_proxy_connections_total', { direction: 'inbound' })).toBe(50)
    await waitFor(() => inbound.openConnections === 0, 5_000, 'streams to close')
  })

  it("one stream's slow reader neither stalls the session's other streams nor fills memory", async () => {
    const chunk = Buffer.alloc(64 * 1024, 7)
    const flood = { written: 0, blocked: false }
    const server = net.createServer((s) => {
      s.on('error', () => {})
      s.once('data', (d: Buffer) => {
        if (d.toString() !== 'flood') {
          s.pipe(s)
          s.write(d)
          return
        }
        pumpInto(s, chunk, 256 * 1024 * 1024, flood)
      })
    })
    const { port: appPort, close } = await listenLoopback(server)
    cleanups.push(close)
    const { inbound } = await apiInbound(appPort)
    const { outbound } = await webOutbound([inbound.port])
    const slow = net.connect({ host: '127.0.0.1', port: outbound.port })
    slow.on('error', () => {})
    cleanups.push(async () => {
      slow.destroy()
    })
    slow.pause()
    slow.write('flood')
    let last = -1
    await waitFor(
      async () => {
        const settled = flood.blocked && flood.written === last
        last = flood.written
        if (!settled) await new Promise((r) => setTimeout(r, 200))
        return settled
      },
      20_000,
      'the flooding app to stall',
    )
    // The stream's credit (64 KiB) plus socket buffers on the way: far below what the app would send.
    expect(flood.written).toBeLessThan(32 * 1024 * 1024)
    // Meanwhile another connection on the same session is served at once.
    const other = await persistent(outbound.port)
    expect(await other.send('ping')).toBe('ping')
    expect(await other.send('pong')).toBe('pong')
    expect(inbound.muxSessions).toBe(1)
  }, 30_000)

  it('request, end, then a large answer and close: every byte arrives both ways (credit outlasts the sockets)', async () => {
    const size = 6 * 1024 * 1024
    const body = Buffer.alloc(size)
    for (let i = 0; i < size; i += 4) body.writeUInt32BE(i, i)
    const server = net.createServer({ allowHalfOpen: true }, (s) => {
      s.on('error', () => {})
      let got = 0
      s.on('data', (d: Buffer) => {
        got += d.length
      })
      // After the caller's end: the whole answer at once, then end (the app's socket then closes).
      s.on('end', () => {
        expect(got).toBe(size)
        s.end(body)
      })
    })
    const { port: appPort, close } = await listenLoopback(server)
    cleanups.push(close)
    const { inbound } = await apiInbound(appPort)
    const { outbound } = await webOutbound([inbound.port])
    const results = await Promise.all(
      Array.from({ length: 3 }, async () => {
        const socket = net.connect({ host: '127.0.0.1', port: outbound.port, allowHalfOpen: true })
        cleanups.push(async () => {
          socket.destroy()
        })
        const chunks: Buffer[] = []
        const done = new Promise<void>((resolve, reject) => {
          socket.on('data', (d: Buffer) => chunks.push(d))
          socket.on('end', () => resolve())
          socket.on('error', reject)
        })
        socket.end(body)
        await done
        return Buffer.concat(chunks)
      }),
    )
    for (const r of results) expect(r.equals(body)).toBe(true)
  })

  it('an instance that dies mid-session: its streams close, new connections retry onto another', async () => {
    const a1 = await app('api-1', 'echo')
    const a2 = await app('api-2', 'echo')
    const one = await apiInbound(a1.port)
    const two = await apiInbound(a2.port)
    const { outbound, registry } = await webOutbound([one.inbound.port, two.inbound.port], { rng: () => 0 })
    const conns = await Promise.all(Array.from({ length: 6 }, () => persistent(outbound.port)))
    const replies = await Promise.all(conns.map((c) => c.send('x')))
    const onOne = conns.filter((_, i) => replies[i] === 'api-1:x')
    expect(onOne.length).toBeGreaterThan(0)
    // api-1's sidecar goes: its sessions' streams end, and the clients on them see their close.
    await one.inbound.stop()
    await expectApi2TakesOver(conns, replies, outbound.port, registry)
  })

  it('an instance whose connections drop without a word (no GOAWAY): streams fail, new connections retry', async () => {
    const a1 = await app('api-1', 'echo')
    const a2 = await app('api-2', 'echo')
    const one = await apiInbound(a1.port)
    const two = await apiInbound(a2.port)
    // api-1 is reached through a TCP pass-through that is cut abruptly, as a host that dies.
    const cut = new Set<net.Socket>()
    const passThrough = net.createServer((s) => {
      const up = net.connect({ host: '127.0.0.1', port: one.inbound.port })
      for (const x of [s, up]) {
        cut.add(x)
        x.on('error', () => {})
      }
      s.pipe(up).pipe(s)
    })
    const pt = await listenLoopback(passThrough)
    cleanups.push(pt.close)
    const { outbound, registry } = await webOutbound([pt.port, two.inbound.port], { rng: () => 0 })
    const conns = await Promise.all(Array.from({ length: 6 }, () => persistent(outbound.port)))
    const replies = await Promise.all(conns.map((c) => c.send('x')))
    const onOne = conns.filter((_, i) => replies[i] === 'api-1:x')
    expect(onOne.length).toBeGreaterThan(0)
    await pt.close()
    for (const s of cut) s.destroy()
    await expectApi2TakesOver(conns, replies, outbound.port, registry)
  })

  it('falls back to one TLS connection per client connection against an inbound without the ALPN', async () => {
    const a = await app('api-app')
    const { inbound, registry } = await apiInbound(a.port, { mux: false })
    const { outbound } = await webOutbound([inbound.port])
    for (let i = 0; i < 3; i++) expect(await tcpRequest(outbound.port, `r${i}`)).toBe(`api-app:r${i}`)
    const replies = await Promise.all(Array.from({ length: 5 }, (_, i) => tcpRequest(outbound.port, `c${i}`)))
    expect(replies).toEqual(Array.from({ length: 5 }, (_, i) => `api-app:c${i}`))
    // No connection was wasted: the first connection's TLS (which offered mux) was used as its relay.
    expect(a.hits).toBe(8)
    expect(await metricValue(registry, 'peermesh_proxy_connections_total', { direction: 'inbound' })).toBe(8)
    expect(inbound.muxSessions).toBe(0)
  })

  it.each([
    { mode: 'multiplexed', mux: true },
    { mode: 'per connection (fallback)', mux: false },
  ])(
    'an app that speaks first (a banner) is heard before the client sends anything: $mode',
    async ({ mux }) => {
      const server = net.createServer((s) => {
        s.on('error', () => {})
        s.write('220 banner\r\n')
        s.on('data', (d: Buffer) => s.write(`echo ${d}`))
      })
      const { port: appPort, close } = await listenLoopback(server)
      cleanups.push(close)
      const { inbound } = await apiInbound(appPort, { mux })
      const { outbound } = await webOutbound([inbound.port])
      for (let i = 0; i < 3; i++) {
        const c = await persistent(outbound.port)
        const banner = await new Promise<string>((resolve) => c.socket.once('data', resolve))
        expect(banner).toBe('220 banner\r\n')
        expect(await c.send('hi')).toBe('echo hi')
        c.socket.destroy()
      }
      expect(inbound.muxSessions).toBe(mux ? 1 : 0)
    },
  )

  it('a TLS client offering some other ALPN is relayed per connection, as before', async () => {
    const a = await app('api-app')
    const { inbound } = await apiInbound(a.port)
    const socket = meshTls(inbound.port, webCert, ['h2'])
    cleanups.push(async () => {
      socket.destroy()
    })
    const reply = await new Promise<string>((resolve, reject) => {
      socket.on('error', reject)
      socket.once('secureConnect', () => socket.write('hi'))
      socket.once('data', (d) => resolve(d.toString()))
    })
    expect(reply).toBe('api-app:hi')
    expect(inbound.muxSessions).toBe(0)
  })

  it('after a certificate rotation new streams go to a new session; the old one closes when its streams end', async () => {
    const a = await app('api-app', 'echo')
    const { inbound } = await apiInbound(a.port)
    const { outbound, certificates } = await webOutbound([inbound.port])
    const old = await persistent(outbound.port)
    expect(await old.send('a')).toBe('api-app:a')
    expect(inbound.muxSessions).toBe(1)
    certificates.set(await leafFor(root, 'web'))
    const fresh = await persistent(outbound.port)
    expect(await fresh.send('b')).toBe('api-app:b')
    expect(inbound.muxSessions).toBe(2)
    // The old stream still works on its session.
    expect(await old.send('c')).toBe('api-app:c')
    old.socket.destroy()
    await waitFor(() => inbound.muxSessions === 1, 5_000, 'the old session to close')
    expect(await fresh.send('d')).toBe('api-app:d')
  })

  it("after the inbound's rotation (GOAWAY) the outbound opens a new session for new streams", async () => {
    const a = await app('api-app', 'echo')
    const { inbound, certificates } = await apiInbound(a.port)
    const { outbound } = await webOutbound([inbound.port])
    const old = await persistent(outbound.port)
    expect(await old.send('a')).toBe('api-app:a')
    certificates.set(await leafFor(root, 'api'))
    expect(await once(outbound.port, 'n')).toBe('api-app:n')
    expect(inbound.muxSessions).toBe(2)
    expect(await old.send('b')).toBe('api-app:b')
    old.socket.destroy()
    await waitFor(() => inbound.muxSessions <= 1, 5_000, 'the drained session to close')
  })

  it('a rotation cuts no long-lived connection: sessions that take no new streams outlive the drain time while streams are open', async () => {
    const timers = heldLongTimers()
    const a = await app('api-app', 'echo')
    // The idle close is not what is tested here: its timer stays real (and longer than the test).
    const { inbound, certificates: apiCerts } = await apiInbound(a.port, {
      clock: timers.clock,
      muxIdleMs: 20_000,
    })
    const { outbound, certificates: webCerts } = await webOutbound([inbound.port], { clock: timers.clock })
    const old = await persistent(outbound.port)
    expect(await old.send('a')).toBe('api-app:a')
    // Both ends rotate: the inbound sends GOAWAY, the outbound's session is of an older certificate.
    apiCerts.set(await leafFor(root, 'api'))
    webCerts.set(await leafFor(root, 'web'))
    expect(await once(outbound.port, 'n')).toBe('api-app:n')
    expect(inbound.muxSessions).toBe(2)
    // As far as both proxies can tell, a long time passes.
    timers.fireAll()
    expect(await old.send('b')).toBe('api-app:b')
    expect(old.isClosed()).toBe(false)
    old.socket.destroy()
    await waitFor(() => inbound.muxSessions === 1, 5_000, 'the drained session to close with its last stream')
  })

  it('a drained session whose caller never closes it is closed by the inbound after the drain time, idle', async () => {
    const timers = heldLongTimers()
    const a = await app('api-app', 'echo')
    const { inbound, certificates } = await apiInbound(a.port, { clock: timers.clock })
    const raw = await rawSession(inbound.port, webCert)
    raw.send(emptyFrame(FrameType.OPEN, 1), dataFrame(1, 'a'))
    await waitFor(() => raw.data.get(1) === 'api-app:a', 5_000, 'the echo')
    certificates.set(await leafFor(root, 'api'))
    await waitFor(() => raw.frames.some((f) => f.type === FrameType.GOAWAY), 5_000, 'GOAWAY')
    // Open stream: the drain time does not cut it.
    timers.fireAll()
    raw.send(dataFrame(1, 'b'))
    await waitFor(() => raw.data.get(1) === 'api-app:aapi-app:b', 5_000, 'the second echo')
    // Idle, and the caller does not close: the inbound does, once the drain time has passed.
    raw.send(emptyFrame(FrameType.FIN, 1))
    await waitFor(() => timers.held() === 1, 5_000, 'the idle session waiting for the drain time')
    expect(raw.isClosed()).toBe(false)
    timers.fireAll()
    await waitFor(
      () => raw.isClosed() && inbound.muxSessions === 0,
      5_000,
      'the idle drained session to close',
    )
  })

  it("OPENs that cross the inbound's rotation GOAWAY are served, on an idle session and on one whose last stream just ended", async () => {
    const a = await app('api-app', 'echo')
    const { inbound, registry, certificates } = await apiInbound(a.port)
    // A session idle at the rotation; a session whose only stream ends after it.
    const idle = await rawSession(inbound.port, webCert)
    const busy = await rawSession(inbound.port, webCert)
    busy.send(emptyFrame(FrameType.OPEN, 1), dataFrame(1, 'a'))
    await waitFor(() => busy.data.get(1) === 'api-app:a', 5_000, 'the echo on the busy session')
    await waitFor(() => inbound.muxSessions === 2, 5_000, 'both sessions served')
    certificates.set(await leafFor(root, 'api'))
    const goAways = (s: typeof idle) => s.frames.filter((f) => f.type === FrameType.GOAWAY).length
    await waitFor(() => goAways(idle) === 1 && goAways(busy) === 1, 5_000, 'GOAWAY on both sessions')
    busy.send(emptyFrame(FrameType.FIN, 1))
    await waitFor(
      () => busy.frames.some((f) => f.type === FrameType.FIN && f.id === 1),
      5_000,
      "the app's FIN",
    )
    // Sent before these clients read the GOAWAY, as far as the inbound can tell.
    idle.send(emptyFrame(FrameType.OPEN, 1), dataFrame(1, 'b'))
    busy.send(emptyFrame(FrameType.OPEN, 3), dataFrame(3, 'c'))
    await waitFor(
      () => idle.data.get(1) === 'api-app:b',
      5_000,
      'the echo of the crossing OPEN (idle session)',
    )
    await waitFor(
      () => busy.data.get(3) === 'api-app:c',
      5_000,
      'the echo of the crossing OPEN (busy session)',
    )
    expect(await metricValue(registry, 'peermesh_proxy_errors_total', { direction: 'inbound' })).toBe(0)
    // Each client closes its drained session once done: the inbound follows.
    idle.send(emptyFrame(FrameType.FIN, 1), goAwayFrame(0, MuxResetCode.SHUTDOWN))
    idle.socket.end()
    busy.socket.end()
    await waitFor(() => inbound.muxSessions === 0, 5_000, 'the drained sessions to close')
    expect(a.hits).toBe(3)
  })

  it('stopping the outbound closes its sessions at the inbound', async () => {
    const a = await app('api-app', 'echo')
    const { inbound } = await apiInbound(a.port)
    const { outbound } = await webOutbound([inbound.port])
    const c = await persistent(outbound.port)
    expect(await c.send('a')).toBe('api-app:a')
    expect(inbound.muxSessions).toBe(1)
    await outbound.stop()
    await waitFor(
      () => inbound.muxSessions === 0 && inbound.openConnections === 0,
      5_000,
      'sessions to close',
    )
    await waitFor(() => c.isClosed(), 5_000, 'the client connection to close')
  })
})

describe('multiplexed L4 mode, from the attacker side', () => {
  it('a valid mesh certificate of a denied service: its session gets GOAWAY denied and is closed at accept, no app connection', async () => {
    const a = await app('api-app')
    const { inbound, registry, logger } = await apiInbound(a.port)
    // Silent: the GOAWAY arrives before the close.
    const silent = await rawSession(inbound.port, dbCert)
    await waitFor(() => silent.isClosed(), 5_000, 'the denied session to close')
    expect(silent.frames.map((f) => f.type)).toEqual([FrameType.GOAWAY])
    // Streams sent at once: none is served, whatever the close does to the bytes.
    const eager = await rawSession(inbound.port, dbCert)
    for (let id = 1; id <= 5; id++) eager.send(emptyFrame(FrameType.OPEN, id), dataFrame(id, 'GET /secret'))
    await waitFor(() => eager.isClosed(), 5_000, 'the denied session to close')
    expect(eager.data.size).toBe(0)
    expect(a.hits).toBe(0)
    expect(inbound.muxSessions).toBe(0)
    expect(inbound.muxRefused.deniedSessions).toBe(2)
    // Counted and logged as one denied connection each.
    expect(await metricValue(registry, 'peermesh_proxy_inbound_denied_total', { source: 'db' })).toBe(2)
    expect(
      await metricValue(registry, 'peermesh_proxy_errors_total', { direction: 'inbound', reason: 'denied' }),
    ).toBe(2)
    expect(logger.lines.filter((l) => l.message === 'inbound denied src=db dst=api')).toHaveLength(2)
    await stillServes(inbound.port)
    expect(a.hits).toBe(1)
  })

  it("a denied certificate's sessions do not hold the listener's connections: an allowed caller still gets in", async () => {
    const a = await app('api-app')
    const { inbound } = await apiInbound(a.port, { maxConnections: 8 })
    const sessions: Awaited<ReturnType<typeof rawSession>>[] = []
    // Three times the cap, one after another: without the check at accept the ninth is refused.
    for (let i = 0; i < 24; i++) sessions.push(await rawSession(inbound.port, dbCert))
    await waitFor(() => sessions.every((s) => s.isClosed()), 5_000, 'every denied session to close')
    expect(inbound.muxSessions).toBe(0)
    expect(inbound.muxRefused.deniedSessions).toBe(24)
    expect(inbound.refused.connections).toBe(0)
    await stillServes(inbound.port)
    expect(a.hits).toBe(1)
  })

  it('a session with no open stream is closed after the idle time; one with a stream is not', async () => {
    const timers = heldLongTimers()
    const a = await app('api-app', 'echo')
    const { inbound } = await apiInbound(a.port, { clock: timers.clock, muxIdleMs: 60_000 })
    const idle = await rawSession(inbound.port, webCert)
    const busy = await rawSession(inbound.port, webCert)
    busy.send(emptyFrame(FrameType.OPEN, 1), dataFrame(1, 'a'))
    await waitFor(() => busy.data.get(1) === 'api-app:a', 5_000, 'the echo on the busy session')
    await waitFor(() => inbound.muxSessions === 2 && timers.held() === 1, 5_000, 'one idle timer')
    // The idle time passes.
    timers.fireAll()
    await waitFor(() => idle.isClosed(), 5_000, 'the idle session to close')
    expect(idle.frames.filter((f) => f.type === FrameType.GOAWAY)).toHaveLength(1)
    expect(inbound.muxRefused.idleSessions).toBe(1)
    // The busy session is untouched; once its stream ends, its own idle time starts.
    busy.send(dataFrame(1, 'b'))
    await waitFor(() => busy.data.get(1) === 'api-app:aapi-app:b', 5_000, 'the second echo')
    expect(busy.isClosed()).toBe(false)
    busy.send(emptyFrame(FrameType.FIN, 1))
    await waitFor(() => timers.held() === 1, 5_000, 'the idle timer of the busy session')
    timers.fireAll()
    await waitFor(() => busy.isClosed() && inbound.muxSessions === 0, 5_000, 'the now idle session to close')
    expect(inbound.muxRefused.idleSessions).toBe(2)
    expect(a.hits).toBe(1)
    await stillServes(inbound.port)
  })

  it('streams denied at open (a policy that turned without a change event) are each counted but logged once a second', async () => {
    const a = await app('api-app', 'echo')
    let allowed = true
    const authorizer = {
      decide: (source: string) => (allowed && source === 'web' ? 'allow' : 'deny'),
      on: () => () => {},
    } as unknown as IntentionAuthorizer
    let now = 0
    const clock: Clock = { ...systemClock, now: () => now }
    const { inbound, registry, logger } = await apiInbound(a.port, { authorizer, clock })
    const raw = await rawSession(inbound.port, webCert)
    await waitFor(() => inbound.muxSessions === 1, 5_000, 'the session accepted')
    allowed = false
    const opens: Buffer[] = []
    for (let id = 1; id <= 500; id++) opens.push(emptyFrame(FrameType.OPEN, id))
    raw.send(...opens)
    await waitFor(() => raw.resets(MuxResetCode.DENIED) === 500, 5_000, '500 denied resets')
    const lines = () => logger.lines.filter((l) => l.message === 'inbound denied src=web dst=api')
    expect(lines()).toHaveLength(1)
    expect(await metricValue(registry, 'peermesh_proxy_inbound_denied_total', { source: 'web' })).toBe(500)
    now += 1_000
    raw.send(emptyFrame(FrameType.OPEN, 501))
    await waitFor(() => lines().length === 2, 5_000, 'the next line')
    expect(lines()[1]!.fields.notLogged).toBe(499)
    expect(a.hits).toBe(0)
    expect(raw.isClosed()).toBe(false)
    expect(inbound.openConnections).toBe(0)
  })

  it("a denied caller's outbound reports its session closed at accept as a denial, not as a failing instance", async () => {
    const a = await app('api-app', 'echo')
    const { inbound } = await apiInbound(a.port, {
      authorizer: new IntentionAuthorizer(
        new IntentionIndex([{ source: 'web', destination: 'api', action: 'deny' }]),
      ),
    })
    const { outbound, registry } = await webOutbound([inbound.port])
    await expect(once(outbound.port, 'a')).rejects.toThrow()
    await waitFor(() => inbound.muxRefused.deniedSessions >= 1, 5_000, 'the session denied at accept')
    expect(
      await metricValue(registry, 'peermesh_proxy_errors_total', { direction: 'outbound', reason: 'denied' }),
    ).toBe(1)
    expect(
      await metricValue(registry, 'peermesh_proxy_errors_total', { direction: 'outbound', reason: 'reset' }),
    ).toBe(0)
    expect(a.hits).toBe(0)
  })

  it('an intention revoked while streams are open resets them and closes their app connections', async () => {
    const a = await app('api-app', 'echo')
    const { inbound, authorizer, logger } = await apiInbound(a.port)
    const { outbound } = await webOutbound([inbound.port])
    const conns = await Promise.all([persistent(outbound.port), persistent(outbound.port)])
    for (const c of conns) expect(await c.send('a')).toBe('api-app:a')
    authorizer.update(new IntentionIndex([{ source: 'web', destination: 'api', action: 'deny' }]))
    await waitFor(() => conns.every((c) => c.isClosed()), 5_000, 'the streams to close')
    await waitFor(() => inbound.openConnections === 0, 5_000, 'app connections to close')
    expect(logger.lines.filter((l) => l.message === 'inbound denied src=web dst=api')).toHaveLength(2)
    // A new connection is denied at stream open (and not retried into a success).
    await expect(once(outbound.port, 'b')).rejects.toThrow()
    expect(a.hits).toBe(2)
  })

  it('a stream-id flood past the limit: streams beyond it are refused, no app connection for them', async () => {
    const a = await app('api-app', 'echo')
    const { inbound, registry } = await apiInbound(a.port, { muxMaxStreams: 4 })
    const raw = await rawSession(inbound.port, webCert)
    const frames: Buffer[] = []
    for (let id = 1; id <= 200; id++) frames.push(emptyFrame(FrameType.OPEN, id))
    raw.send(...frames)
    await waitFor(() => raw.resets(MuxResetCode.REFUSED) === 196, 5_000, '196 refused resets')
    await waitFor(() => a.hits === 4, 5_000, '4 app connections')
    expect(inbound.openConnections).toBe(4)
    expect(inbound.muxRefused.streams).toBe(196)
    expect(
      await metricValue(registry, 'peermesh_proxy_errors_total', {
        direction: 'inbound',
        reason: 'stream_limit',
      }),
    ).toBe(196)
    // The admitted streams work.
    raw.send(dataFrame(2, 'hi'))
    await waitFor(() => raw.data.get(2) === 'api-app:hi', 5_000, 'the echo on stream 2')
    expect(raw.isClosed()).toBe(false)
    await stillServes(inbound.port)
    expect(a.hits).toBe(5)
  })

  it('a peer that floods OPENs without reading the refusals loses the session; memory stays bounded', async () => {
    const a = await app('api-app', 'echo')
    const { inbound } = await apiInbound(a.port, { muxMaxStreams: 4, muxInitialWindow: 1024 })
    const raw = await rawSession(inbound.port, webCert)
    raw.socket.pause() // never reads: every RST refused piles up on the inbound's side
    const batch = 10_000
    let id = 0
    while (!raw.isClosed() && id < 3_000_000) {
      const frames = Buffer.alloc(batch * MUX_HEADER_BYTES)
      for (let i = 0; i < batch; i++) writeHeader(frames, i * MUX_HEADER_BYTES, FrameType.OPEN, ++id, 0)
      if (!raw.socket.write(frames)) {
        await new Promise<void>((resolve) => {
          raw.socket.once('drain', resolve)
          raw.socket.once('close', resolve)
        })
      }
    }
    await waitFor(() => raw.isClosed(), 10_000, 'the session to close')
    expect(inbound.muxRefused.protocolErrors).toBe(1)
    // The admitted streams' app connections may be cut before the app sees them.
    expect(a.hits).toBeLessThanOrEqual(4)
    await waitFor(() => inbound.muxSessions === 0, 5_000, 'the session to go')
    await stillServes(inbound.port)
  }, 60_000)

  it('an OPEN flood without reading, at the default limits: the refusals queued stay bounded, the session is closed', async () => {
    const a = await app('api-app', 'echo')
    const { inbound } = await apiInbound(a.port, { muxMaxStreams: 1 })
    const raw = await rawSession(inbound.port, webCert)
    raw.socket.pause()
    let peakBytes = 0
    let peakResets = 0
    const sample = () => {
      const b = inbound.muxBacklog
      peakBytes = Math.max(peakBytes, b.queuedBytes)
      peakResets = Math.max(peakResets, b.unsentResets)
    }
    const batch = 10_000
    let id = 0
    // Stops early once past the bound (the session would otherwise hold up to 65 MiB).
    while (!raw.isClosed() && id < 3_000_000 && peakBytes <= 256 * 1024) {
      const frames = Buffer.alloc(batch * MUX_HEADER_BYTES)
      for (let i = 0; i < batch; i++) writeHeader(frames, i * MUX_HEADER_BYTES, FrameType.OPEN, ++id, 0)
      if (!raw.socket.write(frames)) {
        await new Promise<void>((resolve) => {
          raw.socket.once('drain', resolve)
          raw.socket.once('close', resolve)
        })
      }
      sample()
    }
    expect(peakBytes).toBeLessThanOrEqual(256 * 1024)
    expect(peakResets).toBeLessThanOrEqual(MUX_MAX_UNSENT_RESETS)
    await waitFor(() => raw.isClosed(), 10_000, 'the session to close')
    expect(inbound.muxRefused.protocolErrors).toBe(1)
    expect(a.hits).toBeLessThanOrEqual(1)
    await waitFor(
      () => inbound.muxSessions === 0 && inbound.openConnections === 0,
      5_000,
      'the session to go',
    )
    await stillServes(inbound.port)
  }, 60_000)

  it.each([
    ['garbage bytes', () => [Buffer.from('GET / HTTP/1.1\r\nHost: api\r\n\r\n')]],
    [
      'an oversized DATA frame',
      () => {
        const h = Buffer.alloc(MUX_HEADER_BYTES)
        writeHeader(h, 0, FrameType.DATA, 1, 1024 * 1024)
        return [emptyFrame(FrameType.OPEN, 1), h, Buffer.alloc(1000)]
      },
    ],
    ['DATA on a stream never opened', () => [dataFrame(9, 'x')]],
    ['an OPEN reusing a stream id', () => [emptyFrame(FrameType.OPEN, 3), emptyFrame(FrameType.OPEN, 3)]],
    [
      'a WINDOW overflowing the credit',
      () => [emptyFrame(FrameType.OPEN, 1), u32Frame(FrameType.WINDOW, 1, 0x7fff_ffff)],
    ],
  ])('%s: protocol error, the session is closed, nothing else changes', async (_what, make) => {
    const a = await app('api-app', 'echo')
    const { inbound, registry } = await apiInbound(a.port)
    const raw = await rawSession(inbound.port, webCert)
    raw.send(...make())
    await waitFor(() => raw.isClosed(), 5_000, 'the session to close')
    expect(inbound.muxRefused.protocolErrors).toBe(1)
    expect(
      await metricValue(registry, 'peermesh_proxy_errors_total', {
        direction: 'inbound',
        reason: 'protocol',
      }),
    ).toBe(1)
    expect(raw.frames.filter((f) => f.type === FrameType.GOAWAY)).toHaveLength(1)
    await waitFor(
      () => inbound.openConnections === 0 && inbound.muxSessions === 0,
      5_000,
      'nothing left open',
    )
    await stillServes(inbound.port)
  })

  it('DATA beyond the credit granted: protocol error, the stream and its app connection are closed', async () => {
    // The app never reads: nothing drains, so no credit is granted beyond the initial window.
    const appSockets: net.Socket[] = []
    const server = net.createServer((s) => {
      s.on('error', () => {})
      s.pause()
      appSockets.push(s)
    })
    const { port: appPort, close } = await listenLoopback(server)
    cleanups.push(close)
    const { inbound } = await apiInbound(appPort, { muxInitialWindow: 1024 })
    const raw = await rawSession(inbound.port, webCert)
    // One write: the whole window and one byte more, before the app connection is even open.
    raw.send(emptyFrame(FrameType.OPEN, 1), dataFrame(1, Buffer.alloc(1024, 1)), dataFrame(1, 'x'))
    await waitFor(() => raw.isClosed(), 5_000, 'the session to close')
    expect(inbound.muxRefused.protocolErrors).toBe(1)
    await waitFor(() => inbound.openConnections === 0, 5_000, 'the app connection to close')
  })

  it('a client certificate from another CA never gets a session', async () => {
    const a = await app('api-app')
    const { inbound } = await apiInbound(a.port)
    const other = await makeRoot()
    const foreign = await leafFor(other, 'web')
    const socket = meshTls(inbound.port, foreign, [MUX_ALPN])
    socket.on('error', () => {})
    cleanups.push(async () => {
      socket.destroy()
    })
    socket.once('secureConnect', () => socket.write(emptyFrame(FrameType.OPEN, 1)))
    await new Promise<void>((resolve) => socket.once('close', () => resolve()))
    expect(inbound.muxSessions).toBe(0)
    expect(a.hits).toBe(0)
  })
})
