/**
 * A fresh agent (not bootstrapped, its Raft configuration still empty: waiting to be added, or for
 * --bootstrap-expect) trusts no CA root yet, so it cannot check a snapshot's signature. A peer with
 * the cluster key but no membership sends it snapshots whose data is not a policy state: each is
 * refused as malformed before the Raft core sees it. Before this check the core took the first,
 * wrote it to disk and the restore threw on the event loop: the agent died, and could not start
 * again from its data directory.
 */
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import pino from 'pino'
import { Registry } from 'prom-client'
import { afterAll, describe, expect, it } from 'vitest'
import { systemClock } from '../../../src/common/clock.ts'
import { pack } from '../../../src/common/msgpack.ts'
import { generateClusterKey, parseClusterKey } from '../../../src/identity/keys/cluster-key.ts'
import { RAFT_PROTOCOL, RAFT_RPC_PROTOCOL } from '../../../src/node/raft/raft-module.ts'
import { StreamMessenger } from '../../../src/node/transport/stream-messenger.ts'
import { encodeConfChange } from '../../../src/raft/conf-change.ts'
import { encodeMessage, PolicyStore } from '../../../src/raft/index.ts'
import type { Message } from '../../../src/raft/types.ts'
import { waitFor } from '../../e2e/harness.ts'
import { raftMessage } from '../../raft/message.ts'
import { makeTempDir, removeTempDir } from '../../temp-dir.ts'
import { type LoneRaftAgent, startLoneRaftAgent } from './lone-raft-agent.ts'

describe('a fresh agent: what it takes its first configuration from (real libp2p transport)', () => {
  const key = parseClusterKey(generateClusterKey())
  const dirs: string[] = []
  const started: LoneRaftAgent[] = []
  const messengers: StreamMessenger[] = []
  const tmp = (): string => {
    const d = makeTempDir('guard-fresh')
    dirs.push(d)
    return d
  }
  const start = async (dataDir: string, aclToken?: string): Promise<LoneRaftAgent> => {
    const a = await startLoneRaftAgent({
      dataDir,
      attackerDir: tmp(),
      clusterKey: key,
      clock: systemClock,
      log: pino({ level: 'silent' }),
      metrics: new Registry(),
      fresh: true,
      ...(aclToken !== undefined ? { aclToken } : {}),
    })
    started.push(a)
    return a
  }
  const startFresh = (o: { aclToken: string }) => start(tmp(), o.aclToken)
  const messenger = async (host: LoneRaftAgent['attackerHost']): Promise<StreamMessenger> => {
    const m = new StreamMessenger({
      host,
      protocol: RAFT_PROTOCOL,
      requestProtocol: RAFT_RPC_PROTOCOL,
      log: pino({ level: 'silent' }),
      maxMessageBytes: 1 << 20,
      chunking: { maxFrameBytes: 1 << 20 },
    })
    messengers.push(m)
    await m.start()
    return m
  }

  afterAll(async () => {
    for (const m of messengers) await m.stop()
    for (const a of started) {
      await a.raft.stop()
      await a.attackerHost.stop()
      await a.agentHost.stop()
    }
    for (const d of dirs) removeTempDir(d)
  })

  it('refuses garbage and wrongly shaped snapshot data as malformed; nothing is written, and the agent starts again', async () => {
    const dataDir = tmp()
    const { self, attackerHost, raft } = await start(dataDir)
    expect(raft.raft!.status().conf).toEqual({ voters: [], learners: [] })
    const attacker = await messenger(attackerHost)
    const me = attackerHost.peerId.toString()
    const snap = (data: Uint8Array) =>
      attacker.send(
        self,
        encodeMessage(
          raftMessage({
            type: 'snap',
            from: me,
            to: self,
            term: 7,
            snapshot: { metadata: { index: 5, term: 7, conf: { voters: [me], learners: [] } }, data },
          }),
        ),
      )
    const shapes = [
      new Uint8Array([1, 2, 3]), // not msgpack (trailing bytes)
      pack({ version: 99 }), // msgpack, not a policy snapshot
      pack({ version: 1, index: 'five', intentions: 'none' }),
    ]
    // Each is one a real restore refuses.
    for (const d of shapes) expect(new PolicyStore().snapshotProblem(d)).toBeDefined()
    for (const d of shapes) snap(d)

    await waitFor(
      'every snapshot refused',
      async () => ((raft.refusedMessages().malformed?.count ?? 0) >= shapes.length ? true : undefined),
      8_000,
      20,
    )
    expect(raft.refusedMessages().malformed).toMatchObject({ count: shapes.length, from: me, type: 'snap' })
    // Nothing changed: no configuration, no term, no snapshot on disk.
    const st = raft.raft!.status()
    expect(st.conf).toEqual({ voters: [], learners: [] })
    expect(st.term).toBe(0)
    expect(existsSync(join(dataDir, 'raft', 'snapshot'))).toBe(false)

    // And the agent starts again from the same data directory.
    const first = started.pop()!
    await attacker.stop()
    messengers.pop()
    await first.raft.stop()
    await first.attackerHost.stop()
    await first.agentHost.stop()
    const again = await start(dataDir)
    expect(again.raft.raft!.status().conf).toEqual({ voters: [], learners: [] })
  })

  it('still takes a snapshot it can restore while its configuration is empty (how a new learner catches up)', async () => {
    const { self, attackerHost, raft } = await start(tmp())
    const sender = await messenger(attackerHost)
    const me = attackerHost.peerId.toString()
    const leaderState = new PolicyStore()
    sender.send(
      self,
      encodeMessage(
        raftMessage({
          type: 'snap',
          from: me,
          to: self,
          term: 3,
          snapshot: {
            metadata: { index: 4, term: 3, conf: { voters: [me], learners: [self] } },
            data: leaderState.snapshot(),
          },
        }),
      ),
    )
    await waitFor(
      'the snapshot installed',
      async () => (raft.raft!.status().conf.voters.includes(me) ? true : undefined),
      8_000,
      20,
    )
    expect(raft.refusedMessages().malformed).toBeUndefined()
  })

  it('with ACLs on, takes its first configuration only from a member that proved its token: a key holder is refused, even with a snapshot that restores', async () => {
    const { self, attackerHost, raft } = await startFresh({
      aclToken: '11111111-2222-3333-4444-555555555555',
    })
    const attacker = await messenger(attackerHost)
    const me = attackerHost.peerId.toString()
    const send = (m: Partial<Message> & Pick<Message, 'type'>) =>
      attacker.send(self, encodeMessage(raftMessage({ from: me, to: self, ...m })))
    send({ type: 'heartbeat', term: 5 })
    send({
      type: 'app',
      term: 5,
      entries: [{ term: 5, index: 1, type: 'conf', data: encodeConfChange({ type: 'addVoter', node: me }) }],
    })
    send({
      type: 'snap',
      term: 5,
      snapshot: {
        metadata: { index: 4, term: 5, conf: { voters: [me], learners: [self] } },
        data: new PolicyStore().snapshot(),
      },
    })
    await waitFor(
      'every message refused',
      async () => ((raft.refusedMessages().unproven_leader?.count ?? 0) >= 3 ? true : undefined),
      8_000,
      20,
    )
    expect(raft.refusedMessages().unproven_leader).toMatchObject({ count: 3, from: me })
    const st = raft.raft!.status()
    expect(st.conf).toEqual({ voters: [], learners: [] })
    expect(st.term).toBe(0)
    expect(st.leader).toBeUndefined()
  })
})
