import { createHmac, timingSafeEqual } from 'node:crypto'
import { PeermeshError } from '../../common/errors.ts'
import { pack, unpackRecord } from '../../common/msgpack.ts'
import type { NodeId } from '../../raft/index.ts'

/**
 * Founding a Raft cluster with `--bootstrap-expect N` without ever forking the log (issue #13).
 *
 * Every agent serves two requests about itself, whatever its flags (`FoundingAcceptor`):
 * - `prepare(S)`: "promise founder set S". An agent with Raft state, a known leader or a durable
 *   commitment refuses and says so; one holding an unexpired promise of another set refuses;
 *   otherwise it promises S until `now + promiseMs` (a repeated prepare(S) renews it). Promises
 *   live in memory only.
 * - `commit(S, W)`: "commit durably to founding S, witnessed by W". Refused with Raft state, a
 *   known leader, a commitment to anything else, or an unexpired promise of another set;
 *   otherwise the commitment `(S, W)` is fsynced to the data dir before the reply, and it is
 *   permanent: the agent never promises nor commits to anything else afterwards. A repeated
 *   commit(S, W) is answered "committed" again.
 *
 * A candidate is an eligible agent without Raft state, in S = the N lowest ids of the voter-
 * eligible alive members it sees (`chooseFounders`). It takes W = every alive member it sees
 * (S ⊆ W, itself included), sends prepare(S) to all of W and, once every one of them promised S,
 * commits itself and sends commit(S, W) to all of W. It writes the founding entries of S
 * (`RaftNode.bootstrap(S)`) only once **every member of W answered "committed to S"**. Any answer
 * showing Raft state or a leader ends its candidacy for good: a cluster exists, it waits to be
 * added. Every founder in S holding the commitment drives the same commit round, so all of S write
 * the same entries (one that misses it still gets them from the leader: it is a voter in S).
 *
 * Why two different founder sets can never both be written. Writing S requires that every member
 * of W had durably committed to S; writing S' ≠ S requires the same of every member of W'. A
 * member commits to at most one set, ever (the commitment is on disk before it answers, survives
 * restarts, and is checked before any other promise or commit). So if W and W' share one agent,
 * that agent would be committed to both: impossible. This holds whatever the order, loss,
 * duplication or delay of messages, and whatever the clocks do: promises and their expiry only
 * steer which set gets committed (liveness), never whether two can be (safety). That is also why
 * promises are not persisted: an agent that restarts and forgets one may promise another set, but
 * it still cannot commit to two.
 *
 * When do W and W' share an agent? W ⊇ S and W' ⊇ S', so whenever S and S' overlap, and whenever
 * the two candidates' gossip views overlap at all when they run their rounds (views that overlap
 * only later do not count: two groups of N that found before they see each other are the case
 * below). A new low-id agent X that appears mid-way and
 * computes S' = {X, ...} sees the agents of S too (they are alive): they hold the promise of S or
 * the commitment to S and refuse it, X waits, and once S is written X sees Raft state and stops.
 * An agent started after the cluster exists sees members with state (or commitments) and never
 * founds. The one case left is the one no bootstrap-expect can close without a configured member
 * list (Consul's has the same): two groups that never see a single common agent, each with N
 * eligible agents (a full partition at first start, possible only with at least 2N agents).
 *
 * Liveness: with the same view everywhere, every candidate computes the same S, so promises never
 * conflict and one prepare round plus one commit round found the cluster. Views that differ for a
 * while cost retries until gossip converges and conflicting promises expire. A candidate starts the
 * commit round only when all promises came back within half the promise time, so a commit is
 * refused by a member whose promise of S expired only when messages took longer than that; two
 * half-committed sets block founding for good, which is logged (`founding:stuck`) and needs an
 * operator.
 *
 * A witness that promised and then vanishes for good before it committed blocks founding (the
 * rule needs every member of W committed; waiting is logged every 10 s). Restarting it (same data
 * dir) unblocks it; otherwise an operator stops the agents that have no Raft state and removes their
 * `raft-founding.json`. Dropping W's dead members automatically would need the two views to share
 * a member alive to both, a weaker premise; not done.
 *
 * Out of the model: an agent whose data dir is wiped but keeps its node key (its commitment is
 * gone, so it could commit again). The commitment lives next to the Raft log, so this is the same
 * operator act as wiping the log of a voter.
 *
 * After founding, each founder asks every member once for its founding set (bootstrap-expect.ts):
 * a member that founded another set has a log that differs from index 1 (log matching cannot
 * see it: same index, same term); the side whose own founders disagree with it, or else whose set
 * sorts after the other, refuses to serve Raft and logs `founding:conflict`.
 *
 * Who may found, with ACLs on (issue #12). The founders share the initial management token
 * (`acl.initialManagementToken`, docs/SECURITY.md); a founder is an agent that proves it holds it.
 * Every founding reply of a token holder carries `founderProof(token, itsPeerId)` =
 * HMAC-SHA256(key = token, "peermesh-founder/1\0" + peer id); the asker recomputes it with its own
 * token for the peer id that libp2p authenticated on the stream (the peer it dialed), and only
 * peers whose proof verifies are eligible (`FounderCredential`). What this gives:
 * - a plain joiner (no token, or another token) cannot make one: it is never a founder, whatever
 *   its peer id sorts as;
 * - a proof is bound to its peer id: replayed by another peer (a cluster-key holder may ask any
 *   agent for its reply), it verifies only for the peer it names, which the replayer cannot
 *   authenticate as without that peer's node key;
 * - the token does not leave the agent: the proof is a MAC of a public string under a random UUID
 *   (122 bits), which no one can invert or guess offline.
 * Acceptors check too: with ACLs on, an agent holding the token promises or commits to a set only
 * if the request carries a verifying proof for every member (`proofs`, in the set's order). So a
 * cluster-key holder cannot make founders write a set naming it, nor tie a founder (as a witness)
 * to a set of its making. An agent without the token grants no set naming itself and does not judge
 * the others (it cannot). Witnesses, with ACLs on, are only the alive members that proved the token
 * (bootstrap-expect.ts): an agent without it, or with another token, is asked (it may show that a
 * cluster exists) but need not promise nor commit, so it can neither block founding nor be tied to
 * a hostile set in a way that matters. The safety argument below holds with "agent" read as
 * "token holder": two candidates that see each other are in each other's witness sets.
 * The founding audit likewise listens only to peers that prove the token. With ACLs off there are
 * no proofs and nothing changes.
 *
 * Every request and reply is a msgpack map checked by `decodeFoundingRequest`/`decodeFoundingReply`
 * (size, shape, id lengths, at most `MAX_FOUNDING_IDS` ids, S ⊆ W, proofs of `FOUNDER_PROOF_BYTES`);
 * anything else is refused.
 */

/** libp2p protocol of the founding requests (one request, one reply per stream). */
export const FOUNDING_PROTOCOL = '/peermesh/raft/founding/1'
/** Members named in one request (S or W): far above any cluster that bootstraps by expectation. */
export const MAX_FOUNDING_IDS = 512
/** Longest node id accepted (libp2p Ed25519 peer ids are 52 characters). */
export const MAX_NODE_ID_LENGTH = 128
/** Bytes of a founder proof (HMAC-SHA256). */
export const FOUNDER_PROOF_BYTES = 32
/** Largest encoded request or reply: two lists of `MAX_FOUNDING_IDS` ids and a proof for each fit. */
export const MAX_FOUNDING_BYTES =
  2 * MAX_FOUNDING_IDS * (MAX_NODE_ID_LENGTH + 2) + MAX_FOUNDING_IDS * (FOUNDER_PROOF_BYTES + 2) + 1024
/** What a founder proof MACs before the peer id: the purpose and its version, then NUL. */
export const FOUNDER_PROOF_CONTEXT = 'peermesh-founder/1\0'

/** A durable commitment to found `set`, witnessed by `witnesses` (the candidate's alive view). */
export interface FoundingCommitment {
  set: NodeId[]
  witnesses: NodeId[]
}

/**
 * `proofs` (ACLs on): the founder proof of each member of `set`, in the same order, as the
 * candidate verified them; an acceptor named in the set checks each one itself.
 */
export type FoundingRequest =
  | { op: 'prepare'; set: NodeId[]; proofs?: Uint8Array[] }
  | { op: 'commit'; set: NodeId[]; witnesses: NodeId[]; proofs?: Uint8Array[] }
  | { op: 'status' }

/** What an agent says of itself in answer to any founding request. */
export interface FoundingReply {
  /** It has Raft state (a term, entries or a snapshot): a cluster exists. */
  state: boolean
  /** The leader it knows, if any. */
  leader?: NodeId
  /** Its durable commitment, if any (kept after founding: it names the founders of its log). */
  committed?: FoundingCommitment
  /** The set it holds an unexpired promise of, after handling the request. */
  promised?: NodeId[]
  /** ACLs on and it holds the initial management token: its founder proof (`founderProof`). */
  proof?: Uint8Array
}

/** A founding request or reply from a peer that is not well-formed. */
export class BadFoundingMessageError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_BAD_FOUNDING_MESSAGE'
}

/** This agent's founding entries differ from those of a founder it names: it refuses to serve. */
export class FoundingConflictError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_FOUNDING_CONFLICT'
}

/** An agent with ACLs on and `--bootstrap-expect` but no initial management token: it cannot found. */
export class FounderTokenMissingError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_FOUNDER_TOKEN_MISSING'
}

/** HMAC-SHA256(key = `token`, FOUNDER_PROOF_CONTEXT + `peerId`): "`peerId` holds `token`". */
export function founderProof(token: string, peerId: NodeId): Uint8Array {
  return new Uint8Array(
    createHmac('sha256', token)
      .update(FOUNDER_PROOF_CONTEXT + peerId)
      .digest(),
  )
}

/** Whether `proof` is `founderProof(token, peerId)`; compared in constant time. */
export function verifyFounderProof(token: string, peerId: NodeId, proof: Uint8Array | undefined): boolean {
  if (proof === undefined || proof.length !== FOUNDER_PROOF_BYTES) return false
  return timingSafeEqual(founderProof(token, peerId), proof)
}

/**
 * This agent's side of founder proofs with ACLs on: its own proof, if it holds the initial
 * management token, and the check of other peers' proofs against it. Without the token it proves
 * nothing and verifies nothing (it can be neither a founder nor a judge of founders).
 */
export class FounderCredential {
  /** This agent's proof, carried in every founding reply; undefined without a token. */
  readonly own: Uint8Array | undefined

  constructor(
    readonly self: NodeId,
    private readonly token: string | undefined,
  ) {
    this.own = token === undefined ? undefined : founderProof(token, self)
  }

  get holdsToken(): boolean {
    return this.token !== undefined
  }

  /** Whether `proof` shows that `peerId` (as authenticated by the transport) holds our token. */
  verify(peerId: NodeId, proof: Uint8Array | undefined): boolean {
    return this.token !== undefined && verifyFounderProof(this.token, peerId, proof)
  }

  /** Whether `proofs` prove every member of `set` (same order); never without a token. */
  provesAll(set: readonly NodeId[], proofs: readonly Uint8Array[] | undefined): boolean {
    return (
      proofs !== undefined && proofs.length === set.length && set.every((id, i) => this.verify(id, proofs[i]))
    )
  }
}

/**
 * The founder set: the `expect` lowest ids among the alive members that `eligible` accepts, or
 * undefined while fewer are alive. Sorted, duplicates removed.
 */
export function chooseFounders(
  alive: readonly NodeId[],
  eligible: (id: NodeId) => boolean,
  expect: number,
): NodeId[] | undefined {
  const ids = [...new Set(alive.filter(eligible))].sort()
  return ids.length < expect ? undefined : ids.slice(0, expect)
}

/** Same ids in the same order (sets here are always sorted). */
export function sameSet(a: readonly NodeId[] | undefined, b: readonly NodeId[] | undefined): boolean {
  return a !== undefined && b !== undefined && a.length === b.length && a.every((x, i) => x === b[i])
}

/** What the acceptor reads of its own agent. */
export interface FoundingLocalState {
  /** Raft state of this agent: present (term > 0 or entries) and the known leader. */
  raft(): { state: boolean; leader?: NodeId }
  /** The durable commitment store. */
  record: FoundingRecordStore
}

/** Where the commitment lives: written durably (fsync) before `save` returns. */
export interface FoundingRecordStore {
  load(): FoundingCommitment | undefined
  save(c: FoundingCommitment): void
}

/** An in-memory store, for tests. */
export class MemoryFoundingRecord implements FoundingRecordStore {
  constructor(private c?: FoundingCommitment) {}
  load(): FoundingCommitment | undefined {
    return this.c
  }
  save(c: FoundingCommitment): void {
    this.c = { set: [...c.set], witnesses: [...c.witnesses] }
  }
}

/**
 * The answering side of founding, one per agent: a synchronous state machine with time as input
 * (no clock, no I/O beyond the injected record store). See the file comment for the rules.
 */
export class FoundingAcceptor {
  private promise?: { set: NodeId[]; until: number }

  /**
   * `credential`: ACLs on (founder proofs, see the file comment); undefined: ACLs off, a set is
   * granted whoever is in it.
   */
  constructor(
    private readonly self: NodeId,
    private readonly local: FoundingLocalState,
    private readonly promiseMs: number,
    private readonly credential?: FounderCredential,
  ) {}

  /** Handles one request (from a peer or from this agent's own candidate) at time `now`. */
  handle(req: FoundingRequest, now: number): FoundingReply {
    if (this.promise !== undefined && this.promise.until <= now) this.promise = undefined
    const raft = this.local.raft()
    const committed = this.local.record.load()
    const busy = raft.state || raft.leader !== undefined || committed !== undefined
    // With ACLs on, a set naming this agent without a proof for each member is not granted.
    const open = !busy && (req.op === 'status' || this.admissible(req.set, req.proofs))
    if (req.op === 'prepare' && open) {
      if (this.promise === undefined || sameSet(this.promise.set, req.set))
        this.promise = { set: [...req.set], until: now + this.promiseMs }
    } else if (req.op === 'commit' && open && req.witnesses.includes(this.self)) {
      if (this.promise === undefined || sameSet(this.promise.set, req.set)) {
        // Durable before anyone hears of it; a failing disk leaves it uncommitted (and throws).
        this.local.record.save({ set: [...req.set], witnesses: [...req.witnesses] })
        this.promise = undefined
      }
    }
    return this.reply()
  }

  /**
   * With ACLs on: an agent holding the token grants a set only with a verifying proof for each
   * member; one without it grants no set naming itself (it cannot found) and does not judge others.
   */
  private admissible(set: readonly NodeId[], proofs: readonly Uint8Array[] | undefined): boolean {
    const c = this.credential
    if (c === undefined) return true
    if (c.holdsToken) return c.provesAll(set, proofs)
    return !set.includes(this.self)
  }

  /** This agent's current answer, without changing anything. */
  reply(): FoundingReply {
    const raft = this.local.raft()
    const committed = this.local.record.load()
    return {
      state: raft.state,
      ...(raft.leader !== undefined ? { leader: raft.leader } : {}),
      ...(committed !== undefined ? { committed } : {}),
      ...(this.promise !== undefined ? { promised: [...this.promise.set] } : {}),
      ...(this.credential?.own !== undefined ? { proof: this.credential.own } : {}),
    }
  }
}

// ---- wire format ---------------------------------------------------------------------------------

export function encodeFoundingRequest(req: FoundingRequest): Uint8Array {
  return pack({ v: 1, ...req })
}

export function encodeFoundingReply(reply: FoundingReply): Uint8Array {
  return pack({ v: 1, ...reply })
}

/** Decodes and checks a request from a peer; throws BadFoundingMessageError. */
export function decodeFoundingRequest(bytes: Uint8Array): FoundingRequest {
  const r = record(bytes)
  const op = r.op
  if (op === 'status') return { op }
  if (op === 'prepare') {
    const set = founderSet(r.set, 'set')
    const proofs = proofList(r.proofs, set.length)
    return { op, set, ...(proofs !== undefined ? { proofs } : {}) }
  }
  if (op === 'commit') {
    const set = founderSet(r.set, 'set')
    const witnesses = idList(r.witnesses, 'witnesses')
    if (!set.every((id) => witnesses.includes(id)))
      throw new BadFoundingMessageError('set: not within witnesses')
    const proofs = proofList(r.proofs, set.length)
    return { op, set, witnesses, ...(proofs !== undefined ? { proofs } : {}) }
  }
  throw new BadFoundingMessageError('op: unknown')
}

/** Decodes and checks a reply from a peer; throws BadFoundingMessageError. */
export function decodeFoundingReply(bytes: Uint8Array): FoundingReply {
  const r = record(bytes)
  if (typeof r.state !== 'boolean') throw new BadFoundingMessageError('state: not a boolean')
  const reply: FoundingReply = { state: r.state }
  if (r.leader !== undefined) reply.leader = nodeId(r.leader, 'leader')
  if (r.promised !== undefined) reply.promised = founderSet(r.promised, 'promised')
  if (r.proof !== undefined) reply.proof = proofBytes(r.proof, 'proof')
  if (r.committed !== undefined) {
    const c = r.committed
    if (c === null || typeof c !== 'object' || Array.isArray(c) || c instanceof Uint8Array)
      throw new BadFoundingMessageError('committed: not a map')
    const m = c as Record<string, unknown>
    const set = founderSet(m.set, 'committed.set')
    const witnesses = idList(m.witnesses, 'committed.witnesses')
    if (!set.every((id) => witnesses.includes(id)))
      throw new BadFoundingMessageError('committed.set: not within witnesses')
    reply.committed = { set, witnesses }
  }
  return reply
}

/** Checks a commitment read back from disk (same rules as on the wire). */
export function checkCommitment(value: unknown): FoundingCommitment {
  if (value === null || typeof value !== 'object' || Array.isArray(value))
    throw new BadFoundingMessageError('not a map')
  const m = value as Record<string, unknown>
  const set = founderSet(m.set, 'set')
  const witnesses = idList(m.witnesses, 'witnesses')
  if (!set.every((id) => witnesses.includes(id)))
    throw new BadFoundingMessageError('set: not within witnesses')
  return { set, witnesses }
}

function record(bytes: Uint8Array): Record<string, unknown> {
  if (bytes.length > MAX_FOUNDING_BYTES) throw new BadFoundingMessageError('too large')
  const r = unpackRecord(bytes)
  if (r === undefined) throw new BadFoundingMessageError('not a msgpack map')
  if (r.v !== 1) throw new BadFoundingMessageError('v: unsupported version')
  return r
}

function nodeId(v: unknown, field: string): NodeId {
  if (typeof v !== 'string' || v.length === 0 || v.length > MAX_NODE_ID_LENGTH)
    throw new BadFoundingMessageError(`${field}: not a node id`)
  return v
}

function idList(v: unknown, field: string): NodeId[] {
  if (!Array.isArray(v) || v.length === 0 || v.length > MAX_FOUNDING_IDS)
    throw new BadFoundingMessageError(`${field}: not a list of 1 to ${MAX_FOUNDING_IDS} ids`)
  const ids = v.map((x) => nodeId(x, field))
  if (new Set(ids).size !== ids.length) throw new BadFoundingMessageError(`${field}: duplicate ids`)
  return ids
}

function proofBytes(v: unknown, field: string): Uint8Array {
  if (!(v instanceof Uint8Array) || v.length !== FOUNDER_PROOF_BYTES)
    throw new BadFoundingMessageError(`${field}: not a ${FOUNDER_PROOF_BYTES}-byte proof`)
  return new Uint8Array(v) // a plain copy, whatever view the decoder gave
}

/** Optional proofs of a request: one per member of the set when present. */
function proofList(v: unknown, setLength: number): Uint8Array[] | undefined {
  if (v === undefined) return undefined
  if (!Array.isArray(v) || v.length !== setLength)
    throw new BadFoundingMessageError('proofs: not one proof per member of the set')
  return v.map((p) => proofBytes(p, 'proofs'))
}

/** A founder set: distinct ids, sorted (so equal sets compare equal element by element). */
function founderSet(v: unknown, field: string): NodeId[] {
  const ids = idList(v, field)
  for (let i = 1; i < ids.length; i++)
    if ((ids[i - 1] as string) >= (ids[i] as string))
      throw new BadFoundingMessageError(`${field}: not sorted`)
  return ids
}
