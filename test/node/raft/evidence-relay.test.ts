import { describe, expect, it } from 'vitest'
import { EvidenceRelay } from '../../../src/node/raft/evidence-relay.ts'
import { raftMessage } from '../../raft/message.ts'

const WINDOW_MS = 225
const VOTERS = ['l', 'f1', 'f2']

describe('EvidenceRelay (the leader passes on whom it heard from)', () => {
  it('a heartbeat to a voter lists the other voters heard from within the window, with their age', () => {
    const r = new EvidenceRelay(() => WINDOW_MS)
    r.heard('f1', 1_000)
    r.heard('f2', 1_100)
    r.heard('learner', 1_100)
    expect(r.aliveFor('f1', VOTERS, 'l', 1_150)).toEqual([{ id: 'f2', ageMs: 50 }])
    expect(r.aliveFor('f2', VOTERS, 'l', 1_150)).toEqual([{ id: 'f1', ageMs: 150 }])
    // f1 missed a round: left off at once.
    expect(r.aliveFor('f2', VOTERS, 'l', 1_000 + WINDOW_MS + 1)).toEqual([])
    // A learner gets no list, and is never listed.
    expect(r.aliveFor('learner', VOTERS, 'l', 1_150)).toBeUndefined()
  })

  it('a peer whose connections closed is no longer passed on', () => {
    const r = new EvidenceRelay(() => WINDOW_MS)
    r.heard('f2', 1_000)
    r.lost('f2')
    expect(r.aliveFor('f1', VOTERS, 'l', 1_010)).toEqual([])
  })

  it('a follower takes the list only from a heartbeat of the leader it follows, addressed to it', () => {
    const r = new EvidenceRelay(() => WINDOW_MS)
    const alive = [{ id: 'f2', ageMs: 10 }]
    expect(r.accept(raftMessage({ type: 'heartbeat', from: 'l', to: 'f1', alive }), 'l', 'f1')).toEqual(alive)
    // The leader sent none (an older agent): what it said before is withdrawn.
    expect(r.accept(raftMessage({ type: 'heartbeat', from: 'l', to: 'f1' }), 'l', 'f1')).toEqual([])
  })

  it('from the attacker’s side: another voter, a stale leader, another type or recipient, or naming the follower itself, tells gossip nothing', () => {
    const r = new EvidenceRelay(() => WINDOW_MS)
    const alive = [{ id: 'dead-voter', ageMs: 0 }]
    // f2 (a voter, not the leader) claims dead-voter alive.
    expect(
      r.accept(raftMessage({ type: 'heartbeat', from: 'f2', to: 'f1', alive }), 'l', 'f1'),
    ).toBeUndefined()
    // No known leader (an election): nobody is believed.
    expect(
      r.accept(raftMessage({ type: 'heartbeat', from: 'l', to: 'f1', alive }), undefined, 'f1'),
    ).toBeUndefined()
    // The leader's appends and votes carry no list; a heartbeat addressed elsewhere is not ours.
    for (const type of ['app', 'vote', 'appResp', 'heartbeatResp'] as const)
      expect(r.accept(raftMessage({ type, from: 'l', to: 'f1', alive }), 'l', 'f1')).toBeUndefined()
    expect(
      r.accept(raftMessage({ type: 'heartbeat', from: 'l', to: 'f2', alive }), 'l', 'f1'),
    ).toBeUndefined()
    // What a list says of the follower itself or of the leader is dropped (each knows those first hand).
    expect(
      r.accept(
        raftMessage({
          type: 'heartbeat',
          from: 'l',
          to: 'f1',
          alive: [
            { id: 'f1', ageMs: 0 },
            { id: 'l', ageMs: 0 },
          ],
        }),
        'l',
        'f1',
      ),
    ).toEqual([])
  })
})
