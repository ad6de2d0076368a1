import { isIP } from 'node:net'
import { UUID_PATTERN } from '../../acl/constants.ts'
import { isLoopbackHost } from '../api/request-guard.ts'
import { statSync } from 'node:fs'
import { hostname } from 'node:os'
import { join } from 'node:path'
import { multiaddr } from '@multiformats/multiaddr'
import { z } from 'zod'
import { parseDuration } from '../catalog/duration.ts'
import { type SwimConfig, swimConfig, swimProfiles } from '../../gossip/config.ts'
import { otlpEndpointProblem } from '../../proxy/tracing.ts'
import { DEFAULT_RAFT_VOTERS, MAX_RAFT_MULTIPLIER } from './defaults.ts'
import { readFileBoundedSync, readProblem } from '../../common/read-bounded.ts'
import { ConfigError } from './errors.ts'
import {
  DEFAULT_DNS,
  DEFAULT_HTTP,
  DEFAULT_LISTEN,
  GOSSIP_PROFILES,
  type GossipProfileName,
  INITIAL_MANAGEMENT_TOKEN_ENV,
  LOG_LEVELS,
  parseHostPort,
} from './config-constants.ts'

export { DEFAULT_DNS, DEFAULT_HTTP, DEFAULT_LISTEN, INITIAL_MANAGEMENT_TOKEN_ENV, LOG_LEVELS, parseHostPort }

/** A Go-style duration string ("300ms", "72h") from `minMs` to `maxMs`; `message` otherwise. */
function durationIn(minMs: number, maxMs: number, message: string) {
  return z.string().refine((s) => {
    const ms = parseDuration(s)
    return ms !== undefined && ms >= minMs && ms <= maxMs
  }, message)
}

/** An optional `gossipLan` duration from `minMs` to `maxMs`. */
function gossipDuration(minMs: number, maxMs: number) {
  return durationIn(
    minMs,
    maxMs,
    `must be a duration from ${minMs}ms to ${maxMs / 1000}s, e.g. "200ms"`,
  ).optional()
}

/**
 * Everything an agent can be told, by flag or by `--config file.json` (same field names, camelCase).
 * Flags given on the command line win over the file.
 *
 * Built at each call (an agent validates its flags and its file once, at start): zod schemas are
 * large objects (a few KiB each), and held in a module constant they stayed in the heap of every
 * agent and CLI process for its whole life.
 */
function agentConfigSchema() {
  const nodeName = z
    .string()
    .regex(/^[a-zA-Z0-9]([a-zA-Z0-9._-]{0,62})$/, 'must be 1-63 letters, digits, ".", "_" or "-"')

  const multiaddrString = z.string().superRefine((s, ctx) => {
    try {
      const ma = multiaddr(s)
      if (!ma.toString().includes('/tcp/'))
        ctx.addIssue({ code: 'custom', message: `${s}: need a /tcp/ address` })
    } catch {
      ctx.addIssue({ code: 'custom', message: `${s} is not a valid multiaddr` })
    }
  })

  const hostPort = z.string().superRefine((s, ctx) => {
    if (parseHostPort(s) === undefined) ctx.addIssue({ code: 'custom', message: `${s} is not HOST:PORT` })
  })

  return z
    .object({
      /** Node name shown in members, logs and Raft; default: the host name. */
      name: nodeName.optional(),
      /** Where the node key, cluster key copy and state live. Default: ./.peermesh/<name>. */
      dataDir: z.string().min(1).optional(),
      /** Datacenter name the Consul-compatible API answers for (`?dc=`). Default `dc1`, Consul's. */
      datacenter: z
        .string()
        .regex(/^[a-z0-9_-]{1,64}$/, 'must be 1-64 lowercase letters, digits, "_" or "-"')
        .optional(),
      /** libp2p listen multiaddrs. */
      listen: z.array(multiaddrString).min(1).optional(),
      /**
       * The IP other agents reach this one at (Consul's `-advertise`): replaces the host of every
       * announced listen address. Default: the listen addresses, routable ones first and loopback
       * left out whenever a routable one exists (so `--listen /ip4/0.0.0.0/...` works across hosts).
       */
      advertise: z
        .string()
        .refine((s) => isIP(s) !== 0 && !/^(0\.0\.0\.0|::)$/.test(s), 'must be a unicast IP address')
        .optional(),
      /** Local HTTP API, HOST:PORT. */
      http: hostPort.optional(),
      /** Seeds to join through: multiaddrs ending in /p2p/<peerId>, or plain /ip4/../tcp/.. */
      seed: z.array(multiaddrString).optional(),
      /** Bootstrap a new Raft cluster on this agent (exactly one agent of a new cluster). */
      bootstrap: z.boolean().optional(),
      /**
       * Bootstrap once this many agents are alive in gossip (give the same N to several agents);
       * the alternative to `bootstrap` on one agent.
       */
      bootstrapExpect: z.number().int().min(1).max(7).optional(),
      /** Target number of Raft voters; the rest of the agents follow as learners. */
      raftVoters: z
        .number()
        .refine((v) => v === 1 || v === 3 || v === 5, 'must be 1, 3 or 5')
        .optional(),
      /** DNS interface, HOST:PORT (port 0: any free port), or "off". */
      dns: z.union([z.literal('off'), hostPort]).optional(),
      /**
       * Primary DNS zone (default `peermesh`): `NAME.service.<dnsDomain>`. `consul` is always served
       * beside it (Consul's `alt_domain`), so Consul-minded tools and stub zones work unchanged.
       */
      dnsDomain: z
        .string()
        .regex(
          /^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*\.?$/,
          'must be DNS labels joined by "."',
        )
        .max(253)
        .optional(),
      /** Services to register at start (service definitions, as for `peermesh register`). */
      services: z.array(z.record(z.string(), z.unknown())).optional(),
      /** Path of the cluster key file (`peermesh keygen > cluster.key`). */
      clusterKey: z.string().min(1).optional(),
      logLevel: z.enum(LOG_LEVELS).optional(),
      /** Sidecar access log lines (at info): every request/connection, only failed ones, or none. Default "errors". */
      accessLog: z.enum(['off', 'errors', 'all']).optional(),
      /**
       * OpenTelemetry spans of the sidecars' HTTP requests, off by default. With `otlpEndpoint` (flag
       * `--otlp-endpoint`), each proxied request gets a span, sent in batches as OTLP/HTTP JSON to
       * `{otlpEndpoint}/v1/traces`, and the request carries the span in its `traceparent`.
       */
      tracing: z
        .object({
          /** The collector's base URL, e.g. "http://127.0.0.1:4318" (OTLP/HTTP's port). */
          otlpEndpoint: z
            .string()
            .superRefine((s, ctx) => {
              const problem = otlpEndpointProblem(s)
              if (problem !== undefined) ctx.addIssue({ code: 'custom', message: problem })
            })
            .optional(),
          /**
           * Share of new traces recorded, 0 to 1 (default 1: a mesh's request rate is modest and a
           * full queue drops spans rather than slowing requests). A request that arrives with a
           * `traceparent` follows its sampled flag.
           */
          sampleRatio: z.number().min(0).max(1).optional(),
        })
        .strict()
        .optional(),
      /**
       * Trust domain of the mesh CA (`spiffe://<trustDomain>/...`). Read only by the agent that
       * creates the CA when the cluster bootstraps; later the CA's own domain wins. Default: a
       * random `<8 hex>.peermesh`, so two clusters never accept each other's certificates.
       */
      trustDomain: z
        .string()
        .regex(
          /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/,
          'must be lowercase DNS labels joined by "."',
        )
        .max(253)
        .optional(),
      /**
       * Gossip timing (Serf's `-profile`): `lan` (default) detects a failed member in about a
       * second, `local` sends a third of the datagrams and detects in about 3 s, `wan` suits
       * wide-area links (detection within a minute). Agents of one cluster may differ.
       */
      gossipProfile: z.enum(GOSSIP_PROFILES).optional(),
      /**
       * The gossip timing, field by field over `gossipProfile` (Consul's `gossip_lan`): what is not
       * given stays the profile's. Durations as Go writes them ("300ms", "1s"). The minimum
       * suspicion is `suspicionMult · max(1, log10 n) · probeInterval`, as in memberlist, so a
       * longer probe interval needs a smaller multiplier to keep detection time. Combinations SWIM
       * cannot run (a probe timeout not shorter than the interval) are refused at start.
       */
      gossipLan: z
        .object({
          /** Time between two probes this agent starts (`lan`: 150ms). */
          probeInterval: gossipDuration(10, 60_000),
          /** Wait for a direct ack before the indirect probe (`lan`: 75ms). */
          probeTimeout: gossipDuration(1, 30_000),
          /** Lifeguard's alpha: the minimum suspicion in probe intervals (`lan`: 4). */
          suspicionMult: z.number().int().min(1).max(100).optional(),
          /** Time between gossip rounds while updates are queued (`lan`: 50ms). */
          gossipInterval: gossipDuration(10, 60_000),
          /** Members each gossip round sends to (`lan`: 3). */
          gossipNodes: z.number().int().min(1).max(64).optional(),
          /** Each update is sent `retransmitMult · ceil(log10(n + 1))` times (`lan`: 6). */
          retransmitMult: z.number().int().min(1).max(100).optional(),
          /**
           * Whether a follower skips probing the voters its Raft leader heard from (every profile:
           * true). false: followers probe each other as without the relay, for a frozen voter
           * seen dead about 150 ms sooner at about 0.2 points more idle CPU per follower.
           */
          relayedEvidence: z.boolean().optional(),
        })
        .strict()
        .optional(),
      /**
       * Consul's `performance` block. `raftMultiplier` (Consul's `raft_multiplier`, 1 to 10; 1 when
       * not given) scales the Raft tick and every timeout and heartbeat counted in it: an idle
       * cluster's leader heartbeats and a follower's tick wake-ups become 1/m as frequent, and a
       * failed leader is replaced up to m times later. Writes are not slowed (they do not wait for a
       * tick). Agents of one cluster may differ (heartbeats carry the leader's tick length).
       */
      performance: z
        .object({ raftMultiplier: z.number().int().min(1).max(MAX_RAFT_MULTIPLIER).optional() })
        .strict()
        .optional(),
      /** Key type of a new CA root: ed25519 (default: small, fast) or ecdsa-p256 (for old TLS stacks). */
      caKeyType: z.enum(['ed25519', 'ecdsa-p256']).optional(),
      /**
       * Access control (docs/SECURITY.md). On by default, default deny: without a token a request may
       * only read what gossip tells any member anyway. `enabled: false` is an opt-out for trying
       * things on one machine: every local request may then do everything, and any key holder may
       * join Raft.
       */
      acl: z
        .object({
          /** Check tokens on the HTTP API and on forwarded writes (default true). */
          enabled: z.boolean().optional(),
          /** When no rule matches: deny (Consul's advice); allow only to migrate a running cluster. */
          defaultPolicy: z.enum(['allow', 'deny']).optional(),
          /** Anonymous requests may read members, catalog, health, DNS and agent self. */
          anonymousRead: z.boolean().optional(),
          /** A UUID the founders share; the first leader applies it as the management token (Consul's initial_management). */
          initialManagementToken: z.string().regex(UUID_PATTERN, 'must be a UUID').optional(),
          /**
           * File (0600) holding the initial management token, so the secret stays out of the config
           * file and the process list (flag `--initial-management-token-file`). Loses to
           * `initialManagementToken` given in the same config.
           */
          initialManagementTokenFile: z.string().min(1).optional(),
        })
        .strict()
        .optional(),
      /** File (0600) holding this agent's token: it enrolls the node (requests without a token stay anonymous). */
      tokenFile: z.string().min(1).optional(),
      /** Lifetime of service leaf certificates the leader signs, e.g. "72h" (default, as Consul) or "5m" (min 1m). */
      leafTtl: durationIn(60_000, 365 * 24 * 3_600_000, 'must be a duration from "1m" to "8760h"').optional(),
    })
    .strict()
}

export type AgentConfigInput = z.infer<ReturnType<typeof agentConfigSchema>>

export interface AgentConfig {
  name: string
  /** Datacenter name (Consul's `?dc=`, `Config.Datacenter`). */
  datacenter: string
  dataDir: string
  listen: string[]
  /** IP announced to peers in place of the listen hosts (see the schema). */
  advertise?: string
  http: { host: string; port: number }
  seed: string[]
  bootstrap: boolean
  bootstrapExpect?: number
  raftVoters: 1 | 3 | 5
  /** SWIM timing profile (src/gossip/config.ts). */
  gossipProfile: GossipProfileName
  /** `gossipLan`'s fields over the profile, validated with it (undefined: the profile as it is). */
  gossipOverrides?: Partial<SwimConfig>
  /** `performance.raftMultiplier` (undefined: 1, the Raft timing of RAFT_DEFAULTS). */
  raftMultiplier?: number
  clusterKey?: string
  /** Undefined when DNS is off. */
  dns?: { host: string; port: number }
  /** Primary DNS zone, lowercase without the trailing dot (undefined: `peermesh`). */
  dnsDomain?: string
  services?: Record<string, unknown>[]
  logLevel: (typeof LOG_LEVELS)[number]
  /** Sidecar access log; undefined: "errors" (a line per failed request or connection). */
  accessLog?: 'off' | 'errors' | 'all'
  /** Undefined: no tracing (the default). */
  tracing?: { otlpEndpoint: string; sampleRatio: number }
  trustDomain?: string
  caKeyType?: 'ed25519' | 'ecdsa-p256'
  /** Leaf certificate lifetime in ms (undefined: 72 h). */
  leafTtlMs?: number
  acl: {
    enabled: boolean
    defaultPolicy: 'allow' | 'deny'
    anonymousRead: boolean
    initialManagementToken?: string
  }
  /**
   * The agent's token, read from `tokenFile` at start (trimmed): it enrolls the node (else the
   * initial management token does) and is what config-file services are granted with; see
   * Enrollment in docs/SECURITY.md. Local requests without a token are anonymous, not this.
   */
  defaultToken?: string
}

/** Formats the first zod issue as "field: problem" so the user knows what to fix. */
function describeIssue(err: z.ZodError, source: string): ConfigError {
  const issue = err.issues[0]!
  const field = issue.path.map(String).join('.')
  let msg = issue.message
  if (issue.code === 'unrecognized_keys') {
    const keys = (issue as { keys: string[] }).keys
    return new ConfigError(`${source}: unknown field "${keys.join('", "')}"`, keys[0])
  }
  if (issue.code === 'invalid_type') msg = `expected ${(issue as { expected: string }).expected}`
  if (source === 'flags') {
    // Flags are top-level fields, but for --initial-management-token-file (acl.*) and
    // --otlp-endpoint (tracing.*).
    const nested = field === 'acl.initialManagementTokenFile' || field === 'tracing.otlpEndpoint'
    const last = nested ? issue.path.at(-1) : issue.path[0]
    const flag = String(last ?? '').replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)
    return new ConfigError(`--${flag}: ${msg}`, field)
  }
  return new ConfigError(`${source}: field "${field}": ${msg}`, field)
}

export function validateAgentConfig(input: unknown, source: string): AgentConfigInput {
  const res = agentConfigSchema().safeParse(input)
  if (!res.success) throw describeIssue(res.error, source)
  return res.data
}

/** Largest config file read: far above any real one (a few KiB), and an end for /dev/zero. */
export const MAX_CONFIG_FILE_BYTES = 1024 * 1024
/** Largest token or secret file read. */
export const MAX_SECRET_FILE_BYTES = 64 * 1024

export function readConfigFile(path: string): AgentConfigInput {
  let text: string
  try {
    text = readFileBoundedSync(path, MAX_CONFIG_FILE_BYTES).toString('utf8')
  } catch (err) {
    throw new ConfigError(
      `cannot read config file ${path}: ${readProblem(err, MAX_CONFIG_FILE_BYTES)}`,
      undefined,
      {
        cause: err,
      },
    )
  }
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (err) {
    throw new ConfigError(`config file ${path} is not valid JSON: ${(err as Error).message}`, undefined, {
      cause: err,
    })
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    throw new ConfigError(`config file ${path} must hold a JSON object`)
  }
  return validateAgentConfig(json, `config file ${path}`)
}

/**
 * Merges file and flag input (flags win; `acl` field by field) and fills in defaults. `env` may
 * give the initial management token ({@link INITIAL_MANAGEMENT_TOKEN_ENV}) when no config or flag
 * does.
 */
export function resolveAgentConfig(
  file: AgentConfigInput,
  flags: AgentConfigInput,
  env: NodeJS.ProcessEnv = process.env,
): AgentConfig {
  const merged: AgentConfigInput = { ...file }
  for (const [k, v] of Object.entries(flags)) {
    if (v !== undefined) (merged as Record<string, unknown>)[k] = v
  }
  if (file.acl !== undefined || flags.acl !== undefined) merged.acl = mergeDefined(file.acl, flags.acl)
  if (file.tracing !== undefined || flags.tracing !== undefined)
    merged.tracing = mergeDefined(file.tracing, flags.tracing)
  const tracing = merged.tracing
  if (tracing !== undefined && tracing.otlpEndpoint === undefined)
    throw new ConfigError(
      'tracing.otlpEndpoint: required to turn tracing on (e.g. "http://127.0.0.1:4318"); remove "tracing" to leave it off',
      'tracing.otlpEndpoint',
    )
  const name = merged.name ?? sanitizeHostname(hostname())
  const http = parseHostPort(merged.http ?? DEFAULT_HTTP)!
  const aclEnabled = merged.acl?.enabled ?? true
  // Anyone who can reach a non-loopback API could change policy: only with tokens checked.
  if (!isLoopbackHost(http.host) && !aclEnabled)
    throw new ConfigError(
      `http: ${http.host} is not a loopback address; an API other machines can reach needs ACLs on (remove acl.enabled: false)`,
      'http',
    )
  const initialManagementToken = resolveInitialManagementToken(merged.acl, env)
  if (!aclEnabled && (initialManagementToken !== undefined || merged.tokenFile !== undefined))
    throw new ConfigError(
      'acl: an initial management token and tokenFile need acl.enabled (ACLs are off in this config)',
      'acl',
    )
  // Founders of a --bootstrap-expect cluster prove to each other that they hold the initial
  // management token; without it an agent could never found the cluster (docs/SECURITY.md).
  if (aclEnabled && merged.bootstrapExpect !== undefined && initialManagementToken === undefined)
    throw new ConfigError(
      `bootstrapExpect: with ACLs on, the agents that bootstrap a cluster together need the same initial management token: give each --initial-management-token-file FILE (a UUID, e.g. from uuidgen, in a 0600 file) or $${INITIAL_MANAGEMENT_TOKEN_ENV}, or start one agent with --bootstrap and run \`peermesh acl bootstrap\``,
      'bootstrapExpect',
    )
  const gossipProfile = merged.gossipProfile ?? 'lan'
  const gossipOverrides =
    merged.gossipLan === undefined ? undefined : gossipLanOverrides(gossipProfile, merged.gossipLan)
  return {
    name,
    datacenter: merged.datacenter ?? 'dc1',
    dataDir: merged.dataDir ?? join('.peermesh', name),
    listen: merged.listen ?? [DEFAULT_LISTEN],
    ...(merged.advertise !== undefined ? { advertise: merged.advertise } : {}),
    http,
    seed: merged.seed ?? [],
    bootstrap: merged.bootstrap ?? false,
    ...(merged.bootstrapExpect !== undefined ? { bootstrapExpect: merged.bootstrapExpect } : {}),
    raftVoters: (merged.raftVoters ?? DEFAULT_RAFT_VOTERS) as 1 | 3 | 5,
    gossipProfile,
    ...(gossipOverrides !== undefined ? { gossipOverrides } : {}),
    ...(merged.performance?.raftMultiplier !== undefined
      ? { raftMultiplier: merged.performance.raftMultiplier }
      : {}),
    ...(merged.clusterKey !== undefined ? { clusterKey: merged.clusterKey } : {}),
    logLevel: merged.logLevel ?? 'info',
    ...(merged.accessLog !== undefined ? { accessLog: merged.accessLog } : {}),
    ...(tracing?.otlpEndpoint !== undefined
      ? { tracing: { otlpEndpoint: tracing.otlpEndpoint, sampleRatio: tracing.sampleRatio ?? 1 } }
      : {}),
    ...(merged.dns === 'off' ? {} : { dns: parseHostPort(merged.dns ?? DEFAULT_DNS)! }),
    ...(merged.dnsDomain !== undefined
      ? { dnsDomain: merged.dnsDomain.toLowerCase().replace(/\.$/, '') }
      : {}),
    ...(merged.services !== undefined ? { services: merged.services } : {}),
    ...(merged.trustDomain !== undefined ? { trustDomain: merged.trustDomain } : {}),
    ...(merged.caKeyType !== undefined ? { caKeyType: merged.caKeyType } : {}),
    ...(merged.leafTtl !== undefined ? { leafTtlMs: Math.round(parseDuration(merged.leafTtl)!) } : {}),
    acl: {
      enabled: aclEnabled,
      defaultPolicy: merged.acl?.defaultPolicy ?? 'deny',
      anonymousRead: merged.acl?.anonymousRead ?? true,
      ...(initialManagementToken !== undefined ? { initialManagementToken } : {}),
    },
    ...(merged.tokenFile !== undefined
      ? { defaultToken: readSecretFile(merged.tokenFile, 'tokenFile') }
      : {}),
  }
}

/**
 * `gossipLan` as SWIM overrides (ms) of `profile`, checked with the profile's other settings: a
 * combination SWIM cannot run stops the agent here with the reason, not later in the gossip layer.
 * A new probe timeout carries the two settings tied to it: the timeout's upper bound for measured
 * round trips (`probeTimeoutMaxMs`, never below the timeout) and the lateness that counts as our
 * own stall (`lateTimerMs`, the profile's fraction of the timeout).
 */
function gossipLanOverrides(
  profile: GossipProfileName,
  lan: NonNullable<AgentConfigInput['gossipLan']>,
): Partial<SwimConfig> {
  const ms = (d: string | undefined): number | undefined =>
    d === undefined ? undefined : Math.round(parseDuration(d)!)
  const base = swimProfiles[profile]
  const o: Partial<SwimConfig> = {}
  const probeInterval = ms(lan.probeInterval)
  if (probeInterval !== undefined) o.probeIntervalMs = probeInterval
  const probeTimeout = ms(lan.probeTimeout)
  if (probeTimeout !== undefined) {
    o.probeTimeoutMs = probeTimeout
    o.probeTimeoutMaxMs = Math.max(base.probeTimeoutMaxMs, probeTimeout)
    o.lateTimerMs = Math.max(1, Math.round((base.lateTimerMs / base.probeTimeoutMs) * probeTimeout))
  }
  const gossipInterval = ms(lan.gossipInterval)
  if (gossipInterval !== undefined) o.gossipIntervalMs = gossipInterval
  if (lan.suspicionMult !== undefined) o.suspicionMult = lan.suspicionMult
  if (lan.gossipNodes !== undefined) o.gossipNodes = lan.gossipNodes
  if (lan.retransmitMult !== undefined) o.retransmitMult = lan.retransmitMult
  if (lan.relayedEvidence !== undefined)
    o.relayedEvidenceIntervals = lan.relayedEvidence ? base.relayedEvidenceIntervals : 0
  try {
    swimConfig(profile, o)
  } catch (err) {
    // In the names of this config (probeTimeout, not the SWIM core's probeTimeoutMs).
    const reason = (err instanceof Error ? err.message : String(err))
      .replace(/^invalid SWIM config: /, '')
      .replace(/\b(\w+)Ms\b/g, '$1')
    throw new ConfigError(`gossipLan: with gossipProfile ${profile}, ${reason}`, 'gossipLan')
  }
  return o
}

/** `b`'s defined fields over `a`'s. */
function mergeDefined<T extends object>(a: T | undefined, b: T | undefined): T {
  const out = { ...a } as Record<string, unknown>
  for (const [k, v] of Object.entries(b ?? {})) if (v !== undefined) out[k] = v
  return out as T
}

/** The initial management token: `initialManagementToken`, else its file, else the environment. */
function resolveInitialManagementToken(
  acl: AgentConfigInput['acl'],
  env: NodeJS.ProcessEnv,
): string | undefined {
  if (acl?.initialManagementToken !== undefined) return acl.initialManagementToken
  const field = 'acl.initialManagementTokenFile'
  const fromFile = acl?.initialManagementTokenFile
  const token =
    fromFile !== undefined
      ? readSecretFile(fromFile, field)
      : env[INITIAL_MANAGEMENT_TOKEN_ENV]?.trim() || undefined
  if (token === undefined) return undefined
  if (!UUID_PATTERN.test(token))
    throw new ConfigError(
      `${fromFile !== undefined ? `${field}: ${fromFile}` : `$${INITIAL_MANAGEMENT_TOKEN_ENV}`}: the initial management token must be a UUID`,
      fromFile !== undefined ? field : 'acl.initialManagementToken',
    )
  return token
}

/**
 * The secret in `path`, trimmed. A ConfigError naming `field` and the file when it is unreadable,
 * empty, or readable by group or others (a token is as secret as the cluster key: `chmod 600`).
 */
export function readSecretFile(path: string, field: string): string {
  let text: string
  let mode: number
  try {
    mode = statSync(path).mode
    text = readFileBoundedSync(path, MAX_SECRET_FILE_BYTES).toString('utf8').trim()
  } catch (err) {
    throw new ConfigError(
      `${field}: cannot read ${path}: ${readProblem(err, MAX_SECRET_FILE_BYTES)}`,
      field,
      {
        cause: err,
      },
    )
  }
  if (process.platform !== 'win32' && (mode & 0o077) !== 0)
    throw new ConfigError(
      `${field}: ${path} is readable by group or others (mode 0${(mode & 0o777).toString(8)}); it holds a secret: chmod 600 ${path}`,
      field,
    )
  if (text === '') throw new ConfigError(`${field}: ${path} is empty`, field)
  return text
}

function sanitizeHostname(h: string): string {
  const s = h.replace(/[^a-zA-Z0-9._-]/g, '-').slice(0, 63)
  return /^[a-zA-Z0-9]/.test(s) ? s : `node-${s}`.slice(0, 63)
}
