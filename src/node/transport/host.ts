import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import type { Identify } from '@libp2p/identify'
import type { Libp2p } from '@libp2p/interface'
import { type KadDHT, kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { type Ping, ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { createLibp2p } from 'libp2p'
import type { NodeIdentity } from '../../identity/keys/node-key.ts'
import { clusterKeyProtector } from './pnet-protector.ts'

/** Our own DHT protocol id, so a peermesh cluster never mixes with a public IPFS DHT. */
export const DHT_PROTOCOL = '/peermesh/kad/1.0.0'

export interface HostServices extends Record<string, unknown> {
  identify: Identify
  ping: Ping
  dht: KadDHT
}

export type Host = Libp2p<HostServices>

export interface HostInit {
  identity: NodeIdentity
  /** Cluster key bytes (swarm.key text); every connection is wrapped in the private network. */
  clusterKey: Uint8Array
  listen: string[]
  /**
   * Upper bound on open connections. SWIM talks to a few random members per period, so an
   * agent needs far fewer connections than members; libp2p prunes the least useful above this.
   */
  maxConnections?: number
}

/**
 * Creates (but does not start) the agent's one libp2p host: TCP, the cluster's private network
 * (`pnet-protector.ts`),
 * noise, yamux, identify, ping and a LAN kad-dht in server mode (peer routing: the addresses of a
 * peer id that gossip names).
 */
export async function createHost(init: HostInit): Promise<Host> {
  return createLibp2p<HostServices>({
    start: false,
    privateKey: init.identity.privateKey,
    addresses: { listen: init.listen },
    transports: [tcp()],
    // Wire-compatible with @libp2p/pnet's preSharedKey, without its per-connection wasm leak.
    connectionProtector: clusterKeyProtector(init.clusterKey),
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    connectionManager: {
      maxConnections: init.maxConnections ?? 64,
      dialTimeout: 5_000,
    },
    services: {
      identify: identify(),
      ping: ping(),
      dht: kadDHT({
        protocol: DHT_PROTOCOL,
        clientMode: false,
        // Agents live on LANs and loopback: keep private addresses (the default mapper drops them).
        peerInfoMapper: passthroughMapper,
        allowQueryWithZeroPeers: true,
        initialQuerySelfInterval: 200,
      }),
    },
  })
}
