import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import pino from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { systemClock } from '../../../src/common/clock.ts'
import { pack } from '../../../src/common/msgpack.ts'
import { generateClusterKey, parseClusterKey } from '../../../src/identity/keys/cluster-key.ts'
import { loadOrCreateNodeIdentity } from '../../../src/identity/keys/node-key.ts'
import { BootstrapExpect } from '../../../src/node/raft/bootstrap-expect.ts'
import {
  decodeFoundingReply,
  FOUNDING_PROTOCOL,
  MAX_FOUNDING_BYTES,
  MemoryFoundingRecord,
} from '../../../src/node/raft/founding.ts'
import { FoundingRecordFile } from '../../../src/node/raft/founding-record-file.ts'
import { FoundingRpc } from '../../../src/node/raft/founding-rpc.ts'
import { createHost, type Host } from '../../../src/node/transport/host.ts'
import { StreamMessenger } from '../../../src/node/transport/stream-messenger.ts'
import { TempDirs } from '../../temp-dir.ts'

const tmp = new TempDirs()
afterAll(() => tmp.removeAll())

const log = pino({ level: 'silent' })

describe('founding over real libp2p hosts (hostile requests)', () => {
  const key = parseClusterKey(generateClusterKey())
  let a: Host
  let b: Host
  let raw: StreamMessenger
  let client: FoundingRpc
  let server: BootstrapExpect

  beforeAll(async () => {
    const mk = async (): Promise<Host> => {
      const identity = await loadOrCreateNodeIdentity(tmp.make('found'))
      const h = await createHost({ identity, clusterKey: key, listen: ['/ip4/127.0.0.1/tcp/0'] })
      await h.start()
      return h
    }
    a = await mk()
    b = await mk()
    await a.peerStore.merge(b.peerId, { multiaddrs: b.getMultiaddrs() })
    // b answers only (no --bootstrap-expect), with an empty Raft node.
    server = new BootstrapExpect(
      {
        node: { id: b.peerId.toString(), status: () => ({ term: 0, lastIndex: 0 }), bootstrap: () => {} },
        members: { members: () => [] },
        channel: new FoundingRpc(b, log),
        record: new MemoryFoundingRecord(),
        clock: systemClock,
        log,
      },
      { expect: undefined, checkMs: 100 },
    )
    await server.start()
    // a speaks the protocol raw, to send what a well-behaved agent never would.
    raw = new StreamMessenger({
      host: a,
      protocol: '/test/unused/1',
      requestProtocol: FOUNDING_PROTOCOL,
      log,
      maxMessageBytes: 64,
      maxRequestBytes: 1 << 20,
    })
    await raw.start()
    client = new FoundingRpc(a, log)
  })

  afterAll(async () => {
    await server.stop()
    await raw.stop()
    await a.stop()
    await b.stop()
  })

  it('refuses malformed, oversized and extension-typed requests, counts them, and keeps answering', async () => {
    const to = b.peerId.toString()
    const hostile = [
      new Uint8Array([0xc1]),
      pack({ v: 1, op: 'prepare', set: ['b', 'a'] }),
      pack({ v: 2, op: 'status' }),
      new Uint8Array([0xd4, 0x01, 0x00]),
      new Uint8Array(MAX_FOUNDING_BYTES + 10),
    ]
    for (const bytes of hostile)
      await expect(raw.request(to, bytes, { signal: AbortSignal.timeout(5_000) })).rejects.toThrow()
    expect(server.refusedRequests()).toBe(4) // the oversized one is cut by the frame limit first

    const status = await client.request(to, { op: 'status' }, { signal: AbortSignal.timeout(5_000) })
    expect(status).toEqual({ state: false })
    const promised = await client.request(
      to,
      { op: 'prepare', set: ['x', 'y'] },
      { signal: AbortSignal.timeout(5_000) },
    )
    expect(promised.promised).toEqual(['x', 'y'])
    // A reply decodes with the same checks.
    expect(() => decodeFoundingReply(pack({ v: 1, state: 'no' }))).toThrow()
  })

  it('keeps the commitment on disk across a restart; an unreadable file is an error, not a guess', async () => {
    const dir = tmp.make('found-rec')
    new FoundingRecordFile(dir).save({ set: ['a', 'b'], witnesses: ['a', 'b', 'c'] })
    expect(new FoundingRecordFile(dir).load()).toEqual({ set: ['a', 'b'], witnesses: ['a', 'b', 'c'] })
    writeFileSync(join(dir, 'raft-founding.json'), '{"set":["b","a"],"witnesses":["a","b"]}')
    expect(() => new FoundingRecordFile(dir)).toThrow(
      expect.objectContaining({ code: 'PEERMESH_ERR_BAD_FOUNDING_MESSAGE' }),
    )
  })
})
