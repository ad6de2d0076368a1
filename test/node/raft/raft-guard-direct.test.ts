/**
 * raft-guard.test.ts over the direct transport: a peer that holds the cluster key but is not a Raft
 * member sets up a direct TLS connection to a running RaftModule (it may: it registers its own
 * certificate over libp2p) and attacks through it. Its messages reach the same checks as over
 * libp2p, as from its own peer id: nothing changes.
 */
import pino from 'pino'
import { Registry } from 'prom-client'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type Clock, systemClock } from '../../../src/common/clock.ts'
import { generateClusterKey, parseClusterKey } from '../../../src/identity/keys/cluster-key.ts'
import { RAFT_PROTOCOL, RAFT_RPC_PROTOCOL, type RaftModule } from '../../../src/node/raft/raft-module.ts'
import type { Host } from '../../../src/node/transport/host.ts'
import { DirectMessenger } from '../../../src/node/transport/direct-messenger.ts'
import { StreamMessenger } from '../../../src/node/transport/stream-messenger.ts'
import { encodeConfChange } from '../../../src/raft/conf-change.ts'
import { encodeMessage } from '../../../src/raft/index.ts'
import { CAMPAIGN_TRANSFER } from '../../../src/raft/raft.ts'
import type { Message } from '../../../src/raft/types.ts'
import { waitFor } from '../../e2e/harness.ts'
import { raftMessage } from '../../raft/message.ts'
import { makeTempDir, removeTempDir } from '../../temp-dir.ts'
import { startLoneRaftAgent } from './lone-raft-agent.ts'

describe('RaftModule over the direct transport refuses a non-member as over libp2p', () => {
  const key = parseClusterKey(generateClusterKey())
  const dirs: string[] = []
  const clock: Clock = systemClock
  let agentHost: Host
  let attackerHost: Host
  let attacker: DirectMessenger
  let raft: RaftModule
  let self: string

  const tmp = (): string => {
    const d = makeTempDir('guard-direct')
    dirs.push(d)
    return d
  }

  beforeAll(async () => {
    ;({ self, agentHost, attackerHost, raft } = await startLoneRaftAgent({
      dataDir: tmp(),
      attackerDir: tmp(),
      clusterKey: key,
      clock,
      log: pino({ level: 'silent' }),
      metrics: new Registry(),
    }))
    // Speaks the agent's framing on both paths: what it sends reaches the Raft checks.
    const limits = {
      log: pino({ level: 'silent' }),
      maxMessageBytes: 1 << 20,
      chunking: { maxFrameBytes: 1 << 20 },
    }
    attacker = new DirectMessenger({
      ...limits,
      fallback: new StreamMessenger({
        ...limits,
        host: attackerHost,
        protocol: RAFT_PROTOCOL,
        requestProtocol: RAFT_RPC_PROTOCOL,
        requestMode: 'multiplexed',
      }),
      host: attackerHost,
      self: attackerHost.peerId.toString(),
      listenHost: '127.0.0.1',
      minBackoffMs: 50,
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

  it('refuses a non-member’s appends, votes and TimeoutNow, a forged sender and garbage sent directly', async () => {
    const node = raft.raft!
    const me = attackerHost.peerId.toString()
    // The first message goes over libp2p and sets up the direct connection.
    attacker.send(self, new Uint8Array([0xc1]))
    await waitFor(
      'the direct connection',
      async () => (attacker.directTo(self) ? true : undefined),
      10_000,
      5,
    )
    await waitFor(
      'the first refusal',
      async () => (raft.refusedMessages().malformed ? true : undefined),
      5_000,
      5,
    )
    const before = node.status()
    const refusedBefore = raft.refusedMessages()
    const sentBefore = attacker.stats.directSent
    const send = (m: Partial<Message> & Pick<Message, 'type'>) =>
      attacker.send(self, encodeMessage(raftMessage({ from: me, to: self, ...m })))
    for (let i = 0; i < 10; i++) {
      const term = before.term
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
      send({ type: 'heartbeat', term: term + 5 })
      send({ type: 'vote', term: term + 1, index: 1e6, logTerm: term + 1, context: CAMPAIGN_TRANSFER })
      send({ type: 'preVote', term: term + 1, index: 1e6, logTerm: term + 1 })
      send({ type: 'timeoutNow', term })
    }
    // Claims to be the agent itself and someone else (the transport authenticated the attacker).
    send({ type: 'vote', from: self, term: before.term + 1 })
    send({ type: 'app', from: 'someone-else', term: before.term + 1 })
    attacker.send(self, new Uint8Array([0xc1, 0x00, 0xff]))
    expect(attacker.stats.directSent - sentBefore).toBe(53) // all of them over the direct path

    const count = (r: ReturnType<RaftModule['refusedMessages']>, k: keyof typeof r): number =>
      r[k]?.count ?? 0
    await waitFor(
      'every hostile message refused',
      async () => {
        const r = raft.refusedMessages()
        return count(r, 'not_member') - count(refusedBefore, 'not_member') >= 50 &&
          count(r, 'sender_mismatch') - count(refusedBefore, 'sender_mismatch') >= 2 &&
          count(r, 'malformed') - count(refusedBefore, 'malformed') >= 1
          ? true
          : undefined
      },
      8_000,
      5,
    )
    const r = raft.refusedMessages()
    expect(count(r, 'not_member') - count(refusedBefore, 'not_member')).toBe(50)
    expect(r.not_member?.from).toBe(me)
    expect(count(r, 'sender_mismatch') - count(refusedBefore, 'sender_mismatch')).toBe(2)
    expect(r.sender_mismatch?.from).toBe(me)

    // Nothing changed: same leader, term and configuration, and writes still commit.
    const after = node.status()
    expect(after.term).toBe(before.term)
    expect(after.leader).toBe(self)
    expect(after.conf).toEqual({ voters: [self], learners: [] })
    const w = await raft.write(
      { op: 'config.set', kind: 'kv', name: 'guarded', value: { value: 'yes' } },
      { signal: AbortSignal.timeout(5_000) },
    )
    expect(w.index).toBeGreaterThan(before.lastIndex)
  })
})
