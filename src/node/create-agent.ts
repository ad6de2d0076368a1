import type { Logger } from 'pino'
import { Agent } from './agent.ts'
import type { AgentConfig } from './config.ts'
import { CatalogModule } from './catalog-module.ts'
import { GossipModule } from './gossip-module.ts'

/** An agent with every layer plugged in, as `peermesh agent` runs it. */
export function createAgent(
  config: AgentConfig,
  log: Logger,
): { agent: Agent; gossip: GossipModule; catalog: CatalogModule } {
  const agent = new Agent({ config, log })
  const gossip = new GossipModule()
  const catalog = new CatalogModule(gossip)
  agent.use(gossip)
  agent.use(catalog)
  return { agent, gossip, catalog }
}
