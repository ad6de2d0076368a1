import pino from 'pino'
import { describe, expect, it } from 'vitest'
import { TypedEmitter } from '../../../src/common/events.ts'
import { pack } from '../../../src/common/msgpack.ts'
import {
  decodeLeaderReply,
  encodeLeaderReply,
  type LeaderCall,
  type LeaderReply,
  LeaderRpc,
  LeaderRpcStoppedError,
  NOT_LEADER_CODE,
  type RequestChannel,
  refusal,
  refusalOf,
} from '../../../src/node/transport/leader-rpc.ts'
import { CaRotationConflictError } from '../../../src/identity/connect/errors.ts'
import { PeermeshError } from '../../../src/common/errors.ts'
import { VirtualClock } from '../../sim/virtual-clock.ts'

const log = pino({ level: 'silent' })
const SELF = 'self'
const ATTEMPT_MS = 1_000
const PAUSE_MS = 20

/** Who leads, as a test sets it; a change is announced like the Raft node's `leader:change`. */
class FakeLeaderView {
  private current: string | undefined
  private readonly events = new TypedEmitter<{ 'leader:change': undefined }>()

  constructor(leader: string | undefined) {
    this.current = leader
  }
  set(leader: string | undefined): void {
    this.current = leader
    this.events.emit('leader:change', undefined)
  }
  isLeader = (): boolean => this.current === SELF
  leader = (): string | undefined => this.current
  onLeaderChange = (listener: () => void) => this.events.on('leader:change', listener)
}

type Answer = (to: string, signal: AbortSignal) => Promise<Uint8Array>

/** A request channel whose peers answer as the test says; records who was asked. */
class FakeChannel implements RequestChannel {
  readonly asked: string[] = []
  constructor(public answer: Answer) {}
  request(to: string, _bytes: Uint8Array, options: { signal: AbortSignal }): Promise<Uint8Array> {
    this.asked.push(to)
    return this.answer(to, options.signal)
  }
}

const ok = (value: number): Uint8Array => encodeLeaderReply<{ value: number }>({ ok: true, value })
const refused = (code: string, leader?: string): Uint8Array => encodeLeaderReply(refusal(code, 'no', leader))
/** A request that never answers, rejecting only when its attempt is aborted. */
const hang: Answer = (_to, signal) =>
  new Promise((_resolve, reject) => signal.addEventListener('abort', () => reject(signal.reason)))

function setup(leader: string | undefined, answer: Answer) {
  const clock = new VirtualClock()
  const view = new FakeLeaderView(leader)
  const channel = new FakeChannel(answer)
  let stopped = false
  const rpc = new LeaderRpc(
    { leader: view, channel, clock, log, stopped: () => stopped },
    { attemptTimeoutMs: ATTEMPT_MS, retryPauseMs: PAUSE_MS },
  )
  const locals: number[] = []
  const call = (over: Partial<LeaderCall<{ value: number }>> = {}): LeaderCall<{ value: number }> => ({
    what: 'test call',
    request: pack({ q: 1 }),
    decode: (o) => (typeof o['value'] === 'number' ? { value: o['value'] } : undefined),
    local: async () => {
      locals.push(clock.now())
      return { ok: true, value: 0 }
    },
    ...over,
  })
  return { clock, view, channel, rpc, call, locals, stop: () => (stopped = true) }
}

/** Lets pending promise callbacks run (no time passes). */
async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await Promise.resolve()
}

/** Runs `p` to completion, firing virtual timers one at a time whenever it is stuck. */
async function drive<T>(clock: VirtualClock, p: Promise<T>, limitMs = 60_000): Promise<T> {
  let done = false
  const out = p.finally(() => {
    done = true
  })
  out.catch(() => {})
  for (;;) {
    await settle()
    if (done) return out
    if (!clock.fireNext(limitMs)) throw new Error('stuck: no timer left and the call has not settled')
  }
}

describe('LeaderRpc: ask the leader, retry across leader changes', () => {
  it('answers locally when this node leads, without using the channel', async () => {
    const t = setup(SELF, hang)
    const reply = await drive(t.clock, t.rpc.call(t.call(), { signal: new AbortController().signal }))
    expect(reply).toEqual({ ok: true, value: 0 })
    expect(t.channel.asked).toEqual([])
    expect(t.rpc.stats.forwarded).toBe(0)
  })

  it('forwards to the leader and decodes its reply with the shared decoder', async () => {
    const t = setup('a', async () => ok(7))
    const reply = await drive(t.clock, t.rpc.call(t.call(), { signal: new AbortController().signal }))
    expect(reply).toEqual({ ok: true, value: 7 })
    expect(t.channel.asked).toEqual(['a'])
    expect(t.rpc.stats.forwarded).toBe(1)
  })

  it('retries a NOT_LEADER refusal as soon as the leader changes, not after the pause', async () => {
    const t = setup('a', async (to) => (to === 'a' ? refused(NOT_LEADER_CODE, 'b') : ok(2)))
    const p = t.rpc.call(t.call(), { signal: new AbortController().signal })
    await settle()
    expect(t.channel.asked).toEqual(['a'])
    t.view.set('b')
    const reply = await drive(t.clock, p)
    expect(reply).toEqual({ ok: true, value: 2 })
    expect(t.channel.asked).toEqual(['a', 'b'])
    expect(t.clock.now()).toBe(0)
  })

  it('waits while no leader is known, pausing retryPauseMs between looks', async () => {
    const t = setup(undefined, async () => ok(3))
    const p = t.rpc.call(t.call(), { signal: new AbortController().signal })
    await settle()
    t.clock.advance(PAUSE_MS * 3)
    await settle()
    expect(t.channel.asked).toEqual([])
    t.clock.setNow(100)
    t.view.set('c')
    expect(await drive(t.clock, p)).toEqual({ ok: true, value: 3 })
    expect(t.channel.asked).toEqual(['c'])
  })

  it('cuts a hung attempt after attemptTimeoutMs on the injected clock and asks again', async () => {
    let n = 0
    const t = setup('a', (to, signal) => (++n === 1 ? hang(to, signal) : Promise.resolve(ok(4))))
    const reply = await drive(t.clock, t.rpc.call(t.call(), { signal: new AbortController().signal }))
    expect(reply).toEqual({ ok: true, value: 4 })
    expect(t.clock.now()).toBe(ATTEMPT_MS + PAUSE_MS)
    expect(t.rpc.stats.retries).toBe(1)
  })

  it('retries transport errors and malformed replies', async () => {
    const answers = [
      Promise.reject(new Error('reset')),
      Promise.resolve(pack({ ok: 'yes' })),
      Promise.resolve(ok(5)),
    ]
    const t = setup('a', () => answers.shift()!)
    const reply = await drive(t.clock, t.rpc.call(t.call(), { signal: new AbortController().signal }))
    expect(reply).toEqual({ ok: true, value: 5 })
    expect(t.channel.asked).toHaveLength(3)
  })

  it('returns any other refusal to the caller, unless the call retries on its code', async () => {
    const t = setup('a', async () => refused('PEERMESH_ERR_RATE_LIMITED'))
    const reply = await drive(t.clock, t.rpc.call(t.call(), { signal: new AbortController().signal }))
    expect(reply).toMatchObject({ ok: false, code: 'PEERMESH_ERR_RATE_LIMITED' })
    expect(t.channel.asked).toHaveLength(1)

    const answers = [refused('PEERMESH_ERR_CA_NOT_READY'), ok(6)]
    t.channel.answer = async () => answers.shift()!
    const retried = t.call({ retryOn: (code) => code === 'PEERMESH_ERR_CA_NOT_READY' })
    expect(await drive(t.clock, t.rpc.call(retried, { signal: new AbortController().signal }))).toEqual({
      ok: true,
      value: 6,
    })
  })

  it('treats a local throw as its coded refusal', async () => {
    const t = setup(SELF, hang)
    const failing = t.call({
      local: async () => {
        throw new CaRotationConflictError('conflict')
      },
    })
    const reply = await drive(t.clock, t.rpc.call(failing, { signal: new AbortController().signal }))
    expect(reply).toMatchObject({ ok: false, code: 'PEERMESH_ERR_CA_ROTATION_CONFLICT', message: 'conflict' })
  })

  it('gives up when the signal fires, telling whether the request may have been received', async () => {
    const t = setup(undefined, hang)
    const states: boolean[] = []
    const giveUp = (s: { sent: boolean }) => {
      states.push(s.sent)
      return new Error(s.sent ? 'maybe applied' : 'never sent')
    }
    const idle = new AbortController()
    const p1 = t.rpc.call(t.call({ giveUp }), { signal: idle.signal })
    p1.catch(() => {})
    await settle()
    idle.abort()
    await expect(drive(t.clock, p1)).rejects.toThrow('never sent')

    t.view.set('a')
    const busy = new AbortController()
    const p2 = t.rpc.call(t.call({ giveUp }), { signal: busy.signal })
    p2.catch(() => {})
    await settle()
    busy.abort()
    await expect(drive(t.clock, p2)).rejects.toThrow('maybe applied')
    expect(states).toEqual([false, true])
  })

  it('throws the signal reason by default, and a stopped error once its owner stops', async () => {
    const t = setup(undefined, hang)
    const ac = new AbortController()
    const p = t.rpc.call(t.call(), { signal: ac.signal })
    p.catch(() => {})
    await settle()
    ac.abort(new Error('deadline'))
    await expect(drive(t.clock, p)).rejects.toThrow('deadline')

    const q = t.rpc.call(t.call(), { signal: new AbortController().signal })
    q.catch(() => {})
    t.stop()
    await expect(drive(t.clock, q)).rejects.toMatchObject({ code: LeaderRpcStoppedError.code })
  })
})

describe('decodeLeaderReply', () => {
  const decode = (bytes: Uint8Array): LeaderReply<{ value: number }> | undefined =>
    decodeLeaderReply(bytes, (o) => (typeof o['value'] === 'number' ? { value: o['value'] } : undefined))

  it('decodes successes through the caller and refusals itself', () => {
    expect(decode(ok(1))).toEqual({ ok: true, value: 1 })
    expect(decode(refused(NOT_LEADER_CODE, 'b'))).toEqual({
      ok: false,
      code: NOT_LEADER_CODE,
      message: 'no',
      leader: 'b',
    })
    expect(decode(pack({ ok: false, code: 'X' }))).toEqual({ ok: false, code: 'X', message: '' })
  })

  it('returns undefined for anything else', () => {
    expect(decode(new Uint8Array([0xc1]))).toBeUndefined()
    expect(decode(pack([1, 2]))).toBeUndefined()
    expect(decode(pack({ ok: true, value: 'x' }))).toBeUndefined()
    expect(decode(pack({ ok: false }))).toBeUndefined()
  })
})

describe('refusalOf: what a peer that asked is told of a failure', () => {
  it('one of our coded errors: its code and message', () => {
    const r = refusalOf(new CaRotationConflictError('a rotation is in progress'))
    expect(r).toEqual({ ok: false, code: CaRotationConflictError.code, message: 'a rotation is in progress' })
  })

  it("Node's, a library's or an uncoded error: the internal code and nothing of its message", () => {
    const enoent = Object.assign(
      new Error("ENOENT: no such file or directory, open '/var/lib/peermesh/raft/log'"),
      {
        code: 'ENOENT',
      },
    )
    for (const err of [
      enoent,
      new TypeError("Cannot read properties of undefined (reading 'x')"),
      new DOMException('The operation was aborted due to timeout', 'TimeoutError'),
      new PeermeshError('base class: /secret/path'),
      '/secret/path',
    ]) {
      const r = refusalOf(err)
      expect(r.code).toBe(PeermeshError.code)
      expect(r.message).toBe('internal error')
      expect(JSON.stringify(r)).not.toMatch(/secret|var\/lib|ENOENT|undefined/)
    }
  })
})
