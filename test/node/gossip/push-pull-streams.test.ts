import type { Stream } from '@libp2p/interface'
import pino from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { generateClusterKey, parseClusterKey } from '../../../src/identity/keys/cluster-key.ts'
import { loadOrCreateNodeIdentity } from '../../../src/identity/keys/node-key.ts'
import { PushPullStreams } from '../../../src/node/gossip/push-pull-streams.ts'
import { encodeFrame } from '../../../src/node/transport/frames.ts'
import { createHost, type Host } from '../../../src/node/transport/host.ts'
import { waitFor } from '../../e2e/harness.ts'
import { TempDirs } from '../../temp-dir.ts'

const tmp = new TempDirs()
afterAll(() => tmp.removeAll())

const PROTOCOL = '/test/pushpull/1'

describe('push/pull streams: limits per connection, from the flooding peer’s side', () => {
  const log = pino({ level: 'silent' })
  const key = parseClusterKey(generateClusterKey())
  let a: Host
  let b: Host
  let client: PushPullStreams
  let server: PushPullStreams
  const limits = {
    maxStateBytes: 64 * 1024,
    maxStreamsPerConnection: 2,
    connectionBudgetBytes: 80_000,
    totalBudgetBytes: 1 << 20,
    timeoutMs: 3_000,
  }
  const held: Stream[] = []

  beforeAll(async () => {
    const mk = async (): Promise<Host> => {
      const identity = await loadOrCreateNodeIdentity(tmp.make('pp'))
      const h = await createHost({ identity, clusterKey: key, listen: ['/ip4/127.0.0.1/tcp/0'] })
      await h.start()
      return h
    }
    a = await mk()
    b = await mk()
    client = new PushPullStreams({ host: a, protocol: PROTOCOL, limits, log })
    server = new PushPullStreams({ host: b, protocol: PROTOCOL, limits, log })
    server.onRequest((_from, state) =>
      state.length === 1 && state[0] === 0 ? undefined : Buffer.from(`ok:${state.length}`),
    )
    await client.start()
    await server.start()
    await a.peerStore.merge(b.peerId, { multiaddrs: b.getMultiaddrs() })
  })
  afterAll(async () => {
    for (const s of held) s.abort(new Error('done'))
    await client.stop()
    await server.stop()
    await a.stop()
    await b.stop()
  })

  const exchange = (bytes: Uint8Array) =>
    client.request(b.peerId.toString(), bytes, { signal: AbortSignal.timeout(5_000) })
  /** A raw stream that announces a frame of `announced` bytes and sends only `sent` of them. */
  const partial = async (announced: number, sent: number): Promise<Stream> => {
    const s = await a.dialProtocol(b.peerId, PROTOCOL)
    held.push(s)
    try {
      s.send(encodeFrame(new Uint8Array(announced)).subarray(0, 4 + sent))
    } catch {
      // Refused (reset) before we wrote: that is the point of some of these.
    }
    return s
  }

  it('answers an exchange with one frame each way', async () => {
    expect(Buffer.from(await exchange(new Uint8Array(1000))).toString()).toBe('ok:1000')
    expect(server.stats.served).toBe(1)
  })

  it('refuses a frame over maxStateBytes and a request the core dropped', async () => {
    await expect(exchange(new Uint8Array(limits.maxStateBytes + 1))).rejects.toThrow()
    await expect(exchange(new Uint8Array([0]))).rejects.toThrow()
    await waitFor('refusals', async () => (server.stats.refused.frame >= 1 ? true : undefined), 5_000, 10)
    expect(server.stats.refused.dropped).toBe(1)
  })

  it('holds at most one connection budget of bytes, and at most 2 exchanges at once per connection', async () => {
    await partial(60_000, 50_000)
    await waitFor('first held', async () => (server.bufferedBytes >= 50_000 ? true : undefined), 5_000, 10)
    await partial(60_000, 50_000) // would make 100,000 > 80,000 bytes held for this connection
    await waitFor('budget', async () => (server.stats.refused.bytes >= 1 ? true : undefined), 5_000, 10)
    expect(server.bufferedBytes).toBeLessThanOrEqual(limits.connectionBudgetBytes)
    await partial(60_000, 10)
    await partial(60_000, 10) // the third at once on this connection
    await waitFor('streams', async () => (server.stats.refused.streams >= 1 ? true : undefined), 5_000, 10)
    // The held exchanges time out and release what they held.
    await waitFor('released', async () => (server.bufferedBytes === 0 ? true : undefined), 10_000, 50)
    expect(server.stats.refused.timeout).toBeGreaterThanOrEqual(1)
    expect(Buffer.from(await exchange(new Uint8Array(10))).toString()).toBe('ok:10')
  })
})
