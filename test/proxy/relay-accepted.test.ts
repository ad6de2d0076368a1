/**
 * `readAccepted` (relay.ts): node's `onread` on sockets a server accepted, plain and TLS. Bytes
 * arrive whole and in order (those node read before the switch first), a `false` from the
 * callback stops reading until `resume()`, `'end'` still comes, and where node does not allow it
 * nothing changes and `'data'` events go on.
 */
import { once } from 'node:events'
import net from 'node:net'
import tls from 'node:tls'
import { afterEach, beforeAll, describe, expect, it } from 'vitest'
import { allowAcceptedOnRead, canReadAccepted, readAccepted } from '../../src/proxy/relay.ts'
import { clientSecureContext, serverContextOptions } from '../../src/proxy/tls-material.ts'
import type { ServiceCertificate } from '../../src/proxy/types.ts'
import { leafFor, listenLoopback, makeRoot } from './helpers.ts'

let apiCert: ServiceCertificate
let webCert: ServiceCertificate

beforeAll(async () => {
  const root = await makeRoot()
  ;[apiCert, webCert] = await Promise.all([leafFor(root, 'api'), leafFor(root, 'web')])
})

const cleanups: (() => Promise<void> | void)[] = []
afterEach(async () => {
  allowAcceptedOnRead(true)
  for (const c of cleanups.splice(0).reverse()) await c()
})

/** A plain server on 127.0.0.1 and a connected client; resolves with both ends. */
async function plainPair(): Promise<{ accepted: net.Socket; client: net.Socket }> {
  const server = net.createServer({ allowHalfOpen: true })
  const { port, close } = await listenLoopback(server)
  cleanups.push(close)
  const accepted = once(server, 'connection').then(([s]) => s as net.Socket)
  const client = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true, noDelay: true })
  cleanups.push(() => void client.destroy())
  const socket = await accepted
  cleanups.push(() => void socket.destroy())
  return { accepted: socket, client }
}

/** A mutual-TLS server on 127.0.0.1 and a connected client, once the handshake is done. */
async function tlsPair(): Promise<{ accepted: tls.TLSSocket; client: tls.TLSSocket }> {
  const server = tls.createServer({
    ...serverContextOptions(apiCert),
    requestCert: true,
    rejectUnauthorized: true,
  })
  const { port, close } = await listenLoopback(server)
  cleanups.push(close)
  const accepted = once(server, 'secureConnection').then(([s]) => s as tls.TLSSocket)
  const client = tls.connect({
    port,
    host: '127.0.0.1',
    secureContext: clientSecureContext(webCert),
    checkServerIdentity: () => undefined,
  })
  client.setNoDelay(true)
  cleanups.push(() => void client.destroy())
  const [socket] = await Promise.all([accepted, once(client, 'secureConnect')])
  cleanups.push(() => void socket.destroy())
  return { accepted: socket, client }
}

/** Collects what `socket` delivers through `readAccepted` until `total` bytes or its end. */
function collect(socket: net.Socket): { chunks: Buffer[]; bytes: () => number } {
  const chunks: Buffer[] = []
  const adopted = readAccepted(socket, (chunk) => {
    chunks.push(chunk)
    return true
  })
  expect(adopted).toBe(true)
  return { chunks, bytes: () => chunks.reduce((n, c) => n + c.length, 0) }
}

async function until(check: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 5000
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setImmediate(r))
  }
}

/**
 * After `client` writes `more`, `accepted` (stopped reading) has delivered only `held` into
 * `chunks`; after `resume()`, `everything`. Without Nagle, a loopback write's bytes are in the
 * receiver's queue once the write callback runs; a reading socket would have them within a turn
 * (every turn polls): 20 turns, nothing.
 */
async function heldUntilResume(
  accepted: net.Socket,
  client: net.Socket,
  chunks: Buffer[],
  write: { more: string; held: string; everything: string },
): Promise<void> {
  const got = (): string => Buffer.concat(chunks).toString()
  await new Promise<void>((r) => client.write(write.more, () => r()))
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r))
  expect(got()).toBe(write.held)
  accepted.resume()
  await until(() => got() === write.everything, 'the rest after resume()')
}

describe.each([
  { kind: 'plain', pair: plainPair },
  { kind: 'TLS', pair: tlsPair },
])('readAccepted on an accepted $kind socket', ({ pair }) => {
  it('is available on this node, and delivers every byte in order, then the end', async () => {
    const { accepted, client } = await pair()
    expect(canReadAccepted(accepted)).toBe(true)
    const got = collect(accepted)
    let dataEvents = 0
    accepted.on('data', () => dataEvents++)
    const ended = once(accepted, 'end')
    const payload = Buffer.alloc(300_000)
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 7) % 251
    client.end(payload)
    await ended
    expect(Buffer.concat(got.chunks).equals(payload)).toBe(true)
    // Straight to the callback: no Readable machinery on the way.
    expect(dataEvents).toBe(0)
    // Each chunk is the callee's own copy, not a view of the shared read buffer.
    expect(new Set(got.chunks.map((c) => c.buffer)).size).toBe(got.chunks.length)
  })

  it('delivers the bytes node read before the switch first', async () => {
    const { accepted, client } = await pair()
    // Let node read the first bytes the usual way (into the Readable's buffer).
    client.write('first;')
    await once(accepted, 'readable')
    expect(accepted.readableLength).toBe(6)
    const got = collect(accepted)
    expect(Buffer.concat(got.chunks).toString()).toBe('first;')
    client.end('second')
    await once(accepted, 'end')
    expect(Buffer.concat(got.chunks).toString()).toBe('first;second')
  })

  it('a destination full on the bytes read before the switch stops reading, until resume()', async () => {
    const { accepted, client } = await pair()
    client.write('first;')
    await once(accepted, 'readable')
    const chunks: Buffer[] = []
    readAccepted(accepted, (chunk) => {
      chunks.push(chunk)
      return false
    })
    expect(Buffer.concat(chunks).toString()).toBe('first;')
    await heldUntilResume(accepted, client, chunks, {
      more: 'next',
      held: 'first;',
      everything: 'first;next',
    })
  })

  it('stops reading when the callback says false, until resume()', async () => {
    const { accepted, client } = await pair()
    const chunks: Buffer[] = []
    readAccepted(accepted, (chunk) => {
      chunks.push(chunk)
      return false
    })
    client.write('a')
    await until(() => chunks.length === 1, 'the first chunk')
    client.write('b')
    await heldUntilResume(accepted, client, chunks, { more: 'c', held: 'a', everything: 'abc' })
  })
})

it('declines where node does not allow it: nothing changes and data events go on', async () => {
  allowAcceptedOnRead(false)
  const { accepted, client } = await plainPair()
  expect(canReadAccepted(accepted)).toBe(false)
  const delivered: Buffer[] = []
  expect(readAccepted(accepted, (c) => delivered.push(c) > 0)).toBe(false)
  const data: Buffer[] = []
  accepted.on('data', (c: Buffer) => data.push(c))
  client.end('still data events')
  await once(accepted, 'end')
  expect(Buffer.concat(data).toString()).toBe('still data events')
  expect(delivered).toEqual([])
})

it('declines a socket already reading through onread (one dialled with the option)', async () => {
  const server = net.createServer((s) => s.end('hello'))
  const { port, close } = await listenLoopback(server)
  cleanups.push(close)
  const socket = net.connect({
    port,
    host: '127.0.0.1',
    onread: { buffer: Buffer.alloc(1024), callback: () => true },
  })
  cleanups.push(() => void socket.destroy())
  await once(socket, 'connect')
  expect(canReadAccepted(socket)).toBe(false)
  expect(readAccepted(socket, () => true)).toBe(false)
})
