import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import type { Libp2p } from '@libp2p/interface'
import { type Ping, ping } from '@libp2p/ping'
import { preSharedKey } from '@libp2p/pnet'
import { tcp } from '@libp2p/tcp'
import { xsalsa20 } from '@noble/ciphers/salsa.js'
import fc from 'fast-check'
import { createLibp2p } from 'libp2p'
import { afterAll, afterEach, describe, expect, it } from 'vitest'
import { generateClusterKey, parseClusterKey } from '../../../src/identity/keys/cluster-key.ts'
import { loadOrCreateNodeIdentity } from '../../../src/identity/keys/node-key.ts'
import { createHost } from '../../../src/node/transport/host.ts'
import { XSalsa20Stream } from '../../../src/node/transport/pnet-protector.ts'
import { TempDirs } from '../../temp-dir.ts'

const tmp = new TempDirs()
afterAll(() => tmp.removeAll())

describe('XSalsa20Stream', () => {
  it('gives the one-shot XSalsa20 keystream whatever the chunking (property)', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 32, maxLength: 32 }),
        fc.uint8Array({ minLength: 24, maxLength: 24 }),
        fc.array(fc.uint8Array({ maxLength: 200 }), { maxLength: 12 }),
        (key, nonce, chunks) => {
          const s = new XSalsa20Stream(key, nonce)
          const streamed = Buffer.concat(chunks.map((c) => s.update(c)))
          const whole = xsalsa20(key, nonce, Buffer.concat(chunks))
          return streamed.equals(Buffer.from(whole))
        },
      ),
    )
  })
})

describe('the cluster-key protector on the wire', () => {
  const started: Libp2p[] = []
  afterEach(async () => {
    for (const h of started.splice(0)) await h.stop()
  })

  const pnetHost = async (clusterKey: Uint8Array): Promise<Libp2p<{ ping: Ping }>> => {
    const h = await createLibp2p({
      addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
      transports: [tcp()],
      connectionProtector: preSharedKey({ psk: clusterKey }),
      connectionEncrypters: [noise()],
      streamMuxers: [yamux()],
      services: { identify: identify(), ping: ping() },
    })
    started.push(h)
    return h
  }
  const ourHost = async (clusterKey: Uint8Array) => {
    const identity = await loadOrCreateNodeIdentity(tmp.make('pnet'))
    const h = await createHost({ identity, clusterKey, listen: ['/ip4/127.0.0.1/tcp/0'] })
    await h.start()
    started.push(h)
    return h
  }

  it('interoperates with @libp2p/pnet both ways (same key)', async () => {
    const key = parseClusterKey(generateClusterKey())
    const [ours, theirs] = [await ourHost(key), await pnetHost(key)]
    expect(await theirs.services.ping.ping(ours.getMultiaddrs()[0]!)).toBeGreaterThanOrEqual(0)
    const [ours2, theirs2] = [await ourHost(key), await pnetHost(key)]
    expect(await ours2.services.ping.ping(theirs2.getMultiaddrs()[0]!)).toBeGreaterThanOrEqual(0)
  })

  it('a host with another cluster key cannot connect', async () => {
    const ours = await ourHost(parseClusterKey(generateClusterKey()))
    const theirs = await pnetHost(parseClusterKey(generateClusterKey()))
    await expect(
      theirs.services.ping.ping(ours.getMultiaddrs()[0]!, { signal: AbortSignal.timeout(3_000) }),
    ).rejects.toThrow()
  })
})
