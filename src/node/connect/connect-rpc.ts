/**
 * The signing RPC: agents send leaf CSRs (and CA rotation requests) to the Raft leader over a
 * reliable request/response channel; the leader answers with a signed leaf or a coded refusal.
 * The requester's peer id is the one the transport authenticated (noise), never a claim in the body.
 */
import type { Logger } from 'pino'
import { z } from 'zod'
import { errorCode, PeermeshError } from '../../common/errors.ts'
import type { LeaderView } from '../../identity/connect/components.ts'
import type { RotationStarted } from '../../identity/connect/ca-manager.ts'
import { BadSignRequestError, NotSigningLeaderError } from '../../identity/connect/errors.ts'
import type { LeafSigningChannel } from '../../identity/connect/leaf-manager.ts'
import type { SignReply } from '../../identity/connect/leaf-signer.ts'
import { pack, unpack, unpackRecord } from '../../raft/msgpack.ts'
import type { Host } from '../transport/host.ts'
import { StreamMessenger } from '../transport/stream-messenger.ts'

/** Reliable request/response: a CSR sent to the Raft leader, a signed leaf or a coded refusal back. */
export const CONNECT_SIGN_PROTOCOL = '/peermesh/connect/sign/1'
/** Best-effort channel of the same messenger; unused for now (StreamMessenger needs one). */
export const CONNECT_PROTOCOL = '/peermesh/connect/1'

const MAX_SIGN_REQUEST_BYTES = 32 * 1024
/** One signing attempt: a dead leader's connection resets at once on a LAN; a hung one is cut. */
const SIGN_ATTEMPT_TIMEOUT_MS = 2_000
/** A rotation makes a root key and writes through Raft: give it longer than a signing. */
const ROTATE_ATTEMPT_TIMEOUT_MS = 10_000
/** The leader's own bound on a rotation it serves. */
const SERVE_ROTATE_TIMEOUT_MS = 8_000

export type RotateReply = ({ ok: true } & RotationStarted) | { ok: false; code: string; message: string }

const refusal = z.object({ ok: z.literal(false), code: z.string(), message: z.string().catch('') })

/** One decoder for every reply of this protocol: `{ ok: true, ...fields }` or a coded refusal. */
function replyDecoder<S extends z.ZodRawShape>(fields: S) {
  const schema = z.union([z.object({ ok: z.literal(true), ...fields }), refusal])
  return (bytes: Uint8Array) => {
    const o = unpackRecord(bytes)
    if (o === undefined) return undefined
    const r = schema.safeParse(o)
    return r.success ? r.data : undefined
  }
}

const strings = z
  .array(z.unknown())
  .catch([])
  .transform((a) => a.filter((x): x is string => typeof x === 'string'))
export const decodeSignReply: (bytes: Uint8Array) => SignReply | undefined = replyDecoder({
  certPem: z.string(),
  intermediatesPem: strings,
})
export const decodeRotateReply: (bytes: Uint8Array) => RotateReply | undefined = replyDecoder({
  activeRootId: z.string(),
  previousRootId: z.string(),
})

/** What the leader's side of the RPC serves. */
export interface ConnectRpcHandlers {
  signFor(requester: string, service: unknown, csrPem: unknown): Promise<SignReply>
  rotate(options: { signal: AbortSignal }): Promise<RotationStarted>
}

export interface ConnectRpcComponents {
  leader: Pick<LeaderView, 'isLeader' | 'leaderId' | 'selfId'>
  handlers: ConnectRpcHandlers
}

/** Both ends of the signing RPC; as a client, one attempt per call (callers retry). */
export class ConnectRpc implements LeafSigningChannel {
  private messenger?: StreamMessenger
  private log?: Logger

  constructor(private readonly c: ConnectRpcComponents) {}

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
    messenger.onRequest((from, bytes) => this.serve(from, bytes))
    await messenger.start()
  }

  async stop(): Promise<void> {
    await this.messenger?.stop()
  }

  /** Asks the leader to sign once (signs here when this agent leads); undefined: no answer. */
  async sign(service: string, csrPem: string, signal: AbortSignal): Promise<SignReply | undefined> {
    const leader = this.c.leader.leaderId()
    if (leader === undefined) return undefined
    if (leader === this.c.leader.selfId()) return await this.c.handlers.signFor(leader, service, csrPem)
    return await this.ask(
      'leaf',
      leader,
      pack({ service, csr: csrPem }),
      SIGN_ATTEMPT_TIMEOUT_MS,
      signal,
      decodeSignReply,
    )
  }

  /** Asks the leader, another agent, to start a rotation once; undefined: no answer. */
  async askRotate(signal: AbortSignal): Promise<RotateReply | undefined> {
    const leader = this.c.leader.leaderId()
    if (leader === undefined || leader === this.c.leader.selfId()) return undefined
    return await this.ask(
      'rotation',
      leader,
      pack({ op: 'rotate' }),
      ROTATE_ATTEMPT_TIMEOUT_MS,
      signal,
      decodeRotateReply,
    )
  }

  private async ask<T>(
    what: 'leaf' | 'rotation',
    leader: string,
    request: Uint8Array,
    timeoutMs: number,
    signal: AbortSignal,
    decode: (bytes: Uint8Array) => T | undefined,
  ): Promise<T | undefined> {
    const attempt = AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)])
    try {
      return decode(await this.messenger!.request(leader, request, { signal: attempt }))
    } catch (err) {
      signal.throwIfAborted()
      this.log?.debug({ err: (err as Error).message }, `${what} request to the leader failed; retrying`)
      return undefined
    }
  }

  private async serve(from: string, bytes: Uint8Array): Promise<Uint8Array> {
    let req: unknown
    try {
      req = unpack(bytes)
    } catch {
      req = undefined
    }
    if (req === null || typeof req !== 'object')
      return pack({ ok: false, code: BadSignRequestError.code, message: 'malformed sign request' })
    const o = req as Record<string, unknown>
    if (o['op'] === 'rotate') return pack(await this.serveRotate())
    return pack(await this.c.handlers.signFor(from, o['service'], o['csr']))
  }

  private async serveRotate(): Promise<RotateReply> {
    if (!this.c.leader.isLeader())
      return { ok: false, code: NotSigningLeaderError.code, message: 'not the raft leader' }
    try {
      return {
        ok: true,
        ...(await this.c.handlers.rotate({ signal: AbortSignal.timeout(SERVE_ROTATE_TIMEOUT_MS) })),
      }
    } catch (err) {
      return { ok: false, code: errorCode(err) ?? PeermeshError.code, message: (err as Error).message }
    }
  }
}
