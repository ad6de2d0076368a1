import { createHash, createHmac, timingSafeEqual } from 'node:crypto'
import type { Logger } from 'pino'
import {
  ANONYMOUS_TOKEN_SECRET,
  FOUNDER_ACCESSOR_ID,
  NODE_IDENTITY_PATTERN,
  SERVICE_NAME_PATTERN,
} from '../../acl/constants.ts'
import { GLOBAL_MANAGEMENT_POLICY_ID, need, permissionDeniedMessage } from '../../acl/index.ts'
import type { NodeEnrollment } from '../../acl/types.ts'
import { type Clock, pause } from '../../common/clock.ts'
import { PeermeshError } from '../../common/errors.ts'
import { pack } from '../../common/msgpack.ts'
import type { ConfState } from '../../raft/index.ts'
import type { AclCommand, AclStateView } from '../../raft/policy/acl-state.ts'
import { encodePolicyCommand, PolicyErrorCodes } from '../../raft/policy/policy-commands.ts'
import { ACL_NOT_REPLICATED, type ResolvedToken } from '../api/acl-auth.ts'
import {
  attemptSignal,
  decodeLeaderReply,
  encodeLeaderReply,
  type LeaderReply,
  NOT_LEADER_CODE,
  type RequestChannel,
  refusal,
  refusalOf,
} from '../transport/leader-rpc.ts'
import type { RaftMember } from './components.ts'
import { BadForwardRequestError, NoLeaderError, RaftNotRunningError } from './errors.ts'
import type { ProposingNode } from './write-forwarding.ts'

/**
 * Node enrollment (issue #12): an agent proves to the leader, over the peer-id-authenticated
 * request channel (RAFT_RPC_PROTOCOL), that it holds a token with `node:write` on its node name;
 * the leader checks the token on its committed ACL state and only then proposes the binding
 * `acl.node.enroll {peerId, node, voter, accessorId}`. The same for a service grant
 * (`service:write` on the service, the requester enrolled). These commands never travel as a
 * forwarded write (write-forwarding.ts refuses them): the peer id in them is the authenticated
 * sender's, never a field a client chose.
 *
 * A token's secret never leaves the agent. An agent not in Raft knows no leader and asks gossip
 * members, which only need the cluster key; so what it sends is a proof made for the member it
 * asks: `tid`, a one-way lookup id of the secret (`tokenLookupId`), and `mac`, an HMAC-SHA256 keyed
 * by the secret over (version, request type, node or service, requester peer id, recipient peer
 * id) (`enrollmentMac`). The leader finds the token by `tid` and checks `mac` for the
 * authenticated sender and itself. A member asked by mistake learns nothing it can use: it cannot
 * send the proof as its own (the requester differs) nor pass it on to the leader (the recipient
 * differs).
 *
 * - `EnrollmentServer`: the leader's side of the typed requests.
 * - `LeaderFinder`: asks the leader from an agent that may not be in Raft yet (no leader known):
 *   it asks gossip members in turn and follows their "not the leader, ask X" answers.
 * - `AgentEnrollment`: enrolls this agent once per run, retrying with backoff.
 * - `foundersToEnroll`: which voters of the configuration the leader enrolls as founders.
 */

/**
 * A request as this agent makes it, holding the token's secret: answered in-process when this
 * agent leads, else sent as an `EnrollmentWireRequest` made for the member asked. Never sent as is.
 */
export type EnrollmentRequest =
  | { t: 'enroll'; node: string; token: string }
  | { t: 'grant'; service: string; token: string }

/**
 * Wire shape of the requests (RAFT_RPC_PROTOCOL, beside `{ t: 'write' }`): a proof of the token
 * made for one requester and one recipient (`enrollmentProof`), never the secret.
 */
export type EnrollmentWireRequest =
  | { t: 'enroll'; node: string; tid: string; mac: string }
  | { t: 'grant'; service: string; tid: string; mac: string }

/**
 * A reply: the Raft index that holds the binding (0: nothing was needed), or a refusal. A leader
 * answering a proof over the wire adds `ack` (ENROLLMENT_ACK_DOMAIN): what the asking agent checks
 * before it believes the answer (`LeaderFinder.ask`).
 */
export type EnrollmentReply = LeaderReply<{ index: number; ack?: string }>

/** The token or the requester does not qualify; nothing was proposed. */
export class PermissionDeniedError extends PeermeshError {
  static override readonly code = PolicyErrorCodes.permissionDenied
}

/** The leader's ACL state cannot judge a token yet (not bootstrapped, or catching up): retry. */
export class AclNotReadyError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_ACL_NOT_READY'
}

/**
 * Pause between asks that found no leader or a leader not ready (ACLs not bootstrapped): a
 * fraction of an election, and slow enough that agents waiting for a new cluster do not load it.
 */
export const ENROLLMENT_RETRY_PAUSE_MS = 250
/** One round of asking for an enrollment; then the agent backs off and asks again. */
export const ENROLLMENT_ROUND_MS = 10_000
/** First pause after a refused enrollment (doubles up to the max): a token fixed later works soon. */
export const ENROLLMENT_MIN_BACKOFF_MS = 500
/** Longest pause between enrollment rounds: an agent whose token is fixed joins within it. */
export const ENROLLMENT_MAX_BACKOFF_MS = 15_000

export function isEnrollmentRequestType(t: unknown): t is EnrollmentRequest['t'] {
  return t === 'enroll' || t === 'grant'
}

// ---- the proof on the wire ----------------------------------------------------------------------

/** Domain and version of the MAC input: a MAC made for anything else never verifies here. */
export const ENROLLMENT_PROOF_DOMAIN = 'peermesh/enrollment-proof/v1'
/**
 * Domain of the leader's answer to a proof (`ack`): the same fields, keyed by the same secret,
 * with the leader that answered as the recipient. Only a holder of the token's secret (the cluster
 * whose ACL state has the token) can make it, so a joining agent believes it is enrolled, and
 * takes its first Raft configuration, only from a member that proved it.
 */
export const ENROLLMENT_ACK_DOMAIN = 'peermesh/enrollment-ack/v1'
/** Domain prefix of a token lookup id (a NUL byte separates it from the secret). */
export const TOKEN_LOOKUP_ID_DOMAIN = 'peermesh/token-lookup-id/v1'
/** base64url of 32 bytes (SHA-256, HMAC-SHA256), unpadded. */
const DIGEST_B64 = /^[A-Za-z0-9_-]{43}$/

/**
 * The lookup id of a token: base64url(SHA-256(TOKEN_LOOKUP_ID_DOMAIN || 0x00 || secret)). One-way:
 * it names the token to the leader without revealing the secret (SecretIDs are random UUIDs).
 */
export function tokenLookupId(secret: string): string {
  return createHash('sha256')
    .update(TOKEN_LOOKUP_ID_DOMAIN, 'utf8')
    .update(Buffer.of(0))
    .update(secret, 'utf8')
    .digest('base64url')
}

/** What a proof is made for: the request, who sends it and who it is sent to. */
export interface EnrollmentProofSubject {
  t: EnrollmentRequest['t']
  /** The node name (`enroll`) or the service (`grant`). */
  name: string
  /** Peer id of the agent asking (the leader checks it is the authenticated sender). */
  requester: string
  /** Peer id of the member asked (the leader checks it is itself). */
  recipient: string
}

/**
 * HMAC-SHA256 keyed by the secret (UTF-8) over the fields ENROLLMENT_PROOF_DOMAIN, t, name,
 * requester, recipient, each as its UTF-8 byte length (uint32 big-endian) then its bytes.
 */
export function enrollmentMac(
  secret: string,
  s: EnrollmentProofSubject,
  domain = ENROLLMENT_PROOF_DOMAIN,
): Buffer {
  const mac = createHmac('sha256', Buffer.from(secret, 'utf8'))
  for (const field of [domain, s.t, s.name, s.requester, s.recipient]) {
    const bytes = Buffer.from(field, 'utf8')
    const len = Buffer.alloc(4)
    len.writeUInt32BE(bytes.length)
    mac.update(len).update(bytes)
  }
  return mac.digest()
}

/** The wire request proving `req`'s token, made for `requester` asking `recipient`. */
export function enrollmentProof(
  req: EnrollmentRequest,
  requester: string,
  recipient: string,
): EnrollmentWireRequest {
  const tid = tokenLookupId(req.token)
  const name = subjectName(req)
  const mac = enrollmentMac(req.token, { t: req.t, name, requester, recipient }).toString('base64url')
  return req.t === 'enroll' ? { t: req.t, node: name, tid, mac } : { t: req.t, service: name, tid, mac }
}

/** Whether `mac` (base64url) is the MAC of `secret` for `subject`; constant time in the MAC. */
export function verifyEnrollmentMac(
  secret: string,
  subject: EnrollmentProofSubject,
  mac: string,
  domain = ENROLLMENT_PROOF_DOMAIN,
): boolean {
  const got = Buffer.from(mac, 'base64url')
  const want = enrollmentMac(secret, subject, domain)
  return got.length === want.length && timingSafeEqual(got, want)
}

function subjectName(req: EnrollmentAsk): string {
  return req.t === 'enroll' ? req.node : req.service
}

const WIRE_KEYS: Record<EnrollmentRequest['t'], ReadonlySet<string>> = {
  enroll: new Set(['t', 'node', 'tid', 'mac']),
  grant: new Set(['t', 'service', 'tid', 'mac']),
}

/**
 * The wire request in `o`, or undefined when it is not one (wrong types, names, sizes, or any
 * other field: a request carrying a `token` is refused, never read).
 */
export function parseEnrollmentRequest(
  o: Record<string, unknown> | undefined,
): EnrollmentWireRequest | undefined {
  if (o === undefined) return undefined
  const { t, tid, mac } = o
  if (t !== 'enroll' && t !== 'grant') return undefined
  if (Object.keys(o).some((k) => !WIRE_KEYS[t].has(k))) return undefined
  if (typeof tid !== 'string' || !DIGEST_B64.test(tid)) return undefined
  if (typeof mac !== 'string' || !DIGEST_B64.test(mac)) return undefined
  if (t === 'enroll') {
    const node = o['node']
    if (typeof node !== 'string' || !NODE_IDENTITY_PATTERN.test(node)) return undefined
    return { t, node, tid, mac }
  }
  const service = o['service']
  if (typeof service !== 'string' || !SERVICE_NAME_PATTERN.test(service)) return undefined
  return { t, service, tid, mac }
}

export function encodeEnrollmentRequest(req: EnrollmentWireRequest): Uint8Array {
  return pack(req)
}

/** Whether a token may enroll a voter: its `Voter` flag, or a management token. */
export function tokenMayEnrollVoter(
  token: { voter: boolean; policies: readonly string[] } | undefined,
): boolean {
  return token !== undefined && (token.voter || token.policies.includes(GLOBAL_MANAGEMENT_POLICY_ID))
}

// ---- the leader's side --------------------------------------------------------------------------

/** What the server needs of the ACL system: whether it is on, and secrets to tokens (throws when unknown). */
export interface TokenResolver {
  readonly config: { readonly enabled: boolean }
  /** Throws an error with `status` 503 while the state is catching up, else 403, for an unknown secret. */
  resolve(secret: string): ResolvedToken
  /** Whether the state has caught up (an unknown token may still be on its way while not). */
  caughtUp(): boolean
}

export interface EnrollmentServerComponents {
  /** This agent's peer id: a proof must be made for it as the recipient. */
  self: string
  /** The running node, or undefined while stopping. */
  node(): ProposingNode | undefined
  /**
   * The committed ACL state of this agent (checked only while it leads); `index` and `tokens`
   * build the lookup of tokens by `tid`, rebuilt after each ACL change.
   */
  state: Pick<AclStateView, 'index' | 'tokens' | 'bootstrapIndex' | 'enrollment' | 'serviceGrants' | 'token'>
  acl: TokenResolver
  clock: Clock
}

/** The last refused request (for the log, without its token). */
export interface EnrollmentRefusal {
  from: string
  what: string
  accessorId: string
}

/** What is asked for, without the token or its proof. */
type EnrollmentAsk = { t: 'enroll'; node: string } | { t: 'grant'; service: string }

const PROOF_REFUSED = 'ACL not found, or an enrollment proof not made for this requester and this leader'

/**
 * The leader's side of `enroll` and `grant`. Every refusal is a coded reply, never a throw;
 * `enrollDenied` / `grantDenied` count the ones refused for their token, proof or requester
 * (metric `peermesh_raft_inputs_refused_total{reason="enroll_denied"|"grant_denied"}`).
 */
export class EnrollmentServer {
  readonly stats = { enrolled: 0, granted: 0, enrollDenied: 0, grantDenied: 0, malformed: 0 }
  /** The last denied request (logged once per interval by the Raft module). */
  lastDenied: EnrollmentRefusal | undefined
  /** Token lookup id -> the token's secret and AccessorID, for the ACL state at `index`. */
  private lookup: { index: number; byTid: Map<string, { secret: string; accessorId: string }> } | undefined

  constructor(
    private readonly components: EnrollmentServerComponents,
    private readonly settings: { attemptTimeoutMs: number },
  ) {}

  /** The answer to a wire request (`EnrollmentWireRequest`) from the authenticated `from`. */
  async serve(
    from: string,
    o: Record<string, unknown> | undefined,
    signal: AbortSignal,
  ): Promise<Uint8Array> {
    const req = parseEnrollmentRequest(o)
    if (req === undefined) {
      this.stats.malformed++
      return encodeLeaderReply(refusal(BadForwardRequestError.code, 'malformed enrollment request'))
    }
    return encodeLeaderReply(await this.answerProof(from, req, signal))
  }

  /**
   * The answer to a proof `from` sent: its token found by `tid`, its `mac` checked for requester
   * `from` and recipient this agent; then judged as `answer` judges the token.
   */
  async answerProof(from: string, req: EnrollmentWireRequest, signal: AbortSignal): Promise<EnrollmentReply> {
    const node = this.leading()
    if ('ok' in node) return node
    const token = this.tokenOf(req.tid)
    const subject = { t: req.t, name: subjectName(req), requester: from, recipient: this.components.self }
    if (token === undefined) {
      // It may exist and not have reached this agent yet: "retry", as for an unknown secret.
      if (!this.components.acl.caughtUp()) return refusal(AclNotReadyError.code, ACL_NOT_REPLICATED)
      return this.denied(from, req, '', PROOF_REFUSED)
    }
    if (!verifyEnrollmentMac(token.secret, subject, req.mac))
      return this.denied(from, req, token.accessorId, PROOF_REFUSED)
    const r = await this.decide(from, node, req, token.secret, signal)
    if (!r.ok) return r
    // Proves this answer to the asker: only a holder of the token's secret can make it.
    return { ...r, ack: enrollmentMac(token.secret, subject, ENROLLMENT_ACK_DOMAIN).toString('base64url') }
  }

  /** The answer to this agent's own request, holding the secret (when this agent leads). */
  async answer(from: string, req: EnrollmentRequest, signal: AbortSignal): Promise<EnrollmentReply> {
    const node = this.leading()
    if ('ok' in node) return node
    return this.decide(from, node, req, req.token, signal)
  }

  /** The node when this agent leads with ACLs it can judge tokens on, else the answer. */
  private leading(): ProposingNode | EnrollmentReply {
    const node = this.components.node()
    if (node === undefined) return refusal(RaftNotRunningError.code, 'stopping')
    if (!node.isLeader()) return refusal(NOT_LEADER_CODE, 'not the leader', node.leader())
    const { acl, state } = this.components
    // ACLs off: every key holder is eligible; there is nothing to record.
    if (!acl.config.enabled) return { ok: true, index: 0 }
    if (state.bootstrapIndex === 0)
      return refusal(AclNotReadyError.code, 'ACLs are not bootstrapped yet; retry')
    return node
  }

  /** The token whose secret has lookup id `tid` in the committed ACL state. */
  private tokenOf(tid: string): { secret: string; accessorId: string } | undefined {
    const { state } = this.components
    let lookup = this.lookup
    if (lookup?.index !== state.index) {
      // Rebuilt at the first proof after an ACL change: one hash per token.
      const byTid = new Map<string, { secret: string; accessorId: string }>()
      for (const t of state.tokens())
        byTid.set(tokenLookupId(t.secretId), { secret: t.secretId, accessorId: t.accessorId })
      lookup = { index: state.index, byTid }
      this.lookup = lookup
    }
    return lookup.byTid.get(tid)
  }

  private async decide(
    from: string,
    node: ProposingNode,
    req: EnrollmentAsk,
    secret: string,
    signal: AbortSignal,
  ): Promise<EnrollmentReply> {
    let who: ResolvedToken
    try {
      who = this.components.acl.resolve(secret)
    } catch (err) {
      if ((err as { status?: number }).status === 503)
        return refusal(AclNotReadyError.code, (err as Error).message)
      return this.denied(from, req, '', (err as Error).message)
    }
    const cmd = req.t === 'enroll' ? this.enrollCommand(from, req, who) : this.grantCommand(from, req, who)
    if ('ok' in cmd) return cmd
    const attempt = attemptSignal(this.components.clock, signal, this.settings.attemptTimeoutMs)
    try {
      const r = await node.propose(encodePolicyCommand(cmd), { signal: attempt.signal })
      if (!r.result.ok) return refusal(r.result.code, r.result.message)
      if (req.t === 'enroll') this.stats.enrolled++
      else this.stats.granted++
      return { ok: true, index: r.index }
    } catch (err) {
      return refusalOf(err)
    } finally {
      attempt.done()
    }
  }

  private enrollCommand(
    from: string,
    req: Extract<EnrollmentAsk, { t: 'enroll' }>,
    who: ResolvedToken,
  ): AclCommand | EnrollmentReply {
    const [check, what] = need.nodeWrite(req.node)
    if (!check(who.authorizer))
      return this.denied(from, req, who.accessorId, permissionDeniedMessage(who.accessorId, what))
    const voter = tokenMayEnrollVoter(who.token)
    const cur = this.components.state.enrollment(from)
    // Asked again (a retry, a restart): nothing to propose.
    if (
      cur !== undefined &&
      cur.node === req.node &&
      cur.voter === voter &&
      cur.accessorId === who.accessorId
    )
      return { ok: true, index: cur.createIndex }
    return { op: 'acl.node.enroll', peerId: from, node: req.node, voter, accessorId: who.accessorId }
  }

  private grantCommand(
    from: string,
    req: Extract<EnrollmentAsk, { t: 'grant' }>,
    who: ResolvedToken,
  ): AclCommand | EnrollmentReply {
    const { state, acl } = this.components
    const enrollment = state.enrollment(from)
    if (enrollment === undefined)
      return this.denied(
        from,
        req,
        who.accessorId,
        `peer ${from} is not enrolled; it cannot be granted a service`,
      )
    const [check, what] = need.serviceWrite(req.service)
    if (!check(who.authorizer))
      return this.denied(from, req, who.accessorId, permissionDeniedMessage(who.accessorId, what))
    const cur = state.serviceGrants(from).find((g) => g.service === req.service)
    if (cur !== undefined && cur.accessorId === who.accessorId) return { ok: true, index: cur.createIndex }
    // The enrollment's own token already grants it: nothing to record.
    if (tokenGrantsService(state, acl, enrollment, req.service)) return { ok: true, index: 0 }
    return { op: 'acl.service.grant', peerId: from, service: req.service, accessorId: who.accessorId }
  }

  private denied(from: string, req: EnrollmentAsk, accessorId: string, message: string): EnrollmentReply {
    if (req.t === 'enroll') this.stats.enrollDenied++
    else this.stats.grantDenied++
    this.lastDenied = { from, what: `${req.t} ${subjectName(req)}`, accessorId }
    return refusal(PermissionDeniedError.code, message)
  }
}

/** Whether the token that enrolled `enrollment` (still existing) grants `service:write` on `service`. */
export function tokenGrantsService(
  state: Pick<AclStateView, 'token'>,
  acl: TokenResolver,
  enrollment: NodeEnrollment,
  service: string,
): boolean {
  const token = state.token(enrollment.accessorId)
  if (token === undefined) return false
  try {
    return need.serviceWrite(service)[0](acl.resolve(token.secretId).authorizer)
  } catch {
    return false
  }
}

// ---- asking the leader from anywhere ------------------------------------------------------------

export interface LeaderFinderComponents {
  self: string
  /** This agent's Raft view: whether it leads, and the leader it knows (none when not a member). */
  node: { isLeader(): boolean; leader(): string | undefined }
  /** Gossip's members: asked in turn when no leader is known. */
  members: { members(): readonly Pick<RaftMember, 'id' | 'status'>[] }
  channel: RequestChannel
  /** The answer when this agent leads. */
  local(req: EnrollmentRequest, signal: AbortSignal): Promise<EnrollmentReply>
  /**
   * Told of each member whose answer proved it holds the token's secret (a valid `ack`): the
   * leader of the cluster this agent belongs to, as far as this agent can know (RaftModule lets
   * only such a member give a fresh agent its first configuration).
   */
  proven?(peer: string): void
  clock: Clock
  log?: Pick<Logger, 'debug' | 'warn'>
}

export interface LeaderFinderSettings {
  attemptTimeoutMs: number
  /** Pause after an attempt that found no leader. */
  retryPauseMs: number
}

/** Codes after which the request is final: asking again gives the same answer. */
const FINAL_CODES: ReadonlySet<string> = new Set([
  PermissionDeniedError.code,
  PolicyErrorCodes.invalidCommand,
  PolicyErrorCodes.tooLarge,
  PolicyErrorCodes.notPermitted,
  PolicyErrorCodes.notFound,
  BadForwardRequestError.code,
])

/**
 * Sends a request to the leader from an agent that may know none (it is not in the Raft
 * configuration yet, so no leader talks to it): the leader it knows, else the one the last member
 * named when it answered "not the leader", else the next alive gossip member in id order.
 * Returns the leader's answer (or a final refusal); throws NoLeaderError when the signal fires.
 */
export class LeaderFinder {
  private cursor = 0
  /** Answers "yes" without a valid ack (from a member that does not hold the token): ignored. */
  unproven = 0

  constructor(
    private readonly components: LeaderFinderComponents,
    private readonly settings: LeaderFinderSettings,
  ) {}

  async ask(req: EnrollmentRequest, options: { signal: AbortSignal }): Promise<EnrollmentReply> {
    const { self, node, channel, clock, log } = this.components
    const { signal } = options
    let hint: string | undefined
    let redirects = 0
    for (;;) {
      if (signal.aborted)
        throw new NoLeaderError(`no raft leader answered the ${req.t} request before the deadline`)
      let reply: EnrollmentReply | undefined
      if (node.isLeader()) {
        reply = await this.components.local(req, signal).catch(refusalOf)
      } else {
        const target = node.leader() ?? hint ?? this.nextMember()
        hint = undefined
        if (target !== undefined) {
          const attempt = attemptSignal(clock, signal, this.settings.attemptTimeoutMs)
          try {
            // A proof made for this target: the secret stays here, and the proof is of no use to
            // anyone but this agent asking this target.
            const bytes = encodeEnrollmentRequest(enrollmentProof(req, self, target))
            const answer = decodeLeaderReply(
              await channel.request(target, bytes, { signal: attempt.signal }),
              decodeIndex,
            )
            reply = answer
            // An answer "yes" is believed only with the leader's ack: anyone in gossip can say yes.
            if (answer?.ok === true) {
              const subject = { t: req.t, name: subjectName(req), requester: self, recipient: target }
              if (
                answer.ack !== undefined &&
                verifyEnrollmentMac(req.token, subject, answer.ack, ENROLLMENT_ACK_DOMAIN)
              ) {
                this.components.proven?.(target)
              } else {
                this.unproven++
                log?.warn(
                  { from: target, t: req.t },
                  "an answer without the leader's proof of the token; ignored",
                )
                reply = undefined
              }
            }
          } catch (err) {
            log?.debug({ to: target, err: (err as Error).message }, `${req.t}: attempt failed; retrying`)
          } finally {
            attempt.done()
          }
          // "Not the leader; ask X": follow it at once (a few times in a row, then pause).
          if (
            reply?.ok === false &&
            reply.code === NOT_LEADER_CODE &&
            reply.leader !== undefined &&
            reply.leader !== target
          ) {
            hint = reply.leader
            if (++redirects <= 3) continue
          }
        }
      }
      if (reply !== undefined && (reply.ok || FINAL_CODES.has(reply.code))) return reply
      redirects = 0
      await pause(clock, this.settings.retryPauseMs, signal)
    }
  }

  /** The next alive member other than this agent, round robin in id order. */
  private nextMember(): string | undefined {
    const self = this.components.self
    const ids = this.components.members
      .members()
      .filter((m) => m.id !== self && m.status === 'alive')
      .map((m) => m.id)
      .sort()
    if (ids.length === 0) return undefined
    return ids[this.cursor++ % ids.length]
  }
}

function decodeIndex(o: Record<string, unknown>): { index: number; ack?: string } | undefined {
  const i = o['index']
  if (typeof i !== 'number' || !Number.isSafeInteger(i) || i < 0) return undefined
  const ack = o['ack']
  if (ack === undefined) return { index: i }
  return typeof ack === 'string' && DIGEST_B64.test(ack) ? { index: i, ack } : undefined
}

// ---- the agent's own enrollment -----------------------------------------------------------------

export interface AgentEnrollmentSettings {
  /** This agent's node name (its config `name`). */
  node: string
  /** The agent token (`tokenFile`, else `acl.initialManagementToken`). */
  token: string
  /** Time limit of one round of asking (then it backs off and asks again). */
  roundTimeoutMs: number
  /** First pause after a refusal, doubled each time up to `maxBackoffMs`. */
  minBackoffMs: number
  maxBackoffMs: number
}

/**
 * Enrolls this agent once per run: asks the leader (`LeaderFinder`) until it answers ok; after a
 * refusal (the token lacks `node:write` on the name, or is unknown) it warns once per distinct
 * reason and asks again with exponential backoff, so that a token created or fixed later works
 * without a restart.
 */
export class AgentEnrollment {
  private controller?: AbortController
  private done = false
  private asking = false
  private running?: Promise<void>

  constructor(
    private readonly components: { finder: Pick<LeaderFinder, 'ask'>; clock: Clock; log: Logger },
    private readonly settings: AgentEnrollmentSettings,
  ) {}

  /** Whether the leader confirmed this agent's enrollment during this run. */
  get confirmed(): boolean {
    return this.done
  }

  start(): void {
    if (this.controller !== undefined) return
    this.controller = new AbortController()
    this.running = this.loop(this.controller.signal)
  }

  async stop(): Promise<void> {
    this.controller?.abort()
    await this.running
  }

  /**
   * Asks again, as at the start, unless it is asking now: the answer proves the leader that gives
   * it (`LeaderFinderComponents.proven`), for when leadership moved since the last answer.
   */
  reprove(): void {
    const c = this.controller
    if (c === undefined || c.signal.aborted || this.asking) return
    this.running = this.loop(c.signal)
  }

  private async loop(stop: AbortSignal): Promise<void> {
    this.asking = true
    try {
      await this.ask(stop)
    } finally {
      this.asking = false
    }
  }

  private async ask(stop: AbortSignal): Promise<void> {
    const { finder, clock, log } = this.components
    const { node, token } = this.settings
    let backoff = this.settings.minBackoffMs
    let warned = ''
    while (!stop.aborted) {
      const round = AbortSignal.any([stop, timeoutSignal(clock, this.settings.roundTimeoutMs, stop)])
      let reply: EnrollmentReply | undefined
      try {
        reply = await finder.ask({ t: 'enroll', node, token }, { signal: round })
      } catch {
        // No leader answered this round: ask again.
      }
      if (stop.aborted) return
      if (reply?.ok === true) {
        this.done = true
        log.info({ node, index: reply.index }, 'enrolled in the control plane')
        return
      }
      if (reply !== undefined && reply.message !== warned) {
        warned = reply.message
        log.warn(
          { node, code: reply.code, reason: reply.message },
          'enrollment refused; retrying with backoff',
        )
      }
      await pause(clock, backoff, stop)
      backoff = Math.min(backoff * 2, this.settings.maxBackoffMs)
    }
  }
}

/** A signal aborted after `ms` on `clock` (its timer dropped when `until` aborts). */
function timeoutSignal(clock: Clock, ms: number, until: AbortSignal): AbortSignal {
  const c = new AbortController()
  const cancel = clock.setTimeout(() => c.abort(new DOMException('the round timed out', 'TimeoutError')), ms)
  until.addEventListener('abort', cancel, { once: true })
  c.signal.addEventListener('abort', () => until.removeEventListener('abort', cancel), { once: true })
  return c.signal
}

// ---- founders -----------------------------------------------------------------------------------

/**
 * The voters of the configuration the leader enrolls as founders (FOUNDER_ACCESSOR_ID, voter): a
 * voter without an enrollment, not revoked (an operator's revoke is not undone), whose node name
 * gossip knows (self: its own) and no other peer holds. In id order, so every leader picks alike.
 */
export function foundersToEnroll(
  conf: Pick<ConfState, 'voters'>,
  state: Pick<AclStateView, 'enrollment' | 'revoked'> & {
    enrollmentByNode(node: string): NodeEnrollment | undefined
  },
  nameOf: (id: string) => string | undefined,
): AclCommand[] {
  const out: AclCommand[] = []
  for (const id of [...conf.voters].sort()) {
    if (state.enrollment(id) !== undefined || state.revoked(id)) continue
    const node = nameOf(id)
    if (node === undefined || !NODE_IDENTITY_PATTERN.test(node)) continue
    if (state.enrollmentByNode(node) !== undefined) continue
    out.push({ op: 'acl.node.enroll', peerId: id, node, voter: true, accessorId: FOUNDER_ACCESSOR_ID })
  }
  return out
}

/** The secret a grant request is proven with: the caller's, else the agent's token, else anonymous. */
export function grantSecret(token: string | undefined, defaultToken: string | undefined): string {
  return token ?? defaultToken ?? ANONYMOUS_TOKEN_SECRET
}
