import { createSocket, type Socket } from 'node:dgram'
import fc from 'fast-check'
import pino from 'pino'
import { afterEach, describe, expect, it } from 'vitest'
import { generateClusterKey, parseClusterKey } from '../../../src/identity/keys/cluster-key.ts'
import {
  DATAGRAM_VERSION,
  DatagramSealer,
  datagramOverhead,
  deriveDatagramKey,
  GossipUdpTransport,
  MAX_SENDER_ID_BYTES,
  openDatagram,
  pskOfClusterKey,
  sealDatagram,
  UDP_PORT_TAG,
  type UdpEndpoint,
  udpEndpointOf,
} from '../../../src/node/transport/gossip-udp.ts'
import { waitFor } from '../../e2e/harness.ts'

const until = (what: string, ok: () => boolean): Promise<true> =>
  waitFor(what, async () => (ok() ? true : undefined), 5_000, 10)

const clusterKey = parseClusterKey(generateClusterKey())
const key = deriveDatagramKey(clusterKey)
const otherKey = deriveDatagramKey(parseClusterKey(generateClusterKey()))
const ID = '12D3KooWAbCdEfGhIjKlMnOpQrStUvWxYz1234567890abcdefgh'
const MAX = 1380

describe('datagram key', () => {
  it('is HKDF of the PSK, not the PSK itself, and stable for one cluster key', () => {
    const psk = pskOfClusterKey(clusterKey)
    expect(psk).toHaveLength(32)
    expect(key).toHaveLength(32)
    expect(Buffer.from(key).equals(Buffer.from(psk))).toBe(false)
    expect(deriveDatagramKey(clusterKey).equals(key)).toBe(true)
    expect(key.equals(otherKey)).toBe(false)
  })

  it('rejects something that is not a cluster key', () => {
    expect(() => deriveDatagramKey(Buffer.from('nope'))).toThrow()
  })
})

describe('sealDatagram / openDatagram', () => {
  it('round-trips sender id and payload, with a fresh nonce each time', () => {
    const payload = Buffer.from('ping 42')
    const a = sealDatagram(key, ID, payload)
    const b = sealDatagram(key, ID, payload)
    expect(a.length).toBe(payload.length + datagramOverhead(ID.length))
    expect(a.equals(b)).toBe(false)
    expect(a[0]).toBe(DATAGRAM_VERSION)
    const r = openDatagram(key, a, MAX)
    expect(r).toEqual({ ok: true, from: ID, payload: expect.anything() })
    if (r.ok) expect(Buffer.from(r.payload).toString()).toBe('ping 42')
  })

  it('one sealer never repeats a nonce (random prefix, counter), and every datagram opens', () => {
    const sealer = new DatagramSealer(key, ID)
    const other = new DatagramSealer(key, ID)
    const nonces = new Set<string>()
    for (let i = 0; i < 2_000; i++) {
      const payload = Buffer.from(`ack ${i}`)
      for (const s of [sealer, other]) {
        const d = Buffer.concat(s.sealParts(payload))
        nonces.add(d.subarray(1, 13).toString('hex'))
        const r = openDatagram(key, d, MAX)
        expect(r.ok && r.from === ID && Buffer.from(r.payload).equals(payload)).toBe(true)
      }
    }
    expect(nonces.size).toBe(4_000)
  })

  it('a maximal message fits one Ethernet datagram (1472 bytes of UDP payload)', () => {
    expect(sealDatagram(key, ID, new Uint8Array(MAX)).length).toBeLessThanOrEqual(1472)
  })

  it('round-trips any payload and sender id (property)', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ maxLength: MAX }),
        fc.string({ minLength: 1, maxLength: 40 }),
        (payload, id) => {
          const r = openDatagram(key, sealDatagram(key, id, payload), MAX)
          return r.ok && r.from === id && Buffer.from(r.payload).equals(Buffer.from(payload))
        },
      ),
    )
  })

  it('drops a datagram sealed with another cluster key (auth)', () => {
    expect(openDatagram(key, sealDatagram(otherKey, ID, Buffer.from('x')), MAX)).toEqual({
      ok: false,
      reason: 'auth',
    })
  })

  it('drops any datagram with one bit flipped anywhere after the version byte (auth)', () => {
    const d = sealDatagram(key, ID, Buffer.from('ack 7'))
    for (let i = 1; i < d.length; i++) {
      const t = Buffer.from(d)
      t[i]! ^= 0x01
      expect(openDatagram(key, t, MAX)).toEqual({ ok: false, reason: 'auth' })
    }
  })

  it('drops another version (the version byte is also authenticated)', () => {
    const d = sealDatagram(key, ID, Buffer.from('x'))
    d[0] = DATAGRAM_VERSION + 1
    expect(openDatagram(key, d, MAX)).toEqual({ ok: false, reason: 'version' })
  })

  it('drops truncated datagrams, whatever the cut', () => {
    const d = sealDatagram(key, ID, Buffer.from('hello'))
    for (let n = 0; n < d.length; n++) {
      const r = openDatagram(key, d.subarray(0, n), MAX)
      expect(r.ok).toBe(false)
      if (!r.ok) expect(['truncated', 'auth']).toContain(r.reason)
    }
  })

  it('drops oversize datagrams before decrypting, and an authentic payload over the limit', () => {
    const big = new Uint8Array(MAX + datagramOverhead(MAX_SENDER_ID_BYTES) + 1)
    big[0] = DATAGRAM_VERSION
    expect(openDatagram(key, big, MAX)).toEqual({ ok: false, reason: 'oversize' })
    expect(openDatagram(key, sealDatagram(key, ID, new Uint8Array(MAX + 1)), MAX)).toEqual({
      ok: false,
      reason: 'oversize',
    })
  })

  it('refuses to seal an empty or over-long sender id', () => {
    expect(() => sealDatagram(key, '', Buffer.from('x'))).toThrow()
    expect(() => sealDatagram(key, 'x'.repeat(MAX_SENDER_ID_BYTES + 1), Buffer.from('x'))).toThrow()
  })

  it('never throws on garbage (property)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 3000 }), (bytes) => {
        const r = openDatagram(key, bytes, MAX)
        return !r.ok
      }),
    )
  })
})

describe('udpEndpointOf', () => {
  it('takes host and port of the first TCP address', () => {
    expect(udpEndpointOf(['/ip4/10.0.0.1/udp/9/quic', '/ip4/127.0.0.1/tcp/7946/p2p/x'], {})).toEqual({
      host: '127.0.0.1',
      port: 7946,
    })
    expect(udpEndpointOf(['/ip6/::1/tcp/7946'], {})).toEqual({ host: '::1', port: 7946 })
  })

  it('uses the port tag when present, and nothing for a bad tag or no TCP address', () => {
    expect(udpEndpointOf(['/ip4/127.0.0.1/tcp/7946'], { [UDP_PORT_TAG]: '40000' })).toEqual({
      host: '127.0.0.1',
      port: 40000,
    })
    expect(udpEndpointOf(['/ip4/127.0.0.1/tcp/7946'], { [UDP_PORT_TAG]: 'x' })).toBeUndefined()
    expect(udpEndpointOf(['/dns4/example.com/tcp/1'], {})).toBeUndefined()
    expect(udpEndpointOf([], {})).toBeUndefined()
  })
})

describe('GossipUdpTransport on loopback', () => {
  const log = pino({ level: 'silent' })
  const opened: { stop(): Promise<void> }[] = []
  const sockets: Socket[] = []
  afterEach(async () => {
    for (const t of opened.splice(0)) await t.stop()
    for (const s of sockets.splice(0)) s.close()
  })

  const transport = async (
    selfId: string,
    k: Uint8Array,
    endpoints: Map<string, UdpEndpoint>,
    port = 0,
  ): Promise<{ t: GossipUdpTransport; got: [string, string][] }> => {
    const t = new GossipUdpTransport({
      selfId,
      key: k,
      bindHost: '127.0.0.1',
      port,
      maxMessageBytes: MAX,
      log,
      resolve: (p) => endpoints.get(p),
    })
    const got: [string, string][] = []
    t.onMessage((from, bytes) => got.push([from, Buffer.from(bytes).toString()]))
    await t.start()
    opened.push(t)
    return { t, got }
  }

  it('delivers sealed messages with the sender id, and replies to a sender it only observed', async () => {
    const eps = new Map<string, UdpEndpoint>()
    const a = await transport('a', key, eps)
    const b = await transport('b', key, new Map()) // b knows nobody
    eps.set('b', { host: '127.0.0.1', port: b.t.port })
    expect(a.t.send('b', Buffer.from('ping'))).toBe(true)
    await until('b.got.length === 1', () => b.got.length === 1)
    expect(b.got).toEqual([['a', 'ping']])
    expect(b.t.send('a', Buffer.from('ack'))).toBe(true) // from the observed source address
    await until('a.got.length === 1', () => a.got.length === 1)
    expect(a.got).toEqual([['b', 'ack']])
    b.t.forget('a')
    expect(b.t.send('a', Buffer.from('ack'))).toBe(false)
    expect(b.t.stats.sendDropped).toBe(1)
  })

  it('drops hostile datagrams, counts each reason, and keeps serving', async () => {
    const b = await transport('b', key, new Map())
    const raw = createSocket('udp4')
    sockets.push(raw)
    const send = (bytes: Uint8Array): Promise<void> =>
      new Promise((resolve, reject) =>
        raw.send(bytes, b.t.port, '127.0.0.1', (e) => (e ? reject(e) : resolve())),
      )
    const good = sealDatagram(key, 'a', Buffer.from('hello'))
    const tampered = Buffer.from(good)
    tampered[tampered.length - 1]! ^= 0xff
    const wrongVersion = Buffer.from(good)
    wrongVersion[0] = 9
    await send(new Uint8Array(0))
    await send(Buffer.from('garbage garbage garbage garbage garbage'))
    await send(sealDatagram(otherKey, 'a', Buffer.from('hello')))
    await send(tampered)
    await send(wrongVersion)
    await send(good.subarray(0, 20))
    await send(new Uint8Array(8000))
    await send(good)
    await until('b.got.length === 1', () => b.got.length === 1)
    expect(b.got).toEqual([['a', 'hello']])
    const r = b.t.stats.rejected
    await until(
      'r.truncated + r.auth + r.version + r.oversize === 7',
      () => r.truncated + r.auth + r.version + r.oversize === 7,
    )
    // The garbage starts with 'g', not the version byte: rejected as 'version' before any decryption.
    expect(r).toEqual({ truncated: 2, auth: 2, version: 2, oversize: 1, sender: 0 })
    expect(b.t.stats.received).toBe(1)
  })

  it('binds the preferred port, or another one when it is busy for UDP', async () => {
    const first = await transport('a', key, new Map())
    expect(first.t.fellBack).toBe(false)
    const second = await transport('b', key, new Map(), first.t.port)
    expect(second.t.fellBack).toBe(true)
    expect(second.t.port).not.toBe(first.t.port)
  })
})
