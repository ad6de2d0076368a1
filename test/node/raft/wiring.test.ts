import pino from 'pino'
import { describe, expect, it } from 'vitest'
import { TypedEmitter } from '../../../src/common/events.ts'
import type { ConfChange, ConfState, PolicyResult, Role } from '../../../src/raft/index.ts'
import { pack, unpackRecord } from '../../../src/common/msgpack.ts'
import { AutopilotRunner } from '../../../src/node/raft/autopilot-runner.ts'
import type { MemberFailureEvent, RaftMember, RaftMembers } from '../../../src/node/raft/components.ts'
import { BadForwardRequestError, NoLeaderError, WriteTimeoutError } from '../../../src/node/raft/errors.ts'
import { LeaderLiveness, type PeerConnections } from '../../../src/node/raft/leader-liveness.ts'
import {
  ForwardedWriteServer,
  type ProposingNode,
  WriteForwarder,
} from '../../../src/node/raft/write-forwarding.ts'
import { LeaderRpc, NOT_LEADER_CODE } from '../../../src/node/transport/leader-rpc.ts'
import { VirtualClock } from '../../sim/virtual-clock.ts'

const log = pino({ level: 'silent' })

/** Gossip's view, as a test sets it. */
class FakeMembers implements RaftMembers {
  list: RaftMember[] = []
  readonly events = new TypedEmitter<Record<MemberFailureEvent, { id: string }>>()
  members = (): readonly RaftMember[] => this.list
  on = (type: MemberFailureEvent, listener: (m: { id: string }) => void) => this.events.on(type, listener)
  set(statuses: Record<string, RaftMember['status']>): void {
    this.list = Object.entries(statuses).map(([id, status]) => ({ id, name: id, address: '', status }))
  }
}

async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await Promise.resolve()
}

describe('LeaderLiveness (fast failover)', () => {
  function setup(self: string, leader: string | undefined, voters: string[]) {
    const clock = new VirtualClock()
    const members = new FakeMembers()
    const disconnects = new TypedEmitter<{ 'peer:disconnect': string }>()
    const dialed: string[] = []
    const connections: PeerConnections = {
      onDisconnect: (l) => disconnects.on('peer:disconnect', l),
      isConnected: (p) => p === 'connected',
      dial: async (p) => {
        dialed.push(p)
      },
    }
    const calls: string[] = []
    // `quiet`: ticks since the leader was heard from (long ago unless a test says otherwise).
    const state = { leader, term: 5, role: 'follower' as Role, quiet: 100 }
    const node = {
      id: self,
      term: () => state.term,
      role: () => state.role,
      leader: () => state.leader,
      isLeader: () => state.leader === self,
      voters: () => voters,
      forgetLeader: () => {
        calls.push('forget')
        state.leader = undefined
      },
      campaign: () => {
        calls.push(`campaign@${clock.now()}`)
        state.role = 'preCandidate'
      },
      ticksSinceLeaderContact: () => state.quiet,
    }
    const liveness = new LeaderLiveness(
      { node, members, connections, clock, log },
      {
        tickMs: 25,
        electionTick: 6,
        failoverStaggerMs: 100,
        keepConnectedMs: 200,
        voterDialTimeoutMs: 2_000,
        gossipVerdictQuietTicks: 6,
      },
    )
    liveness.start()
    return { clock, members, disconnects, dialed, calls, state, liveness }
  }

  it('forgets a leader whose connection closed and campaigns in its peer-id turn, repeating pre-votes', () => {
    const t = setup('c', 'a', ['a', 'b', 'c'])
    t.disconnects.emit('peer:disconnect', 'a')
    expect(t.calls).toEqual(['forget'])
    t.clock.advance(100 + 25 * 10)
    // rank 1 among the survivors (b, c): 100 ms later, then every tick for one election timeout.
    expect(t.calls).toEqual(['forget', ...[100, 125, 150, 175, 200, 225].map((ms) => `campaign@${ms}`)])
  })

  it('stops campaigning once an election reached it; a suspicion only forgets the leader', () => {
    const t = setup('b', 'a', ['a', 'b', 'c'])
    t.members.events.emit('member:fail', { id: 'a' })
    t.clock.advance(0)
    expect(t.calls).toEqual(['forget', 'campaign@0'])
    t.state.term = 6
    t.clock.advance(500)
    expect(t.calls).toEqual(['forget', 'campaign@0'])

    const s = setup('b', 'a', ['a', 'b', 'c'])
    s.members.events.emit('member:suspect', { id: 'a' })
    s.clock.advance(500)
    expect(s.calls).toEqual(['forget'])
  })

  it('a gossip verdict about a leader heard from just now changes nothing; a closed connection still counts', () => {
    // A partitioned member's stale "dead" claims reach everyone when the partition heals: followers
    // that the leader is heartbeating keep it (chaos partition-leader).
    const t = setup('b', 'a', ['a', 'b', 'c'])
    t.state.quiet = 5
    t.members.events.emit('member:suspect', { id: 'a' })
    t.members.events.emit('member:fail', { id: 'a' })
    t.clock.advance(500)
    expect(t.calls).toEqual([])
    expect(t.state.leader).toBe('a')
    // Silent for two idle heartbeat intervals: the same verdicts are taken.
    t.state.quiet = 6
    t.members.events.emit('member:suspect', { id: 'a' })
    expect(t.calls).toEqual(['forget'])
    const f = setup('b', 'a', ['a', 'b', 'c'])
    f.state.quiet = 6
    f.members.events.emit('member:fail', { id: 'a' })
    f.clock.advance(0)
    expect(f.calls).toEqual(['forget', 'campaign@0'])
    // This agent's own evidence is taken at once, however recently the leader spoke.
    const d = setup('b', 'a', ['a', 'b', 'c'])
    d.state.quiet = 0
    d.disconnects.emit('peer:disconnect', 'a')
    d.clock.advance(0)
    expect(d.calls).toEqual(['forget', 'campaign@0'])
  })

  it('ignores events about members that do not lead, and releases its subscriptions on stop', () => {
    const t = setup('b', 'a', ['a', 'b', 'c'])
    t.members.events.emit('member:leave', { id: 'c' })
    t.liveness.stop()
    t.disconnects.emit('peer:disconnect', 'a')
    expect(t.calls).toEqual([])
    expect(t.members.events.listenerCount('member:fail')).toBe(0)
    expect(t.disconnects.listenerCount('peer:disconnect')).toBe(0)
    expect(t.clock.pending).toBe(0)
  })

  it('keeps a connection to every other voter gossip does not report dead', () => {
    const t = setup('b', 'a', ['a', 'b', 'connected', 'd'])
    t.members.set({ d: 'dead' })
    t.clock.advance(200)
    expect(t.dialed).toEqual(['a'])
  })
})

describe('AutopilotRunner', () => {
  function setup(grant?: (peer: string) => Promise<void>) {
    const clock = new VirtualClock()
    const members = new FakeMembers()
    const changes: ConfChange[] = []
    const conf: ConfState = { voters: ['a'], learners: ['b', 'c'] }
    const node = {
      id: 'a',
      isLeader: () => true,
      status: () => ({
        conf,
        lastIndex: 10,
        progress: {
          a: { match: 10, state: 'replicate' },
          b: { match: 10, state: 'replicate' },
          c: { match: 10, state: 'replicate' },
        },
      }),
      changeMembership: async (change: ConfChange) => {
        changes.push(change)
        return { index: 11 }
      },
    }
    const runner = new AutopilotRunner(
      { node, members, clock, log, ...(grant ? { keyGrant: { grantKeyTo: (p: string) => grant(p) } } : {}) },
      { targetVoters: 3, deadThresholdMs: 2_500, maxLagEntries: 64, intervalMs: 200, changeTimeoutMs: 5_000 },
    )
    return { clock, members, changes, runner }
  }

  it('adds an alive newcomer as a learner on its next round', async () => {
    const t = setup()
    t.members.set({ a: 'alive', b: 'alive', c: 'alive', d: 'alive' })
    t.runner.start()
    t.clock.advance(200)
    await settle()
    expect(t.changes).toEqual([{ type: 'addLearner', node: 'd' }])
    t.runner.stop()
    expect(t.clock.pending).toBe(0)
  })

  it('awaits the CA key grant before it makes a member a voter', async () => {
    const granted: string[] = []
    let release = (): void => {}
    const t = setup((peer) => {
      granted.push(peer)
      return new Promise((r) => {
        release = r
      })
    })
    t.members.set({ a: 'alive', b: 'alive', c: 'alive' })
    t.runner.run()
    await settle()
    expect(granted).toEqual(['b'])
    expect(t.changes).toEqual([])
    t.runner.run() // busy: at most one change at a time
    release()
    await settle()
    expect(t.changes).toEqual([{ type: 'promoteLearner', node: 'b' }])
    expect(granted).toEqual(['b'])
  })
})

describe('write forwarding', () => {
  const okResult: PolicyResult = { ok: true, index: 7 }

  function node(leader: string | undefined, self = 'self'): ProposingNode & { proposals: number } {
    const n = {
      proposals: 0,
      isLeader: () => leader === self,
      leader: () => leader,
      propose: async () => {
        n.proposals++
        return { index: 7, result: okResult }
      },
    }
    return n
  }

  it('the leader proposes a forwarded write; others refuse with the leader they know', async () => {
    const clock = new VirtualClock()
    const request = pack({
      t: 'write',
      cmd: { op: 'config.delete', kind: 'kv', name: 'k' },
      clientId: 'x.1',
      seq: 1,
    })
    const serve = (n: ProposingNode | undefined) =>
      new ForwardedWriteServer(
        { node: () => n, clock },
        { attemptTimeoutMs: 1_000, maxCommandBytes: 1024 },
      ).serve(request, new AbortController().signal)
    expect(unpackRecord(await serve(node('self')))).toEqual({ ok: true, index: 7, result: okResult })
    expect(unpackRecord(await serve(node('other')))).toMatchObject({
      ok: false,
      code: NOT_LEADER_CODE,
      leader: 'other',
    })
    const bad = new ForwardedWriteServer(
      { node: () => node('self'), clock },
      { attemptTimeoutMs: 1, maxCommandBytes: 1 },
    )
    expect(unpackRecord(await bad.serve(pack({ t: 'propose' }), new AbortController().signal))).toMatchObject(
      {
        code: BadForwardRequestError.code,
      },
    )
    expect(clock.pending).toBe(0)
  })

  function forwarder(n: ProposingNode, request: () => Promise<Uint8Array>) {
    const clock = new VirtualClock()
    const rpc = new LeaderRpc(
      { leader: n, channel: { request }, clock, log },
      { attemptTimeoutMs: 1_000, retryPauseMs: 20 },
    )
    const f = new WriteForwarder(
      { rpc, node: n, clock, log },
      { clientPrefix: 'p.', signatureRetries: 3, retryPauseMs: 20 },
    )
    return { clock, f }
  }

  it('fails with NoLeaderError when nothing was sent, WriteTimeoutError when it may apply', async () => {
    const cmd = { op: 'config.delete', kind: 'kv', name: 'k' } as const
    const none = forwarder(node(undefined), async () => new Uint8Array())
    const p1 = none.f.write(cmd, { signal: AbortSignal.abort() })
    await expect(p1).rejects.toMatchObject({ code: NoLeaderError.code })

    const ac = new AbortController()
    const hung = forwarder(node('other'), () => Promise.reject(new Error('reset')))
    const p2 = hung.f.write(cmd, { signal: ac.signal })
    p2.catch(() => {})
    await settle()
    ac.abort()
    hung.clock.advance(20)
    await expect(p2).rejects.toMatchObject({ code: WriteTimeoutError.code })
  })

  it('sends a write refused for its CA signature again, with the same request id', async () => {
    const refused: PolicyResult = { ok: false, code: 'PEERMESH_ERR_POLICY_SIGNATURE', message: 'unsigned' }
    const n = node('self')
    const ids: string[] = []
    let calls = 0
    n.propose = async (_data, o) => {
      ids.push(o.requestId!.clientId)
      return { index: 7, result: ++calls < 3 ? refused : okResult }
    }
    const { clock, f } = forwarder(n, async () => new Uint8Array())
    const p = f.write(
      { op: 'config.delete', kind: 'kv', name: 'k' },
      { signal: new AbortController().signal },
    )
    for (let i = 0; i < 5; i++) {
      await settle()
      clock.advance(20)
    }
    expect((await p).result).toEqual(okResult)
    expect(ids).toEqual(['p.1', 'p.1', 'p.1'])
    expect(f.stats.signatureRetries).toBe(2)
  })
})
