/**
 * One process of the proxy-overhead bench, started by `bench/proxy-overhead.ts`:
 *
 *   node --import tsx bench/proxy-sidecar-runner.ts <config.json>
 *
 * Roles (`role` in the config):
 * - `app`: the Node HTTP server answering every request with a 1 KiB body, keep-alive;
 * - `app-h2`: the same over HTTP/2 without TLS (h2c, prior knowledge);
 * - `inbound`: the destination's sidecar (service `api`): mTLS inbound listener -> the app
 *   (`protocol: http2`: connections with ALPN h2 are served per stream, to an h2c app);
 * - `outbound`: the source's sidecar (service `web`): a plain listener on 127.0.0.1 for upstream
 *   `api` (L4, HTTP or HTTP/2 mode) -> mutual TLS to the inbound sidecar.
 *
 * When listening it prints one JSON line `{"port": N, "pid": P}` on stdout. It exits when its stdin
 * closes (the bench ended or died), on SIGTERM, or on SIGINT.
 */
import { readFileSync } from 'node:fs'
import http from 'node:http'
import http2 from 'node:http2'
import type { AddressInfo } from 'node:net'
import { Sidecar } from '../src/proxy/sidecar.ts'
import { IntentionAuthorizer, StaticCertificateSource, StaticEndpointSource } from '../src/proxy/sources.ts'
import type { ServiceCertificate } from '../src/proxy/types.ts'

export type RunnerConfig =
  | { role: 'app'; bodyBytes: number }
  | { role: 'app-h2'; bodyBytes: number }
  | {
      role: 'inbound'
      trustDomain: string
      cert: ServiceCertificate
      appPort: number
      protocol?: 'tcp' | 'http2'
    }
  | {
      role: 'outbound'
      trustDomain: string
      cert: ServiceCertificate
      protocol: 'tcp' | 'http' | 'http2'
      inboundPort: number
    }

async function startApp(bodyBytes: number): Promise<{ port: number; close: () => Promise<void> }> {
  const body = Buffer.alloc(bodyBytes, 'x')
  const headers = { 'content-type': 'text/plain', 'content-length': String(body.length) }
  const server = http.createServer({ keepAlive: true, noDelay: true }, (req, res) => {
    req.resume()
    res.writeHead(200, headers)
    res.end(body)
  })
  server.keepAliveTimeout = 60_000
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  }
}

async function startH2App(bodyBytes: number): Promise<{ port: number; close: () => Promise<void> }> {
  const body = Buffer.alloc(bodyBytes, 'x')
  const headers = { ':status': 200, 'content-type': 'text/plain', 'content-length': String(body.length) }
  const server = http2.createServer()
  const sessions = new Set<http2.Http2Session>()
  server.on('session', (s) => {
    sessions.add(s)
    s.on('close', () => sessions.delete(s))
  })
  server.on('stream', (stream) => {
    stream.on('error', () => {})
    stream.resume()
    stream.respond(headers)
    stream.end(body)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sessions) s.destroy()
        server.close(() => resolve())
      }),
  }
}

/** The intentions of the bench: web may call api, everything else is denied. */
function authorizer(): IntentionAuthorizer {
  return IntentionAuthorizer.from([{ source: 'web', destination: 'api', action: 'allow' }])
}

async function main(): Promise<void> {
  const path = process.argv[2]
  if (!path) throw new Error('usage: proxy-sidecar-runner.ts <config.json>')
  const config = JSON.parse(readFileSync(path, 'utf8')) as RunnerConfig
  let port: number
  let close: () => Promise<void>
  if (config.role === 'app') {
    ;({ port, close } = await startApp(config.bodyBytes))
  } else if (config.role === 'app-h2') {
    ;({ port, close } = await startH2App(config.bodyBytes))
  } else if (config.role === 'inbound') {
    const sidecar = new Sidecar({
      service: 'api',
      trustDomain: config.trustDomain,
      inbound: {
        port: 0,
        bindAddress: '127.0.0.1',
        localServicePort: config.appPort,
        ...(config.protocol !== undefined ? { protocol: config.protocol } : {}),
      },
      upstreams: [],
      certificates: new StaticCertificateSource(config.cert),
      authorizer: authorizer(),
    })
    await sidecar.start()
    port = sidecar.inbound.port
    close = () => sidecar.stop()
  } else {
    const endpoints = new StaticEndpointSource([
      {
        id: 'bench/api',
        address: '127.0.0.1',
        port: config.inboundPort,
        weight: 1,
        tags: [],
        service: 'api',
      },
    ])
    const sidecar = new Sidecar({
      service: 'web',
      trustDomain: config.trustDomain,
      // web's own inbound is not on the measured path; it only has to exist.
      inbound: { port: 0, bindAddress: '127.0.0.1', localServicePort: 1 },
      upstreams: [{ destinationName: 'api', localBindPort: 0, protocol: config.protocol, endpoints }],
      certificates: new StaticCertificateSource(config.cert),
      authorizer: authorizer(),
    })
    await sidecar.start()
    port = sidecar.upstream('api')!.port
    close = () => sidecar.stop()
  }

  let closing = false
  const shutdown = (): void => {
    if (closing) return
    closing = true
    const timer = setTimeout(() => process.exit(0), 2_000)
    timer.unref()
    close().finally(() => process.exit(0))
  }
  process.on('SIGTERM', shutdown)
  process.on('SIGINT', shutdown)
  process.stdin.on('end', shutdown)
  process.stdin.on('close', shutdown)
  process.stdin.resume()
  process.stdout.write(`${JSON.stringify({ port, pid: process.pid })}\n`)
}

main().catch((error: unknown) => {
  process.stderr.write(`proxy-sidecar-runner: ${error instanceof Error ? error.stack : String(error)}\n`)
  process.exit(1)
})
