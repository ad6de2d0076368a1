import type { Logger } from 'pino'
import { Agent } from './agent.ts'
import type { AgentConfig } from './config.ts'
import { CatalogModule } from '../catalog/catalog-module.ts'
import { ConnectModule } from '../connect/connect-module.ts'
import { GossipModule } from '../gossip/gossip-module.ts'
import { ConnectMeshSecurity } from '../connect/mesh-security.ts'
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
  const catalog = new CatalogModule({ gossip })
  agent.use(gossip)
  const raft = new RaftModule(gossip)
  agent.use(catalog)
  agent.use(raft)
  const connect = new ConnectModule(raft, catalog)
  agent.use(connect)
  const sidecars = new SidecarModule({
    catalog,
    security: new ConnectMeshSecurity(connect, raft, agent.events),
  })
  agent.use(sidecars)
  return { agent, gossip, catalog, raft, connect, sidecars }
}
