// Gossip in the agent: the module, its driver over the pure SWIM core, and what it shows and emits.
export {
  type GossipEvents,
  GossipModule,
  type GossipModuleInit,
  type MemberJson,
  memberJson,
} from './gossip-module.ts'
export { GOSSIP_STATE_FILE, KNOWN_PEERS_FILE, loadKnownPeers } from './gossip-state.ts'
export { SWIM_PROTOCOL, SWIM_PUSHPULL_PROTOCOL } from './libp2p-glue.ts'
export { type GossipTransport, SwimDriver, type SwimDriverInit } from './swim-driver.ts'
