import type { Logger } from 'pino'
import type { Registry } from 'prom-client'
import type { Clock } from '../../../src/common/clock.ts'
import { TypedEmitter } from '../../../src/common/events.ts'
import { loadOrCreateNodeIdentity } from '../../../src/identity/keys/node-key.ts'
import type { AgentContext } from '../../../src/node/agent/agent.ts'
import { RaftModule } from '../../../src/node/raft/raft-module.ts'
import { createHost, type Host } from '../../../src/node/transport/host.ts'
import { PolicyStore } from '../../../src/raft/index.ts'
import { waitFor } from '../../e2e/harness.ts'

/**
 * A RaftModule leading its own one-voter cluster on a real libp2p host (ACLs off), and a second
 * host holding the same cluster key but not a member: the set-up of the raft-guard tests, where
 * that second host attacks the first over one transport or another. `fresh`: the agent is not
 * bootstrapped and waits, with an empty configuration, to be added (as a joining agent does).
 */
export interface LoneRaftAgent {
  self: string
  agentHost: Host
  attackerHost: Host
  raft: RaftModule
}

export async function startLoneRaftAgent(o: {
  dataDir: string
  attackerDir: string
  clusterKey: Uint8Array
  clock: Clock
  log: Logger
  metrics: Registry
  /** What the module tells gossip of its leader's relayed evidence (`RaftMembers.setRelayed`). */
  setRelayed?: (entries: readonly { id: string; ageMs: number }[]) => void
  fresh?: boolean
  /** ACLs on, this agent enrolling with this token (only with `fresh`). */
  aclToken?: string
}): Promise<LoneRaftAgent> {
  const fresh = o.fresh === true
  const identity = await loadOrCreateNodeIdentity(o.dataDir)
  const listen = ['/ip4/127.0.0.1/tcp/0']
  const agentHost = await createHost({ identity, clusterKey: o.clusterKey, listen })
  await agentHost.start()
  const ctx = {
    config: {
      name: 'agent',
      dataDir: o.dataDir,
      bootstrap: !fresh,
      raftVoters: 1,
      listen,
      acl: { enabled: o.aclToken !== undefined, defaultPolicy: 'deny', anonymousRead: true },
      ...(o.aclToken !== undefined ? { defaultToken: o.aclToken } : {}),
    },
    identity,
    clusterKey: o.clusterKey,
    host: agentHost,
    http: { route: () => {}, useAcl: () => {}, useLeaderInfo: () => {} },
    metrics: o.metrics,
    events: new TypedEmitter(),
    clock: o.clock,
    log: o.log,
    addSeeds: () => {},
    handle: async () => {},
  } as unknown as AgentContext
  const raft = new RaftModule({
    members: {
      members: () => [],
      on: () => () => {},
      ...(o.setRelayed !== undefined ? { setRelayed: o.setRelayed } : {}),
    },
    store: new PolicyStore(),
    clock: o.clock,
  })
  await raft.start(ctx)
  if (!fresh)
    await waitFor(
      'the agent leads its one-voter cluster',
      async () => (raft.raft?.isLeader() ? true : undefined),
      10_000,
      20,
    )
  const attackerHost = await createHost({
    identity: await loadOrCreateNodeIdentity(o.attackerDir),
    clusterKey: o.clusterKey,
    listen,
  })
  await attackerHost.start()
  await attackerHost.peerStore.merge(agentHost.peerId, { multiaddrs: agentHost.getMultiaddrs() })
  return { self: identity.id, agentHost, attackerHost, raft }
}
