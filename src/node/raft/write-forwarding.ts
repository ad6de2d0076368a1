import type { Logger } from 'pino'
import type { Clock } from '../../common/clock.ts'
import {
  encodePolicyCommand,
  type PolicyCommand,
  type PolicyResult,
  type RequestId,
} from '../../raft/index.ts'
import { pack, unpackRecord } from '../../common/msgpack.ts'
import { type PolicyErrorCode, PolicyErrorCodes } from '../../raft/policy/policy-commands.ts'
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

/** A write forwarded to the leader: the encoded command and its request id (for dedupe). */
interface ForwardRequest {
  t: 'propose'
  data: Uint8Array
  clientId: string
  seq: number
}

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
  readonly stats = { proposals: 0, signatureRetries: 0 }

  constructor(
    private readonly components: WriteForwarderComponents,
    private readonly settings: WriteForwarderSettings,
  ) {}

  /**
   * Resolves with the state machine's result once committed and applied on the leader. Rejects
   * with NoLeaderError (nothing sent) or WriteTimeoutError (maybe applied) when the signal fires.
   */
  async write(cmd: PolicyCommand, options: { signal: AbortSignal }): Promise<WriteResult> {
    const data = encodePolicyCommand(cmd)
    const rid: RequestId = { clientId: `${this.settings.clientPrefix}${++this.seq}`, seq: 1 }
    this.stats.proposals++
    for (let attempt = 1; ; attempt++) {
      const out = await this.writeOnce(data, rid, options.signal)
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

  private async writeOnce(data: Uint8Array, rid: RequestId, signal: AbortSignal): Promise<WriteResult> {
    const { node, rpc } = this.components
    const request: ForwardRequest = { t: 'propose', data, clientId: rid.clientId, seq: rid.seq }
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
}

/** The leader's side of forwarded writes. Bad input gets a refusal, never a throw. */
export class ForwardedWriteServer {
  constructor(
    private readonly components: ForwardedWriteServerComponents,
    private readonly settings: { attemptTimeoutMs: number; maxCommandBytes: number },
  ) {}

  async serve(bytes: Uint8Array, signal: AbortSignal): Promise<Uint8Array> {
    return encodeLeaderReply(await this.answer(bytes, signal))
  }

  private async answer(bytes: Uint8Array, signal: AbortSignal): Promise<LeaderReply<WriteResult>> {
    const req = parseForward(unpackRecord(bytes), this.settings.maxCommandBytes)
    if (req === undefined) return refusal(BadForwardRequestError.code, 'malformed forwarded write')
    const node = this.components.node()
    if (node === undefined) return refusal(RaftNotRunningError.code, 'stopping')
    if (!node.isLeader()) return refusal(NOT_LEADER_CODE, 'not the leader', node.leader())
    const attempt = attemptSignal(this.components.clock, signal, this.settings.attemptTimeoutMs)
    try {
      const r = await node.propose(req.data, {
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
}

function encodeForward(req: ForwardRequest): Uint8Array {
  return pack(req)
}

function parseForward(o: Record<string, unknown> | undefined, maxBytes: number): ForwardRequest | undefined {
  if (o === undefined || o['t'] !== 'propose') return undefined
  const data = o['data']
  const clientId = o['clientId']
  const seq = o['seq']
  if (!(data instanceof Uint8Array) || data.length === 0 || data.length > maxBytes) return undefined
  if (typeof clientId !== 'string' || clientId.length === 0 || clientId.length > 256) return undefined
  if (typeof seq !== 'number' || !Number.isSafeInteger(seq) || seq < 1) return undefined
  return { t: 'propose', data, clientId, seq }
}

function decodeWriteResult(o: Record<string, unknown>): WriteResult | undefined {
  const r = o['result'] as PolicyResult | undefined
  if (typeof o['index'] !== 'number' || r === null || typeof r !== 'object' || typeof r.ok !== 'boolean')
    return undefined
  return { index: o['index'], result: r }
}
