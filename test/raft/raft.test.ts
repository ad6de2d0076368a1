import { describe, expect, it } from 'vitest'
import type { Message } from '../../src/raft/types.ts'
import { SimCluster } from './sim-cluster.ts'

const noPV = { preVote: false, checkQuorum: false }

describe('leader election (Raft §5.2)', () => {
  it('elects exactly one leader in a 3-node and a 5-node cluster', () => {
    for (const ids of [
      ['a', 'b', 'c'],
      ['a', 'b', 'c', 'd', 'e'],
    ]) {
      const c = new SimCluster(ids, { seed: 7 })
      const l = c.electLeader()
      c.tick(50)
      const leaders = [...c.nodes.values()].filter((n) => n.raft.role === 'leader')
      expect(leaders.map((n) => n.id)).toEqual([l.id])
      for (const n of c.nodes.values()) expect(n.raft.lead).toBe(l.id)
    }
  })

  it('a single-node cluster elects itself and commits at once', () => {
    const c = new SimCluster(['a'])
    const l = c.electLeader()
    const { index } = c.propose('a', 'x')
    expect(l.raft.log.committed).toBe(index)
    expect(c.data('a')).toEqual(['x'])
  })

  it('a candidate needs a majority: a minority partition elects no one', () => {
    const c = new SimCluster(['a', 'b', 'c', 'd', 'e'], { seed: 3 })
    c.electLeader()
    c.partition([
      ['a', 'b'],
      ['c', 'd', 'e'],
    ])
    c.tick(200)
    const leaders = [...c.nodes.values()].filter((n) => n.raft.role === 'leader').map((n) => n.id)
    expect(leaders.length).toBe(1)
    expect(['c', 'd', 'e']).toContain(leaders[0])
  })

  it('votes are granted only to candidates with an up-to-date log (Raft §5.4.1)', () => {
    const c = new SimCluster(['a', 'b', 'c'], { config: noPV })
    c.campaign('a')
    c.cut('a', 'c')
    c.propose('a', 'x') // reaches b only; c's log is behind
    c.stabilize()
    c.recover()
    c.isolate('a')
    c.campaign('c') // b refuses: c's log is older
    expect(c.node('c').raft.role).not.toBe('leader')
    c.campaign('b')
    expect(c.node('b').raft.role).toBe('leader')
  })
})

describe('log replication (Raft §5.3)', () => {
  it('replicates and applies proposals in order on every node', () => {
    const c = new SimCluster(['a', 'b', 'c'], { seed: 11 })
    const l = c.electLeader()
    for (let i = 0; i < 20; i++) c.propose(l.id, `v${i}`)
    c.tick(5)
    const want = Array.from({ length: 20 }, (_, i) => `v${i}`)
    for (const id of ['a', 'b', 'c']) expect(c.data(id)).toEqual(want)
  })

  it('overwrites a deposed leader’s uncommitted entries (Log Matching, §5.3)', () => {
    const c = new SimCluster(['a', 'b', 'c'], { config: noPV })
    c.campaign('a')
    c.propose('a', 'committed')
    c.stabilize()
    c.isolate('a')
    for (let i = 0; i < 3; i++) c.propose('a', `lost${i}`)
    c.stabilize()
    c.campaign('b')
    for (let i = 0; i < 2; i++) c.propose('b', `kept${i}`)
    c.stabilize()
    c.recover()
    c.tick(3)
    const a = c.node('a').raft
    const b = c.node('b').raft
    expect(a.role).toBe('follower')
    expect(a.log.lastIndex()).toBe(b.log.lastIndex())
    for (let i = 1; i <= b.log.lastIndex(); i++) expect(a.log.term(i)).toBe(b.log.term(i))
    expect(c.data('a')).toEqual(['committed', 'kept0', 'kept1'])
  })

  it('backtracks a whole conflicting term per round trip using the reject hint', () => {
    const c = new SimCluster(['a', 'b', 'c'], { config: { ...noPV, maxEntriesPerMsg: 1000 } })
    c.campaign('a')
    c.isolate('a')
    for (let i = 0; i < 50; i++) c.propose('a', `stale${i}`) // 50 uncommitted entries, one term
    c.stabilize()
    c.campaign('b')
    c.propose('b', 'fresh')
    c.stabilize()
    c.recover()
    let appends = 0
    c.filter = (m: Message) => {
      if (m.from === 'b' && m.to === 'a' && m.type === 'app') appends++
      return true
    }
    c.tick(2)
    expect(c.data('a')).toEqual(['fresh'])
    expect(appends).toBeLessThan(8) // one-by-one backtracking would take 50+
  })

  it('a probe answered at the current match returns to replicate without a new write (etcd)', () => {
    const c = new SimCluster(['a', 'b', 'c'], { config: noPV })
    c.campaign('a')
    c.propose('a', 'x')
    c.stabilize()
    const a = c.node('a')
    const match = a.raft.status().progress['b']!.match
    expect(a.raft.status().progress['b']!.state).toBe('replicate')
    // A stale rejection (e.g. of an append reordered around a restart) sends b back to probe.
    const base = { from: 'b', to: 'a', term: a.raft.term, logTerm: 0, commit: 0, entries: [], context: '' }
    a.raft.step({ ...base, type: 'appResp', index: match + 1, reject: true, rejectHint: match })
    expect(a.raft.status().progress['b']!.state).toBe('probe')
    // b answers the probe at its (unchanged) match: that ends the probe; autopilot's caught-up
    // check and pipelining both depend on it, and no write may come to move it otherwise.
    c.process(a)
    c.stabilize()
    expect(a.raft.status().progress['b']!.state).toBe('replicate')
    expect(a.raft.status().progress['b']!.match).toBe(match)
  })

  it('pipelines appends and respects the batch limit', () => {
    const c = new SimCluster(['a', 'b', 'c'], {
      config: { ...noPV, maxEntriesPerMsg: 4, maxInflightMsgs: 3 },
    })
    c.campaign('a')
    c.cut('a', 'c')
    for (let i = 0; i < 40; i++) c.propose('a', `e${i}`)
    c.stabilize()
    c.recover()
    const sizes: number[] = []
    c.filter = (m: Message) => {
      if (m.type === 'app' && m.to === 'c' && m.entries.length > 0) sizes.push(m.entries.length)
      return true
    }
    c.tick(10)
    expect(Math.max(...sizes)).toBeLessThanOrEqual(4)
    expect(c.data('c').length).toBe(40)
  })
})

describe('commitment rules (Raft §5.4.2, figure 8)', () => {
  it('never commits an entry of an earlier term by counting replicas', () => {
    const ids = ['a', 'b', 'c', 'd', 'e']
    const c = new SimCluster(ids, { config: { ...noPV, maxEntriesPerMsg: 1 } })
    c.campaign('a') // term 2
    expect(c.node('a').raft.role).toBe('leader')
    // (a) a replicates an entry of term 2 to b only.
    c.partition([
      ['a', 'b'],
      ['c', 'd', 'e'],
    ])
    const x = c.propose('a', 'x-term2')
    c.stabilize()
    expect(c.node('b').raft.log.term(x.index)).toBe(2)
    // (b) a crashes; e is elected in term 3 by c, d, e and appends at the same index locally only.
    c.crash('a')
    c.filter = (m) => !(m.from === 'e' && m.type === 'app')
    c.campaign('e')
    expect(c.node('e').raft.role).toBe('leader')
    expect(c.node('e').raft.term).toBe(3)
    expect(c.node('e').raft.log.term(x.index)).toBe(3)
    // (c) e crashes, a restarts and wins term 4; it copies the term-2 entry to c but its own
    // term-4 entry reaches nobody.
    c.crash('e')
    c.recover()
    c.restart('a')
    // (an oracle filter: drop exactly the appends that would deliver the term-4 entry)
    c.filter = (m) =>
      !(
        m.from === 'a' &&
        m.type === 'app' &&
        m.entries.some((en) => en.term === 4) &&
        c.node(m.to).raft.log.matchTerm(m.index, m.logTerm)
      )
    for (let i = 0; i < 3 && c.node('a').raft.role !== 'leader'; i++) c.campaign('a')
    const a = c.node('a').raft
    expect(a.role).toBe('leader')
    expect(a.term).toBe(4)
    c.tick(3)
    expect(c.node('c').raft.log.term(x.index)).toBe(2) // on a, b, c: a majority
    // §5.4.2: the majority does not make it committed, because it is not of the leader's term.
    expect(a.log.committed).toBeLessThan(x.index)
    // (d) a crashes, e restarts and is elected with b, c, d; it overwrites x everywhere.
    c.crash('a')
    c.filter = undefined
    c.restart('e')
    for (let i = 0; i < 5 && c.node('e').raft.role !== 'leader'; i++) c.campaign('e')
    expect(c.node('e').raft.role).toBe('leader')
    c.tick(3)
    for (const id of ['b', 'c', 'd', 'e']) expect(c.node(id).raft.log.term(x.index)).toBe(3)
    for (const id of ids) expect(c.data(id)).not.toContain('x-term2')
  })

  it('commits earlier-term entries once an entry of the current term is replicated (§5.4.2)', () => {
    const c = new SimCluster(['a', 'b', 'c'], { config: noPV })
    c.campaign('a')
    c.cut('a', 'c')
    c.filter = (m) => !(m.type === 'appResp' && m.from === 'b')
    const x = c.propose('a', 'x')
    c.stabilize()
    expect(c.node('a').raft.log.committed).toBeLessThan(x.index)
    c.filter = undefined
    c.crash('a')
    c.restart('a')
    c.recover()
    c.campaign('a')
    c.tick(2)
    for (const id of ['a', 'b', 'c']) expect(c.data(id)).toEqual(['x'])
  })
})

describe('pre-vote and check-quorum (thesis §9.6, §6.2)', () => {
  it('a partitioned node rejoining does not depose a healthy leader (pre-vote)', () => {
    const c = new SimCluster(['a', 'b', 'c'], { seed: 5 })
    const l = c.electLeader()
    const other = ['a', 'b', 'c'].find((id) => id !== l.id)!
    const term = l.raft.term
    c.isolate(other)
    c.tick(200)
    expect(c.node(other).raft.term).toBe(term) // pre-votes never bump the term
    c.recover()
    c.tick(50)
    expect(c.leader()!.id).toBe(l.id)
    expect(l.raft.term).toBe(term)
  })

  it('without pre-vote the same rejoin forces a new election (the problem pre-vote solves)', () => {
    const c = new SimCluster(['a', 'b', 'c'], { seed: 5, config: noPV })
    const l = c.electLeader()
    const other = ['a', 'b', 'c'].find((id) => id !== l.id)!
    const term = l.raft.term
    c.isolate(other)
    c.tick(200)
    c.recover()
    c.tick(50)
    expect(c.leader()!.raft.term).toBeGreaterThan(term)
  })

  it('a leader that cannot hear a quorum steps down after one silent election timeout', () => {
    const c = new SimCluster(['a', 'b', 'c'], { seed: 9 })
    const l = c.electLeader()
    c.isolate(l.id)
    // The check runs every election timeout; the round in progress may still count old answers.
    c.tick(2 * 10)
    expect(l.raft.role).toBe('follower')
    const next = c.electLeader()
    expect(next.id).not.toBe(l.id)
  })

  it('followers in a leader lease ignore vote requests (thesis §4.2.3)', () => {
    const c = new SimCluster(['a', 'b', 'c'], { seed: 2, config: { preVote: false, checkQuorum: true } })
    const l = c.electLeader()
    const term = l.raft.term
    const other = ['a', 'b', 'c'].find((id) => id !== l.id)!
    c.node(other).raft.campaign()
    c.process(c.node(other))
    c.stabilize()
    expect(c.node(other).raft.role).not.toBe('leader')
    expect(l.raft.term).toBe(term)
  })
})

describe('forgetting the leader (etcd ForgetLeader; thesis §6.2 lease, §9.6 pre-vote)', () => {
  const others = (c: SimCluster, ...not: string[]) =>
    [...c.nodes.keys()].filter((id) => !not.includes(id)).sort()

  it('a follower forgets its leader and takes it back with the next heartbeat', () => {
    const c = new SimCluster(['a', 'b', 'c'], { seed: 4 })
    const l = c.electLeader()
    const f = c.node(others(c, l.id)[0]!)
    f.raft.forgetLeader()
    expect(f.raft.lead).toBeUndefined()
    expect(f.raft.role).toBe('follower')
    const term = f.raft.term
    c.tick(1)
    expect(f.raft.lead).toBe(l.id)
    expect(f.raft.term).toBe(term)
  })

  it('is a no-op on a leader and on a (pre-)candidate', () => {
    const c = new SimCluster(['a', 'b', 'c'], { seed: 4 })
    const l = c.electLeader()
    l.raft.forgetLeader()
    expect(l.raft.lead).toBe(l.id)
    expect(l.raft.role).toBe('leader')
    const f = c.node(others(c, l.id)[0]!)
    c.isolate(f.id)
    f.raft.campaign()
    expect(f.raft.role).toBe('preCandidate')
    f.raft.forgetLeader()
    expect(f.raft.role).toBe('preCandidate')
  })

  it('without it, a follower inside its lease ignores the first pre-vote after the leader died', () => {
    // Thesis §6.2/§4.2.3: the check-quorum lease makes followers that heard from the leader within
    // an election timeout ignore vote requests. When the leader really died, the first candidate
    // loses a round to it: the failover takes a second randomized timeout.
    const c = new SimCluster(['a', 'b', 'c'], { seed: 4 })
    const l = c.electLeader()
    c.tick(3)
    c.crash(l.id)
    const x = others(c, l.id)[0]!
    c.campaign(x)
    expect(c.node(x).raft.role).toBe('preCandidate')
    expect(c.leader()).toBeUndefined()
  })

  it('with it, the first pre-vote after the leader died wins at once (etcd ForgetLeader)', () => {
    const c = new SimCluster(['a', 'b', 'c'], { seed: 4 })
    const l = c.electLeader()
    const term = l.raft.term
    c.tick(3)
    c.crash(l.id)
    const [x, y] = others(c, l.id) as [string, string]
    // Both survivors see the leader's connection close; one of them campaigns.
    c.node(x).raft.forgetLeader()
    c.node(y).raft.forgetLeader()
    c.campaign(x) // no ticks: pre-vote, vote and the new leader's first append in one stabilize
    expect(c.leader()?.id).toBe(x)
    expect(c.node(x).raft.term).toBe(term + 1)
    expect(c.node(y).raft.lead).toBe(x)
  })

  it('a follower that forgets a healthy leader and campaigns cannot depose it (3 and 5 nodes)', () => {
    // Safety of liveness tricks: pre-vote (§9.6) needs a quorum, and the other followers are
    // still in their lease (§6.2), so one follower's wrong belief changes no one's term.
    for (const ids of [
      ['a', 'b', 'c'],
      ['a', 'b', 'c', 'd', 'e'],
    ]) {
      for (const seed of [1, 2, 3, 4, 5]) {
        const c = new SimCluster(ids, { seed })
        const l = c.electLeader()
        c.tick(2)
        const term = l.raft.term
        const f = others(c, l.id)[seed % (ids.length - 1)]!
        for (let round = 0; round < 20; round++) {
          c.node(f).raft.forgetLeader()
          c.campaign(f)
          c.tick(1 + (round % 3))
        }
        c.tick(30)
        expect(c.leader()?.id).toBe(l.id)
        for (const n of c.nodes.values()) {
          expect(n.raft.term).toBe(term)
          expect(n.raft.lead).toBe(l.id)
        }
      }
    }
  })

  it('a flapping connection between a healthy leader and one follower does not depose the leader', () => {
    // The connection closes (the follower forgets the leader and campaigns), messages between the
    // two are lost meanwhile, then it reconnects; repeatedly. The others keep hearing the leader.
    for (const seed of [1, 2, 3, 4, 5, 6]) {
      const c = new SimCluster(['a', 'b', 'c', 'd', 'e'], { seed })
      const l = c.electLeader()
      c.tick(2)
      const term = l.raft.term
      const f = others(c, l.id)[seed % 4]!
      for (let round = 0; round < 10; round++) {
        c.cut(l.id, f)
        c.node(f).raft.forgetLeader()
        c.campaign(f)
        c.tick(1 + (round % 4))
        c.recover()
        c.tick(1 + ((round + seed) % 3))
      }
      c.tick(30)
      expect(c.leader()?.id).toBe(l.id)
      for (const n of c.nodes.values()) {
        expect(n.raft.term).toBe(term)
        expect(n.raft.lead).toBe(l.id)
      }
    }
  })
})
