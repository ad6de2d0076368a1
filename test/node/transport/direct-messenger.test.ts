import { X509Certificate } from 'node:crypto'
import { connect, createServer, type Server, type TLSSocket } from 'node:tls'
import { connect as netConnect } from 'node:net'
import { peerIdFromString } from '@libp2p/peer-id'
import pino from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { generateClusterKey, parseClusterKey } from '../../../src/identity/keys/cluster-key.ts'
import { loadOrCreateNodeIdentity } from '../../../src/identity/keys/node-key.ts'
import {
  claimedPeerId,
  createDirectCertificate,
  type DirectCertificate,
  FINGERPRINT_BYTES,
} from '../../../src/node/transport/direct-cert.ts'
import {
  DIRECT_HELLO_PROTOCOL,
  type DirectEndpoint,
  decodeHelloReply,
  decodeHelloRequest,
  encodeHelloReply,
  encodeHelloRequest,
} from '../../../src/node/transport/direct-hello.ts'
import {
  DIRECT_MESSAGE_ALPN,
  DIRECT_REQUEST_ALPN,
  DirectMessenger,
  directListenHost,
} from '../../../src/node/transport/direct-messenger.ts'
import {
  encodeFrame,
  encodeFrameWithHead,
  encodeMuxFrame,
  MUX_REQUEST,
} from '../../../src/node/transport/frames.ts'
import { createHost, type Host } from '../../../src/node/transport/host.ts'
import { encodeMessageFrames } from '../../../src/node/transport/message-chunks.ts'
import { RemoteRequestError, StreamMessenger } from '../../../src/node/transport/stream-messenger.ts'
import { NotLeaderError } from '../../../src/raft/errors.ts'
import { multiaddr } from '@multiformats/multiaddr'
import { waitFor } from '../../e2e/harness.ts'
import { TempDirs } from '../../temp-dir.ts'
import { readFrames } from '../../../src/node/transport/frames.ts'

const tmp = new TempDirs()
afterAll(() => tmp.removeAll())

describe('direct certificate', () => {
  it('is a self-signed Ed25519 certificate naming the peer id, with its SHA-256 fingerprint', () => {
    const id = '12D3KooWRm8J3iL796zPFi2EtGGtUJn58AG67gcqzMFHZnnsTzqD'
    const c = createDirectCertificate(id)
    const x = new X509Certificate(c.cert)
    expect(x.verify(x.publicKey)).toBe(true)
    expect(x.publicKey.asymmetricKeyType).toBe('ed25519')
    expect(claimedPeerId(x)).toBe(id)
    expect(Buffer.from(c.fingerprint).toString('hex')).toBe(
      x.fingerprint256.replaceAll(':', '').toLowerCase(),
    )
    // A fresh key each time.
    expect(Buffer.from(createDirectCertificate(id).fingerprint).equals(Buffer.from(c.fingerprint))).toBe(
      false,
    )
  })

  it('refuses to name anything but peer-id text', () => {
    expect(() => createDirectCertificate('a,CN=b')).toThrow(TypeError)
    expect(() => createDirectCertificate('')).toThrow(TypeError)
  })
})

describe('direct hello codec', () => {
  const fp = new Uint8Array(FINGERPRINT_BYTES).fill(7)
  it('round-trips requests and replies', () => {
    expect(decodeHelloRequest(encodeHelloRequest(fp))).toEqual(fp)
    expect(decodeHelloReply(encodeHelloReply({ port: 65535, fingerprint: fp }))).toEqual({
      port: 65535,
      fingerprint: fp,
    })
  })
  it.each([
    ['empty', new Uint8Array(0)],
    ['short', encodeHelloRequest(fp).subarray(0, 20)],
    ['long', Buffer.concat([encodeHelloRequest(fp), Buffer.of(0)])],
    ['other version', Uint8Array.of(2, ...fp)],
  ])('refuses a %s request', (_, bytes) => expect(decodeHelloRequest(bytes)).toBeUndefined())
  it.each([
    ['empty', new Uint8Array(0)],
    ['short', encodeHelloReply({ port: 1, fingerprint: fp }).subarray(0, 30)],
    ['port 0', Uint8Array.of(1, 0, 0, ...fp)],
    ['other version', Uint8Array.of(9, 1, 1, ...fp)],
  ])('refuses a %s reply', (_, bytes) => expect(decodeHelloReply(bytes)).toBeUndefined())
  it('picks the listen host from the listen addresses, else the announced ones', () => {
    expect(directListenHost(['/ip4/10.0.0.7/tcp/0'], [])).toBe('10.0.0.7')
    expect(directListenHost(['/dns4/x.example/tcp/1'], [multiaddr('/ip4/127.0.0.1/tcp/5')])).toBe('127.0.0.1')
    expect(directListenHost(undefined, [])).toBeUndefined()
  })
})

const log = pino({ level: process.env['DBG'] ? 'debug' : 'silent' })
const key = parseClusterKey(generateClusterKey())
const MAX = 1 << 20
const FRAME = 64 * 1024

async function mkHost(): Promise<Host> {
  const identity = await loadOrCreateNodeIdentity(tmp.make('direct'))
  const h = await createHost({ identity, clusterKey: key, listen: ['/ip4/127.0.0.1/tcp/0'] })
  await h.start()
  return h
}

function mkMessenger(
  host: Host,
  direct: boolean,
  extra: { maxPartialBytesPerPeer?: number } = {},
): DirectMessenger {
  const limits = { log, maxMessageBytes: MAX, chunking: { maxFrameBytes: FRAME }, ...extra }
  return new DirectMessenger({
    ...limits,
    fallback: new StreamMessenger({
      ...limits,
      host,
      protocol: '/test/raft/1',
      requestProtocol: '/test/raft-rpc/1',
      requestMode: 'multiplexed',
    }),
    host,
    self: host.peerId.toString(),
    ...(direct ? { listenHost: '127.0.0.1' } : {}),
    minBackoffMs: 50,
    maxBackoffMs: 200,
  })
}

/** Registers `fingerprint` as `from`'s with `to` over libp2p (what a DirectMessenger does first). */
async function hello(from: Host, to: Host, fingerprint: Uint8Array): Promise<DirectEndpoint> {
  const stream = await from.dialProtocol(to.peerId, DIRECT_HELLO_PROTOCOL)
  stream.send(encodeFrame(encodeHelloRequest(fingerprint)))
  const [reply] = await readFrames(stream, 64, 1, AbortSignal.timeout(5_000))
  await stream.close()
  return decodeHelloReply(reply!)!
}

/** A raw TLS 1.3 client (an attacker's): resolves once the handshake is done, or rejects. */
function rawTls(port: number, cert: DirectCertificate | undefined, alpn: string): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = connect({
      host: '127.0.0.1',
      port,
      minVersion: 'TLSv1.3',
      rejectUnauthorized: false,
      ALPNProtocols: [alpn],
      ...(cert !== undefined ? { key: cert.key, cert: cert.cert } : {}),
    })
    socket.once('secureConnect', () => resolve(socket))
    socket.once('error', reject)
  })
}

const closed = (s: TLSSocket): Promise<void> =>
  new Promise((resolve) => (s.closed ? resolve() : s.once('close', () => resolve())))

describe('DirectMessenger over real libp2p hosts', () => {
  let a: Host
  let b: Host
  let c: Host
  let ma: DirectMessenger
  let mb: DirectMessenger
  let mc: DirectMessenger
  const got: [string, string][] = []
  const gotBig: [string, number][] = []
  const gotC: string[] = []

  beforeAll(async () => {
    a = await mkHost()
    b = await mkHost()
    c = await mkHost()
    ma = mkMessenger(a, true)
    mb = mkMessenger(b, true, { maxPartialBytesPerPeer: MAX + 2 * (FRAME + 4) })
    mc = mkMessenger(c, false) // no direct path: libp2p only, as an older agent
    mb.onMessage((from, bytes) => {
      if (bytes.length > 1000) gotBig.push([from, bytes.length])
      else got.push([from, Buffer.from(bytes).toString()])
    })
    mb.onRequest(async (from, bytes) => {
      const text = Buffer.from(bytes).toString()
      if (text === 'fail-secret') throw new Error('/secret/path ENOENT')
      if (text === 'fail-coded') throw new NotLeaderError('peer-x')
      return Buffer.from(`${from}:${text}`)
    })
    mc.onMessage((_from, bytes) => gotC.push(Buffer.from(bytes).toString()))
    for (const m of [ma, mb, mc]) await m.start()
    for (const h of [b, c]) await a.peerStore.merge(h.peerId, { multiaddrs: h.getMultiaddrs() })
  })
  afterAll(async () => {
    for (const m of [ma, mb, mc]) await m?.stop()
    for (const h of [a, b, c]) await h?.stop()
  })

  const B = (): string => b.peerId.toString()
  const A = (): string => a.peerId.toString()
  const texts = (): string[] => got.map(([, t]) => t)

  it('carries messages over libp2p until the direct connection is up, then over it, from the same peer id', async () => {
    expect(ma.send(B(), Buffer.from('first'))).toBe(true) // over libp2p; starts the direct path
    await waitFor('the direct path to b', async () => (ma.directTo(B()) ? true : undefined), 10_000, 5)
    const before = mb.stats.directReceived
    for (let i = 0; i < 20; i++) ma.send(B(), Buffer.from(`d${i}`))
    await waitFor('21 messages', async () => (got.length >= 21 ? true : undefined), 10_000, 5)
    expect(texts()[0]).toBe('first')
    expect(texts().slice(1)).toEqual(Array.from({ length: 20 }, (_, i) => `d${i}`))
    expect(got.every(([from]) => from === A())).toBe(true)
    expect(mb.stats.directReceived - before).toBe(20)
    expect(ma.stats.directSent).toBe(20)
  })

  it('chunks a message larger than a frame and reassembles it', async () => {
    ma.send(B(), new Uint8Array(MAX - 10).fill(1))
    await waitFor('the large message', async () => (gotBig.length > 0 ? true : undefined), 10_000, 5)
    expect(gotBig[0]).toEqual([A(), MAX - 10])
  })

  it('answers requests over libp2p first, then over the direct connection', async () => {
    const reply = async (t: string): Promise<string> =>
      Buffer.from(await ma.request(B(), Buffer.from(t), { signal: AbortSignal.timeout(5_000) })).toString()
    expect(await reply('one')).toBe(`${A()}:one`)
    await waitFor(
      'a request over the direct path',
      async () => {
        expect(await reply('again')).toBe(`${A()}:again`)
        return ma.stats.directRequests > 0 ? true : undefined
      },
      10_000,
      5,
    )
    const many = await Promise.all(Array.from({ length: 10 }, (_, i) => reply(`r${i}`)))
    expect(many).toEqual(Array.from({ length: 10 }, (_, i) => `${A()}:r${i}`))
  })

  it('over the direct connection, tells the requester a coded error’s code and message, of any other failure only "internal error"', async () => {
    const ask = (t: string): Promise<Uint8Array> =>
      ma.request(B(), Buffer.from(t), { signal: AbortSignal.timeout(5_000) })
    await waitFor(
      'a request over the direct path',
      async () => {
        const n = ma.stats.directRequests
        await ask('warm-up')
        return ma.stats.directRequests > n ? true : undefined
      },
      10_000,
      5,
    )
    const before = ma.stats.directRequests
    await expect(ask('fail-secret')).rejects.toMatchObject({
      code: RemoteRequestError.code,
      message: 'internal error',
    })
    await expect(ask('fail-coded')).rejects.toMatchObject({
      code: RemoteRequestError.code,
      message: `${NotLeaderError.code}: not the leader; leader is peer-x`,
    })
    expect(ma.stats.directRequests - before).toBe(2)
  })

  it('sets up the direct connection ahead of the first message when asked to', async () => {
    const d = await mkHost()
    const md = mkMessenger(d, true)
    const heard: string[] = []
    md.onMessage((from, bytes) => heard.push(`${from}:${Buffer.from(bytes).toString()}`))
    try {
      await md.start()
      await a.peerStore.merge(d.peerId, { multiaddrs: d.getMultiaddrs() })
      const to = d.peerId.toString()
      ma.prepare(to)
      await waitFor('the prepared connection', async () => (ma.directTo(to) ? true : undefined), 10_000, 5)
      expect(heard).toEqual([]) // nothing was sent to set it up
      ma.send(to, Buffer.from('first'))
      await waitFor('the first message', async () => (heard.length > 0 ? true : undefined), 10_000, 5)
      expect(heard).toEqual([`${A()}:first`])
      expect(md.stats.directReceived).toBe(1) // over the direct path from the start
    } finally {
      await md.stop()
      await d.stop()
    }
  })

  it('falls back to libp2p for a peer without a direct listener, and backs off', async () => {
    for (let i = 0; i < 3; i++) ma.send(c.peerId.toString(), Buffer.from(`c${i}`))
    await waitFor('c got 3', async () => (gotC.length >= 3 ? true : undefined), 10_000, 5)
    expect(gotC).toEqual(['c0', 'c1', 'c2'])
    await waitFor(
      'the failed attempt',
      async () => (ma.stats.directConnectFailures > 0 ? true : undefined),
      10_000,
      5,
    )
    expect(ma.directTo(c.peerId.toString())).toBe(false)
  })

  describe('attackers (none gets a frame read, none changes what b hears from a)', () => {
    let attacker: Host
    const attackerCert = (): DirectCertificate => createDirectCertificate(attacker.peerId.toString())
    beforeAll(async () => {
      attacker = await mkHost()
      await attacker.peerStore.merge(b.peerId, { multiaddrs: b.getMultiaddrs() })
    })
    afterAll(async () => attacker?.stop())

    const port = (): number => mb.directEndpoint!.port
    /** A frame that b would take as a message, if it read it. */
    const bait = (t: string): Uint8Array => encodeMessageFrames(Buffer.from(t), FRAME)[0]!

    const stillWorks = async (): Promise<void> => {
      const n = got.length
      ma.send(B(), Buffer.from(`alive${n}`))
      await waitFor('a still reaches b', async () => (got.length > n ? true : undefined), 10_000, 5)
      expect(got.at(-1)).toEqual([A(), `alive${n}`])
    }

    it('closes a TCP connection from an address no peer said hello from, before any TLS', async () => {
      // 127.0.0.2 is this machine too, but no libp2p connection that said hello came from it.
      const refused = mb.stats.directRefused
      const handshakes = mb.stats.directRejected
      const s = netConnect({ host: '127.0.0.1', port: port(), localAddress: '127.0.0.2' })
      s.on('error', () => {})
      s.write(bait('no-hello'))
      await new Promise<void>((resolve) => s.once('close', () => resolve()))
      expect(mb.stats.directRefused).toBe(refused + 1)
      expect(mb.stats.directRejected).toBe(handshakes) // never got as far as a certificate
      expect(texts()).not.toContain('no-hello')
      // A TLS client from there fails its handshake: the server never answers its hello.
      await expect(
        new Promise((resolve, reject) => {
          const t = connect({
            socket: netConnect({ host: '127.0.0.1', port: port(), localAddress: '127.0.0.2' }),
            rejectUnauthorized: false,
            ALPNProtocols: [DIRECT_MESSAGE_ALPN],
          })
          t.once('secureConnect', () => resolve(t))
          t.once('error', reject)
        }),
      ).rejects.toThrow()
      expect(mb.stats.directRefused).toBe(refused + 2)
      await stillWorks()
    })

    it('closes a TLS client without a certificate, reading nothing', async () => {
      const rejected = mb.stats.directRejected
      const s = await rawTls(port(), undefined, DIRECT_MESSAGE_ALPN)
      s.on('error', () => {})
      s.write(bait('no-cert'))
      await closed(s)
      expect(mb.stats.directRejected).toBe(rejected + 1)
      expect(texts()).not.toContain('no-cert')
      await stillWorks()
    })

    it('closes a client whose certificate nobody registered', async () => {
      const rejected = mb.stats.directRejected
      const s = await rawTls(port(), attackerCert(), DIRECT_MESSAGE_ALPN)
      s.on('error', () => {})
      s.write(bait('unregistered'))
      await closed(s)
      expect(mb.stats.directRejected).toBe(rejected + 1)
      expect(texts()).not.toContain('unregistered')
    })

    it('refuses a malformed, oversized or other-version hello, registering nothing', async () => {
      const cert = attackerCert()
      const good = encodeHelloRequest(cert.fingerprint)
      const otherVersion = Uint8Array.from(good)
      otherVersion[0] = 2
      const refused = mb.stats.helloRefused
      for (const payload of [
        otherVersion,
        Uint8Array.of(...good, 0),
        new Uint8Array(4096),
        new Uint8Array(0),
      ]) {
        const stream = await attacker.dialProtocol(b.peerId, DIRECT_HELLO_PROTOCOL)
        stream.send(encodeFrame(payload))
        // No reply: the listener resets the stream.
        const reply = await readFrames(stream, 64, 1, AbortSignal.timeout(5_000)).catch(() => [])
        expect(reply).toEqual([])
      }
      await waitFor('the hellos are refused', async () =>
        mb.stats.helloRefused === refused + 4 ? true : undefined,
      )
      // Its certificate was never registered: a TLS connection presenting it is closed unread.
      const rejected = mb.stats.directRejected
      const s = await rawTls(port(), cert, DIRECT_MESSAGE_ALPN)
      s.on('error', () => {})
      s.write(bait('after-bad-hello'))
      await closed(s)
      expect(mb.stats.directRejected).toBe(rejected + 1)
      expect(texts()).not.toContain('after-bad-hello')
      await stillWorks()
    })

    it("closes a registered peer's connection that claims another peer's identity", async () => {
      // The attacker registers (over libp2p, as itself) a certificate naming a, then presents it;
      // and one naming a peer that never registered any.
      const forged = createDirectCertificate(A())
      await hello(attacker, b, forged.fingerprint)
      const rejected = mb.stats.directRejected
      for (const cert of [forged, createDirectCertificate(c.peerId.toString())]) {
        const s = await rawTls(port(), cert, DIRECT_MESSAGE_ALPN)
        s.on('error', () => {})
        s.write(bait('as-a'))
        await closed(s)
      }
      expect(mb.stats.directRejected).toBe(rejected + 2)
      expect(texts()).not.toContain('as-a')
      await stillWorks()
    })

    it("hands a registered peer's messages up as from that peer, and closes it on garbage, oversize frames and over budget", async () => {
      const cert = attackerCert()
      await hello(attacker, b, cert.fingerprint)
      const me = attacker.peerId.toString()
      const s = await rawTls(port(), cert, DIRECT_MESSAGE_ALPN)
      s.write(bait('from-attacker'))
      await waitFor(
        'the attacker message',
        async () => (texts().includes('from-attacker') ? true : undefined),
        5_000,
        5,
      )
      expect(got.find(([, t]) => t === 'from-attacker')![0]).toBe(me)

      const bad = mb.stats.badFrames
      s.on('error', () => {})
      s.write(Buffer.from([0xff, 0xff, 0xff, 0xff, 1, 2, 3])) // a 4 GiB frame
      await closed(s)
      expect(mb.stats.badFrames).toBe(bad + 1)

      const s2 = await rawTls(port(), cert, DIRECT_MESSAGE_ALPN)
      s2.on('error', () => {})
      s2.write(encodeFrameWithHead(Uint8Array.of(9), Buffer.from('unknown chunk kind')))
      await closed(s2)
      expect(mb.stats.badFrames).toBe(bad + 2)

      // A first chunk declaring more than a message may hold, then one within it on two
      // connections at once (over the peer's budget of partly received messages).
      const first = (total: number): Uint8Array => {
        const head = Buffer.alloc(5)
        head[0] = 1
        head.writeUInt32BE(total, 1)
        return encodeFrameWithHead(head, new Uint8Array(16))
      }
      const s3 = await rawTls(port(), cert, DIRECT_MESSAGE_ALPN)
      s3.on('error', () => {})
      s3.write(first(MAX + 1))
      await closed(s3)
      expect(mb.stats.badFrames).toBe(bad + 3)
      const over = mb.stats.overBudget
      const s4 = await rawTls(port(), cert, DIRECT_MESSAGE_ALPN)
      const s5 = await rawTls(port(), cert, DIRECT_MESSAGE_ALPN)
      s4.on('error', () => {})
      s5.on('error', () => {})
      s4.write(first(MAX))
      s5.write(first(MAX))
      await Promise.race([closed(s4), closed(s5)])
      expect(mb.stats.overBudget).toBe(over + 1)
      s4.destroy()
      s5.destroy()
      await stillWorks()
    })

    it('answers a registered peer’s requests as its own and closes its request connection on bad frames', async () => {
      const cert = attackerCert()
      await hello(attacker, b, cert.fingerprint)
      const s = await rawTls(port(), cert, DIRECT_REQUEST_ALPN)
      s.on('error', () => {})
      const replies: Buffer[] = []
      s.on('data', (d: Buffer) => replies.push(d))
      s.write(encodeMuxFrame(7, MUX_REQUEST, Buffer.from('q')))
      await waitFor('the reply', async () => (replies.length > 0 ? true : undefined), 5_000, 5)
      expect(Buffer.concat(replies).subarray(9).toString()).toBe(`${attacker.peerId.toString()}:q`)
      const bad = mb.stats.badFrames
      s.write(Buffer.from([0x7f, 0xff, 0xff, 0xff]))
      await closed(s)
      expect(mb.stats.badFrames).toBe(bad + 1)
    })

    it('stays on libp2p when a listener presents another certificate than its peer announced', async () => {
      // The attacker announces one certificate over libp2p and presents another on its port.
      const announced = attackerCert()
      const presented = attackerCert()
      const server: Server = createServer({
        key: presented.key,
        cert: presented.cert,
        minVersion: 'TLSv1.3',
        requestCert: true,
        rejectUnauthorized: false,
        ALPNProtocols: [DIRECT_MESSAGE_ALPN, DIRECT_REQUEST_ALPN],
      })
      let dialed = 0
      server.on('connection', () => dialed++)
      server.on('secureConnection', (s) => s.on('error', () => {}))
      server.on('tlsClientError', () => {})
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
      const fakePort = (server.address() as { port: number }).port
      await attacker.handle(DIRECT_HELLO_PROTOCOL, async (stream) => {
        await readFrames(stream, 64, 1, AbortSignal.timeout(5_000))
        stream.send(encodeFrame(encodeHelloReply({ port: fakePort, fingerprint: announced.fingerprint })))
        await stream.close()
      })
      const fallback = new StreamMessenger({
        host: attacker,
        protocol: '/test/raft/1',
        log,
        maxMessageBytes: MAX,
        chunking: { maxFrameBytes: FRAME },
      })
      const heard: string[] = []
      fallback.onMessage((_f, bytes) => heard.push(Buffer.from(bytes).toString()))
      await fallback.start()
      try {
        await a.peerStore.merge(attacker.peerId, { multiaddrs: attacker.getMultiaddrs() })
        const failures = ma.stats.directConnectFailures
        const to = attacker.peerId.toString()
        ma.send(to, Buffer.from('x0'))
        await waitFor(
          'the refused attempt',
          async () => (ma.stats.directConnectFailures > failures ? true : undefined),
          10_000,
          5,
        )
        expect(dialed).toBeGreaterThan(0) // it did connect, and refused what it found
        ma.send(to, Buffer.from('x1'))
        await waitFor('messages over libp2p', async () => (heard.length >= 2 ? true : undefined), 10_000, 5)
        expect(heard).toEqual(['x0', 'x1'])
        expect(ma.directTo(to)).toBe(false)
      } finally {
        await fallback.stop()
        server.close()
      }
    })

    it('a peer id that cannot be parsed costs a failed attempt, nothing more', async () => {
      expect(() => peerIdFromString('not-a-peer')).toThrow()
      const failures = ma.stats.directConnectFailures
      ma.send('not-a-peer', Buffer.from('x'))
      await waitFor(
        'the failed attempt',
        async () => (ma.stats.directConnectFailures > failures ? true : undefined),
        5_000,
        5,
      )
      await stillWorks()
    })
  })
})
