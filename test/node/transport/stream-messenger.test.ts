import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pino from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { generateClusterKey, parseClusterKey } from '../../../src/identity/keys/cluster-key.ts'
import { loadOrCreateNodeIdentity } from '../../../src/identity/keys/node-key.ts'
import { encodeFrame, FrameDecoder } from '../../../src/node/transport/frames.ts'
import { createHost, type Host } from '../../../src/node/transport/host.ts'
import { StreamMessenger } from '../../../src/node/transport/stream-messenger.ts'
import { waitFor } from '../../e2e/harness.ts'

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

describe('StreamMessenger multiplexed requests over real libp2p hosts', () => {
  const log = pino({ level: 'silent' })
  const key = parseClusterKey(generateClusterKey())
  let a: Host
  let b: Host
  let ma: StreamMessenger
  let mb: StreamMessenger
  /** Replies of the serving side wait for these, by request text. */
  const gates = new Map<string, () => void>()

  beforeAll(async () => {
    const mk = async (): Promise<Host> => {
      const identity = await loadOrCreateNodeIdentity(mkdtempSync(join(tmpdir(), 'pm-sm-')))
      const h = await createHost({ identity, clusterKey: key, listen: ['/ip4/127.0.0.1/tcp/0'] })
      await h.start()
      return h
    }
    a = await mk()
    b = await mk()
    const init = {
      protocol: '/test/msg/1',
      requestProtocol: '/test/mux/1',
      requestMode: 'multiplexed' as const,
      maxConcurrentRequests: 4,
      log,
      maxMessageBytes: 1024,
    }
    ma = new StreamMessenger({ host: a, ...init })
    mb = new StreamMessenger({ host: b, ...init })
    mb.onRequest(async (_from, bytes) => {
      const text = Buffer.from(bytes).toString()
      if (text === 'fail') throw new Error('handler failed')
      if (text.startsWith('wait')) await new Promise<void>((resolve) => gates.set(text, resolve))
      return Buffer.from(`echo:${text}`)
    })
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

  const req = async (text: string, signal?: AbortSignal): Promise<string> =>
    Buffer.from(
      await ma.request(b.peerId.toString(), Buffer.from(text), signal === undefined ? {} : { signal }),
    ).toString()
  const streamsTo = (): number =>
    a
      .getConnections(b.peerId)
      .flatMap((c) => c.streams)
      .filter((s) => s.protocol === '/test/mux/1').length

  it('answers concurrent requests on one stream, each by its id, in any order', async () => {
    const slow = req('wait-1')
    const fast = await Promise.all(Array.from({ length: 3 }, (_, i) => req(`r${i}`)))
    expect(fast).toEqual(['echo:r0', 'echo:r1', 'echo:r2'])
    await waitFor(
      'the slow request to be served',
      async () => (gates.has('wait-1') ? true : undefined),
      5_000,
      5,
    )
    gates.get('wait-1')!()
    expect(await slow).toBe('echo:wait-1')
    expect(streamsTo()).toBe(1)
  })

  it('reports a handler failure and refuses requests over the concurrency limit', async () => {
    await expect(req('fail')).rejects.toMatchObject({ code: 'PEERMESH_ERR_REMOTE_REQUEST' })
    const held = ['wait-a', 'wait-b', 'wait-c', 'wait-d'].map((t) => req(t))
    await waitFor('4 requests held', async () => (gates.size >= 5 ? true : undefined), 5_000, 5)
    await expect(req('one-too-many')).rejects.toMatchObject({ code: 'PEERMESH_ERR_REMOTE_REQUEST' })
    for (const t of ['wait-a', 'wait-b', 'wait-c', 'wait-d']) gates.get(t)!()
    expect(await Promise.all(held)).toEqual(['echo:wait-a', 'echo:wait-b', 'echo:wait-c', 'echo:wait-d'])
  })

  it('gives up on a request at its deadline without disturbing the others', async () => {
    const late = req('wait-late', AbortSignal.timeout(100))
    await expect(late).rejects.toMatchObject({ name: 'TimeoutError' })
    expect(await req('after')).toBe('echo:after')
    gates.get('wait-late')!() // its reply arrives after the caller gave up: ignored
    expect(await req('after-late')).toBe('echo:after-late')
  })

  it('fails the requests in flight when the stream is reset, then opens a new one', async () => {
    const cut = req('wait-cut')
    await waitFor(
      'the request to be served',
      async () => (gates.has('wait-cut') ? true : undefined),
      5_000,
      5,
    )
    for (const c of a.getConnections(b.peerId))
      for (const s of c.streams) if (s.protocol === '/test/mux/1') s.abort(new Error('test reset'))
    await expect(cut).rejects.toMatchObject({ code: 'PEERMESH_ERR_REQUEST_STREAM_CLOSED' })
    expect(await req('again')).toBe('echo:again')
    expect(streamsTo()).toBe(1)
  })
})
