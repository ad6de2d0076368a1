import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { generateKeyPair, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { afterAll, describe, expect, it } from 'vitest'
import { NODE_KEY_FILE } from '../../src/identity/keys/node-key.ts'
import { type AgentProcess, freePort, TestCluster, waitFor } from './harness.ts'
import type { RaftConfiguration } from './raft-helpers.ts'

/** Node keys with their peer ids, sorted by peer id (the first sorts lowest). */
async function sortedNodeKeys(n: number): Promise<{ id: string; key: Uint8Array }[]> {
  const keys = await Promise.all(
    Array.from({ length: n }, async () => {
      const k = await generateKeyPair('Ed25519')
      return { id: peerIdFromPrivateKey(k).toString(), key: privateKeyToProtobuf(k) }
    }),
  )
  return keys.sort((a, b) => (a.id < b.id ? -1 : 1))
}

describe('autopilot with ACLs on (issue #12)', () => {
  const cluster = new TestCluster()
  afterAll(() => cluster.close())

  it('an unenrolled key holder whose peer id sorts first is never picked: a kill -9 voter is replaced by the eligible enrolled node, and the CA key holders are exactly the voters', async () => {
    const clusterKey = await cluster.writeClusterKey()
    // [0] the key holder without a token (lowest peer id); [1..3] founders; [4] a spare that
    // enrolls as voter-eligible (it holds the management token, as the founders do).
    const keys = await sortedNodeKeys(5)
    const ports = await Promise.all(keys.map(() => freePort()))
    const addr = (i: number): string => `/ip4/127.0.0.1/tcp/${ports[i]}/p2p/${keys[i]!.id}`
    const agent = (i: number, name: string, extra: { plain?: boolean; founder?: boolean }): AgentProcess => {
      const dataDir = join(cluster.dir, name)
      mkdirSync(dataDir, { recursive: true, mode: 0o700 })
      writeFileSync(join(dataDir, NODE_KEY_FILE), keys[i]!.key, { mode: 0o600 })
      const a = cluster.agent({
        name,
        clusterKeyFile: clusterKey,
        dataDir,
        seeds: [1, 2, 3].filter((j) => j !== i).map(addr),
        ...(extra.plain === true ? { initialManagementToken: false } : {}),
        extraArgs: extra.founder === true ? ['--bootstrap-expect', '3'] : [],
        // Picked ahead for the seeds; a port taken meanwhile by another test's process is picked
        // again (every agent has two other seeds).
        portsMayMove: true,
      })
      a.p2pPort = ports[i]!
      return a
    }
    const founders = [1, 2, 3].map((i) => agent(i, `ap${i}`, { founder: true }))
    await Promise.all(founders.map((a) => a.start()))
    const conf = async (agents: AgentProcess[]): Promise<RaftConfiguration | undefined> => {
      for (const a of agents) {
        const c = await a.api<RaftConfiguration>('/v1/operator/raft/configuration')
        if (c?.servers.some((s) => s.leader)) return c
      }
      return undefined
    }
    await waitFor('3 founders as voters with a leader', async () => {
      const c = await conf(founders)
      return c !== undefined && c.servers.filter((s) => s.voter).length === 3 ? c : undefined
    })

    const plain = agent(0, 'ap0-plain', { plain: true })
    const spare = agent(4, 'ap4', {})
    await Promise.all([plain.start(), spare.start()])
    await waitFor(
      'the spare enrolled and a learner',
      async () => {
        const c = await conf(founders)
        return c?.servers.some((s) => s.id === keys[4]!.id && !s.voter) ? true : undefined
      },
      30_000,
    )

    // kill -9 a voter that is not the leader (the leader's own replacement is the same rule).
    const c0 = (await conf(founders))!
    const victimId = c0.servers.find((s) => s.voter && !s.leader)!.id
    const victim = founders.find((a) => a.name === c0.servers.find((s) => s.id === victimId)!.node)!
    await victim.stop('SIGKILL')
    const alive = [...founders.filter((a) => a !== victim), spare]
    const after = await waitFor(
      'the spare promoted in place of the killed voter',
      async () => {
        const c = await conf(alive)
        const voters = c?.servers.filter((s) => s.voter).map((s) => s.id) ?? []
        return voters.length === 3 && voters.includes(keys[4]!.id) && !voters.includes(victimId)
          ? c
          : undefined
      },
      60_000,
    )
    const ids = after!.servers.map((s) => s.id)
    expect(ids).not.toContain(keys[0]!.id) // the unenrolled key holder: not even a learner
    const voters = after!.servers.filter((s) => s.voter).map((s) => s.id)

    // The CA root key is held by exactly the voters: every alive voter holds it, no one else does.
    const peerIdOf = (a: AgentProcess): string => keys[Number(a.name.slice(2, 3))]!.id
    const held = async (): Promise<Record<string, number | undefined>> => {
      const out: Record<string, number | undefined> = {}
      for (const a of [plain, ...alive]) out[peerIdOf(a)] = await a.metric('peermesh_connect_ca_key_held')
      return out
    }
    const holders = await waitFor('the key sealed to the new voter', async () => {
      const h = await held()
      return voters.every((v) => h[v] === 1) ? h : undefined
    })
    for (const [id, v] of Object.entries(holders)) expect(v, id).toBe(voters.includes(id) ? 1 : 0)
  })
})
