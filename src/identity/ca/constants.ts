/**
 * Defaults and limits for the mesh CA and service leaf certificates. Each says why.
 */

const HOUR_MS = 3_600_000
const DAY_MS = 24 * HOUR_MS

/** Root lifetime when none is given: 10 years, as Consul's built-in CA (RootCertTTL 87600h). */
export const DEFAULT_ROOT_VALIDITY_DAYS = 3650
/** Longest root lifetime accepted: 100 years; longer is a typo, not a policy. */
export const MAX_ROOT_VALIDITY_DAYS = 36_500

/** Leaf lifetime when none is given: 72 h, Consul's LeafCertTTL default. Short, so rotation matters. */
export const DEFAULT_LEAF_TTL_MS = 72 * HOUR_MS
/** Shortest leaf lifetime accepted: 1 minute; anything shorter cannot be renewed in time. */
export const MIN_LEAF_TTL_MS = 60_000
/** Longest leaf lifetime accepted: 1 year, Consul's upper bound for LeafCertTTL. */
export const MAX_LEAF_TTL_MS = 365 * DAY_MS

/**
 * Certificates start this far in the past so that a peer whose clock is a little behind still
 * accepts them (Consul backdates leaves by one minute for the same reason).
 */
export const CLOCK_SKEW_ALLOWANCE_MS = 60_000

/**
 * Largest PEM input (CSR or certificate) we parse. Ours are under 1 KiB; the limit keeps a
 * hostile peer from making the ASN.1 parser chew on megabytes.
 */
export const MAX_PEM_LENGTH = 16 * 1024

/** Longest certification path we build above a leaf (intermediates + root). */
export const MAX_CHAIN_DEPTH = 4

/** Consul's default CSRMaxPerSecond: enough for a fleet-wide rotation, bounded for the leader. */
export const DEFAULT_LEAF_SIGNING_RATE_PER_SECOND = 50

export const MS_PER_DAY = DAY_MS
