/**
 * The agent's default addresses and the other constants of its configuration that the CLI needs,
 * with nothing to import: a CLI call (`peermesh info`) loads these without config.ts's schemas (zod,
 * multiaddr), which only the `agent` command needs.
 */

/** Default local HTTP API address. Loopback only: the API is for this machine's operator and tools. */
export const DEFAULT_HTTP = '127.0.0.1:7880'
/** Default DNS interface address (Consul's port). */
export const DEFAULT_DNS = '127.0.0.1:8600'
/** Default libp2p listen address. Loopback, so a first try never exposes the agent. */
export const DEFAULT_LISTEN = '/ip4/127.0.0.1/tcp/7946'
export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const
/**
 * The gossip timing profiles an operator may pick (Serf's `-profile`; src/gossip/config.ts):
 * `lan` (the default) detects a failure in about a second, `local` sends a third of its datagrams
 * and detects in about 3 s, `wan` is for wide-area links (detection within a minute).
 */
export const GOSSIP_PROFILES = ['lan', 'wan', 'local'] as const
export type GossipProfileName = (typeof GOSSIP_PROFILES)[number]

/** Environment variable that may hold the initial management token (as the cluster key, a secret). */
export const INITIAL_MANAGEMENT_TOKEN_ENV = 'PEERMESH_ACL_INITIAL_MANAGEMENT_TOKEN'

export function parseHostPort(s: string): { host: string; port: number } | undefined {
  const m = /^(\[[0-9a-fA-F:]+\]|[a-zA-Z0-9.-]+):(\d{1,5})$/.exec(s)
  if (m === null) return undefined
  const port = Number(m[2])
  if (port > 65535) return undefined
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port }
}
