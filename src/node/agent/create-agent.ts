import type { Logger } from 'pino'
import { PolicyStore } from '../../raft/index.ts'
import { Agent } from './agent.ts'
import type { AgentConfig } from './config.ts'
import { CatalogModule } from '../catalog/catalog-module.ts'
import { ConnectModule } from '../connect/connect-module.ts'
import { GossipModule } from '../gossip/gossip-module.ts'
import { ConnectMeshSecurity } from '../connect/mesh-security.ts'
import type { PolicySigner, RaftMembers, VoterKeyGrant } from '../raft/components.ts'
import { RaftModule } from '../raft/raft-module.ts'
import { SidecarModule } from '../sidecars/sidecar-module.ts'

/** An agent with every layer plugged in, as `peermesh agent` runs it. */
export function createAgent(
  config: AgentConfig,
  log: Logger,
): {
  agent: Agent
  gossip: GossipModule
  catalog: CatalogModule
  raft: RaftModule
  connect: ConnectModule
  sidecars: SidecarModule
} {
  const agent = new Agent({ config, log })
  const gossip = new GossipModule()
  const catalog = new CatalogModule(gossip)
  agent.use(gossip)
  const members: RaftMembers = {
    members: () => gossip.members(),
    on: (type, listener) => agent.events.on(type, listener),
  }
  // The connect module holds the CA key custody; it is built after Raft (it writes through it),
  // so these delegate to it once it exists.
  let connect: ConnectModule | undefined
  const signer: PolicySigner = {
    sealEntry: (index, requestId, data) => connect?.sealEntry(index, requestId, data) ?? data,
    snapshotSigningRoot: () => connect?.snapshotSigner(),
  }
  const keyGrant: VoterKeyGrant = {
    grantKeyTo: async (peerId, signal) => connect?.grantKeyTo(peerId, signal),
  }
  // Verifies the CA signature of every policy entry once the CA exists (policy-signing.ts).
  const store = new PolicyStore(undefined, { verifySignatures: true })
  const raft = new RaftModule({ members, store, signer, keyGrant, clock: agent.clock })
  agent.use(catalog)
  agent.use(raft)
  connect = new ConnectModule(raft, catalog)
  agent.use(connect)
  const sidecars = new SidecarModule(catalog, new ConnectMeshSecurity(connect, raft, agent.events))
  agent.use(sidecars)
  return { agent, gossip, catalog, raft, connect, sidecars }
}
