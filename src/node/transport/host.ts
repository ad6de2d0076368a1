import { isIP } from 'node:net'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import type { Identify } from '@libp2p/identify'
import type { Libp2p } from '@libp2p/interface'
import { type Ping, ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { type Multiaddr, multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import type { NodeIdentity } from '../../identity/keys/node-key.ts'
import { clusterKeyProtector } from './pnet-protector.ts'
import { installYamuxWindowThreshold } from './yamux-window.ts'

export interface HostServices extends Record<string, unknown> {
  identify: Identify
  ping: Ping
}

export type Host = Libp2p<HostServices>

export interface HostInit {
  identity: NodeIdentity
  /** Cluster key bytes (swarm.key text); every connection is wrapped in the private network. */
  clusterKey: Uint8Array
  listen: string[]
  /** IP announced in place of the listen hosts (`--advertise`); see `announcedAddresses`. */
  advertise?: string
  /**
   * Upper bound on open connections. SWIM talks to a few random members per period, so an
   * agent needs far fewer connections than members; libp2p prunes the least useful above this.
   */
  maxConnections?: number
}

/**
 * Creates (but does not start) the agent's one libp2p host: TCP, the cluster's private network
 * (`pnet-protector.ts`), noise, yamux (window updates only once half a window is used,
 * `yamux-window.ts`), identify and ping (the connection monitor's, every 30 s).
 *
 * No DHT: every address an agent dials comes from gossip, which carries each member's signed
 * addresses (and a moved member's new ones, with its next incarnation) into the peer store; a
 * kad-dht only knew what the same peers told it through identify. It was the largest library an idle
 * agent loaded and kept, with routing-table traffic on every new connection.
 */
export async function createHost(init: HostInit): Promise<Host> {
  installYamuxWindowThreshold()
  return createLibp2p<HostServices>({
    start: false,
    privateKey: init.identity.privateKey,
    addresses: {
      listen: init.listen,
      announceFilter: (addrs) => announcedAddresses(addrs, init.advertise),
    },
    transports: [tcp()],
    // Wire-compatible with @libp2p/pnet's preSharedKey, without its per-connection wasm leak.
    connectionProtector: clusterKeyProtector(init.clusterKey),
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    connectionManager: {
      maxConnections: init.maxConnections ?? 64,
      dialTimeout: 5_000,
    },
    // A ping stream every 30 s per connection instead of libp2p's 10 s: each one opens a stream and
    // negotiates its protocol, an idle agent's costliest libp2p message, and gossip already probes
    // every member several times a second (and says when one fails, which Raft acts on). The
    // monitor stays for what gossip cannot do: closing a connection whose peer vanished without a
    // reset (yamux's keep-alive only logs a failed ping), so that the next dial opens a fresh one.
    connectionMonitor: { pingInterval: 30_000 },
    services: {
      identify: identify(),
      ping: ping(),
    },
  })
}

/**
 * The addresses this agent announces (what gossip, Raft and the catalog hand to other
 * agents; the first is "the" address). With `advertise`, every address carries that IP instead of
 * its own. Otherwise routable addresses come first, and loopback, unspecified and link-local ones
 * are left out whenever a routable one exists: a remote peer must never be told 127.0.0.1 (a
 * listener on 0.0.0.0 reports every interface, loopback first).
 */
export function announcedAddresses(addrs: Multiaddr[], advertise?: string): Multiaddr[] {
  if (advertise !== undefined) {
    const family = isIP(advertise) === 6 ? 'ip6' : 'ip4'
    const seen = new Set<string>()
    const out: Multiaddr[] = []
    for (const ma of addrs) {
      const m = /^\/(?:ip4|ip6)\/[^/]+(\/.*)?$/.exec(ma.toString())
      if (m === null) continue
      const s = `/${family}/${advertise}${m[1] ?? ''}`
      if (seen.has(s)) continue
      seen.add(s)
      out.push(multiaddr(s))
    }
    return out
  }
  const routable = addrs.filter((ma) => addressScope(ma) === 'routable')
  return routable.length > 0 ? routable : addrs.filter((ma) => addressScope(ma) !== 'unspecified')
}

function addressScope(ma: Multiaddr): 'routable' | 'loopback' | 'unspecified' | 'other' {
  const m = /^\/(ip4|ip6)\/([^/]+)/.exec(ma.toString())
  if (m === null) return 'other'
  const ip = m[2]!.toLowerCase()
  if (ip === '0.0.0.0' || ip === '::') return 'unspecified'
  if (ip.startsWith('127.') || ip === '::1') return 'loopback'
  if (ip.startsWith('169.254.') || ip.startsWith('fe80:')) return 'other'
  return 'routable'
}
