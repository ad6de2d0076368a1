/**
 * Defaults of the data plane, each with the reason for its value.
 */

/** Attempts per connection or request, the first included: one dead instance costs one retry. */
export const DEFAULT_MAX_ATTEMPTS = 3

/** Per attempt, TCP connect plus the mutual TLS handshake. Loopback and LAN handshakes take ~1–5 ms;
 * 1 s only fires for a host that drops packets, and leaves room for two more attempts. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 1_000

/** Client bytes held for replay before the first response byte (a request head and a small body).
 * Past it the connection is no longer retried: replaying a partial stream is not possible. */
export const DEFAULT_REPLAY_BUFFER_BYTES = 64 * 1024

/**
 * TLS 1.3 cipher suites of both ends of a mesh connection, in order of preference. AES-128-GCM
 * first: it is as strong as the mesh needs (the leaves are P-256 or Ed25519, 128-bit security) and
 * does 10 AES rounds per block instead of AES-256's 14. The other two stay so that a peer preferring
 * them still connects. (OpenSSL's default list, and node's, puts AES-256-GCM first.)
 */
export const MESH_TLS_CIPHERSUITES =
  'TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256'

/** The one read buffer of the L4 relays (relay.ts): libuv's own read size for a stream. */
export const RELAY_READ_BUFFER_BYTES = 64 * 1024

/** Retries may add this share of the recent requests (Linkerd's retry budget: 20%). */
export const DEFAULT_RETRY_BUDGET_RATIO = 0.2
/** ...plus this many per second, so a quiet upstream can still retry (Linkerd: 10/s). */
export const DEFAULT_RETRY_BUDGET_MIN_PER_SECOND = 10
/** Window over which the budget counts requests and retries (Linkerd's TTL: 10 s). */
export const DEFAULT_RETRY_BUDGET_WINDOW_MS = 10_000

/** Consecutive failures before an endpoint is ejected (Envoy's consecutive_gateway_failure is 5;
 * 3 reacts faster, and retries hide the failures from clients anyway). */
export const DEFAULT_OUTLIER_CONSECUTIVE_FAILURES = 3
/** Ejection time = base × number of times ejected (Envoy's base_ejection_time, shorter for a mesh
 * that also learns of dead instances from gossip within seconds). */
export const DEFAULT_OUTLIER_BASE_EJECTION_MS = 1_000
/** Longest ejection: an endpoint that recovered is tried again within this time. */
export const DEFAULT_OUTLIER_MAX_EJECTION_MS = 30_000
/** Never eject more than this share of the endpoints: a broken client must not empty the set. */
export const DEFAULT_OUTLIER_MAX_EJECTION_PERCENT = 50

/** HTTP mode: whole request, first attempt to last response byte (Consul's default: 15 s). */
export const DEFAULT_REQUEST_TIMEOUT_MS = 15_000

/** HTTP mode: idle keep-alive connections kept per endpoint. */
export const DEFAULT_MAX_FREE_SOCKETS = 64

/** HTTP mode: bound of an upstream response head (status line and headers; trailers alike), as
 * Node's own `--max-http-header-size` default: past it the response is malformed (502). */
export const DEFAULT_MAX_RESPONSE_HEAD_BYTES = 16 * 1024

/** HTTP mode: request bodies up to this size are buffered so idempotent requests can be retried. */
export const DEFAULT_RETRY_BODY_BYTES = 64 * 1024

/** Peer certificates whose SPIFFE id is remembered (by fingerprint) to skip re-parsing. */
export const PEER_ID_CACHE_SIZE = 4096

/** Headers that describe one hop and are not forwarded (RFC 9110 §7.6.1). */
export const HOP_BY_HOP_HEADERS: ReadonlySet<string> = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
])

/** HTTP methods retried after a failure before the response (RFC 9110 §9.2.2 idempotent methods). */
export const IDEMPOTENT_METHODS: ReadonlySet<string> = new Set([
  'GET',
  'HEAD',
  'OPTIONS',
  'PUT',
  'DELETE',
  'TRACE',
])

/**
 * Multiplexed L4 (`peermesh-mux/1`, `mux-session.ts`): credit per stream and direction, HTTP/2's
 * default stream window. It bounds what one authorized peer can make a process buffer: the
 * listener's 1,024 connections (streams included) × 64 KiB = 64 MiB at most, where 256 KiB allowed
 * 256 MiB. Granted back in halves as the receiving socket drains, 64 KiB still moves a bulk stream
 * at about 32 KiB per round trip: hundreds of MB/s on loopback, about 1 Gbit/s at a 0.25 ms LAN RTT.
 */
export const DEFAULT_MUX_INITIAL_WINDOW = 64 * 1024

/**
 * Streams open at once on one session; an OPEN past it is refused (RST refused) and the outbound
 * opens another session. As the inbound's connection cap: an instance's callers rarely hold more.
 */
export const DEFAULT_MUX_MAX_STREAMS = 1024

/** An outbound session with no stream for this long is closed (a new one costs one handshake). */
export const DEFAULT_MUX_IDLE_MS = 15_000

/**
 * A session that gets no new streams (certificate or trust bundle rotated) closes when its last
 * stream ends: its caller closes it then. The inbound closes one that stays idle this long after
 * its GOAWAY (a caller that does not close its own). Streams are never cut short by a rotation.
 */
export const DEFAULT_MUX_DRAIN_MS = 60_000

/** An endpoint whose inbound did not select the mux ALPN is dialled per connection for this long before asking again. */
export const DEFAULT_MUX_FALLBACK_MS = 60_000
