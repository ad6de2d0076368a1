import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pino from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { generateClusterKey, parseClusterKey } from '../../src/identity/cluster-key.ts'
import { loadOrCreateNodeIdentity } from '../../src/identity/node-key.ts'
import { encodeFrame, FrameDecoder } from '../../src/node/frames.ts'
import { createHost, type Host } from '../../src/node/host.ts'
import { StreamMessenger } from '../../src/node/stream-messenger.ts'
import { waitFor } from '../e2e/harness.ts'

describe('frames', () => {
  it('decodes frames split at any byte boundary', () => {
    const msgs = [new Uint8Array([1, 2, 3]), new Uint8Array(0), new Uint8Array(1000).fill(7)]
    const wire = Buffer.concat(msgs.map((m) => encodeFrame(m)))
    for (const step of [1, 2, 5, 999, wire.length]) {
      const d = new FrameDecoder(4096)
      const out: Uint8Array[] = []
      for (let i = 0; i < wire.length; i += step) out.push(...d.push(wire.subarray(i, i + step)))
      expect(out.map((f) => Buffer.from(f).toString('hex'))).toEqual(
        msgs.map((m) => Buffer.from(m).toString('hex')),
      )
    }
  })

  it('rejects a frame over the limit before buffering it', () => {
    const d = new FrameDecoder(10)
    expect(() => d.push(encodeFrame(new Uint8Array(11)))).toThrow(
      expect.objectContaining({ code: 'PEERMESH_ERR_FRAME_TOO_LARGE' }),
    )
  })
})

describe('StreamMessenger over real libp2p hosts', () => {
  const log = pino({ level: 'silent' })
  const key = parseClusterKey(generateClusterKey())
  let a: Host
  let b: Host
  let ma: StreamMessenger
  let mb: StreamMessenger
  const got: [string, string][] = []

  beforeAll(async () => {
    const mk = async (): Promise<Host> => {
      const identity = await loadOrCreateNodeIdentity(mkdtempSync(join(tmpdir(), 'pm-sm-')))
      const h = await createHost({ identity, clusterKey: key, listen: ['/ip4/127.0.0.1/tcp/0'] })
      await h.start()
      return h
    }
    a = await mk()
    b = await mk()
    const init = { protocol: '/test/msg/1', requestProtocol: '/test/req/1', log, maxMessageBytes: 1024 }
    ma = new StreamMessenger({ host: a, ...init })
    mb = new StreamMessenger({ host: b, ...init })
    mb.onMessage((from, bytes) => got.push([from, Buffer.from(bytes).toString()]))
    mb.onRequest(async (_from, bytes) => Buffer.from(`echo:${Buffer.from(bytes).toString()}`))
    await ma.start()
    await mb.start()
    await a.peerStore.merge(b.peerId, { multiaddrs: b.getMultiaddrs() })
  })
  afterAll(async () => {
    await ma.stop()
    await mb.stop()
    await a.stop()
    await b.stop()
  })

  it('delivers best-effort messages in order and answers requests', async () => {
    for (let i = 0; i < 20; i++) ma.send(b.peerId.toString(), Buffer.from(`m${i}`))
    await waitFor('20 messages', async () => (got.length >= 20 ? true : undefined), 10_000, 10)
    expect(got.map(([, m]) => m)).toEqual(Array.from({ length: 20 }, (_, i) => `m${i}`))
    expect(got[0]![0]).toBe(a.peerId.toString())
    const reply = await ma.request(b.peerId.toString(), Buffer.from('hi'))
    expect(Buffer.from(reply).toString()).toBe('echo:hi')
  })

  it('drops an oversize message instead of sending it', () => {
    expect(ma.send(b.peerId.toString(), new Uint8Array(2048))).toBe(false)
  })
})
