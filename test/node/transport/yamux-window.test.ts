import { StreamState, YamuxStream } from '@chainsafe/libp2p-yamux/stream'
import pino from 'pino'
import { afterAll, describe, expect, it } from 'vitest'
import { generateClusterKey, parseClusterKey } from '../../../src/identity/keys/cluster-key.ts'
import { loadOrCreateNodeIdentity } from '../../../src/identity/keys/node-key.ts'
import { createHost, type Host } from '../../../src/node/transport/host.ts'
import { StreamMessenger } from '../../../src/node/transport/stream-messenger.ts'
import { installYamuxWindowThreshold, windowUpdateCanWait } from '../../../src/node/transport/yamux-window.ts'
import { waitFor } from '../../e2e/harness.ts'
import { TempDirs } from '../../temp-dir.ts'

const tmp = new TempDirs()
afterAll(() => tmp.removeAll())

const WINDOW = 256 * 1024
/** yamux frame types (spec): 0 data, 1 window update, 2 ping, 3 go away. */
const WINDOW_UPDATE = 1

describe('windowUpdateCanWait: hashicorp/yamux sendWindowUpdate, delta < max/2 && flags == 0', () => {
  it.each([
    [StreamState.Established, WINDOW, 'nothing consumed', true],
    [StreamState.Established, WINDOW - 100, 'a heartbeat consumed', true],
    [StreamState.Established, WINDOW / 2 + 1, 'just under half consumed', true],
    [StreamState.Established, WINDOW / 2, 'half consumed', false],
    [StreamState.Established, 0, 'all consumed', false],
    [StreamState.SYNReceived, WINDOW - 100, 'an ACK to send', false],
    [StreamState.Init, WINDOW, 'a SYN to send', false],
    [StreamState.Paused, WINDOW - 100, 'paused (the original handles it)', false],
  ])('state %s, capacity %d (%s): wait = %s', (state, capacity, _what, wait) => {
    expect(windowUpdateCanWait({ state, recvWindow: WINDOW, recvWindowCapacity: capacity })).toBe(wait)
  })
})

describe('installYamuxWindowThreshold', () => {
  /** A YamuxStream's window state alone, with its frames recorded (no muxer, no connection). */
  function windowOnly(): {
    receive(bytes: number): void
    updates: number[]
  } {
    installYamuxWindowThreshold()
    installYamuxWindowThreshold() // idempotent: the second call must not wrap twice
    const updates: number[] = []
    const s = Object.assign(Object.create(YamuxStream.prototype) as YamuxStream, {
      state: StreamState.Established,
      recvWindow: WINDOW,
      recvWindowCapacity: WINDOW,
      maxStreamWindowSize: WINDOW, // no auto-tuning: the deltas stay exact
      epochStart: 0,
      getRTT: () => -1,
      sendFrame: (header: { type: number; length: number }) => {
        if (header.type === WINDOW_UPDATE) updates.push(header.length)
        return true
      },
    })
    const fields = s as unknown as { recvWindowCapacity: number; sendWindowUpdate(): void }
    return {
      receive(bytes) {
        fields.recvWindowCapacity -= bytes // what handleData does before asking for an update
        fields.sendWindowUpdate()
      },
      updates,
    }
  }

  it('sends no update for small frames, then one for the consumed half', () => {
    const s = windowOnly()
    for (let i = 0; i < 1000; i++) s.receive(100) // 100 KB of heartbeats
    expect(s.updates).toEqual([])
    for (let i = 0; i < 311; i++) s.receive(100) // 131,100 bytes: crosses 128 KiB
    expect(s.updates).toEqual([131_100])
  })

  it('a full window received at once is given back at once', () => {
    const s = windowOnly()
    s.receive(WINDOW)
    expect(s.updates).toEqual([WINDOW])
  })
})

describe('over real libp2p hosts, with the threshold installed', () => {
  const log = pino({ level: 'silent' })
  const key = parseClusterKey(generateClusterKey())
  const hosts: Host[] = []
  const messengers: StreamMessenger[] = []
  afterAll(async () => {
    for (const m of messengers) await m.stop()
    for (const h of hosts) await h.stop()
  })

  it('many small messages, then messages many windows large, all arrive in order', async () => {
    const mk = async (): Promise<Host> => {
      const identity = await loadOrCreateNodeIdentity(tmp.make('yw'))
      const h = await createHost({ identity, clusterKey: key, listen: ['/ip4/127.0.0.1/tcp/0'] })
      await h.start()
      hosts.push(h)
      return h
    }
    const [a, b] = [await mk(), await mk()]
    const init = {
      protocol: '/test/yw/1',
      log,
      maxMessageBytes: 4 << 20,
      chunking: { maxFrameBytes: 1 << 20 },
    }
    const ma = new StreamMessenger({ host: a, ...init })
    const mb = new StreamMessenger({ host: b, ...init })
    messengers.push(ma, mb)
    const got: number[] = []
    mb.onMessage((_from, bytes) => got.push(bytes.length))
    await ma.start()
    await mb.start()
    await a.peerStore.merge(b.peerId, { multiaddrs: b.getMultiaddrs() })
    // The first message opens the stream (messages queued meanwhile are bounded): wait for it.
    ma.send(b.peerId.toString(), new Uint8Array(1))
    await waitFor('the stream open', async () => (got.length === 1 ? true : undefined), 10_000)
    got.length = 0
    const sizes = [...Array.from({ length: 2000 }, () => 60), 3 << 20, 60, 3 << 20, 60]
    for (const n of sizes) expect(ma.send(b.peerId.toString(), new Uint8Array(n).fill(7))).toBe(true)
    await waitFor('every message delivered', async () => (got.length >= sizes.length ? true : undefined))
    expect(got).toEqual(sizes)
  })
})
