/**
 * The inbound listener's pending-handshake cap under a flood, from the attacker's side: connections
 * that never finish their TLS handshake (silent, a truncated ClientHello, a whole ClientHello and
 * then nothing) cannot lock a real mTLS caller out. Past the cap the oldest pending handshake is
 * evicted (a silent one first), so the caller is served long before the handshake timeout.
 */
import net from 'node:net'
import { Duplex } from 'node:stream'
import tls from 'node:tls'
import { Registry } from 'prom-client'
import { afterEach, beforeAll, describe, expect, it } from 'vitest'
import { type Clock, systemClock } from '../../src/common/clock.ts'
import type { RootCa } from '../../src/identity/ca/ca.ts'
import { InboundListener, SILENT_HANDSHAKE_MS } from '../../src/proxy/inbound.ts'
import { IntentionAuthorizer, StaticCertificateSource } from '../../src/proxy/sources.ts'
import type { ServiceCertificate } from '../../src/proxy/types.ts'
import { leafFor, makeRoot, metricValue, startTcpApp, TD, waitFor } from './helpers.ts'

const CAP = 8
/** Long enough that a test can only pass through eviction, never through the timeout. */
const HANDSHAKE_TIMEOUT_MS = 30_000
/** How long a caller may take: far below the handshake timeout. */
const CALLER_DEADLINE_MS = 5_000

let root: RootCa
let apiCert: ServiceCertificate
let webCert: ServiceCertificate
/** A real TLS 1.3 ClientHello (as a mesh caller sends it), captured once. */
let hello: Buffer

beforeAll(async () => {
  root = await makeRoot()
  ;[apiCert, webCert] = await Promise.all([leafFor(root, 'api'), leafFor(root, 'web')])
  hello = await captureClientHello(webCert)
})

const cleanups: (() => Promise<void>)[] = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

/** The first flight of a TLS client with `cert`, written into a stream that never answers. */
async function captureClientHello(cert: ServiceCertificate): Promise<Buffer> {
  let captured!: (chunk: Buffer) => void
  const first = new Promise<Buffer>((resolve) => {
    captured = resolve
  })
  const sink = new Duplex({
    read() {},
    write(chunk: Buffer, _encoding, callback) {
      captured(Buffer.from(chunk))
      callback()
    },
  })
  const client = tls.connect({
    socket: sink,
    ca: [root.certPem],
    key: cert.keyPem,
    cert: cert.certPem,
    checkServerIdentity: () => undefined,
    minVersion: 'TLSv1.3',
  })
  client.on('error', () => {})
  const chunk = await first
  client.destroy()
  sink.destroy()
  return chunk
}

async function apiInbound(clock?: Clock) {
  const app = await startTcpApp('api-app')
  cleanups.push(() => app.close())
  const registry = new Registry()
  const inbound = new InboundListener({
    service: 'api',
    trustDomain: TD,
    port: 0,
    bindAddress: '127.0.0.1',
    localServicePort: app.port,
    certificates: new StaticCertificateSource(apiCert),
    authorizer: IntentionAuthorizer.from([{ source: 'web', destination: 'api', action: 'allow' }]),
    registry,
    maxPendingHandshakes: CAP,
    handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS,
    ...(clock ? { clock } : {}),
  })
  await inbound.start()
  cleanups.push(() => inbound.stop())
  const errors = (reason: string) =>
    metricValue(registry, 'peermesh_proxy_errors_total', { direction: 'inbound', reason })
  return { app, inbound, errors }
}

interface Attacker {
  socket: net.Socket
  /** Closed, and not by the attacker (the listener evicted it). */
  closedByPeer: () => boolean
  closed: Promise<void>
  /** Resolves once the listener has answered (it read a whole ClientHello). */
  answered: Promise<void>
}

/** A plain TCP connection that sends `first` (or nothing), then stalls. */
async function attacker(port: number, first?: Buffer): Promise<Attacker> {
  const socket = net.connect({ host: '127.0.0.1', port })
  socket.on('error', () => {})
  let byUs = false
  let closed = false
  const closedP = new Promise<void>((resolve) =>
    socket.once('close', () => {
      closed = true
      resolve()
    }),
  )
  const answered = new Promise<void>((resolve) => socket.once('data', () => resolve()))
  await new Promise<void>((resolve) => socket.once('connect', () => resolve()))
  if (first) socket.write(first)
  const destroy = async () => {
    if (!closed) byUs = true
    socket.destroy()
  }
  cleanups.push(destroy)
  return { socket, closedByPeer: () => closed && !byUs, closed: closedP, answered }
}

/** A real mTLS caller: resolves with the app's answer ('' if it was cut), or rejects past the deadline. */
function caller(port: number): Promise<{ data: string; error?: string }> {
  const call = new Promise<{ data: string; error?: string }>((resolve) => {
    const socket = tls.connect({
      host: '127.0.0.1',
      port,
      ca: [root.certPem],
      key: webCert.keyPem,
      cert: webCert.certPem,
      checkServerIdentity: () => undefined,
      minVersion: 'TLSv1.3',
    })
    cleanups.push(async () => {
      socket.destroy()
    })
    let data = ''
    let error: string | undefined
    socket.setEncoding('utf8')
    socket.on('secureConnect', () => socket.write('ping'))
    socket.on('data', (d: string) => {
      data += d
    })
    socket.on('error', (e: Error & { code?: string }) => {
      error = e.code ?? e.message
    })
    socket.on('close', () => resolve(error === undefined ? { data } : { data, error }))
  })
  return within(CALLER_DEADLINE_MS, call, 'the caller to be answered')
}

function within<T>(ms: number, promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms)
  })
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer))
}

describe('InboundListener pending-handshake flood', () => {
  it('a full set of silent connections cannot lock out a real caller: the oldest is evicted and counted', async () => {
    const { app, inbound, errors } = await apiInbound()
    const flood: Attacker[] = []
    for (let i = 0; i < CAP; i++) flood.push(await attacker(inbound.port))
    await waitFor(() => inbound.pendingHandshakes === CAP, 5_000, 'the flood to hold every slot')

    expect(await caller(inbound.port)).toEqual({ data: 'api-app:ping' })
    await within(CALLER_DEADLINE_MS, flood[0]!.closed, 'the oldest attacker to be evicted')
    expect(flood[0]!.closedByPeer()).toBe(true)
    expect(flood.slice(1).map((a) => a.socket.destroyed)).toEqual(new Array(CAP - 1).fill(false))
    expect(inbound.refused.handshakes).toBe(1)
    expect(await errors('handshake_limit')).toBe(1)
    expect(await errors('tls')).toBe(0) // the evicted socket's reset is not a TLS error
    expect(app.hits).toBe(1)

    // The flood keeps coming: each new connection evicts the oldest one left.
    const more: Attacker[] = []
    for (let i = 0; i < CAP; i++) more.push(await attacker(inbound.port))
    await waitFor(() => flood.every((a) => a.closedByPeer()), 5_000, 'the first wave to be evicted')
    expect(more.every((a) => !a.socket.destroyed)).toBe(true)
    expect(inbound.refused.handshakes).toBe(CAP)
    expect(await errors('handshake_limit')).toBe(CAP)
    expect(await errors('tls')).toBe(0)
    expect(await caller(inbound.port)).toEqual({ data: 'api-app:ping' })
  })

  it('a full set of truncated ClientHellos that stall cannot lock out a real caller', async () => {
    // Inside the grace however slowly this runs: the oldest goes, whatever its bytes read.
    const frozen = systemClock.now()
    const { app, inbound, errors } = await apiInbound({ ...systemClock, now: () => frozen })
    const partial = hello.subarray(0, Math.floor(hello.length / 2))
    const flood: Attacker[] = []
    for (let i = 0; i < CAP; i++) flood.push(await attacker(inbound.port, partial))
    await waitFor(() => inbound.pendingHandshakes === CAP, 5_000, 'the flood to hold every slot')

    expect(await caller(inbound.port)).toEqual({ data: 'api-app:ping' })
    await within(CALLER_DEADLINE_MS, flood[0]!.closed, 'the oldest attacker to be evicted')
    expect(flood[0]!.closedByPeer()).toBe(true)
    expect(flood.slice(1).every((a) => !a.socket.destroyed)).toBe(true)
    expect(inbound.refused.handshakes).toBe(1)
    expect(await errors('handshake_limit')).toBe(1)
    expect(await errors('tls')).toBe(0)
    expect(app.hits).toBe(1)
  })

  it('evicts a connection silent past the grace before an older one mid-handshake', async () => {
    let skew = 0
    const clock: Clock = { ...systemClock, now: () => systemClock.now() + skew }
    const { inbound, errors } = await apiInbound(clock)
    // The older half sends a whole ClientHello and stalls: the listener answered, so it read it.
    const midHandshake: Attacker[] = []
    for (let i = 0; i < CAP / 2; i++) midHandshake.push(await attacker(inbound.port, hello))
    await within(5_000, Promise.all(midHandshake.map((a) => a.answered)), 'the ServerHellos')
    const silent: Attacker[] = []
    for (let i = 0; i < CAP / 2; i++) silent.push(await attacker(inbound.port))
    await waitFor(() => inbound.pendingHandshakes === CAP, 5_000, 'the flood to hold every slot')

    skew = SILENT_HANDSHAKE_MS + 1 // every connection is now past the grace
    expect(await caller(inbound.port)).toEqual({ data: 'api-app:ping' })
    await within(CALLER_DEADLINE_MS, silent[0]!.closed, 'the oldest silent connection to be evicted')
    expect(silent[0]!.closedByPeer()).toBe(true)
    expect(midHandshake.every((a) => !a.socket.destroyed)).toBe(true)
    expect(inbound.refused.handshakes).toBe(1)

    // With no silent connection left, the oldest mid-handshake one goes.
    for (let i = 0; i < CAP / 2; i++) await attacker(inbound.port, hello)
    await waitFor(() => silent.every((a) => a.closedByPeer()), 5_000, 'the silent ones to be evicted')
    expect(midHandshake.every((a) => !a.socket.destroyed)).toBe(true)
    await attacker(inbound.port, hello)
    await within(CALLER_DEADLINE_MS, midHandshake[0]!.closed, 'the oldest mid-handshake to be evicted')
    expect(midHandshake.slice(1).every((a) => !a.socket.destroyed)).toBe(true)
    expect(inbound.refused.handshakes).toBe(CAP / 2 + 1)
    expect(await errors('handshake_limit')).toBe(CAP / 2 + 1)
    expect(await errors('tls')).toBe(0)
  })

  it('does not prefer a fresh connection yet to send its ClientHello over older ones mid-handshake', async () => {
    // Time stands still for the listener: every connection stays inside the grace however slowly
    // this test runs (a loaded machine), which is what is under test.
    const frozen = systemClock.now()
    const { inbound, errors } = await apiInbound({ ...systemClock, now: () => frozen })
    // A flood that sends a byte on every connection must not make a caller whose ClientHello is
    // not read yet the first victim: silence counts only past the grace.
    const midHandshake: Attacker[] = []
    for (let i = 0; i < CAP - 1; i++) midHandshake.push(await attacker(inbound.port, hello))
    await within(5_000, Promise.all(midHandshake.map((a) => a.answered)), 'the ServerHellos')
    const fresh = await attacker(inbound.port)
    await waitFor(() => inbound.pendingHandshakes === CAP, 5_000, 'the flood to hold every slot')
    await attacker(inbound.port, hello)
    await within(CALLER_DEADLINE_MS, midHandshake[0]!.closed, 'the oldest to be evicted')
    expect(fresh.socket.destroyed).toBe(false)
    expect(inbound.refused.handshakes).toBe(1)
    expect(await errors('handshake_limit')).toBe(1)
  })

  it('a caller that ends its side mid-handshake (FIN) frees its slot at once, not at the handshake timeout', async () => {
    const { inbound, errors } = await apiInbound()
    const partial = hello.subarray(0, 20)
    const flood: Attacker[] = []
    for (let i = 0; i < CAP; i++) flood.push(await attacker(inbound.port, i % 2 === 0 ? undefined : partial))
    await waitFor(() => inbound.pendingHandshakes === CAP, 5_000, 'the flood to hold every slot')
    for (const a of flood) a.socket.end()
    // Far sooner than HANDSHAKE_TIMEOUT_MS (30 s): only the FIN can have freed them.
    await within(
      CALLER_DEADLINE_MS,
      Promise.all(flood.map((a) => a.closed)),
      'the half-closed handshakes to close',
    )
    await waitFor(() => inbound.pendingHandshakes === 0, 5_000, 'the pending set to empty')
    expect(inbound.refused.handshakes).toBe(0)
    expect(await errors('handshake_limit')).toBe(0)
    // Real callers still get through.
    expect(await caller(inbound.port)).toEqual({ data: 'api-app:ping' })
  })

  it('a flood going on while callers connect crashes nothing and leaks no pending handshake', async () => {
    const { inbound, errors } = await apiInbound()
    const TOTAL = 120
    const CALLERS = 6
    const flood: Attacker[] = []
    const floodDone = (async () => {
      // Four connections in flight at a time, alternating silent and truncated ClientHellos.
      const partial = hello.subarray(0, 20)
      let next = 0
      const worker = async () => {
        while (next < TOTAL) {
          const i = next++
          flood.push(await attacker(inbound.port, i % 2 === 0 ? undefined : partial))
        }
      }
      await Promise.all([worker(), worker(), worker(), worker()])
    })()
    await waitFor(() => flood.length >= CAP, 5_000, 'the flood to start')
    const calls = await Promise.all(Array.from({ length: CALLERS }, () => caller(inbound.port)))
    await floodDone
    // A caller is served, or cut by the flood (the price of eviction); it is never left hanging.
    for (const c of calls) expect(['api-app:ping', '']).toContain(c.data)
    const cut = calls.filter((c) => c.data === '').length

    // Every attacker connection is either evicted or still pending: none is lost or double-counted.
    await waitFor(
      () => flood.filter((a) => a.closedByPeer()).length + inbound.pendingHandshakes === TOTAL,
      5_000,
      'the evictions to settle',
    )
    expect(inbound.pendingHandshakes).toBeLessThanOrEqual(CAP)
    const evicted = flood.filter((a) => a.closedByPeer()).length
    expect(evicted).toBeGreaterThanOrEqual(TOTAL - CAP)
    expect(inbound.refused.handshakes).toBe(evicted + cut)
    expect(await errors('handshake_limit')).toBe(evicted + cut)

    // After the flood, a caller gets through at once.
    expect(await caller(inbound.port)).toEqual({ data: 'api-app:ping' })
    // A FIN is enough: a connection whose caller ends it mid-handshake is closed at once.
    for (const a of flood) a.socket.end()
    await waitFor(() => inbound.pendingHandshakes === 0, 5_000, 'the pending handshakes to drain')
    expect(inbound.openConnections).toBe(0)
  })
})
