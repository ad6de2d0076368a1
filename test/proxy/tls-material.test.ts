/**
 * The TLS settings both ends of a mesh connection use (tls-material.ts): TLS 1.3 with mutual
 * certificates, AES-128-GCM negotiated between two sidecars, and a peer that offers only another
 * TLS 1.3 suite still connects.
 */
import tls from 'node:tls'
import { afterEach, beforeAll, describe, expect, it } from 'vitest'
import { MESH_TLS_CIPHERSUITES } from '../../src/proxy/constants.ts'
import { clientSecureContext, peerServiceOf, serverContextOptions } from '../../src/proxy/tls-material.ts'
import type { ServiceCertificate } from '../../src/proxy/types.ts'
import { leafFor, listenLoopback, makeRoot, TD } from './helpers.ts'

let apiCert: ServiceCertificate
let webCert: ServiceCertificate

beforeAll(async () => {
  const root = await makeRoot()
  ;[apiCert, webCert] = await Promise.all([leafFor(root, 'api'), leafFor(root, 'web')])
})

const cleanups: (() => Promise<void>)[] = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

interface Handshake {
  /** The suite and version the client saw. */
  client: { cipher: string; version: string | null }
  /** The caller's service as the server read it from the client certificate. */
  source: string | undefined
}

/** A server with `serverContextOptions(apiCert)` and a client with `context`; one handshake. */
async function handshake(context: tls.SecureContext): Promise<Handshake> {
  const server = tls.createServer({
    ...serverContextOptions(apiCert),
    requestCert: true,
    rejectUnauthorized: true,
  })
  let source: string | undefined
  const accepted = new Promise<void>((resolve) => {
    server.once('secureConnection', (socket: tls.TLSSocket) => {
      source = peerServiceOf(socket, TD)
      socket.on('error', () => {})
      resolve()
    })
  })
  const { port, close } = await listenLoopback(server)
  cleanups.push(close)
  const socket = await new Promise<tls.TLSSocket>((resolve, reject) => {
    const s = tls.connect(
      { host: '127.0.0.1', port, secureContext: context, checkServerIdentity: () => undefined },
      () => resolve(s),
    )
    s.once('error', reject)
  })
  cleanups.push(async () => {
    socket.destroy()
  })
  await accepted
  return { client: { cipher: socket.getCipher().standardName, version: socket.getProtocol() }, source }
}

describe('mesh TLS material', () => {
  it('two sidecars negotiate TLS 1.3 with AES-128-GCM, and the server reads the caller from its leaf', async () => {
    const r = await handshake(clientSecureContext(webCert))
    expect(r.client).toEqual({ cipher: 'TLS_AES_128_GCM_SHA256', version: 'TLSv1.3' })
    expect(r.source).toBe('web')
  })

  it('a peer offering only AES-256-GCM (another build, or OpenSSL defaults) still connects', async () => {
    const r = await handshake(
      tls.createSecureContext({
        key: webCert.keyPem,
        cert: webCert.certPem,
        ca: [...webCert.rootsPem],
        minVersion: 'TLSv1.3',
        ciphers: 'TLS_AES_256_GCM_SHA384',
      }),
    )
    expect(r.client).toEqual({ cipher: 'TLS_AES_256_GCM_SHA384', version: 'TLSv1.3' })
    expect(r.source).toBe('web')
  })

  it('the suite list holds only TLS 1.3 AEAD suites, AES-128-GCM first', () => {
    const suites = MESH_TLS_CIPHERSUITES.split(':')
    expect(suites[0]).toBe('TLS_AES_128_GCM_SHA256')
    expect(new Set(suites)).toEqual(
      new Set(['TLS_AES_128_GCM_SHA256', 'TLS_AES_256_GCM_SHA384', 'TLS_CHACHA20_POLY1305_SHA256']),
    )
  })
})
