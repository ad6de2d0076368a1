import type { Clock } from '../../common/clock.ts'
import { INTERNAL_ERROR_TEXT, PeermeshError, peerFacingError } from '../../common/errors.ts'
import type { Unsubscribe } from '../../common/events.ts'
import { NotLeaderError } from '../../raft/index.ts'
import { pack, unpackRecord } from '../../common/msgpack.ts'

/**
 * The one way to ask the Raft leader something and retry across leader changes (forwarded
 * writes, leaf signing, CA rotation): answered here when this node leads, sent over a request
 * channel otherwise, each attempt with its own time limit; every reply has the same shape and
 * goes through one decoder.
 */

/** The code a "not the leader" refusal carries: the code of the Raft layer's NotLeaderError. */
export const NOT_LEADER_CODE: string = NotLeaderError.code
/** A refusal whose cause had no code of its own. */
export const INTERNAL_CODE: string = PeermeshError.code

/** The leader could not be asked because this side is stopping. */
export class LeaderRpcStoppedError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_STOPPING'
}

/** A coded refusal from the leader (or from the node that thought it led). */
export interface LeaderRefusal {
  ok: false
  code: string
  message: string
  /** The leader the refusing node knows, when it is not the leader itself. */
  leader?: string
}

/** Every reply on a leader channel: `{ ok: true, ...fields }` or a refusal. */
export type LeaderReply<T extends object> = ({ ok: true } & T) | LeaderRefusal

export function refusal(code: string, message: string, leader?: string): LeaderRefusal {
  return { ok: false, code, message, ...(leader !== undefined ? { leader } : {}) }
}

/**
 * The refusal that reports `err` to the peer that asked (any cluster-key holder): what
 * `peerFacingError` lets through, else the internal code and `internal error` only.
 */
export function refusalOf(err: unknown): LeaderRefusal {
  const e = peerFacingError(err)
  return e === undefined ? refusal(INTERNAL_CODE, INTERNAL_ERROR_TEXT) : refusal(e.code, e.message)
}

export function encodeLeaderReply<T extends object>(reply: LeaderReply<T>): Uint8Array {
  return pack(reply)
}

/**
 * The shared reply decoder: `decodeOk` reads the fields of a successful reply (undefined when
 * malformed); refusals are decoded here. Undefined for anything else.
 */
export function decodeLeaderReply<T extends object>(
  bytes: Uint8Array,
  decodeOk: (fields: Record<string, unknown>) => T | undefined,
): LeaderReply<T> | undefined {
  const o = unpackRecord(bytes)
  if (o === undefined) return undefined
  if (o['ok'] === true) {
    const fields = decodeOk(o)
    return fields === undefined ? undefined : { ok: true, ...fields }
  }
  if (o['ok'] === false && typeof o['code'] === 'string') {
    const leader = typeof o['leader'] === 'string' ? o['leader'] : undefined
    return refusal(o['code'], typeof o['message'] === 'string' ? o['message'] : '', leader)
  }
  return undefined
}

/** Who leads, as this node knows it. */
export interface LeaderView {
  /** Whether this node leads now: the call is then answered here. */
  isLeader(): boolean
  /** The leader this node knows, if any. */
  leader(): string | undefined
  /** Optional: a retry goes out as soon as a new leader is known instead of after the pause. */
  onLeaderChange?(listener: () => void): Unsubscribe
}

/** Reliable request/response to a peer (StreamMessenger's `request`). */
export interface RequestChannel {
  request(to: string, bytes: Uint8Array, options: { signal: AbortSignal }): Promise<Uint8Array>
}

export interface LeaderRpcComponents {
  leader: LeaderView
  channel: RequestChannel
  clock: Clock
  /** Where failed attempts are noted (at debug level). */
  log?: { debug(obj: object, msg: string): void }
  /** True once the owner stops: the loop ends (see `giveUp`). */
  stopped?: () => boolean
}

export interface LeaderRpcSettings {
  /** Time limit of one attempt (a dead leader's connection resets at once; a hung one is cut). */
  attemptTimeoutMs: number
  /** Pause before asking again, unless a new leader is known first. */
  retryPauseMs: number
}

/** Where a call stood when its signal fired or its owner stopped. */
export interface GiveUpState {
  /** Whether a leader (or this node, leading) may have received the request. */
  sent: boolean
  /** The leader last asked (or known). */
  leader: string | undefined
  stopped: boolean
  signal: AbortSignal
}

export interface LeaderCall<T extends object> {
  /** What the log says this call is. */
  what: string
  /** The request sent to a remote leader. */
  request: Uint8Array
  /** Fields of a successful remote reply; undefined when malformed (then asked again). */
  decode(fields: Record<string, unknown>): T | undefined
  /** The answer when this node leads; a throw is reported as its refusal (see `refusalOf`). */
  local(signal: AbortSignal): Promise<LeaderReply<T>>
  /** Refusal codes, besides NOT_LEADER, after which to ask again instead of returning. */
  retryOn?(code: string): boolean
  /**
   * When this node leads: run `local` under the caller's signal alone and let its errors propagate
   * (default: bounded by the attempt timeout, a throw reported as its refusal).
   */
  localErrorsThrow?: boolean
  /** Time limit of one attempt of this call (default: the settings'). */
  attemptTimeoutMs?: number
  /** The error thrown when the signal fires or the owner stops (default: the signal's reason). */
  giveUp?(state: GiveUpState): Error
}

/**
 * Asks the leader until it answers with something other than "not the leader" (or a code the
 * call retries on): no leader known, a transport error, a timeout or a malformed reply are
 * retried after a pause or a leader change. Returns the reply (success or a final refusal); throws
 * only when the signal fires or the owner stops.
 */
export class LeaderRpc {
  readonly stats = { forwarded: 0, retries: 0 }

  constructor(
    private readonly components: LeaderRpcComponents,
    private readonly settings: LeaderRpcSettings,
  ) {}

  async call<T extends object>(
    call: LeaderCall<T>,
    options: { signal: AbortSignal },
  ): Promise<LeaderReply<T>> {
    const { leader: view, channel, log } = this.components
    const { signal } = options
    const retryable = (code: string): boolean => code === NOT_LEADER_CODE || call.retryOn?.(code) === true
    let sent = false
    let lastLeader: string | undefined
    for (let attempt = 0; ; attempt++) {
      const stopped = this.components.stopped?.() === true
      if (signal.aborted || stopped) {
        const state = { sent, leader: lastLeader, stopped, signal }
        if (call.giveUp !== undefined) throw call.giveUp(state)
        if (stopped) throw new LeaderRpcStoppedError(`stopping; ${call.what} not answered`)
        throw signal.reason
      }
      if (attempt > 0) this.stats.retries++
      let reply: LeaderReply<T> | undefined
      const leader = view.isLeader() ? undefined : view.leader()
      if (leader === undefined && view.isLeader() && call.localErrorsThrow === true) {
        // Answered here within the caller's own deadline; its errors are the caller's to see.
        sent = true
        reply = await call.local(signal)
      } else if (view.isLeader() || leader !== undefined) {
        const limit = this.attemptSignal(signal, call.attemptTimeoutMs ?? this.settings.attemptTimeoutMs)
        try {
          if (leader === undefined) {
            sent = true
            reply = await call.local(limit.signal).catch(refusalOf)
          } else {
            lastLeader = leader
            this.stats.forwarded++
            const bytes = await channel.request(leader, call.request, { signal: limit.signal })
            reply = decodeLeaderReply(bytes, call.decode)
            if (reply === undefined) throw new MalformedReplyError(`malformed reply to ${call.what}`)
            if (reply.ok || reply.code !== NOT_LEADER_CODE) sent = true
          }
        } catch (err) {
          // Lost on the way there or back: the leader may have it.
          sent = true
          reply = undefined
          if (!limit.signal.aborted)
            log?.debug({ err: (err as Error).message }, `${call.what}: attempt failed; retrying`)
        } finally {
          limit.done()
        }
      }
      if (reply !== undefined && (reply.ok || !retryable(reply.code))) return reply
      await this.pause(signal)
    }
  }

  /** Resolves after the retry pause, at a leader change or when the signal fires (never rejects). */
  pause(signal: AbortSignal): Promise<void> {
    const { clock, leader } = this.components
    if (signal.aborted) return Promise.resolve()
    return new Promise((resolve) => {
      const done = (): void => {
        cancel()
        off?.()
        signal.removeEventListener('abort', done)
        resolve()
      }
      const cancel = clock.setTimeout(done, this.settings.retryPauseMs)
      const off = leader.onLeaderChange?.(done)
      signal.addEventListener('abort', done, { once: true })
    })
  }

  private attemptSignal(signal: AbortSignal, ms: number): { signal: AbortSignal; done: () => void } {
    return attemptSignal(this.components.clock, signal, ms)
  }
}

/**
 * `signal`, also aborted after `ms` on `clock` (libp2p's per-attempt timeout, on the injected
 * clock); call `done` when the attempt ends to drop the timer.
 */
export function attemptSignal(
  clock: Clock,
  signal: AbortSignal,
  ms: number,
): { signal: AbortSignal; done: () => void } {
  const timeout = new AbortController()
  const cancel = clock.setTimeout(
    () => timeout.abort(new DOMException('the attempt timed out', 'TimeoutError')),
    ms,
  )
  return { signal: AbortSignal.any([signal, timeout.signal]), done: cancel }
}

/** A reply from the leader that does not decode. */
export class MalformedReplyError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_MALFORMED_REPLY'
}
