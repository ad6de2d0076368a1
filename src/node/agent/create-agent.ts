import type { Logger } from 'pino'
import { AclPublishEntitlement } from '../../acl/entitlement.ts'
import { enrolledVoterOrFounder } from '../../identity/connect/key-holder-eligibility.ts'
import { KeyCustody } from '../../identity/connect/key-custody.ts'
import { signPolicyEntry } from '../../raft/policy/policy-signing.ts'
import { PolicyStore } from '../../raft/policy/policy-store.ts'
import { CatalogModule } from '../catalog/catalog-module.ts'
import { ConnectModule } from '../connect/connect-module.ts'
import { EventModule } from '../events/event-module.ts'
import { GossipModule } from '../gossip/gossip-module.ts'
import type { RaftMembers, VoterKeyGrant } from '../raft/components.ts'
import { kvModuleOf } from '../kv/kv-module.ts'
import { RaftModule } from '../raft/raft-module.ts'
import { SidecarChecks } from '../sidecars/sidecar-checks.ts'
import { SidecarModule } from '../sidecars/sidecar-module.ts'
import { UiModule } from '../ui/index.ts'
import { Agent } from './agent.ts'
import type { AgentConfig } from './config.ts'
import { raftTimingFor } from './defaults.ts'

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
  const gossip = new GossipModule({
    clock: agent.clock,
    profile: config.gossipProfile,
    ...(config.gossipOverrides !== undefined ? { overrides: config.gossipOverrides } : {}),
  })
  // Verifies the CA signature of every policy entry once the CA exists (policy-signing.ts).
  const store = new PolicyStore(undefined, { verifySignatures: true })
  // Who may publish which service (issue #12), on the committed ACL state: the catalog ignores
  // other members' instances that fail it, the leader refuses their CSRs.
  const entitlement = new AclPublishEntitlement(store.acl, config.acl, (listener) => store.onChange(listener))
  const sidecarChecks = new SidecarChecks()
  const catalog = new CatalogModule({
    gossip,
    extraChecks: sidecarChecks,
    entitlement,
    // A registration with a token the enrollment does not cover asks the leader for a grant.
    requestServiceGrant: (service, token, options) => raft.requestServiceGrant(service, token, options),
  })
  const members: RaftMembers = {
    members: () => gossip.members(),
    on: (type, listener) => agent.events.on(type, listener),
    // An idle leader and its members hear from each other every 150 ms over mutual TLS: gossip
    // need not also probe them by UDP that often (Swim.heardFrom).
    heardFrom: (id) => gossip.heardFrom(id),
    // Followers hear only from their leader; it passes on whom it heard from (EvidenceRelay).
    setRelayed: (entries) => gossip.setRelayed(entries),
    lostContact: (id) => gossip.lostContact(id),
  }
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
  const raft = new RaftModule(
    { members, store, signer: custody, keyGrant, clock: agent.clock },
    raftTimingFor(config.raftMultiplier ?? 1),
  )
  connect = new ConnectModule(raft, catalog, {
    custody,
    clock: agent.clock,
    entitlement,
    // With ACLs on, the root key is sealed only to enrolled voters and the founders.
    ...(config.acl.enabled
      ? { keyHolderEligible: enrolledVoterOrFounder(store.acl, () => raft.foundingSet()) }
      : {}),
  })
  const sidecars = new SidecarModule({
    catalog,
    security: connect.meshSecurity,
    config: store,
    health: sidecarChecks,
    clock: agent.clock,
  })
  // The UI first: its routes are there as soon as the HTTP API answers.
  agent.use(new UiModule()).use(gossip).use(catalog).use(raft).use(connect).use(sidecars)
  agent.use(new EventModule({ gossip, localServices: () => catalog.local?.list() ?? [] }))
  agent.use(kvModuleOf(raft, catalog))
  return { agent, gossip, catalog, raft, connect, sidecars }
}
