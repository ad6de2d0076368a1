import type { Logger } from 'pino'
import type { Clock } from '../../common/clock.ts'
import type { PolicyCommand, PolicyResult, RequestId } from '../../raft/index.ts'
import { pack, unpackRecord } from '../../common/msgpack.ts'
import {
  type PolicyErrorCode,
  PolicyErrorCodes,
  type PolicyRefusal,
  policyRefusal,
  preparePolicyCommand,
} from '../../raft/policy/policy-commands.ts'
import {
  attemptSignal,
  encodeLeaderReply,
  type LeaderReply,
  type LeaderRpc,
  NOT_LEADER_CODE,
  refusal,
  refusalOf,
} from '../transport/leader-rpc.ts'
import { BadForwardRequestError, NoLeaderError, RaftNotRunningError, WriteTimeoutError } from './errors.ts'

/**
 * A write forwarded to the leader: a request, not a log entry. The leader checks the command
 * with the store's own rules (`preparePolicyCommand`), refuses what a forward may not ask for,
 * encodes it canonically and only then proposes (and signs) it. Wire shape of RPC protocol
 * `/peermesh/raft/rpc/3` (`/2` carried the encoded entry as `{ t: 'propose', data }`).
 */
interface ForwardRequest {
  t: 'write'
  /** The command as a map (decoded with the strict decoder, checked as data by the leader). */
  cmd: unknown
  /** Request id (for dedupe): the forwarding agent's client id and sequence. */
  clientId: string
  seq: number
  /**
   * The caller's token, carried to the leader, which authorizes the command with it on its
   * committed ACL state (see `ForwardedWriteServer.answer`).
   */
  token?: string
}

/** Longest client id and token a forward may carry. */
const MAX_CLIENT_ID = 256
const MAX_TOKEN = 512
/** Room for the request's fields around the command (`maxCommandBytes` bounds the command). */
const REQUEST_OVERHEAD_BYTES = 4096

/**
 * Operations only the leader's own modules propose, never through a forward: `ca.*` (the CA
 * manager) and the enrollment bindings (the enrollment server, after checking a typed request).
 */
export const isLeaderOnly = (op: unknown): boolean =>
  typeof op === 'string' && (op.startsWith('ca.') || ENROLLMENT_OPS.has(op))

/** Proposed only by the enrollment server (./enrollment.ts), never through `write`, even on the leader. */
const ENROLLMENT_OPS: ReadonlySet<string> = new Set(['acl.node.enroll', 'acl.service.grant'])

export interface WriteResult {
  index: number
  result: PolicyResult
}

/** What forwarding needs of the Raft node. */
export interface ProposingNode {
  isLeader(): boolean
  leader(): string | undefined
  propose(
    data: Uint8Array,
    options: { requestId?: RequestId; signal?: AbortSignal },
  ): Promise<{ index: number; result: PolicyResult }>
}

const SIGNATURE_REFUSED: PolicyErrorCode = PolicyErrorCodes.signature

export interface WriteForwarderComponents {
  /** Asks the leader (proposes here when this agent leads). */
  rpc: LeaderRpc
  node: ProposingNode
  clock: Clock
  log: Logger
}

export interface WriteForwarderSettings {
  /** Unique per agent run: a restarted agent must not hit its old dedupe records. */
  clientPrefix: string
  /** Times a write refused for its CA signature is sent again. */
  signatureRetries: number
  retryPauseMs: number
}

/**
 * The client side of writes: replicates a policy command through the leader, wherever it is,
 * with one request id for every attempt, so that it takes effect at most once.
 */
export class WriteForwarder {
  private seq = 0
  /** `refused`: writes refused here before anything was sent (invalid, too large, not forwardable). */
  readonly stats = { proposals: 0, signatureRetries: 0, refused: 0 }

  constructor(
    private readonly components: WriteForwarderComponents,
    private readonly settings: WriteForwarderSettings,
  ) {}

  /**
   * Resolves with the state machine's result once committed and applied on the leader. Rejects
   * with NoLeaderError (nothing sent) or WriteTimeoutError (maybe applied) when the signal fires.
   */
  async write(cmd: PolicyCommand, options: { signal: AbortSignal; token?: string }): Promise<WriteResult> {
    // Checked here with the store's rules, so a write the store would refuse for its content is
    // refused at once (index 0: nothing proposed) and never costs a log entry.
    const prepared = preparePolicyCommand(cmd)
    if (!prepared.ok) return this.refuse(prepared)
    // A CA change comes only from the leader's CA manager, proposed where it leads: one that finds
    // this agent no longer leading fails, and the CA manager's next check starts over.
    if (
      ENROLLMENT_OPS.has(prepared.cmd.op) ||
      (isLeaderOnly(prepared.cmd.op) && !this.components.node.isLeader())
    )
      return this.refuse(
        policyRefusal(PolicyErrorCodes.notForwardable, `${prepared.cmd.op} is not forwarded`),
      )
    const rid: RequestId = { clientId: `${this.settings.clientPrefix}${++this.seq}`, seq: 1 }
    const request: ForwardRequest = { t: 'write', cmd: prepared.cmd, clientId: rid.clientId, seq: rid.seq }
    if (options.token !== undefined) request.token = options.token
    this.stats.proposals++
    for (let attempt = 1; ; attempt++) {
      const out = await this.writeOnce(prepared.data, request, options.signal)
      // A leader signs with the CA state it has applied; an entry it appended right behind a CA
      // change still in flight is refused everywhere, changing nothing, not even the dedupe table:
      // the same request is safe to send again once the leader has caught up.
      const r = out.result
      if (r.ok || r.code !== SIGNATURE_REFUSED || attempt >= this.settings.signatureRetries) return out
      this.stats.signatureRetries++
      this.components.log.debug(
        { index: out.index, reason: r.message },
        'write refused for its signature; sending it again',
      )
      await this.components.rpc.pause(options.signal)
    }
  }

  private refuse(result: PolicyRefusal): WriteResult {
    this.stats.refused++
    return { index: 0, result }
  }

  private async writeOnce(
    data: Uint8Array,
    request: ForwardRequest,
    signal: AbortSignal,
  ): Promise<WriteResult> {
    const { node, rpc } = this.components
    const rid: RequestId = { clientId: request.clientId, seq: request.seq }
    if (node.isLeader()) {
      // The common case on the leader: propose here within the caller's deadline, without the
      // retry loop's per-attempt timer. Any failure (leadership lost, the entry overwritten) goes
      // on through the loop below with the same request id, so the write still applies at most once.
      try {
        return await node.propose(data, { requestId: rid, signal })
      } catch {
        if (signal.aborted)
          throw new WriteTimeoutError(
            `write not confirmed before the deadline (leader ${node.leader() ?? 'unknown'}); it may still apply, once`,
          )
      }
    }
    const reply = await rpc.call<WriteResult>(
      {
        what: 'write',
        request: encodeForward(request),
        decode: decodeWriteResult,
        local: async (attempt) => ({
          ok: true,
          ...(await node.propose(data, { requestId: rid, signal: attempt })),
        }),
        // Every refusal is transient here (a policy refusal comes back as an ok reply's result).
        retryOn: () => true,
        giveUp: ({ sent, leader }) =>
          sent
            ? new WriteTimeoutError(
                `write not confirmed before the deadline (leader ${leader ?? 'unknown'}); it may still apply, once`,
              )
            : new NoLeaderError('no raft leader accepted the write before the deadline'),
      },
      { signal },
    )
    // Not reached: every refusal is retried until the signal fires.
    if (!reply.ok) throw new NoLeaderError(`write refused: ${reply.message}`)
    return { index: reply.index, result: reply.result }
  }
}

export interface ForwardedWriteServerComponents {
  /** The running node, or undefined while stopping. */
  node(): ProposingNode | undefined
  clock: Clock
  /**
   * Whether the caller's token may write `cmd`, on this leader's committed ACL state: a refusal
   * (nothing is proposed) or undefined. Absent: every forward is accepted (ACLs off).
   */
  authorize?: (cmd: PolicyCommand, token: string | undefined) => PolicyRefusal | undefined
}

/**
 * The leader's side of forwarded writes. Bad input gets a refusal, never a throw, and is counted:
 * `malformed` (the request does not decode or has the wrong shape: a coded refusal), and, as a
 * result with index 0 (nothing proposed, the client gets the store's code): `invalid` and
 * `tooLarge` (the command breaks the store's rules), `notForwardable` (a `ca.*` operation, or an
 * enrollment binding: those come only from the leader's enrollment server).
 */
export class ForwardedWriteServer {
  readonly stats = { proposed: 0, malformed: 0, invalid: 0, tooLarge: 0, notForwardable: 0, denied: 0 }

  constructor(
    private readonly components: ForwardedWriteServerComponents,
    private readonly settings: { attemptTimeoutMs: number; maxCommandBytes: number },
  ) {}

  async serve(bytes: Uint8Array, signal: AbortSignal): Promise<Uint8Array> {
    return this.serveRecord(bytes.length, this.decode(bytes), signal)
  }

  /** The request as a map (undefined: over the size limit or not a map), decoded once. */
  decode(bytes: Uint8Array): Record<string, unknown> | undefined {
    return bytes.length > this.settings.maxCommandBytes + REQUEST_OVERHEAD_BYTES
      ? undefined
      : unpackRecord(bytes)
  }

  /** `serve` of a request the caller already decoded (`decode`): `size` is its encoded length. */
  async serveRecord(
    size: number,
    o: Record<string, unknown> | undefined,
    signal: AbortSignal,
  ): Promise<Uint8Array> {
    return encodeLeaderReply(await this.answer(size, o, signal))
  }

  private async answer(
    size: number,
    o: Record<string, unknown> | undefined,
    signal: AbortSignal,
  ): Promise<LeaderReply<WriteResult>> {
    const req = size > this.settings.maxCommandBytes + REQUEST_OVERHEAD_BYTES ? undefined : parseForward(o)
    if (req === undefined) {
      this.stats.malformed++
      return refusal(BadForwardRequestError.code, 'malformed forwarded write')
    }
    const node = this.components.node()
    if (node === undefined) return refusal(RaftNotRunningError.code, 'stopping')
    if (!node.isLeader()) return refusal(NOT_LEADER_CODE, 'not the leader', node.leader())
    const op = (req.cmd as Record<string, unknown> | null)?.['op']
    if (isLeaderOnly(op)) {
      this.stats.notForwardable++
      return this.refused(
        policyRefusal(PolicyErrorCodes.notForwardable, `${String(op)} is not accepted from a forward`),
      )
    }
    const prepared = preparePolicyCommand(atLeaderTime(req.cmd, this.components.clock))
    if (!prepared.ok) {
      if (prepared.code === PolicyErrorCodes.tooLarge) this.stats.tooLarge++
      else this.stats.invalid++
      return this.refused(prepared)
    }
    // The caller's token, checked on the command as the leader will propose it.
    const denied = this.components.authorize?.(prepared.cmd, req.token)
    if (denied !== undefined) {
      this.stats.denied++
      return this.refused(denied)
    }
    if (prepared.data.length > this.settings.maxCommandBytes) {
      this.stats.tooLarge++
      return this.refused(
        policyRefusal(PolicyErrorCodes.tooLarge, `command over ${this.settings.maxCommandBytes} bytes`),
      )
    }
    const attempt = attemptSignal(this.components.clock, signal, this.settings.attemptTimeoutMs)
    try {
      this.stats.proposed++
      const r = await node.propose(prepared.data, {
        requestId: { clientId: req.clientId, seq: req.seq },
        signal: attempt.signal,
      })
      return { ok: true, index: r.index, result: r.result }
    } catch (err) {
      return refusalOf(err)
    } finally {
      attempt.done()
    }
  }

  /** A command refused before anything was proposed: answered as its result, at index 0. */
  private refused(result: PolicyRefusal): LeaderReply<WriteResult> {
    return { ok: true, index: 0, result }
  }
}

function encodeForward(req: ForwardRequest): Uint8Array {
  return pack(req)
}

function parseForward(o: Record<string, unknown> | undefined): ForwardRequest | undefined {
  if (o === undefined || o['t'] !== 'write') return undefined
  const { cmd, clientId, seq, token } = o
  if (cmd === null || typeof cmd !== 'object' || Array.isArray(cmd) || cmd instanceof Uint8Array)
    return undefined
  if (typeof clientId !== 'string' || clientId.length === 0 || clientId.length > MAX_CLIENT_ID)
    return undefined
  if (typeof seq !== 'number' || !Number.isSafeInteger(seq) || seq < 1) return undefined
  if (token !== undefined && (typeof token !== 'string' || token.length > MAX_TOKEN)) return undefined
  const req: ForwardRequest = { t: 'write', cmd, clientId, seq }
  if (token !== undefined) req.token = token
  return req
}

function decodeWriteResult(o: Record<string, unknown>): WriteResult | undefined {
  const r = o['result'] as PolicyResult | undefined
  if (typeof o['index'] !== 'number' || r === null || typeof r !== 'object' || typeof r.ok !== 'boolean')
    return undefined
  return { index: o['index'], result: r }
}

/**
 * A command carrying a wall-clock time (`now`: the KV and session commands, kv-commands.ts) as this
 * leader proposes it: at its own clock, as Consul runs TTLs and lock-delays on the leader's time.
 * A sender whose clock runs ahead, or a peer that lies, must not renew a session far into the
 * future or skip a lock-delay.
 */
function atLeaderTime(cmd: unknown, clock: Clock): unknown {
  if (cmd === null || typeof cmd !== 'object' || Array.isArray(cmd) || !Object.hasOwn(cmd, 'now')) return cmd
  return { ...cmd, now: Math.floor(clock.wallNow()) }
}
