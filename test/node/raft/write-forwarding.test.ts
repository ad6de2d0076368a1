import { Packr } from 'msgpackr'
import pino from 'pino'
import { describe, expect, it } from 'vitest'
import { pack, unpackRecord } from '../../../src/common/msgpack.ts'
import { BadForwardRequestError, WriteTimeoutError } from '../../../src/node/raft/errors.ts'
import {
  ForwardedWriteServer,
  type ProposingNode,
  WriteForwarder,
} from '../../../src/node/raft/write-forwarding.ts'
import { LeaderRpc } from '../../../src/node/transport/leader-rpc.ts'
import {
  encodePolicyCommand,
  PolicyErrorCodes,
  type PolicyResult,
  PolicyStore,
} from '../../../src/raft/policy/policy-store.ts'
import type { RequestId } from '../../../src/raft/types.ts'
import { VirtualClock } from '../../sim/virtual-clock.ts'

const log = pino({ level: 'silent' })

/** A leader over a real policy store: every proposal is applied at the next index. */
function leader(): ProposingNode & { store: PolicyStore; proposed: Uint8Array[] } {
  const store = new PolicyStore()
  let index = 0
  const proposed: Uint8Array[] = []
  return {
    store,
    proposed,
    isLeader: () => true,
    leader: () => 'self',
    propose: async (data: Uint8Array, o: { requestId?: RequestId }) => {
      proposed.push(data)
      const e = {
        term: 1,
        index: ++index,
        type: 'normal' as const,
        data,
        ...(o.requestId ? { requestId: o.requestId } : {}),
      }
      return { index: e.index, result: store.apply(e) }
    },
  }
}

function server(node: ProposingNode, maxCommandBytes = 1 << 20) {
  return new ForwardedWriteServer(
    { node: () => node, clock: new VirtualClock() },
    { attemptTimeoutMs: 1_000, maxCommandBytes },
  )
}

const request = (cmd: unknown, extra: Record<string, unknown> = {}) => ({
  t: 'write',
  cmd,
  clientId: 'agent-b.1',
  seq: 1,
  ...extra,
})

/** A forwarded request whose value is a cycle (msgpackr's structured-clone extension). */
function cyclicRequest(): Uint8Array {
  const cycle: unknown[] = []
  cycle.push(cycle)
  return new Packr({ structuredClone: true, useRecords: false }).pack(
    request({ op: 'config.set', kind: 'service-defaults', name: 'web', value: { cycle } }),
  )
}

/** A forwarded request whose value is `depth` arrays deep, built byte by byte. */
function deepRequest(depth: number): Uint8Array {
  const marker = 'DEEP_VALUE_MARKER'
  const bytes = Buffer.from(
    pack(request({ op: 'config.set', kind: 'service-defaults', name: 'web', value: { a: marker } })),
  )
  const at = bytes.indexOf(Buffer.from(pack(marker)))
  return Buffer.concat([
    bytes.subarray(0, at),
    Buffer.alloc(depth, 0x91),
    Buffer.from([0xc0]),
    bytes.subarray(at + pack(marker).length),
  ])
}

const attacks: [string, () => Uint8Array, string, keyof ForwardedWriteServer['stats']][] = [
  [
    'a forwarded ca.setRoots',
    () => pack(request({ op: 'ca.setRoots', roots: [{ id: 'evil', certPem: 'x' }], casIndex: 0 })),
    PolicyErrorCodes.notForwardable,
    'notForwardable',
  ],
  [
    'a raw ca.setRoots log entry in the old shape',
    () =>
      pack({
        t: 'propose',
        data: encodePolicyCommand({ op: 'ca.setRoots', roots: [] }),
        clientId: 'x.1',
        seq: 1,
      }),
    BadForwardRequestError.code,
    'malformed',
  ],
  ['an unknown op', () => pack(request({ op: 'store.wipe' })), PolicyErrorCodes.invalidCommand, 'invalid'],
  [
    'a malformed command',
    () => pack(request({ op: 'intention.upsert', source: 'web' })),
    PolicyErrorCodes.invalidCommand,
    'invalid',
  ],
  [
    'a command that is bytes, not a map',
    () => pack(request(new Uint8Array([1, 2, 3]))),
    BadForwardRequestError.code,
    'malformed',
  ],
  ['a cyclic value (structured-clone extension)', cyclicRequest, BadForwardRequestError.code, 'malformed'],
  ['a value 1,343 levels deep', () => deepRequest(1343), BadForwardRequestError.code, 'malformed'],
  [
    'a value 40 levels deep (within msgpack, past JSON)',
    () => deepRequest(40),
    PolicyErrorCodes.invalidCommand,
    'invalid',
  ],
  [
    'a config value over the entry cap',
    () => pack(request({ op: 'config.set', kind: 'kv', name: 'k', value: { value: 'x'.repeat(65_536) } })),
    PolicyErrorCodes.tooLarge,
    'tooLarge',
  ],
  [
    'a token that is not a string',
    () => pack(request({ op: 'config.delete', kind: 'kv', name: 'k' }, { token: 7 })),
    BadForwardRequestError.code,
    'malformed',
  ],
  [
    'a request over the size limit',
    () => pack(request({ op: 'config.set', kind: 'kv', name: 'k', value: { value: 'x'.repeat(2 << 20) } })),
    BadForwardRequestError.code,
    'malformed',
  ],
]

describe('ForwardedWriteServer: forwarded writes are requests, checked before anything is proposed', () => {
  it.each(attacks)(
    'refuses %s: nothing proposed, state unchanged, counted',
    async (_what, bytes, code, counter) => {
      const node = leader()
      await node.propose(
        encodePolicyCommand({ op: 'config.set', kind: 'kv', name: 'keep', value: { value: 'me' } }),
        {},
      )
      node.proposed.length = 0
      const before = Buffer.from(node.store.snapshot()).toString('hex')
      const s = server(node)
      const reply = unpackRecord(await s.serve(bytes(), new AbortController().signal))!
      const got = reply['ok'] === true ? (reply['result'] as PolicyResult) : reply
      expect(got).toMatchObject({ ok: false, code })
      if (reply['ok'] === true) expect(reply['index']).toBe(0)
      expect(node.proposed).toEqual([])
      expect(Buffer.from(node.store.snapshot()).toString('hex')).toBe(before)
      expect(s.stats[counter]).toBe(1)
      expect(s.stats.proposed).toBe(0)
    },
  )

  it('proposes a valid command re-encoded canonically: only the schema fields, whatever was sent', async () => {
    const node = leader()
    const s = server(node)
    const cmd = {
      op: 'config.set',
      kind: 'kv',
      name: 'k',
      value: { value: 'v' },
      smuggled: { op: 'ca.setRoots' },
    }
    const reply = unpackRecord(
      await s.serve(pack(request(cmd, { token: 'secret' })), new AbortController().signal),
    )!
    expect(reply).toMatchObject({ ok: true, index: 1, result: { ok: true, index: 1 } })
    expect(node.proposed.map((b) => Buffer.from(b).toString('hex'))).toEqual([
      Buffer.from(
        encodePolicyCommand({ op: 'config.set', kind: 'kv', name: 'k', value: { value: 'v' } }),
      ).toString('hex'),
    ])
    expect(node.store.getConfigEntry('kv', 'k')?.value).toEqual({ value: 'v' })
    expect(s.stats.proposed).toBe(1)
  })
})

describe('WriteForwarder checks a write before sending it', () => {
  function forwarder(node: ProposingNode, onRequest: (bytes: Uint8Array) => Promise<Uint8Array>) {
    const clock = new VirtualClock()
    const rpc = new LeaderRpc(
      { leader: node, channel: { request: (_to, b) => onRequest(b) }, clock, log },
      { attemptTimeoutMs: 1_000, retryPauseMs: 20 },
    )
    return new WriteForwarder(
      { rpc, node, clock, log },
      { clientPrefix: 'p.', signatureRetries: 3, retryPauseMs: 20 },
    )
  }
  const follower = (): ProposingNode & { proposals: number } => {
    const n = {
      proposals: 0,
      isLeader: () => false,
      leader: () => 'L',
      propose: async () => ({ index: 1, result: { ok: true, index: 1 } as PolicyResult }),
    }
    return n
  }

  it('refuses a too-large or invalid write at once (index 0), without asking the leader', async () => {
    const sent: Uint8Array[] = []
    const f = forwarder(follower(), async (b) => {
      sent.push(b)
      return new Uint8Array()
    })
    const signal = new AbortController().signal
    const big = await f.write(
      { op: 'config.set', kind: 'kv', name: 'k', value: { value: 'x'.repeat(65_536) } },
      { signal },
    )
    expect(big).toMatchObject({ index: 0, result: { ok: false, code: PolicyErrorCodes.tooLarge } })
    const cycle: Record<string, unknown> = {}
    cycle['self'] = cycle
    const bad = await f.write(
      { op: 'config.set', kind: 'service-defaults', name: 'k', value: cycle },
      { signal },
    )
    expect(bad).toMatchObject({ index: 0, result: { ok: false, code: PolicyErrorCodes.invalidCommand } })
    expect(sent).toEqual([])
    expect(f.stats.refused).toBe(2)
  })

  it('never forwards a CA change: a CA manager that lost leadership fails and retries on its next check', async () => {
    const sent: Uint8Array[] = []
    const f = forwarder(follower(), async (b) => {
      sent.push(b)
      return new Uint8Array()
    })
    const r = await f.write(
      { op: 'ca.setRoots', roots: [], casIndex: 0 },
      { signal: new AbortController().signal },
    )
    expect(r).toMatchObject({ index: 0, result: { ok: false, code: PolicyErrorCodes.notForwardable } })
    expect(sent).toEqual([])
  })

  it('sends the new request shape, with the caller token when given, to the leader server', async () => {
    const node = leader()
    const s = server(node)
    const sent: Record<string, unknown>[] = []
    const f = forwarder(follower(), async (b) => {
      sent.push(unpackRecord(b)!)
      return s.serve(b, new AbortController().signal)
    })
    const r = await f.write(
      { op: 'intention.upsert', source: 'web', destination: 'db', action: 'allow', description: undefined },
      { signal: new AbortController().signal, token: 't0k' },
    )
    expect(r.result).toEqual({ ok: true, index: 1 })
    expect(sent[0]).toEqual({
      t: 'write',
      cmd: { op: 'intention.upsert', source: 'web', destination: 'db', action: 'allow' },
      clientId: 'p.1',
      seq: 1,
      token: 't0k',
    })
    expect(node.store.getIntention('web', 'db')?.action).toBe('allow')
  })
})

describe('WriteForwarder on the leader', () => {
  function forwarder(node: ProposingNode, onRequest: (bytes: Uint8Array) => Promise<Uint8Array>) {
    const clock = new VirtualClock()
    const rpc = new LeaderRpc(
      { leader: node, channel: { request: (_to, b) => onRequest(b) }, clock, log },
      { attemptTimeoutMs: 1_000, retryPauseMs: 20 },
    )
    return new WriteForwarder(
      { rpc, node, clock, log },
      { clientPrefix: 'p.', signatureRetries: 3, retryPauseMs: 20 },
    )
  }
  const cmd = { op: 'intention.upsert', source: 'web', destination: 'db', action: 'allow' } as const

  it('proposes locally, sending nothing', async () => {
    const node = leader()
    const sent: Uint8Array[] = []
    const f = forwarder(node, async (b) => {
      sent.push(b)
      return new Uint8Array()
    })
    const r = await f.write(cmd, { signal: new AbortController().signal })
    expect(r).toEqual({ index: 1, result: { ok: true, index: 1 } })
    expect(sent).toEqual([])
    expect(node.store.getIntention('web', 'db')?.action).toBe('allow')
  })

  it('a local attempt that fails as leadership moves goes on to the new leader with the same request id', async () => {
    const newLeader = leader()
    const s = server(newLeader)
    let leading = true
    const localIds: (RequestId | undefined)[] = []
    const node: ProposingNode = {
      isLeader: () => leading,
      leader: () => (leading ? 'self' : 'L'),
      propose: async (_data, o) => {
        localIds.push(o.requestId)
        leading = false
        throw Object.assign(new Error('not the leader'), { code: 'PEERMESH_ERR_NOT_LEADER' })
      },
    }
    const sent: Record<string, unknown>[] = []
    const f = forwarder(node, async (b) => {
      sent.push(unpackRecord(b)!)
      return s.serve(b, new AbortController().signal)
    })
    const r = await f.write(cmd, { signal: new AbortController().signal })
    expect(r.result).toEqual({ ok: true, index: 1 })
    expect(localIds).toHaveLength(1)
    expect(sent).toHaveLength(1)
    expect({ clientId: sent[0]!['clientId'], seq: sent[0]!['seq'] }).toEqual(localIds[0])
    expect(newLeader.proposed).toHaveLength(1)
  })

  it('a local attempt that outlives the deadline is a WriteTimeoutError (it may still apply)', async () => {
    const node: ProposingNode = {
      isLeader: () => true,
      leader: () => 'self',
      propose: (_data, o) =>
        new Promise((_, reject) => o.signal?.addEventListener('abort', () => reject(new Error('aborted')))),
    }
    const f = forwarder(node, async () => new Uint8Array())
    const ac = new AbortController()
    const p = f.write(cmd, { signal: ac.signal })
    ac.abort()
    await expect(p).rejects.toMatchObject({ code: WriteTimeoutError.code })
  })
})

describe('times of forwarded KV commands', () => {
  it("the leader proposes a session or KV command at its own wall clock, not the sender's `now`", async () => {
    // Consul enforces lock-delay and runs TTLs on the leader's clock: an agent whose clock runs
    // ahead (or a peer that lies) must not renew a session far into the future or skip a lock-delay.
    const node = leader()
    const clock = new VirtualClock(1_700_000_000_000)
    const s = new ForwardedWriteServer(
      { node: () => node, clock },
      { attemptTimeoutMs: 1_000, maxCommandBytes: 1 << 20 },
    )
    const id = '0a0a0a0a-0a0a-4a0a-8a0a-0a0a0a0a0a0a'
    const create = {
      op: 'session.create',
      id,
      name: '',
      node: 'n1',
      lockDelayMs: 0,
      behavior: 'release',
      ttlMs: 10_000,
      checks: [],
      now: 9_000_000_000_000_000,
    }
    const reply = unpackRecord(await s.serve(pack(request(create)), new AbortController().signal))
    expect(reply?.['ok']).toBe(true)
    expect(node.store.kv.session(id)?.renewedAt).toBe(1_700_000_000_000)
    clock.advance(5_000)
    const renew = { op: 'session.renew', id, node: 'n1', now: 9_000_000_000_000_000 }
    await s.serve(pack(request(renew, { seq: 2 })), new AbortController().signal)
    expect(node.store.kv.session(id)?.renewedAt).toBe(1_700_000_005_000)
  })
})
