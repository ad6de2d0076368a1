import pino from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { generateClusterKey, parseClusterKey } from '../../../src/identity/keys/cluster-key.ts'
import { loadOrCreateNodeIdentity } from '../../../src/identity/keys/node-key.ts'
import {
  encodeFrame,
  encodeFrameWithHead,
  encodeMuxFrame,
  FrameDecoder,
  MUX_HEADER_BYTES,
  MUX_REPLY,
  parseMuxHeader,
} from '../../../src/node/transport/frames.ts'
import { createHost, type Host } from '../../../src/node/transport/host.ts'
import {
  ChunkAssembler,
  encodeMessageFrames,
  MessageStreamReader,
  PartialBudget,
} from '../../../src/node/transport/message-chunks.ts'
import { RemoteRequestError, StreamMessenger } from '../../../src/node/transport/stream-messenger.ts'
import { encodeMessage } from '../../../src/raft/codec.ts'
import { NotLeaderError } from '../../../src/raft/errors.ts'
import { RaftNode } from '../../../src/raft/node-driver.ts'
import { encodePolicyCommand, type PolicyResult, PolicyStore } from '../../../src/raft/policy/policy-store.ts'
import { MemoryStorage } from '../../../src/raft/storage/memory-storage.ts'
import { raftMessage } from '../../raft/message.ts'
import { VirtualClock } from '../../sim/virtual-clock.ts'
import { waitFor } from '../../e2e/harness.ts'
import { TempDirs } from '../../temp-dir.ts'

const tmp = new TempDirs()
afterAll(() => tmp.removeAll())

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

  it('a frame with a head is the frame of head and body concatenated, built in one buffer', () => {
    const head = Uint8Array.of(9, 8)
    const body = new Uint8Array(70_000).fill(3)
    const framed = encodeFrameWithHead(head, body)
    expect(Buffer.from(framed).equals(Buffer.from(encodeFrame(Buffer.concat([head, body]))))).toBe(true)
    expect(Buffer.from(framed.subarray(0, 4)).readUInt32BE(0)).toBe(70_002)
    const mux = new FrameDecoder(1 << 20).push(encodeMuxFrame(0xfedcba98, MUX_REPLY, body))
    expect(mux).toHaveLength(1)
    expect(parseMuxHeader(mux[0]!)).toEqual({ id: 0xfedcba98, kind: MUX_REPLY })
    expect(mux[0]!.subarray(MUX_HEADER_BYTES).length).toBe(70_000)
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
      const identity = await loadOrCreateNodeIdentity(tmp.make('sm'))
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
      const identity = await loadOrCreateNodeIdentity(tmp.make('sm'))
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
      if (text === 'fail-secret') throw new Error('/secret/path ENOENT')
      if (text === 'fail-coded') throw new NotLeaderError('peer-x')
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

  it('tells the requester a coded error’s code and message, and of any other failure only "internal error"', async () => {
    const secret = req('fail-secret')
    await expect(secret).rejects.toBeInstanceOf(RemoteRequestError)
    await expect(secret).rejects.toMatchObject({ code: RemoteRequestError.code, message: 'internal error' })
    await expect(req('fail')).rejects.toMatchObject({ message: 'internal error' })
    await expect(req('fail-coded')).rejects.toMatchObject({
      code: RemoteRequestError.code,
      message: `${NotLeaderError.code}: not the leader; leader is peer-x`,
    })
    expect(await req('after-failures')).toBe('echo:after-failures')
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

const message = (n: number): Uint8Array => Uint8Array.from({ length: n }, (_, i) => (i * 31) & 0xff)

describe('chunked messages', () => {
  it('splits a message larger than a frame and reassembles it, split at any byte boundary', () => {
    for (const size of [0, 1, 98, 99, 100, 301, 1000]) {
      const m = message(size)
      const frames = encodeMessageFrames(m, 100)
      for (const f of frames) expect(f.length).toBeLessThanOrEqual(104)
      const wire = Buffer.concat(frames)
      for (const step of [1, 7, wire.length]) {
        const reader = new MessageStreamReader('p', new PartialBudget({ maxBytes: 1_500, maxMessages: 1 }), {
          maxMessageBytes: 1_000,
          maxFrameBytes: 100,
        })
        const out: Uint8Array[] = []
        for (let i = 0; i < wire.length; i += step) out.push(...reader.push(wire.subarray(i, i + step)))
        expect(out.map((x) => Buffer.from(x).toString('hex'))).toEqual([Buffer.from(m).toString('hex')])
      }
    }
  })

  it('refuses chunks that do not fit the message in progress', () => {
    const chunks = encodeMessageFrames(message(300), 100).map((f) => f.subarray(4))
    const bad: Uint8Array[][] = [
      [chunks[1]!], // a continuation with nothing in progress
      [chunks[0]!, chunks[0]!], // a second start before the first message ended
      [chunks[0]!, Uint8Array.of(0, 1)], // a whole message in the middle of another
      [Uint8Array.of(9, 1, 2)], // an unknown kind
      [Uint8Array.of(1, 0, 0, 0x10, 0, 7)], // a declared total over the message limit
    ]
    for (const seq of bad) {
      const a = new ChunkAssembler(1_000)
      expect(() => {
        for (const c of seq) a.push(c)
      }).toThrow(expect.objectContaining({ code: 'PEERMESH_ERR_MALFORMED_CHUNK' }))
    }
    // More bytes than declared.
    const a = new ChunkAssembler(1_000)
    const first = Uint8Array.of(1, 0, 0, 0, 3, 1, 2)
    a.push(first)
    expect(() => a.push(Uint8Array.of(2, 3, 4))).toThrow(
      expect.objectContaining({ code: 'PEERMESH_ERR_MALFORMED_CHUNK' }),
    )
  })

  it('bounds what one peer holds partly received, over all its streams', () => {
    const budget = new PartialBudget({ maxBytes: 1_000, maxMessages: 2 })
    const limits = { maxMessageBytes: 900, maxFrameBytes: 100 }
    const start = (total: number): Uint8Array =>
      encodeFrame(
        Uint8Array.of(1, ...[total >>> 24, (total >>> 16) & 0xff, (total >>> 8) & 0xff, total & 0xff], 7),
      )
    const r1 = new MessageStreamReader('evil', budget, limits)
    const r2 = new MessageStreamReader('evil', budget, limits)
    const r3 = new MessageStreamReader('evil', budget, limits)
    const other = new MessageStreamReader('honest', budget, limits)
    expect(r1.push(start(600))).toEqual([])
    // 600 + 600 reserved is over the byte budget: the second stream is refused.
    expect(() => r2.push(start(600))).toThrow(
      expect.objectContaining({ code: 'PEERMESH_ERR_PARTIAL_BUDGET' }),
    )
    r2.release()
    const r4 = new MessageStreamReader('evil', budget, limits)
    expect(r4.push(start(100))).toEqual([])
    // A third message in progress is over the count.
    expect(() => r3.push(start(10))).toThrow(expect.objectContaining({ code: 'PEERMESH_ERR_PARTIAL_BUDGET' }))
    r3.release()
    // Another peer has its own budget; a released stream frees its share.
    expect(other.push(start(900))).toEqual([])
    r1.release()
    expect(budget.heldBy('evil')).toBe(100) // r4's reservation
  })

  it('bounds what all peers hold together: fresh peer ids cost nothing to make', () => {
    const budget = new PartialBudget({ maxBytes: 1_000, maxMessages: 2, maxTotalBytes: 2_500 })
    const limits = { maxMessageBytes: 900, maxFrameBytes: 100 }
    const start = (total: number): Uint8Array =>
      encodeFrame(
        Uint8Array.of(1, ...[total >>> 24, (total >>> 16) & 0xff, (total >>> 8) & 0xff, total & 0xff], 7),
      )
    // Each sybil stays within its own budget; together they reach the overall one.
    const sybils = Array.from({ length: 10 }, (_, i) => new MessageStreamReader(`sybil-${i}`, budget, limits))
    let refused = 0
    for (const r of sybils) {
      try {
        r.push(start(900))
      } catch (err) {
        expect(err).toMatchObject({ code: 'PEERMESH_ERR_PARTIAL_BUDGET' })
        r.release()
        refused++
      }
    }
    expect(refused).toBe(8)
    expect(budget.totalBytes).toBeLessThanOrEqual(2_500)
    // Released, their share is free again.
    for (const r of sybils) r.release()
    expect(budget.totalBytes).toBe(0)
    expect(new MessageStreamReader('honest', budget, limits).push(start(900))).toEqual([])
  })
})

describe('StreamMessenger chunking over real libp2p hosts', () => {
  const log = pino({ level: 'silent' })
  const key = parseClusterKey(generateClusterKey())
  const FRAME = 512
  let a: Host
  let b: Host
  let ma: StreamMessenger
  let mb: StreamMessenger
  const got: Uint8Array[] = []

  beforeAll(async () => {
    const mk = async (): Promise<Host> => {
      const identity = await loadOrCreateNodeIdentity(tmp.make('sm'))
      const h = await createHost({ identity, clusterKey: key, listen: ['/ip4/127.0.0.1/tcp/0'] })
      await h.start()
      return h
    }
    a = await mk()
    b = await mk()
    const init = {
      protocol: '/test/chunked/1',
      log,
      maxMessageBytes: 64 * 1024,
      chunking: { maxFrameBytes: FRAME },
      maxPartialBytesPerPeer: 66 * 1024,
      maxPartialMessagesPerPeer: 1,
    }
    ma = new StreamMessenger({ host: a, ...init })
    mb = new StreamMessenger({ host: b, ...init })
    mb.onMessage((_from, bytes) => got.push(bytes))
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

  it('a snapshot larger than one frame (over 3x) travels chunked and installs on a new member', async () => {
    const leaderStore = new PolicyStore()
    for (let i = 0; i < 20; i++)
      leaderStore.apply({
        term: 1,
        index: i + 1,
        type: 'normal',
        data: encodePolicyCommand({
          op: 'config.set',
          kind: 'kv',
          name: `k${i}`,
          value: { value: 'v'.repeat(100) },
        }),
      })
    const data = leaderStore.snapshot()
    const snap = raftMessage({
      type: 'snap',
      from: 'a',
      to: 'b',
      term: 1,
      snapshot: { metadata: { index: 20, term: 1, conf: { voters: ['a', 'b'], learners: [] } }, data },
    })
    const bytes = encodeMessage(snap)
    expect(bytes.length).toBeGreaterThan(3 * FRAME)
    got.length = 0
    expect(ma.send(b.peerId.toString(), bytes)).toBe(true)
    expect(ma.send(b.peerId.toString(), Buffer.from('after'))).toBe(true)
    await waitFor(
      'the snapshot and the next message',
      async () => (got.length >= 2 ? true : undefined),
      10_000,
      10,
    )
    expect(Buffer.from(got[1]!).toString()).toBe('after')
    const store = new PolicyStore()
    const node = new RaftNode<PolicyResult>({
      id: 'b',
      storage: new MemoryStorage(),
      stateMachine: store,
      transport: { send: () => {} },
      clock: new VirtualClock(),
    })
    expect(node.receive(got[0]!, 'a')).toBe(true)
    expect(node.applied()).toBe(20)
    expect(store.listConfigEntries()).toHaveLength(20)
    expect(store.snapshot()).toEqual(data)
    await node.stop()
  })

  it('resets a stream whose partial message is over the peer budget, and counts it', async () => {
    const before = mb.stats.overBudget
    const stream = await a.dialProtocol(b.peerId, '/test/chunked/1')
    // Declares a 64 KiB message (legal), then a second stream starts another: over the count.
    const first = (total: number): Uint8Array => {
      const f = new Uint8Array(10)
      f[0] = 1
      new DataView(f.buffer).setUint32(1, total)
      return encodeFrame(f)
    }
    stream.send(first(64 * 1024))
    const second = await a.dialProtocol(b.peerId, '/test/chunked/1')
    second.send(first(1024))
    await waitFor(
      'the stream to be reset',
      async () => (mb.stats.overBudget > before ? true : undefined),
      10_000,
      10,
    )
    expect(mb.stats.overBudget).toBe(before + 1)
    stream.abort(new Error('done'))
    // Honest traffic still flows afterwards.
    got.length = 0
    ma.send(b.peerId.toString(), message(3 * FRAME))
    await waitFor('a message after the reset', async () => (got.length >= 1 ? true : undefined), 10_000, 10)
    expect(got[0]!.length).toBe(3 * FRAME)
  })
})
