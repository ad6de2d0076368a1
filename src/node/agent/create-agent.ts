import type { Logger } from 'pino'
import { KeyCustody } from '../../identity/connect/key-custody.ts'
import { signPolicyEntry } from '../../raft/policy/policy-signing.ts'
import { PolicyStore } from '../../raft/policy/policy-store.ts'
import { CatalogModule } from '../catalog/catalog-module.ts'
import { ConnectModule } from '../connect/connect-module.ts'
import { GossipModule } from '../gossip/gossip-module.ts'
import type { RaftMembers, VoterKeyGrant } from '../raft/components.ts'
import { RaftModule } from '../raft/raft-module.ts'
import { SidecarModule } from '../sidecars/sidecar-module.ts'
import { UiModule } from '../ui/index.ts'
import { Agent } from './agent.ts'
import type { AgentConfig } from './config.ts'

/**
 * An agent with every layer plugged in, as `peermesh agent` runs it. Each module is built from
 * the narrow components it uses, in dependency order; modules start in the order they are added.
 */
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
  const gossip = new GossipModule({ clock: agent.clock })
  const catalog = new CatalogModule({ gossip })
  const members: RaftMembers = {
    members: () => gossip.members(),
    on: (type, listener) => agent.events.on(type, listener),
  }
  // Verifies the CA signature of every policy entry once the CA exists (policy-signing.ts).
  const store = new PolicyStore(undefined, { verifySignatures: true })
  // Opens this agent's sealed copy of the root key (a voter's): Raft signs with it as leader.
  const custody = new KeyCustody({
    ca: store,
    identity: () => agent.nodeIdentity(),
    signEntry: signPolicyEntry,
  })
  // Autopilot awaits the CA manager (it seals the key to a new voter) and the CA manager writes
  // through Raft: the cycle is broken by a reference resolved when autopilot calls it.
  let connect: ConnectModule | undefined
  const keyGrant: VoterKeyGrant = {
    grantKeyTo: async (peerId, signal) => connect?.caManager.grantKeyTo(peerId, signal),
  }
  const raft = new RaftModule({ members, store, signer: custody, keyGrant, clock: agent.clock })
  connect = new ConnectModule(raft, catalog, { custody, clock: agent.clock })
  const sidecars = new SidecarModule({ catalog, security: connect.meshSecurity, clock: agent.clock })
  // The UI first: its routes are there as soon as the HTTP API answers.
  agent.use(new UiModule()).use(gossip).use(catalog).use(raft).use(connect).use(sidecars)
  return { agent, gossip, catalog, raft, connect, sidecars }
}
