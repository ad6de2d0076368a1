/**
 * Raft listens only to its configuration: peers that hold the cluster key but are not members (or
 * are only learners) try to take the cluster over or keep it leaderless. Written from the attacker's
 * side, on the deterministic simulator (virtual time: one tick is the driver's 100 ms).
 */
import { describe, expect, it } from 'vitest'
import { decodeMessage, encodeMessage } from '../../src/raft/codec.ts'
import { encodeConfChange } from '../../src/raft/conf-change.ts'
import { CAMPAIGN_TRANSFER } from '../../src/raft/raft.ts'
import type { ConfState, Message, RefusalReason } from '../../src/raft/types.ts'
import { raftMessage } from './message.ts'
import { type SimNode, SimCluster } from './sim-cluster.ts'

const VOTERS = ['a', 'b', 'c']

/** Delivers a forged message to `to` as the transport would (through the codec), then its Ready. */
function inject(c: SimCluster, m: Partial<Message> & Pick<Message, 'type' | 'from' | 'to'>): void {
  const r = decodeMessage(encodeMessage(raftMessage(m)))
  if (!r.ok) throw new Error(r.reason)
  const n = c.node(m.to)
  n.raft.step(r.message)
  c.process(n)
}

function refused(n: SimNode, reason: RefusalReason): number {
  return n.raft.refusedMessages()[reason]?.count ?? 0
}

function confs(c: SimCluster): Record<string, ConfState> {
  return Object.fromEntries([...c.nodes.values()].map((n) => [n.id, n.raft.conf()]))
}

/** A settled 3-voter cluster (default config: pre-vote and check-quorum), plus learner `l`. */
function clusterWithLearner(seed = 5): { c: SimCluster; leader: SimNode } {
  const c = new SimCluster(VOTERS, { seed })
  const leader = c.electLeader()
  c.addNode('l')
  leader.raft.proposeConfChange({ type: 'addLearner', node: 'l' })
  c.process(leader)
  c.tick(20)
  expect(c.node('l').raft.conf().learners).toEqual(['l'])
  return { c, leader }
}

describe('peers outside the configuration are not listened to', () => {
  it('a non-member’s append at a higher term carrying a conf change makes no one follow it (Raft §5.1, §4.1)', () => {
    const { c, leader } = clusterWithLearner()
    const term = leader.raft.term
    const before = confs(c)
    for (const n of c.nodes.values()) {
      // The attacker guessed the log position right: only membership stops it.
      const last = n.raft.log.lastIndex()
      inject(c, {
        type: 'app',
        from: 'x',
        to: n.id,
        term: term + 5,
        index: last,
        logTerm: n.raft.log.lastTerm(),
        commit: last + 1,
        entries: [
          {
            term: term + 5,
            index: last + 1,
            type: 'conf',
            data: encodeConfChange({ type: 'addVoter', node: 'x' }),
          },
        ],
      })
      inject(c, { type: 'heartbeat', from: 'x', to: n.id, term: term + 5, commit: last + 1 })
      inject(c, { type: 'snap', from: 'x', to: n.id, term: term + 5 })
    }
    c.tick(30)
    expect(confs(c)).toEqual(before)
    for (const n of c.nodes.values()) {
      expect(n.raft.term).toBe(term)
      expect(n.raft.lead).toBe(leader.id)
      expect(refused(n, 'not_member')).toBe(3)
    }
  })

  it('a non-member’s vote, pre-vote and forced vote are refused, even outside the leader lease (Raft §5.2)', () => {
    const c = new SimCluster(VOTERS, { seed: 2 })
    const leader = c.electLeader()
    const term = leader.raft.term
    for (const n of c.nodes.values()) {
      n.raft.forgetLeader() // no lease on followers: only membership stands in the way
      const pos = { index: n.raft.log.lastIndex() + 100, logTerm: term + 1 }
      inject(c, { type: 'preVote', from: 'x', to: n.id, term: term + 1, ...pos })
      inject(c, { type: 'vote', from: 'x', to: n.id, term: term + 1, ...pos })
      inject(c, { type: 'vote', from: 'x', to: n.id, term: term + 2, context: CAMPAIGN_TRANSFER, ...pos })
      expect(n.raft.term).toBe(term)
      expect(n.raft.vote).not.toBe('x')
      expect(refused(n, 'not_member')).toBe(3)
    }
    expect(leader.raft.role).toBe('leader')
  })

  it('a learner’s vote and pre-vote are refused (thesis §4.2.1: learners do not vote or campaign)', () => {
    const { c, leader } = clusterWithLearner(3)
    const term = leader.raft.term
    for (const id of VOTERS) {
      const n = c.node(id)
      n.raft.forgetLeader()
      const pos = { index: 10_000, logTerm: term + 1 }
      inject(c, { type: 'preVote', from: 'l', to: id, term: term + 1, ...pos })
      inject(c, { type: 'vote', from: 'l', to: id, term: term + 1, ...pos })
      expect(refused(n, 'vote_not_voter')).toBe(2)
      // Nor may it raise anyone's term through an answer.
      inject(c, { type: 'heartbeatResp', from: 'l', to: id, term: term + 7 })
      expect(refused(n, 'higher_term_not_voter')).toBe(1)
      expect(n.raft.term).toBe(term)
    }
    c.tick(20)
    expect(c.leader()?.id).toBe(leader.id)
  })

  it('members that do not lead cannot append: a learner at a higher term, a voter in the leader’s term (Raft §5.2)', () => {
    const { c, leader } = clusterWithLearner(11)
    const term = leader.raft.term
    const before = confs(c)
    const follower = VOTERS.find((id) => id !== leader.id)!
    const conf = (node: string) => ({
      term: term + 1,
      index: c.node(follower).raft.log.lastIndex() + 1,
      type: 'conf' as const,
      data: encodeConfChange({ type: 'promoteLearner', node }),
    })
    for (const n of c.nodes.values()) {
      if (n.id === 'l') continue
      const pos = { index: n.raft.log.lastIndex(), logTerm: n.raft.log.lastTerm() }
      inject(c, { type: 'app', from: 'l', to: n.id, term: term + 1, ...pos, entries: [conf('l')] })
      expect(refused(n, 'higher_term_not_voter')).toBe(1)
      if (n.id === follower) continue
      inject(c, { type: 'app', from: follower, to: n.id, term, ...pos, entries: [{ ...conf('l'), term }] })
      inject(c, { type: 'readIndexResp', from: follower, to: n.id, term, index: 10_000, context: 'r' })
      expect(refused(n, 'not_leader')).toBe(2)
    }
    c.tick(20)
    expect(confs(c)).toEqual(before)
    expect(c.leader()?.id).toBe(leader.id)
    expect(c.node('l').raft.term).toBe(term)
  })

  it('a sender claiming to be the leader in a message to a non-member node is refused, but a fresh node joins', () => {
    // A node with an empty configuration follows whoever adds it (how learners join) ...
    const { c, leader } = clusterWithLearner(4)
    expect(c.node('l').raft.lead).toBe(leader.id)
    // ... and once it has a configuration, it too listens only to it.
    inject(c, { type: 'heartbeat', from: 'x', to: 'l', term: leader.raft.term + 1 })
    expect(c.node('l').raft.lead).toBe(leader.id)
    expect(refused(c.node('l'), 'not_member')).toBe(1)
  })
})

describe('forced votes and TimeoutNow only when the leader asked (thesis §3.10)', () => {
  for (const attacker of ['x', 'l', 'follower'] as const) {
    it(`10 s of forced votes and TimeoutNow every 100 ms from ${attacker === 'x' ? 'a non-member' : attacker === 'l' ? 'a learner' : 'a voter that is not the leader'}: leader, term and configuration unchanged, every write commits`, () => {
      const { c, leader } = clusterWithLearner(7)
      const term = leader.raft.term
      const before = confs(c)
      const from = attacker === 'follower' ? VOTERS.find((id) => id !== leader.id)! : attacker
      const targets = [...c.nodes.keys()].filter((id) => id !== from)
      const written: string[] = []
      for (let t = 0; t < 100; t++) {
        for (const to of targets) {
          const n = c.node(to)
          const pos = { index: n.raft.log.lastIndex(), logTerm: n.raft.log.lastTerm() }
          inject(c, { type: 'timeoutNow', from, to, term: n.raft.term })
          inject(c, { type: 'vote', from, to, term: n.raft.term + 1, context: CAMPAIGN_TRANSFER, ...pos })
          inject(c, { type: 'preVote', from, to, term: n.raft.term + 1, ...pos })
        }
        const l = c.leader()!
        c.propose(l.id, `w${t}`)
        written.push(`w${t}`)
        c.tick(1)
      }
      c.tick(5)
      expect(c.leader()?.id).toBe(leader.id)
      expect(confs(c)).toEqual(before)
      for (const n of c.nodes.values()) {
        expect(n.raft.term).toBe(term)
        expect(n.raft.lead).toBe(leader.id)
        expect(c.data(n.id)).toEqual(written)
      }
      const victims = targets.map((id) => c.node(id))
      const count = (r: RefusalReason) => victims.reduce((s, n) => s + refused(n, r), 0)
      if (attacker === 'x') expect(count('not_member')).toBe(300 * targets.length)
      if (attacker === 'l') {
        expect(count('vote_not_voter')).toBe(200 * 3)
        expect(count('timeout_now_not_leader')).toBe(100 * targets.length)
      }
      if (attacker === 'follower') {
        // Its TimeoutNow is refused; its forced vote is a normal vote, ignored inside the lease.
        expect(count('timeout_now_not_leader')).toBe(100 * targets.length)
        expect(count('forced_vote_unannounced')).toBe(100 * targets.length)
        expect(count('vote_in_lease')).toBe(200 * targets.length)
        expect(count('vote_not_voter')).toBe(0)
      }
    })
  }

  it('a transfer the leader asked for still completes in a 5-node cluster whose followers are in their lease', () => {
    for (const seed of [1, 2, 3]) {
      const ids = ['a', 'b', 'c', 'd', 'e']
      const c = new SimCluster(ids, { seed })
      const l = c.electLeader()
      c.tick(3)
      const target = ids.filter((id) => id !== l.id)[seed]!
      l.raft.transferLeadership(target)
      c.process(l)
      c.stabilize()
      expect(c.leader()?.id).toBe(target)
      for (const n of c.nodes.values()) {
        expect(refused(n, 'forced_vote_unannounced')).toBe(0)
        expect(n.raft.lead).toBe(target)
      }
    }
  })

  it('a transferee campaigning after the announced window is handled as a normal candidate', () => {
    const ids = ['a', 'b', 'c', 'd', 'e']
    const c = new SimCluster(ids, { seed: 9 })
    const l = c.electLeader()
    c.tick(3)
    const target = ids.find((id) => id !== l.id)!
    c.isolate(target) // the TimeoutNow never arrives; the transfer is abandoned
    l.raft.transferLeadership(target)
    c.process(l)
    c.tick(12)
    expect(l.raft.leadTransferee).toBeUndefined()
    const term = l.raft.term
    // The target now campaigns with the transfer context on its own: refused inside the lease.
    for (const id of ids.filter((i) => i !== target)) {
      const n = c.node(id)
      inject(c, {
        type: 'vote',
        from: target,
        to: id,
        term: term + 1,
        context: CAMPAIGN_TRANSFER,
        index: n.raft.log.lastIndex(),
        logTerm: n.raft.log.lastTerm(),
      })
      expect(refused(n, 'forced_vote_unannounced')).toBe(1)
      expect(n.raft.term).toBe(term)
    }
    expect(l.raft.role).toBe('leader')
  })

  it('a read request imitating a transfer announcement is refused', () => {
    const { c, leader } = clusterWithLearner(6)
    inject(c, {
      type: 'readIndex',
      from: 'l',
      to: leader.id,
      term: leader.raft.term,
      context: 'transfer-to:l',
    })
    expect(refused(leader, 'reserved_read_context')).toBe(1)
  })
})

describe('acknowledgements match what was sent (etcd progress tracking)', () => {
  /** 3 voters + learner l, one in-flight append per peer, so that later entries stay unsent. */
  function pausedCluster(): { c: SimCluster; leader: SimNode } {
    const c = new SimCluster(VOTERS, { seed: 8, config: { maxInflightMsgs: 1 } })
    const leader = c.electLeader()
    c.addNode('l')
    leader.raft.proposeConfChange({ type: 'addLearner', node: 'l' })
    c.process(leader)
    c.tick(20)
    c.propose(leader.id, 'settled')
    c.tick(3)
    return { c, leader }
  }

  it('a learner’s acknowledgement beyond what it was sent does not advance its match', () => {
    const { c, leader } = pausedCluster()
    c.cut(leader.id, 'l')
    for (let i = 0; i < 5; i++) c.propose(leader.id, `e${i}`) // one append in flight, four unsent
    const before = leader.raft.status().progress['l']!.match
    const term = leader.raft.term
    for (const index of [leader.raft.log.lastIndex(), 1_000_000]) {
      inject(c, { type: 'appResp', from: 'l', to: leader.id, term, index })
    }
    expect(leader.raft.status().progress['l']!.match).toBe(before)
    expect(refused(leader, 'ack_beyond_sent')).toBe(2)
  })

  it('a voter’s forged acknowledgement cannot commit entries no quorum holds (Raft §5.3)', () => {
    const { c, leader } = pausedCluster()
    const [f1, f2] = VOTERS.filter((id) => id !== leader.id) as [string, string]
    c.cut(leader.id, f1)
    c.cut(leader.id, f2)
    const commit = leader.raft.log.committed
    for (let i = 0; i < 5; i++) c.propose(leader.id, `e${i}`)
    inject(c, { type: 'appResp', from: f1, to: leader.id, term: leader.raft.term, index: 1_000_000 })
    inject(c, {
      type: 'appResp',
      from: f1,
      to: leader.id,
      term: leader.raft.term,
      index: leader.raft.log.lastIndex(),
    })
    expect(leader.raft.log.committed).toBe(commit)
    expect(refused(leader, 'ack_beyond_sent')).toBe(2)
    // Once the links heal, the real acknowledgements commit everything.
    c.recover()
    c.tick(10)
    expect(c.data(f1)).toEqual(['settled', 'e0', 'e1', 'e2', 'e3', 'e4'])
  })
})
