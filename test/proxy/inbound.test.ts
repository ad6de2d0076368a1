/**
 * The inbound listener with real mutual TLS on 127.0.0.1: allowed callers reach the app through
 * an outbound listener; callers without a certificate, with a foreign CA's certificate, or of a
 * service denied by intention are refused; rotation keeps open connections; a policy change
 * closes the connections it now denies.
 */
import net from 'node:net'
import tls from 'node:tls'
import { Registry } from 'prom-client'
import { afterEach, beforeAll, describe, expect, it } from 'vitest'
import type { RootCa } from '../../src/identity/ca/ca.ts'
import { InboundListener, type InboundListenerInit } from '../../src/proxy/inbound.ts'
import { IntentionIndex } from '../../src/proxy/intentions.ts'
import { OutboundListener } from '../../src/proxy/outbound-tcp.ts'
import {
  IntentionAuthorizer,
  StaticCertificateSource,
  StaticEndpointSource,
} from '../../src/proxy/sources.ts'
import type { ServiceCertificate } from '../../src/proxy/types.ts'
import {
  endpoint,
  leafFor,
  makeRoot,
  memoryLogger,
  metricValue,
  startTcpApp,
  type TestApp,
  TD,
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

async function apiInbound(
  app: TestApp,
  authorizer: IntentionAuthorizer,
  registry = new Registry(),
  limits: Pick<InboundListenerInit, 'maxConnections' | 'maxPendingHandshakes'> = {},
) {
  const logger = memoryLogger()
  const certificates = new StaticCertificateSource(apiCert)
  const inbound = new InboundListener({
    service: 'api',
    trustDomain: TD,
    port: 0,
    bindAddress: '127.0.0.1',
    localServicePort: app.port,
    certificates,
    authorizer,
    registry,
    logger,
    ...limits,
  })
  await inbound.start()
  cleanups.push(() => inbound.stop())
  return { inbound, logger, registry, certificates }
}

async function webOutbound(inboundPort: number, authorizer?: IntentionAuthorizer, registry = new Registry()) {
  const certificates = new StaticCertificateSource(webCert)
  const outbound = new OutboundListener({
    sourceService: 'web',
    destinationService: 'api',
    trustDomain: TD,
    bindPort: 0,
    certificates,
    endpoints: new StaticEndpointSource([endpoint('api-1', inboundPort)]),
    registry,
    ...(authorizer ? { authorizer } : {}),
  })
  await outbound.start()
  cleanups.push(() => outbound.stop())
  return { outbound, certificates }
}

/** Connects straight to the inbound with `cert` (or none); resolves with the app's first answer. */
function direct(
  port: number,
  cert: ServiceCertificate | undefined,
): Promise<{ data: string; error?: string }> {
  return new Promise((resolve) => {
    const socket = tls.connect({
      host: '127.0.0.1',
      port,
      ca: [root.certPem],
      ...(cert ? { key: cert.keyPem, cert: cert.certPem } : {}),
      checkServerIdentity: () => undefined,
      minVersion: 'TLSv1.3',
    })
    let data = ''
    socket.setEncoding('utf8')
    socket.on('secureConnect', () => socket.write('ping'))
    socket.on('data', (d: string) => {
      data += d
      socket.end() // one answer is enough (echo apps never close)
    })
    let error: string | undefined
    socket.on('error', (e: Error & { code?: string }) => {
      error = e.code ?? e.message
    })
    socket.on('close', () => resolve(error === undefined ? { data } : { data, error }))
  })
}

/** A persistent connection through `port` to an echo app; `send` resolves with the reply. */
async function persistent(port: number) {
  const socket = net.connect({ host: '127.0.0.1', port })
  socket.setEncoding('utf8')
  let closed = false
  socket.on('close', () => {
    closed = true
  })
  socket.on('error', () => {})
  const send = (text: string) =>
    new Promise<string>((resolve, reject) => {
      socket.once('data', resolve)
      socket.once('close', () => reject(new Error('closed')))
      socket.write(text)
    })
  cleanups.push(async () => {
    socket.destroy()
  })
  return { socket, send, isClosed: () => closed }
}

describe('InboundListener', () => {
  it('an allowed call through the outbound listener reaches the app over mutual TLS', async () => {
    const app = await startTcpApp('api-app')
    cleanups.push(() => app.close())
    const authorizer = IntentionAuthorizer.from([{ source: 'web', destination: 'api', action: 'allow' }])
    const { inbound, registry } = await apiInbound(app, authorizer)
    const { outbound } = await webOutbound(inbound.port)
    expect(await tcpRequest(outbound.port, 'hello')).toBe('api-app:hello')
    expect(app.hits).toBe(1)
    expect(await metricValue(registry, 'peermesh_proxy_connections_total', { direction: 'inbound' })).toBe(1)
  })

  it('a call denied by intention is refused, counted and logged on one line', async () => {
    const app = await startTcpApp('api-app')
    cleanups.push(() => app.close())
    const authorizer = IntentionAuthorizer.from([{ source: 'web', destination: 'api', action: 'deny' }])
    const { inbound, registry, logger } = await apiInbound(app, authorizer)
    const { outbound } = await webOutbound(inbound.port, authorizer, registry)
    await expect(tcpRequest(outbound.port, 'hello')).rejects.toThrow()
    expect(app.hits).toBe(0)
    expect(await metricValue(registry, 'peermesh_proxy_inbound_denied_total', { source: 'web' })).toBe(1)
    // The outbound side knows the policy too: a denial is neither retried nor held against the endpoint.
    const outboundErrors = { direction: 'outbound', reason: 'denied' }
    expect(await metricValue(registry, 'peermesh_proxy_errors_total', outboundErrors)).toBe(1)
    expect(await metricValue(registry, 'peermesh_proxy_retries_total')).toBe(0)
    expect(outbound.core.pool.current[0]!.outlier.consecutiveFailures).toBe(0)
    const denials = logger.lines.filter((l) => l.message.startsWith('inbound denied'))
    expect(denials.map((l) => l.message)).toEqual(['inbound denied src=web dst=api'])
  })

  it('refuses a client without a certificate, one from a foreign CA, and a valid leaf of a denied service', async () => {
    const app = await startTcpApp('api-app')
    cleanups.push(() => app.close())
    const authorizer = IntentionAuthorizer.from([{ source: 'web', destination: 'api', action: 'allow' }])
    const { inbound, registry } = await apiInbound(app, authorizer)
    const foreign = await leafFor(await makeRoot(), 'web')

    const noCert = await direct(inbound.port, undefined)
    const foreignCa = await direct(inbound.port, foreign)
    const deniedService = await direct(inbound.port, dbCert)
    for (const r of [noCert, foreignCa, deniedService]) expect(r.data).toBe('')
    expect(app.hits).toBe(0)
    // The first two fail the handshake; the third is a valid mesh leaf refused by intention.
    expect(await metricValue(registry, 'peermesh_proxy_errors_total', { reason: 'tls' })).toBe(2)
    expect(await metricValue(registry, 'peermesh_proxy_inbound_denied_total', { source: 'db' })).toBe(1)
    // And the allowed service gets through.
    expect(await direct(inbound.port, webCert)).toEqual({ data: 'api-app:ping' })
  })

  it('certificate rotation keeps open connections, and new handshakes use the new leaf', async () => {
    const app = await startTcpApp('api-app', 'echo')
    cleanups.push(() => app.close())
    const authorizer = IntentionAuthorizer.from([{ source: 'web', destination: 'api', action: 'allow' }])
    const { inbound, certificates: apiSource } = await apiInbound(app, authorizer)
    const { outbound, certificates: webSource } = await webOutbound(inbound.port)
    const conn = await persistent(outbound.port)
    expect(await conn.send('one')).toBe('api-app:one')

    const [apiNext, webNext] = await Promise.all([leafFor(root, 'api'), leafFor(root, 'web')])
    apiSource.set(apiNext)
    webSource.set(webNext)

    expect(await conn.send('two')).toBe('api-app:two')
    expect(conn.isClosed()).toBe(false)
    // A new handshake sees the new leaf; the old connection is still served.
    const served = await new Promise<string>((resolve, reject) => {
      const s = tls.connect({
        host: '127.0.0.1',
        port: inbound.port,
        ca: [root.certPem],
        key: webNext.keyPem,
        cert: webNext.certPem,
        checkServerIdentity: () => undefined,
      })
      s.on('secureConnect', () => {
        resolve(s.getPeerX509Certificate()!.toString())
        s.destroy()
      })
      s.on('error', reject)
    })
    expect(served.replace(/\s/g, '')).toBe(apiNext.certPem.replace(/\s/g, ''))
    const fresh = await persistent(outbound.port)
    expect(await fresh.send('three')).toBe('api-app:three')
    expect(await conn.send('four')).toBe('api-app:four')
    // A client without a certificate is still refused after the context swap.
    expect((await direct(inbound.port, undefined)).data).toBe('')
  })

  it('an intention change closes open connections it now denies and refuses new ones', async () => {
    const app = await startTcpApp('api-app', 'echo')
    cleanups.push(() => app.close())
    const authorizer = IntentionAuthorizer.from([
      { source: 'web', destination: 'api', action: 'allow' },
      { source: 'db', destination: 'api', action: 'allow' },
    ])
    const { inbound, registry } = await apiInbound(app, authorizer)
    const { outbound } = await webOutbound(inbound.port)
    const web = await persistent(outbound.port)
    expect(await web.send('x')).toBe('api-app:x')
    expect(inbound.openConnections).toBe(1)

    authorizer.update(
      new IntentionIndex([
        { source: 'web', destination: 'api', action: 'deny' },
        { source: 'db', destination: 'api', action: 'allow' },
      ]),
    )
    await waitFor(() => web.isClosed(), 5_000, 'the denied connection to close')
    expect(await metricValue(registry, 'peermesh_proxy_inbound_denied_total', { source: 'web' })).toBe(1)
    await expect(tcpRequest(outbound.port, 'again')).rejects.toThrow()
    // db is still allowed.
    expect(await direct(inbound.port, dbCert)).toEqual({ data: 'api-app:ping' })
  })
})

describe('InboundListener resource caps (#13)', () => {
  /** A TCP connection that never starts TLS: it holds a pending handshake. */
  async function idle(port: number): Promise<{ socket: net.Socket; closed: Promise<void> }> {
    const socket = net.connect({ host: '127.0.0.1', port })
    socket.on('error', () => {})
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()))
    await new Promise<void>((resolve) => socket.once('connect', () => resolve()))
    cleanups.push(async () => {
      socket.destroy()
    })
    return { socket, closed }
  }

  const errors = (registry: Registry, reason: string) =>
    metricValue(registry, 'peermesh_proxy_errors_total', { direction: 'inbound', reason })

  it('past the pending-handshake cap evicts the oldest pending handshake, counts it, and serves the new caller', async () => {
    const app = await startTcpApp('api-app')
    cleanups.push(() => app.close())
    const authorizer = IntentionAuthorizer.from([{ source: 'web', destination: 'api', action: 'allow' }])
    const { inbound, registry } = await apiInbound(app, authorizer, new Registry(), {
      maxPendingHandshakes: 2,
    })
    const held = [await idle(inbound.port), await idle(inbound.port)]
    await waitFor(() => inbound.pendingHandshakes === 2)
    const excess = await idle(inbound.port)
    // The oldest, closed by the listener without waiting for the handshake timeout.
    await waitFor(() => held[0]!.socket.destroyed, 5_000, 'the oldest pending handshake to be evicted')
    await waitFor(() => inbound.pendingHandshakes === 2) // held[1] and excess
    expect(inbound.refused.handshakes).toBe(1)
    expect(await errors(registry, 'handshake_limit')).toBe(1)
    expect(await errors(registry, 'tls')).toBe(0)
    // A real caller is served while the slots are held, at the cost of the next oldest...
    expect(await direct(inbound.port, webCert)).toEqual({ data: 'api-app:ping' })
    await waitFor(() => held[1]!.socket.destroyed, 5_000, 'the next oldest to be evicted')
    expect(await errors(registry, 'handshake_limit')).toBe(2)
    expect(await errors(registry, 'tls')).toBe(0)
    // ...and the newest is still pending.
    expect(excess.socket.destroyed).toBe(false)
    expect(inbound.pendingHandshakes).toBe(1)
    expect(app.hits).toBe(1)
  })

  it('closes a connection past the connection cap at once and counts it', async () => {
    const app = await startTcpApp('api-app', 'echo')
    cleanups.push(() => app.close())
    const authorizer = IntentionAuthorizer.from([{ source: 'web', destination: 'api', action: 'allow' }])
    const { inbound, registry } = await apiInbound(app, authorizer, new Registry(), { maxConnections: 2 })
    // One relaying, one handshaking: the cap counts both.
    const { outbound } = await webOutbound(inbound.port)
    const relayed = await persistent(outbound.port)
    expect(await relayed.send('a')).toBe('api-app:a')
    await idle(inbound.port)
    await waitFor(() => inbound.pendingHandshakes === 1 && inbound.openConnections === 1)
    const excess = await idle(inbound.port)
    await excess.closed // closed by the listener, without waiting for anything
    expect(inbound.refused.connections).toBe(1)
    expect(await errors(registry, 'conn_limit')).toBe(1)
    // The open connection is untouched.
    expect(await relayed.send('b')).toBe('api-app:b')
    expect(inbound.openConnections).toBe(1)
  })

  it('refuses caps that are not positive integers', () => {
    for (const maxConnections of [0, -1, 1.5]) {
      expect(
        () =>
          new InboundListener({
            service: 'api',
            trustDomain: TD,
            port: 0,
            localServicePort: 1,
            certificates: new StaticCertificateSource(apiCert),
            authorizer: IntentionAuthorizer.from([]),
            maxConnections,
          }),
      ).toThrow(/maxConnections: must be a positive integer/)
    }
  })
})
