/** Shared fixtures for proxy tests: a test CA, service leaves, local apps, polling and metrics. */
import http from 'node:http'
import net, { type AddressInfo } from 'node:net'
import type { Registry } from 'prom-client'
import { expect } from 'vitest'
import { readTrafficEntries } from '../../src/node/sidecars/traffic-config.ts'
import { createRootCa, type RootCa, signLeaf } from '../../src/identity/ca/ca.ts'
import { createLeafKeyAndCsr } from '../../src/identity/ca/leaf.ts'
import { InboundListener } from '../../src/proxy/inbound.ts'
import { StaticCertificateSource } from '../../src/proxy/sources.ts'
import type { Authorizer, Endpoint, ProxyLogger, ServiceCertificate } from '../../src/proxy/types.ts'
import { configEntryProblem, type TrafficEntryKind } from '../../src/raft/policy/config-entries.ts'
import type { ConfigEntry } from '../../src/raft/policy/policy-store.ts'

export const TD = 'example.mesh'
const HOUR = 3_600_000

/** node:tls checks validity against the machine clock, so certificates are issued "now". */
export async function makeRoot(): Promise<RootCa> {
  return createRootCa({ trustDomain: TD, validityDays: 1, nowMs: Date.now() })
}

export async function leafFor(
  root: RootCa,
  service: string,
  extraRoots: string[] = [],
): Promise<ServiceCertificate> {
  const nowMs = Date.now()
  const { keyPem, csrPem } = await createLeafKeyAndCsr({ service, trustDomain: TD })
  const leaf = await signLeaf(root, csrPem, { service, trustDomain: TD, ttlMs: HOUR, nowMs })
  return { certPem: leaf.certPem, keyPem, rootsPem: [root.certPem, ...extraRoots] }
}

export interface TestApp {
  name: string
  port: number
  /** Connections (TCP apps) or requests (HTTP apps) received. */
  hits: number
  /** HTTP apps: the headers of the last request. */
  lastHeaders: http.IncomingHttpHeaders | undefined
  close(): Promise<void>
}

/**
 * A TCP app. `reply`: answers the first chunk with `<name>:<chunk>` and closes. `echo`: answers
 * every chunk with `<name>:<chunk>` and stays open.
 */
export async function startTcpApp(name: string, mode: 'reply' | 'echo' = 'reply'): Promise<TestApp> {
  const sockets = new Set<net.Socket>()
  const app: TestApp = { name, port: 0, hits: 0, lastHeaders: undefined, close: async () => {} }
  const server = net.createServer((socket) => {
    app.hits++
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => {})
    socket.on('data', (chunk) => {
      if (mode === 'reply') socket.end(`${name}:${chunk}`)
      else socket.write(`${name}:${chunk}`)
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  app.port = (server.address() as AddressInfo).port
  app.close = () =>
    new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy()
      server.close(() => resolve())
    })
  return app
}

/** An HTTP app answering `<name>` with keep-alive; records hits and the last request's headers. */
export async function startHttpApp(name: string): Promise<TestApp> {
  const app: TestApp = { name, port: 0, hits: 0, lastHeaders: undefined, close: async () => {} }
  const server = http.createServer((req, res) => {
    app.hits++
    app.lastHeaders = req.headers
    req.resume()
    if (req.url === '/hang') return // never answers: for timeouts
    req.on('end', () => res.end(name))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  app.port = (server.address() as AddressInfo).port
  app.close = () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections()
      server.close(() => resolve())
    })
  return app
}

/** A port with nothing listening on it (bound, then released). */
/**
 * Listens on a free 127.0.0.1 port. The server's connections are tracked (for a TLS server, the TCP
 * sockets under them), and `close` destroys those still open before it closes the server.
 */
export async function listenLoopback(
  server: net.Server,
): Promise<{ port: number; close: () => Promise<void> }> {
  const sockets = new Set<net.Socket>()
  server.on('connection', (socket: net.Socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const close = (): Promise<void> =>
    new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy()
      server.close(() => resolve())
    })
  return { port: (server.address() as AddressInfo).port, close }
}

export async function deadPort(): Promise<number> {
  const server = net.createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return port
}

export function endpoint(id: string, port: number, service = 'api', extra: Partial<Endpoint> = {}): Endpoint {
  return { id, address: '127.0.0.1', port, weight: 1, tags: [], service, ...extra }
}

/** Sends `payload` on a fresh connection and returns everything received until the peer closes. */
export function tcpRequest(port: number, payload: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: '127.0.0.1' })
    let data = ''
    socket.setEncoding('utf8')
    socket.on('data', (d: string) => {
      data += d
    })
    socket.on('error', reject)
    socket.on('close', () => (data === '' ? reject(new Error('closed without data')) : resolve(data)))
    socket.write(payload)
  })
}

/** Polls `check` until it returns true, or throws after `timeoutMs`. */
export async function waitFor(
  check: () => boolean | Promise<boolean>,
  timeoutMs = 5_000,
  what = 'condition',
): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

/** Sum of a metric's samples whose labels include `labels`. */
export async function metricValue(
  registry: Registry,
  name: string,
  labels: Record<string, string> = {},
): Promise<number> {
  const metric = registry.getSingleMetric(name)
  if (!metric) return 0
  const { values } = await metric.get()
  let sum = 0
  for (const v of values) {
    // Histograms list _bucket/_sum/_count samples under their own names: count only `name`.
    const sample = (v as { metricName?: string }).metricName
    if (sample !== undefined && sample !== name) continue
    if (Object.entries(labels).every(([k, want]) => String(v.labels[k]) === want)) sum += v.value
  }
  return sum
}

/** A logger that keeps lines in memory. */
export function memoryLogger(): ProxyLogger & {
  lines: { level: string; message: string; fields: Record<string, unknown> }[]
} {
  const lines: { level: string; message: string; fields: Record<string, unknown> }[] = []
  const log = (level: string) => (fields: Record<string, unknown>, message: string) => {
    lines.push({ level, message, fields })
  }
  return { lines, info: log('info'), warn: log('warn'), debug: log('debug') }
}

export interface HttpResult {
  status: number
  body: string
  headers: http.IncomingHttpHeaders
}

export function httpGet(
  port: number,
  path = '/',
  headers: Record<string, string> = {},
  agent?: http.Agent,
): Promise<HttpResult> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, headers, agent }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (d: string) => {
        body += d
      })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
}

/** An app plus its inbound listener: one instance of a service, as `endpoint()` sees it. */
export interface TestInstance {
  app: TestApp
  inbound: InboundListener
  endpoint: Endpoint
  stop(): Promise<void>
}

/**
 * An HTTP app answering with `handler` behind a real inbound listener of `service` (default api):
 * one instance as `endpoint()` sees it. `stop` closes the inbound, then the app and its
 * keep-alive connections.
 */
export async function startHandlerInstance(opts: {
  id: string
  cert: ServiceCertificate
  authorizer: Authorizer
  handler: http.RequestListener
  service?: string
}): Promise<{ inbound: InboundListener; endpoint: Endpoint; stop: () => Promise<void> }> {
  const app = http.createServer(opts.handler)
  await new Promise<void>((resolve) => app.listen(0, '127.0.0.1', resolve))
  const service = opts.service ?? 'api'
  const inbound = new InboundListener({
    service,
    trustDomain: TD,
    port: 0,
    bindAddress: '127.0.0.1',
    localServicePort: (app.address() as AddressInfo).port,
    certificates: new StaticCertificateSource(opts.cert),
    authorizer: opts.authorizer,
  })
  await inbound.start()
  return {
    inbound,
    endpoint: endpoint(opts.id, inbound.port, service),
    stop: async () => {
      await inbound.stop()
      app.closeAllConnections()
      await new Promise<void>((resolve) => app.close(() => resolve()))
    },
  }
}

export async function startInstance(opts: {
  id: string
  service: string
  cert: ServiceCertificate
  authorizer: Authorizer
  kind: 'tcp' | 'http'
  tags?: string[]
  registry?: Registry
}): Promise<TestInstance> {
  const app = opts.kind === 'http' ? await startHttpApp(opts.id) : await startTcpApp(opts.id)
  const inbound = new InboundListener({
    service: opts.service,
    trustDomain: TD,
    port: 0,
    bindAddress: '127.0.0.1',
    localServicePort: app.port,
    certificates: new StaticCertificateSource(opts.cert),
    authorizer: opts.authorizer,
    ...(opts.registry ? { registry: opts.registry } : {}),
  })
  await inbound.start()
  return {
    app,
    inbound,
    endpoint: endpoint(opts.id, inbound.port, opts.service, { tags: opts.tags ?? [] }),
    stop: async () => {
      await inbound.stop()
      await app.close()
    },
  }
}

/** Runs `total` calls of `fn` with at most `concurrency` in flight; returns their results in order. */
export async function runConcurrently<T>(
  total: number,
  concurrency: number,
  fn: (i: number) => Promise<T>,
): Promise<T[]> {
  const results: T[] = new Array(total)
  let next = 0
  const worker = async () => {
    while (next < total) {
      const i = next++
      results[i] = await fn(i)
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, total) }, worker))
  return results
}

/** How far `pumpInto` got: bytes written, and whether it waits for the socket to drain. */
export interface Pump {
  written: number
  blocked: boolean
}

/**
 * Writes `chunk` to `socket` as fast as it takes it, until `pump.written` reaches `cap`; between a
 * full buffer and its 'drain', `pump.blocked` is true (a test reads back-pressure from it).
 */
export function pumpInto(socket: net.Socket, chunk: Buffer, cap: number, pump: Pump): void {
  while (pump.written < cap) {
    pump.written += chunk.length
    if (!socket.write(chunk)) {
      pump.blocked = true
      socket.once('drain', () => {
        pump.blocked = false
        pumpInto(socket, chunk, cap, pump)
      })
      return
    }
  }
}

/** Traffic config entries as the policy store holds them (each validated first, as a write would be). */
export function trafficEntries(
  list: { kind: TrafficEntryKind; name: string; value: Record<string, unknown> }[],
) {
  const stored: ConfigEntry[] = list.map((e, i) => {
    expect(configEntryProblem(e.kind, e.name, e.value)).toBeUndefined()
    return { ...e, createdIndex: i + 1, modifyIndex: i + 1 }
  })
  return readTrafficEntries({
    listConfigEntries: (kind) => stored.filter((e) => e.kind === kind),
    onChange: () => () => {},
  })
}
