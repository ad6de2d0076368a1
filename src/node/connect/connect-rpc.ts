/**
 * The signing RPC: agents send leaf CSRs (and CA rotation requests) to the Raft leader over a
 * reliable request/response channel; the leader answers with a signed leaf or a coded refusal.
 * The requester's peer id is the one the transport authenticated (noise), never a claim in the body.
 * The leader limits how often each requester may ask (sign-rate-limit.ts); a refused agent asks
 * again after a pause.
 */
import type { Logger } from 'pino'
import { type Clock, pause, withTimeout } from '../../common/clock.ts'
import type { Unsubscribe } from '../../common/events.ts'
import type { LeaderView } from '../../identity/connect/components.ts'
import { InvalidServiceNameError } from '../../identity/ca/errors.ts'
import { isDnsLabel } from '../../identity/ca/spiffe.ts'
import type { RotationStarted } from '../../identity/connect/ca-manager.ts'
import {
  AgentStoppingError,
  BadSignRequestError,
  CaNotReadyError,
  NotSigningLeaderError,
} from '../../identity/connect/errors.ts'
import type { LeafSigningChannel } from '../../identity/connect/leaf-manager.ts'
import type { SignReply } from '../../identity/connect/leaf-signer.ts'
import { pack, unpack } from '../../common/msgpack.ts'
import type { Host } from '../transport/host.ts'
import {
  decodeLeaderReply,
  encodeLeaderReply,
  type LeaderReply,
  LeaderRpc,
  type RequestChannel,
  refusal,
  refusalOf,
} from '../transport/leader-rpc.ts'
import { StreamMessenger } from '../transport/stream-messenger.ts'
import { CONNECT_WIRING_DEFAULTS } from '../agent/defaults.ts'
import {
  SIGN_RATE_LIMIT_DEFAULTS,
  SignRateLimitedError,
  type SignRateLimitSettings,
  SignRateLimiter,
} from './sign-rate-limit.ts'

/** Reliable request/response: a CSR sent to the Raft leader, a signed leaf or a coded refusal back. */
export const CONNECT_SIGN_PROTOCOL = '/peermesh/connect/sign/1'
/** Best-effort channel of the same messenger; unused for now (StreamMessenger needs one). */
export const CONNECT_PROTOCOL = '/peermesh/connect/1'

const {
  maxSignRequestBytes: MAX_SIGN_REQUEST_BYTES,
  signAttemptTimeoutMs: SIGN_ATTEMPT_TIMEOUT_MS,
  rotateAttemptTimeoutMs: ROTATE_ATTEMPT_TIMEOUT_MS,
  retryPauseMs: RETRY_PAUSE_MS,
  serveRotateTimeoutMs: SERVE_ROTATE_TIMEOUT_MS,
} = CONNECT_WIRING_DEFAULTS

export type RotateReply = LeaderReply<RotationStarted>

/**
 * Pause before asking again after the leader's rate limit refused a CSR: two tokens' worth at the
 * default rate, so a refused agent's retries cost the leader little.
 */
export const SIGN_RATE_LIMITED_PAUSE_MS = 1_000

/** The fields of a signed leaf; only string intermediates are kept. */
function signedLeaf(o: Record<string, unknown>): { certPem: string; intermediatesPem: string[] } | undefined {
  if (typeof o['certPem'] !== 'string') return undefined
  const raw = Array.isArray(o['intermediatesPem']) ? (o['intermediatesPem'] as unknown[]) : []
  return { certPem: o['certPem'], intermediatesPem: raw.filter((x): x is string => typeof x === 'string') }
}

function rotationStarted(o: Record<string, unknown>): RotationStarted | undefined {
  const { activeRootId, previousRootId } = o
  if (typeof activeRootId !== 'string' || typeof previousRootId !== 'string') return undefined
  return { activeRootId, previousRootId }
}

/** A leader's reply to a CSR (the shared leader-reply decoder); undefined when malformed. */
export const decodeSignReply = (bytes: Uint8Array): SignReply | undefined =>
  decodeLeaderReply(bytes, signedLeaf)
/** A leader's reply to a rotation request; undefined when malformed. */
export const decodeRotateReply = (bytes: Uint8Array): RotateReply | undefined =>
  decodeLeaderReply(bytes, rotationStarted)

/** What the leader's side of the RPC serves. */
export interface ConnectRpcHandlers {
  signFor(requester: string, service: unknown, csrPem: unknown): Promise<SignReply>
  rotate(options: { signal: AbortSignal }): Promise<RotationStarted>
  /**
   * Whether a rotation request's token (none: anonymous) may rotate the CA (`operator:write`);
   * a refusal otherwise. Checked on the leader, whichever agent the request came through.
   */
  authorizeRotate(token: string | undefined): { code: string; message: string } | undefined
}

export interface ConnectRpcComponents {
  leader: Pick<LeaderView, 'isLeader' | 'leaderId' | 'selfId'> & {
    /** A retry goes out at once when a new leader is known. */
    onLeaderChange?(listener: () => void): Unsubscribe
  }
  handlers: ConnectRpcHandlers
  clock: Clock
  /** The request channel to the leader (tests); by default the messenger `start` opens. */
  channel?: RequestChannel
  /** The leader's per-requester limit on CSRs (default SIGN_RATE_LIMIT_DEFAULTS). */
  signRateLimit?: SignRateLimitSettings
}

/**
 * Both ends of the signing RPC. As a client it asks the leader through the one leader-RPC helper
 * (src/node/transport/leader-rpc.ts): answered here when this agent leads, asked again across
 * leader changes and, for leaves, until the CA exists.
 */
export class ConnectRpc implements LeafSigningChannel {
  private messenger?: StreamMessenger
  private log?: Logger
  private stopped = false
  /** Rotation requests refused as leader for want of `operator:write`. */
  private rotationsDenied = 0
  private readonly rpc: LeaderRpc
  private readonly limiter: SignRateLimiter

  constructor(private readonly c: ConnectRpcComponents) {
    const { leader } = c
    this.limiter = new SignRateLimiter(c.signRateLimit ?? SIGN_RATE_LIMIT_DEFAULTS)
    this.rpc = new LeaderRpc(
      {
        leader: {
          isLeader: () => leader.isLeader(),
          leader: () => leader.leaderId(),
          ...(leader.onLeaderChange !== undefined ? { onLeaderChange: leader.onLeaderChange } : {}),
        },
        channel: c.channel ?? {
          request: (to, bytes, o) => {
            if (this.messenger === undefined) throw new AgentStoppingError('the signing RPC is not started')
            return this.messenger.request(to, bytes, o)
          },
        },
        clock: c.clock,
        log: { debug: (o, m) => this.log?.debug(o, m) },
        stopped: () => this.stopped,
      },
      { attemptTimeoutMs: SIGN_ATTEMPT_TIMEOUT_MS, retryPauseMs: RETRY_PAUSE_MS },
    )
  }

  async start(host: Host, log: Logger): Promise<void> {
    this.log = log
    const messenger = new StreamMessenger({
      host,
      protocol: CONNECT_PROTOCOL,
      requestProtocol: CONNECT_SIGN_PROTOCOL,
      log,
      maxMessageBytes: 1024,
      maxRequestBytes: MAX_SIGN_REQUEST_BYTES,
    })
    this.messenger = messenger
    messenger.onRequest((from, bytes) => this.serveRequest(from, bytes))
    await messenger.start()
  }

  async stop(): Promise<void> {
    this.stopped = true
    await this.messenger?.stop()
  }

  /** CSRs this agent refused as leader because their requester asked too often. */
  get stats(): { signRateLimited: number; rotationsDenied: number } {
    return { signRateLimited: this.limiter.stats.limited, rotationsDenied: this.rotationsDenied }
  }

  /**
   * Gets a CSR signed by the leader (here, when this agent leads), asking again while no leader
   * is known, a follower answered or the CA does not exist yet. Resolves with the leaf or a final
   * refusal; throws only when the signal fires or this side stops. A rate-limit refusal is asked
   * again after SIGN_RATE_LIMITED_PAUSE_MS.
   */
  async sign(service: string, csrPem: string, options: { signal: AbortSignal }): Promise<SignReply> {
    for (;;) {
      const reply = await this.rpc.call(
        {
          what: 'leaf request',
          request: pack({ service, csr: csrPem }),
          decode: signedLeaf,
          local: () => this.c.handlers.signFor(this.c.leader.selfId(), service, csrPem),
          retryOn: (code) => code === CaNotReadyError.code,
          giveUp: ({ stopped, signal }) =>
            stopped ? new AgentStoppingError('agent stopping') : toError(signal.reason),
        },
        options,
      )
      if (reply.ok || reply.code !== SignRateLimitedError.code) return reply
      this.log?.debug(
        { service, why: reply.message },
        'leaf request rate limited by the leader; asking again later',
      )
      await pause(this.c.clock, SIGN_RATE_LIMITED_PAUSE_MS, options.signal)
    }
  }

  /**
   * Starts a CA rotation on the leader (which holds the old root's key to cross-sign), with the
   * caller's token, which the leader checks (`operator:write`) on its committed ACL state.
   */
  rotate(options: { signal: AbortSignal; token?: string }): Promise<RotateReply> {
    const { token } = options
    return this.rpc.call(
      {
        what: 'CA rotation request',
        request: pack(token === undefined ? { op: 'rotate' } : { op: 'rotate', token }),
        decode: rotationStarted,
        local: async (signal) => this.serveRotate(token, signal),
        localErrorsThrow: true,
        attemptTimeoutMs: ROTATE_ATTEMPT_TIMEOUT_MS,
      },
      options,
    )
  }

  /**
   * The leader's side: answers one request from `from` (the peer id the transport authenticated).
   * The messenger calls it for every request that arrives.
   */
  async serveRequest(from: string, bytes: Uint8Array): Promise<Uint8Array> {
    let req: unknown
    try {
      req = unpack(bytes)
    } catch {
      req = undefined
    }
    if (req === null || typeof req !== 'object')
      return encodeLeaderReply(refusal(BadSignRequestError.code, 'malformed sign request'))
    const o = req as Record<string, unknown>
    if (o['op'] === 'rotate') {
      const token = o['token']
      if (token !== undefined && typeof token !== 'string')
        return encodeLeaderReply(refusal(BadSignRequestError.code, 'malformed rotation request'))
      return encodeLeaderReply(await this.serveRotate(token))
    }
    // The name comes off the wire (up to the request limit): refused here, as the signer would,
    // before it reaches the entitlement check and its memo or the requester's rate bucket.
    const service = o['service']
    if (!isDnsLabel(service))
      return encodeLeaderReply(refusal(InvalidServiceNameError.code, 'service: not a service name'))
    if (this.c.leader.isLeader()) {
      const waitMs = this.limiter.take(from, this.c.clock.now())
      if (waitMs !== undefined) {
        this.log?.debug({ requester: from, waitMs }, 'leaf request refused: requester over its rate limit')
        return encodeLeaderReply(
          refusal(
            SignRateLimitedError.code,
            `too many leaf requests from ${from}; ask again in ${waitMs} ms`,
          ),
        )
      }
    }
    return encodeLeaderReply(await this.c.handlers.signFor(from, service, o['csr']))
  }

  /**
   * The leader's side of a rotation: only with a token that grants `operator:write` here, so that
   * a peer holding the cluster key but no token cannot replace the CA (issue #12).
   */
  private async serveRotate(token: string | undefined, outer?: AbortSignal): Promise<RotateReply> {
    if (!this.c.leader.isLeader()) return refusal(NotSigningLeaderError.code, 'not the raft leader')
    const denied = this.c.handlers.authorizeRotate(token)
    if (denied !== undefined) {
      this.rotationsDenied++
      this.log?.warn({ why: denied.message }, 'CA rotation request refused')
      return refusal(denied.code, denied.message)
    }
    try {
      return {
        ok: true,
        ...(await withTimeout(this.c.clock, SERVE_ROTATE_TIMEOUT_MS, (signal) =>
          this.c.handlers.rotate({ signal: outer === undefined ? signal : AbortSignal.any([signal, outer]) }),
        )),
      }
    } catch (err) {
      return refusalOf(err)
    }
  }
}

function toError(reason: unknown): Error {
  return reason instanceof Error ? reason : new Error(String(reason))
}
