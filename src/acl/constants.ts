/**
 * Fixed identifiers of the ACL system. They are Consul's, so that Consul clients and tools that
 * look for them (the anonymous token, the builtin management policy) find them here too.
 */

/** AccessorID of the anonymous token: the token of every request that carries none. */
export const ANONYMOUS_TOKEN_ID = '00000000-0000-0000-0000-000000000002'
/** SecretID of the anonymous token (as Consul: the word, not a UUID; it grants only what it holds). */
export const ANONYMOUS_TOKEN_SECRET = 'anonymous'

/** ID and name of the builtin policy that grants everything (Consul's `global-management`). */
export const GLOBAL_MANAGEMENT_POLICY_ID = '00000000-0000-0000-0000-000000000001'
export const GLOBAL_MANAGEMENT_POLICY_NAME = 'global-management'

/** What Consul shows instead of a SecretID to a caller without `acl:write`. */
export const REDACTED_SECRET = '<hidden>'

/** Largest `Rules` text accepted (Consul has no explicit cap; ours keeps Raft entries small). */
export const MAX_RULES_CHARS = 65_536

/** A UUID, the format Consul requires of AccessorIDs, SecretIDs and policy IDs. */
export const UUID_PATTERN = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/

/** Policy names: letters, digits, `-` and `_` (Consul's rule), at most 128. */
export const POLICY_NAME_PATTERN = /^[A-Za-z0-9_-]{1,128}$/

/** Service identity names: lowercase DNS-label style, as Consul validates `ServiceName`. */
export const SERVICE_IDENTITY_PATTERN = /^[a-z0-9]([a-z0-9-]{0,254}[a-z0-9])?$/

/** Node identity names: as an agent's node name (src/node/agent/config.ts). */
export const NODE_IDENTITY_PATTERN = /^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$/

/**
 * AccessorID the leader records on the enrollment of a founding voter: a voter of the Raft
 * configuration that has no enrollment (it founded the cluster, or was a voter before ACLs were
 * on) is enrolled by the leader itself, without a token. It names no token, so no token delete
 * revokes it; an operator revokes it by node name (`acl.node.unenroll`).
 */
export const FOUNDER_ACCESSOR_ID = '00000000-0000-0000-0000-000000000003'

/** Peer ids as enrollments store them: a libp2p peer id's text (base58btc or base32), bounded. */
export const PEER_ID_PATTERN = /^[A-Za-z0-9]{1,128}$/

/** Service names a grant may name: as catalog names (DNS labels, sidecars' `-sidecar-proxy`), bounded. */
export const SERVICE_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,255}$/
