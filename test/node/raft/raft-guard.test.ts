/**
 * A peer that holds the cluster key but is not a Raft member attacks a running RaftModule over the
 * real libp2p transport (the private network lets it connect): it changes nothing, and every
 * message is counted, exported as a metric and logged once per interval.
 */
import pino from 'pino'
import { Registry } from 'prom-client'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type Clock, systemClock } from '../../../src/common/clock.ts'
import { generateClusterKey, parseClusterKey } from '../../../src/identity/keys/cluster-key.ts'
import {
  RAFT_PROTOCOL,
  RAFT_RPC_PROTOCOL,
  REFUSAL_LOG_INTERVAL_MS,
  type RaftModule,
} from '../../../src/node/raft/raft-module.ts'
import type { Host } from '../../../src/node/transport/host.ts'
import { StreamMessenger } from '../../../src/node/transport/stream-messenger.ts'
import { encodeConfChange } from '../../../src/raft/conf-change.ts'
import { MAX_RELAYED, MAX_RELAYED_AGE_MS } from '../../../src/raft/codec.ts'
import { encodeMessage } from '../../../src/raft/index.ts'
import { CAMPAIGN_TRANSFER } from '../../../src/raft/raft.ts'
import type { Message } from '../../../src/raft/types.ts'
import { waitFor } from '../../e2e/harness.ts'
import { raftMessage } from '../../raft/message.ts'
import { makeTempDir, removeTempDir } from '../../temp-dir.ts'
import { startLoneRaftAgent } from './lone-raft-agent.ts'

describe('RaftModule listens only to its configuration (real libp2p transport)', () => {
  const key = parseClusterKey(generateClusterKey())
  const dirs: string[] = []
  const lines: Record<string, unknown>[] = []
  const fireRefusalLog: (() => void)[] = []
  // Real timers, except the refusal log's interval, which the test fires.
  const clock: Clock = {
    ...systemClock,
    setInterval: (fn, ms) => {
      if (ms !== REFUSAL_LOG_INTERVAL_MS) return systemClock.setInterval(fn, ms)
      fireRefusalLog.push(fn)
      return () => {}
    },
  }
  const metrics = new Registry()
  let agentHost: Host
  let attackerHost: Host
  let attacker: StreamMessenger
  let raft: RaftModule
  let self: string
  /** Every list of relayed evidence the module handed to gossip. */
  const relayed: (readonly { id: string; ageMs: number }[])[] = []

  const tmp = (): string => {
    const d = makeTempDir('guard')
    dirs.push(d)
    return d
  }

  beforeAll(async () => {
    const log = pino(
      { level: 'debug' },
      { write: (s: string) => lines.push(JSON.parse(s) as Record<string, unknown>) },
    )
    ;({ self, agentHost, attackerHost, raft } = await startLoneRaftAgent({
      dataDir: tmp(),
      attackerDir: tmp(),
      clusterKey: key,
      clock,
      log,
      metrics,
      setRelayed: (entries) => relayed.push(entries),
    }))
    attacker = new StreamMessenger({
      host: attackerHost,
      protocol: RAFT_PROTOCOL,
      requestProtocol: RAFT_RPC_PROTOCOL,
      log: pino({ level: 'silent' }),
      maxMessageBytes: 1 << 20,
      // Speaks the agent's framing (raft/2): what it sends reaches the Raft checks.
      chunking: { maxFrameBytes: 1 << 20 },
    })
    await attacker.start()
  })

  afterAll(async () => {
    await attacker?.stop()
    await raft?.stop()
    await attackerHost?.stop()
    await agentHost?.stop()
    for (const d of dirs) removeTempDir(d)
  })

  it('refuses a non-member’s appends, votes and TimeoutNow, a forged sender and garbage; counts, exports and logs them once', async () => {
    const node = raft.raft!
    const before = node.status()
    const me = attackerHost.peerId.toString()
    const send = (m: Partial<Message> & Pick<Message, 'type'>) =>
      attacker.send(self, encodeMessage(raftMessage({ from: me, to: self, ...m })))
    const hostile = (term: number): void => {
      send({
        type: 'app',
        term: term + 5,
        index: before.lastIndex,
        logTerm: before.term,
        commit: before.lastIndex + 1,
        entries: [
          {
            term: term + 5,
            index: before.lastIndex + 1,
            type: 'conf',
            data: encodeConfChange({ type: 'addVoter', node: me }),
          },
        ],
      })
      // A heartbeat that also claims members alive (as a leader's would): gossip must hear none of it.
      send({
        type: 'heartbeat',
        term: term + 5,
        alive: [
          { id: me, ageMs: 0 },
          { id: 'ghost', ageMs: 0 },
        ],
      })
      send({ type: 'vote', term: term + 1, index: 1e6, logTerm: term + 1, context: CAMPAIGN_TRANSFER })
      send({ type: 'preVote', term: term + 1, index: 1e6, logTerm: term + 1 })
      send({ type: 'timeoutNow', term })
    }
    for (let i = 0; i < 10; i++) hostile(before.term)
    // Claims to be someone else (the transport authenticated the attacker), and plain garbage.
    send({ type: 'vote', from: 'someone-else', term: before.term + 1 })
    attacker.send(self, new Uint8Array([0xc1, 0x00, 0xff]))

    await waitFor(
      'every hostile message refused',
      async () => {
        const r = raft.refusedMessages()
        return (r.not_member?.count ?? 0) >= 50 &&
          r.sender_mismatch !== undefined &&
          r.malformed !== undefined
          ? true
          : undefined
      },
      8_000,
      20,
    )
    const r = raft.refusedMessages()
    expect(r.not_member).toMatchObject({ count: 50, from: me })
    expect(r.sender_mismatch).toMatchObject({ count: 1, from: me, type: 'vote' })
    expect(r.malformed).toMatchObject({ count: 1, from: me })

    // Nothing changed: same leader, term and configuration, and writes still commit; gossip was
    // told of no member alive on the attacker's word.
    expect(relayed.every((entries) => entries.length === 0)).toBe(true)
    const after = node.status()
    expect(after.term).toBe(before.term)
    expect(after.leader).toBe(self)
    expect(after.conf).toEqual({ voters: [self], learners: [] })
    const w = await raft.write(
      { op: 'config.set', kind: 'kv', name: 'guarded', value: { value: 'yes' } },
      { signal: AbortSignal.timeout(5_000) },
    )
    expect(w.index).toBeGreaterThan(before.lastIndex)

    // Exported per reason.
    const text = await metrics.metrics()
    expect(text).toContain('peermesh_raft_messages_refused_total{reason="not_member"} 50')
    expect(text).toContain('peermesh_raft_messages_refused_total{reason="sender_mismatch"} 1')

    // Logged once per reason per interval, with the count since the last line; nothing new: silent.
    const logged = () => lines.filter((l) => l['msg'] === 'raft: peer messages refused')
    for (const fire of fireRefusalLog) fire()
    expect(
      logged()
        .map((l) => [l['reason'], l['count']])
        .sort(),
    ).toEqual([
      ['malformed', 1],
      ['not_member', 50],
      ['sender_mismatch', 1],
    ])
    for (const fire of fireRefusalLog) fire()
    expect(logged()).toHaveLength(3)
  })

  it('refuses heartbeats whose relayed evidence is oversized or too old as malformed; nothing changes, the agent lives', async () => {
    const node = raft.raft!
    const before = node.status()
    const refused = raft.refusedMessages().malformed?.count ?? 0
    const told = relayed.length
    const me = attackerHost.peerId.toString()
    const heartbeat = (alive: { id: string; ageMs: number }[]) =>
      attacker.send(
        self,
        encodeMessage(raftMessage({ type: 'heartbeat', from: me, to: self, term: before.term, alive })),
      )
    // One entry past MAX_RELAYED, and one contact past MAX_RELAYED_AGE_MS.
    heartbeat(Array.from({ length: MAX_RELAYED + 1 }, (_, i) => ({ id: `n${i}`, ageMs: 0 })))
    heartbeat([{ id: self, ageMs: MAX_RELAYED_AGE_MS + 1 }])

    await waitFor(
      'both heartbeats refused',
      async () => ((raft.refusedMessages().malformed?.count ?? 0) >= refused + 2 ? true : undefined),
      8_000,
      20,
    )
    expect(raft.refusedMessages().malformed).toMatchObject({ count: refused + 2, from: me })
    // Gossip heard nothing; leader, term and configuration unchanged; writes still commit.
    expect(relayed.length).toBe(told)
    const after = node.status()
    expect(after.term).toBe(before.term)
    expect(after.leader).toBe(self)
    expect(after.conf).toEqual(before.conf)
    const w = await raft.write(
      { op: 'config.set', kind: 'kv', name: 'still-guarded', value: { value: 'yes' } },
      { signal: AbortSignal.timeout(5_000) },
    )
    expect(w.index).toBeGreaterThan(before.lastIndex)
  })
})
