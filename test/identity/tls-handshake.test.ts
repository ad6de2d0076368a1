/**
 * Two service leaves complete a real mutual TLS 1.3 handshake with node:tls on 127.0.0.1, each
 * side trusting only the mesh root; a leaf from another CA is refused.
 */
import type { AddressInfo } from 'node:net'
import tls from 'node:tls'
import { describe, expect, it } from 'vitest'
import { createRootCa, type RootCa, signLeaf } from '../../src/identity/ca/ca.ts'
import type { KeyType } from '../../src/identity/keys/keys.ts'
import {
  createLeafKeyAndCsr,
  peerServiceId,
  spiffeServerIdentityCheck,
  verifyLeaf,
} from '../../src/identity/ca/leaf.ts'
import { x509 } from '../../src/identity/ca/x509-setup.ts'
import { deferred, HOUR, TD } from './helpers.ts'

async function leafFor(root: RootCa, service: string, keyType: KeyType, nowMs: number) {
  const { keyPem, csrPem } = await createLeafKeyAndCsr({ service, trustDomain: TD, keyType })
  const leaf = await signLeaf(root, csrPem, { service, trustDomain: TD, ttlMs: HOUR, nowMs })
  return { key: keyPem, cert: leaf.certPem }
}

async function handshake(opts: {
  root: RootCa
  server: { key: string; cert: string }
  client: { key: string; cert: string }
  onServerError?: (error: Error & { code?: string }) => void
  expectServer?: string
}): Promise<{ protocol: string | null; serverSawSan: string; clientSawSan: string; clientPeerPem: string }> {
  const serverSaw = deferred<string>()
  const server = tls.createServer(
    {
      ...opts.server,
      ca: [opts.root.certPem],
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: 'TLSv1.3',
    },
    (socket) => {
      serverSaw.resolve(socket.getPeerCertificate().subjectaltname ?? '')
      socket.end('hello')
    },
  )
  serverSaw.promise.catch(() => {}) // observed through the client side as well
  server.on('tlsClientError', (err) => {
    opts.onServerError?.(err)
    serverSaw.reject(err)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  try {
    const socket = tls.connect({
      host: '127.0.0.1',
      port,
      ...opts.client,
      ca: [opts.root.certPem],
      minVersion: 'TLSv1.3',
      checkServerIdentity: spiffeServerIdentityCheck(TD, opts.expectServer ?? 'api'),
    })
    const connected = await new Promise<tls.TLSSocket>((resolve, reject) => {
      socket.once('secureConnect', () => resolve(socket))
      socket.once('error', reject)
    })
    const peer = connected.getPeerCertificate()
    const result = {
      protocol: connected.getProtocol(),
      clientSawSan: peer.subjectaltname ?? '',
      clientPeerPem: x509.PemConverter.encode(peer.raw, 'CERTIFICATE'),
      serverSawSan: await serverSaw.promise,
    }
    // Wait for the server's data so the client learns of any late rejection of its certificate.
    await new Promise<void>((resolve, reject) => {
      connected.on('data', () => {})
      connected.once('end', resolve)
      connected.once('error', reject)
    })
    connected.destroy()
    return result
  } finally {
    await new Promise<void>((resolve) => server.close(() => resolve()))
  }
}

// node:tls checks validity against the machine clock, so these certificates are issued "now".
describe('mutual TLS 1.3 between two mesh leaves', () => {
  it.each(['ed25519', 'ecdsa-p256'] as const)(
    '%s leaves interoperate and see each other’s SPIFFE ids',
    async (keyType) => {
      const nowMs = Date.now()
      const root = await createRootCa({ trustDomain: TD, keyType, validityDays: 1, nowMs })
      const server = await leafFor(root, 'api', keyType, nowMs)
      const client = await leafFor(root, 'web', keyType, nowMs)
      const result = await handshake({ root, server, client })
      expect(result.protocol).toBe('TLSv1.3')
      expect(result.serverSawSan).toBe(`URI:spiffe://${TD}/svc/web`)
      expect(result.clientSawSan).toBe(`URI:spiffe://${TD}/svc/api`)
      const verified = await verifyLeaf(result.clientPeerPem, {
        roots: [root.certPem],
        trustDomain: TD,
        expectedService: 'api',
        nowMs: Date.now(),
      })
      expect(verified).toMatchObject({ ok: true, service: 'api' })
      const der = new Uint8Array(x509.PemConverter.decodeFirst(result.clientPeerPem))
      expect(peerServiceId(der)).toEqual({ trustDomain: TD, service: 'api' })
    },
  )

  it('a client with a leaf from another CA is refused by the server', async () => {
    const nowMs = Date.now()
    const root = await createRootCa({ trustDomain: TD, validityDays: 1, nowMs })
    const foreign = await createRootCa({ trustDomain: TD, validityDays: 1, nowMs })
    const server = await leafFor(root, 'api', 'ed25519', nowMs)
    const intruder = await leafFor(foreign, 'web', 'ed25519', nowMs)
    const serverErrors: (Error & { code?: string })[] = []
    const onServerError = (e: Error & { code?: string }) => serverErrors.push(e)
    await expect(handshake({ root, server, client: intruder, onServerError })).rejects.toThrow()
    // The server aborted the handshake: it never handed the connection to its handler.
    expect(serverErrors.length).toBeGreaterThan(0)
  })

  it('the client refuses a server presenting another service’s SPIFFE id', async () => {
    const nowMs = Date.now()
    const root = await createRootCa({ trustDomain: TD, validityDays: 1, nowMs })
    const server = await leafFor(root, 'api', 'ed25519', nowMs)
    const client = await leafFor(root, 'web', 'ed25519', nowMs)
    const error = await handshake({ root, server, client, expectServer: 'db' }).then(
      () => undefined,
      (e: unknown) => e as { code?: string },
    )
    expect(error?.code).toBe('PEERMESH_ERR_PEER_IDENTITY_MISMATCH')
  })
})
