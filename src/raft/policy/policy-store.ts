import { type CaRoots, type CaState, caStateOf, parseRootRecords } from '../../identity/connect/ca-state.ts'
import { pack } from '../../common/msgpack.ts'
import type { StateMachine } from '../state-machine.ts'
import type { Entry } from '../types.ts'
import { AclState } from './acl-state.ts'
import { readingStoredPatterns } from './config-entries.ts'
import { type KvCommand, KvState, parseKvSnapshot } from './kv-state.ts'
import type { IntentionPermission, StoredIntention } from './intention.ts'
import {
  decodePolicyCommand,
  entryBytes,
  POLICY_LIMITS,
  type PolicyErrorCode,
  PolicyErrorCodes,
  type PolicyLimits,
  type PolicyResult,
  policyRefusal,
} from './policy-commands.ts'
import { restoreSnapshotState } from './policy-snapshot.ts'
import {
  type ChainLink,
  openPolicyEntry,
  type TrustedRoot,
  trustedRootsOf,
  verifyAhead,
} from './policy-signing.ts'

export type { CaRoots } from '../../identity/connect/ca-state.ts'
export type { Intention, IntentionAction, StoredIntention } from './intention.ts'
export {
  CONFIG_ENTRY_SCHEMAS,
  checkPolicyCommand,
  decodePolicyCommand,
  encodePolicyCommand,
  POLICY_LIMITS,
  type PolicyLimits,
  preparePolicyCommand,
  type PolicyCommand,
  type PolicyErrorCode,
  PolicyErrorCodes,
  type PolicyResult,
  policyCommandSchema,
} from './policy-commands.ts'

/**
 * The first replicated state machine: a versioned policy store holding intentions (who may talk to
 * whom), traffic config entries (e.g. service-splitter) and the CA roots. Like Consul's state store,
 * every change records the Raft index that made it (`createdIndex`/`modifyIndex`) and bumps the
 * store's `index`.
 *
 * Client writes carry a request id (clientId + seq). A client issues seqs in increasing order and
 * retries a write with the same seq; the store remembers, per client, the last seq and its result,
 * so a retry applied twice (e.g. after a leader change) takes effect once and returns the first
 * result. The table is part of the snapshot.
 *
 * Every entry is checked as data before anything else looks at it (`decodePolicyCommand`): an
 * entry that is not a valid command, or is over its size cap or the state's (POLICY_LIMITS), is
 * applied as a refusal (an error result, the same on every agent), never a throw.
 */

export interface ConfigEntry {
  kind: string
  name: string
  value: Record<string, unknown>
  createdIndex: number
  modifyIndex: number
}

/** Bound on remembered clients; the least recently written client is forgotten first. */
export const DEFAULT_MAX_DEDUPE_CLIENTS = 10_000

interface DedupeRecord {
  seq: number
  result: PolicyResult
}

/** The replicated CA state: raw root records (see `PolicyStore.ca`). */
export interface RawCaRoots {
  roots: unknown[]
  activeRootId: string | undefined
  modifyIndex: number
}

const SNAPSHOT_VERSION = 1
const SEP = '\u0000'

export interface PolicyStoreOptions {
  /** Once a CA root exists, apply only entries signed by a trusted root for their own index. */
  verifySignatures?: boolean
  /** The state's bounds; every agent must use the same (tests use small ones). */
  limits?: PolicyLimits
}

export class PolicyStore implements StateMachine<PolicyResult> {
  /** ACL tokens, policies, node enrollments and service grants (acl-state.ts); `acl.*` commands go to it. */
  readonly acl = new AclState()
  /** The KV store and its sessions (kv-state.ts); `kv.*`, `session.*` and `txn` go to it. */
  readonly kv = new KvState()
  private intentions = new Map<string, StoredIntention>()
  private intentionsIndex = 0
  private configEntries = new Map<string, ConfigEntry>()
  /**
   * The same entries by kind, in the same order: a listing of one kind (the sidecars' traffic
   * entries, re-read after every applied batch) costs the entries of that kind, not all of them.
   */
  private configByKind = new Map<string, Map<string, ConfigEntry>>()
  /** Raft index of the last set or delete of each kind; `configRestoredIndex` covers the rest. */
  private configKindIndex = new Map<string, number>()
  private configRestoredIndex = 0
  /**
   * The CA state exactly as committed: root records stay raw (`unknown[]`), so that what every
   * agent trusts, snapshots and verifies against does not depend on how strictly this version
   * parses a record; typed views are built from it (`caState`, `caRoots`).
   */
  private ca: RawCaRoots = { roots: [], activeRootId: undefined, modifyIndex: 0 }
  private dedupe = new Map<string, DedupeRecord>()
  /**
   * What the next entry must link to when the last applied one was inside a signed batch
   * (policy-signing.ts); part of the replicated state, so it is in the snapshot.
   */
  private chain: ChainLink | undefined
  /** Raft index of the latest change. */
  index = 0
  /** Intentions and config entries, as `entryBytes` measures them (capped by maxStateBytes). */
  private stateBytes = 0
  private readonly limits: PolicyLimits
  /**
   * Entries refused because their CA signature did not verify (see policy-signing.ts), because
   * they were not a valid command (`invalidRejected`) or were over a size cap (`tooLargeRejected`).
   */
  readonly stats = {
    signatureRejected: 0,
    lastSignatureError: '',
    invalidRejected: 0,
    tooLargeRejected: 0,
    lastRefusal: '',
  }

  /**
   * `verifySignatures`: once a CA root exists, apply only entries signed by a trusted root for
   * their own index (the agent turns this on; unit tests of the store alone may leave it off).
   */
  constructor(
    private readonly maxDedupeClients = DEFAULT_MAX_DEDUPE_CLIENTS,
    private readonly options: PolicyStoreOptions = {},
  ) {
    this.limits = options.limits ?? POLICY_LIMITS
  }

  /** Bytes the intentions, config entries and KV state count for against `limits.maxStateBytes`. */
  get sizeBytes(): number {
    return this.stateBytes + this.kv.sizeBytes
  }

  /** Views of `ca`, built once per CA change (dropped whenever `ca` is replaced). */
  private caViews: { state: CaState; trusted: TrustedRoot[] } | undefined

  private setCa(ca: RawCaRoots): void {
    this.ca = ca
    this.caViews = undefined
  }

  private views(): { state: CaState; trusted: TrustedRoot[] } {
    this.caViews ??= {
      state: caStateOf({ ...this.ca, roots: parseRootRecords(this.ca.roots) }),
      trusted: trustedRootsOf(this.ca.roots),
    }
    return this.caViews
  }

  /** The roots entries (and snapshots) are verified against, rebuilt only when the CA changes. */
  trustedRoots(): TrustedRoot[] {
    return this.views().trusted
  }

  /**
   * The CA as committed here, without a copy: it runs for every entry a leader signs. The records
   * are never changed in place (a change replaces them), so callers must not change them either.
   */
  caState(): CaState {
    return this.views().state
  }

  /** Whether entries must be signed by a trusted CA root (true once the CA exists, if enabled). */
  get requiresSignatures(): boolean {
    return this.options.verifySignatures === true && this.ca.roots.length > 0
  }

  /**
   * Entries just appended to this node's log (not yet committed): their signatures start being
   * checked off the event loop, so that `apply` finds the verdicts (see policy-signing.ts).
   */
  prepare(entries: readonly Entry[]): void {
    if (this.options.verifySignatures === true && this.ca.roots.length > 0)
      verifyAhead(
        this.trustedRoots(),
        entries.filter((e) => e.type === 'normal'),
      )
  }

  /**
   * Runs `run`, which applies a run of committed entries: change listeners are told once at the
   * end (with the last index) instead of after every entry.
   */
  batch(run: () => void): void {
    if (this.holdNotifications) {
      run()
      return
    }
    this.holdNotifications = true
    try {
      run()
    } finally {
      this.holdNotifications = false
      this.notifyChange()
    }
  }

  apply(rawEntry: Entry): PolicyResult {
    let entry = rawEntry
    if (this.options.verifySignatures === true) {
      // Before the dedupe table: a forged entry must not poison a real client's request id.
      const opened = openPolicyEntry(
        this.trustedRoots(),
        entry.index,
        entry.requestId,
        entry.data,
        this.chain,
      )
      // What the next entry must link to: only the successor of an accepted entry of a batch.
      this.chain = opened.ok ? opened.next : undefined
      if (!opened.ok) {
        this.stats.signatureRejected++
        this.stats.lastSignatureError = opened.reason
        return fail(PolicyErrorCodes.signature, opened.reason)
      }
      if (opened.cmd !== entry.data) entry = { ...entry, data: opened.cmd }
    }
    const rid = entry.requestId
    if (rid !== undefined) {
      const prev = this.dedupe.get(rid.clientId)
      if (prev !== undefined && rid.seq <= prev.seq) {
        if (rid.seq === prev.seq) return prev.result
        return fail(
          PolicyErrorCodes.staleRequest,
          `seq ${rid.seq} of ${rid.clientId} is older than ${prev.seq}`,
        )
      }
    }
    let result: PolicyResult
    try {
      result = this.execute(entry)
    } catch (err) {
      // Defensive: nothing above should throw, but apply must never break the apply loop.
      result = fail(PolicyErrorCodes.invalidCommand, `command failed: ${(err as Error).message}`)
    }
    if (rid !== undefined) {
      this.dedupe.delete(rid.clientId)
      this.dedupe.set(rid.clientId, { seq: rid.seq, result })
      while (this.dedupe.size > this.maxDedupeClients) this.dedupe.delete(this.dedupe.keys().next().value!)
    }
    this.notifyChange()
    return result
  }

  private execute(entry: Entry): PolicyResult {
    // Committed: applied by the rules it was written under. A pattern written before the
    // linear-time rule is kept (a proxy fails closed on it); new writes are checked by
    // preparePolicyCommand before they are proposed. Every agent applies an entry alike.
    const checked = readingStoredPatterns(() => decodePolicyCommand(entry.data, this.limits))
    if (!checked.ok) return this.refused(checked.code, checked.message)
    const { cmd, bytes } = checked
    const at = entry.index
    switch (cmd.op) {
      case 'intention.upsert': {
        const key = cmd.source + SEP + cmd.destination
        const cur = this.intentions.get(key)
        if (cmd.casIndex !== undefined && (cur?.modifyIndex ?? 0) !== cmd.casIndex) {
          return fail(
            PolicyErrorCodes.casFailed,
            `modifyIndex is ${cur?.modifyIndex ?? 0}, not ${cmd.casIndex}`,
          )
        }
        const over = this.overStateCap(cur === undefined ? 0 : entryBytes.intention(cur), bytes)
        if (over !== undefined) return over
        const it: StoredIntention = {
          source: cmd.source,
          destination: cmd.destination,
          action: cmd.action,
          createdIndex: cur?.createdIndex ?? at,
          modifyIndex: at,
        }
        if (cmd.permissions !== undefined) it.permissions = cmd.permissions as IntentionPermission[]
        if (cmd.description !== undefined) it.description = cmd.description
        if (cmd.meta !== undefined) it.meta = { ...cmd.meta }
        this.intentions.set(key, it)
        this.intentionsIndex = at
        return this.changed(at)
      }
      case 'intention.replace': {
        // One command: no reader ever sees the destination with only part of its new sources.
        const current = [...this.intentions.values()].filter((i) => i.destination === cmd.destination)
        let before = 0
        for (const i of current) before += entryBytes.intention(i)
        const over = this.overStateCap(before, bytes)
        if (over !== undefined) return over
        const created = new Map(current.map((i) => [i.source, i.createdIndex]))
        for (const i of current) this.intentions.delete(i.source + SEP + i.destination)
        for (const src of cmd.sources) {
          const it: StoredIntention = {
            source: src.source,
            destination: cmd.destination,
            action: src.action,
            createdIndex: created.get(src.source) ?? at,
            modifyIndex: at,
          }
          if (src.permissions !== undefined) it.permissions = src.permissions as IntentionPermission[]
          if (src.description !== undefined) it.description = src.description
          this.intentions.set(src.source + SEP + cmd.destination, it)
        }
        this.intentionsIndex = at
        return this.changed(at)
      }
      case 'intention.delete': {
        const key = cmd.source + SEP + cmd.destination
        const cur = this.intentions.get(key)
        if (cur === undefined) {
          return fail(PolicyErrorCodes.notFound, `no intention ${cmd.source} -> ${cmd.destination}`)
        }
        this.intentions.delete(key)
        this.intentionsIndex = at
        this.stateBytes -= entryBytes.intention(cur)
        return this.changed(at)
      }
      case 'config.set': {
        // The kind's schema was checked with the command (checkPolicyCommand).
        const key = cmd.kind + SEP + cmd.name
        const cur = this.configEntries.get(key)
        if (cmd.casIndex !== undefined && (cur?.modifyIndex ?? 0) !== cmd.casIndex) {
          return fail(
            PolicyErrorCodes.casFailed,
            `modifyIndex is ${cur?.modifyIndex ?? 0}, not ${cmd.casIndex}`,
          )
        }
        const over = this.overStateCap(cur === undefined ? 0 : entryBytes.config(cur), bytes)
        if (over !== undefined) return over
        this.setConfigEntry(key, {
          kind: cmd.kind,
          name: cmd.name,
          value: cmd.value,
          createdIndex: cur?.createdIndex ?? at,
          modifyIndex: at,
        })
        this.configKindIndex.set(cmd.kind, at)
        return this.changed(at)
      }
      case 'config.delete': {
        const key = cmd.kind + SEP + cmd.name
        const cur = this.configEntries.get(key)
        if (cur === undefined) {
          return fail(PolicyErrorCodes.notFound, `no config entry ${cmd.kind}/${cmd.name}`)
        }
        this.deleteConfigEntry(key, cmd.kind)
        this.configKindIndex.set(cmd.kind, at)
        this.stateBytes -= entryBytes.config(cur)
        return this.changed(at)
      }
      case 'ca.setRoots': {
        if (cmd.casIndex !== undefined && this.ca.modifyIndex !== cmd.casIndex) {
          return fail(
            PolicyErrorCodes.casFailed,
            `CA modifyIndex is ${this.ca.modifyIndex}, not ${cmd.casIndex}`,
          )
        }
        // Records that are not ours (malformed, or from a newer agent) are dropped here, once.
        this.setCa({ roots: cmd.roots, activeRootId: cmd.activeRootId, modifyIndex: at })
        return this.changed(at)
      }
      case 'acl.bootstrap':
      case 'acl.token.upsert':
      case 'acl.token.delete':
      case 'acl.policy.upsert':
      case 'acl.policy.delete':
      case 'acl.node.enroll':
      case 'acl.node.unenroll':
      case 'acl.service.grant': {
        const r = this.acl.apply(cmd, at)
        return r.ok ? this.changed(at) : r
      }
      default:
        return this.applyKv(cmd, at)
    }
  }

  private applyKv(cmd: KvCommand, at: number): PolicyResult {
    const r = this.kv.apply(cmd, at, this.limits.maxStateBytes - this.sizeBytes)
    if (!r.ok) {
      if (r.code === PolicyErrorCodes.tooLarge) return this.refused(r.code, r.message)
      return r
    }
    return r.changed ? this.changed(at) : { ok: true, index: at }
  }

  /** The refusal of a write taking the state from `before` to `after` bytes past the cap. */
  private overStateCap(before: number, after: number): PolicyResult | undefined {
    const total = this.stateBytes - before + after
    // A write that does not grow the state is always allowed (e.g. trimming an entry).
    if (total + this.kv.sizeBytes <= this.limits.maxStateBytes || after <= before) {
      this.stateBytes = total
      return undefined
    }
    return this.refused(
      PolicyErrorCodes.tooLarge,
      `policy state would hold ${total} bytes, over its ${this.limits.maxStateBytes} byte cap`,
    )
  }

  /** A refusal of an entry's content: counted, and the same on every agent. */
  private refused(code: PolicyErrorCode, message: string): PolicyResult {
    if (code === PolicyErrorCodes.tooLarge) this.stats.tooLargeRejected++
    else this.stats.invalidRejected++
    this.stats.lastRefusal = message
    return fail(code, message)
  }

  private changed(at: number): PolicyResult {
    this.index = at
    this.changedPending = true
    return { ok: true, index: at }
  }

  // ---- change notification (additive, for the connect module) ----------------------------------

  private readonly changeListeners = new Set<(index: number) => void>()
  private changedPending = false
  /** Inside `batch`: listeners are told once, at the end. */
  private holdNotifications = false

  /**
   * Calls `listener(index)` after each applied entry that changed the state (once after a run of
   * them applied together, see `batch`), and after a snapshot restore. Runs on the apply path:
   * keep it cheap. A throwing listener is ignored.
   */
  onChange(listener: (index: number) => void): () => void {
    this.changeListeners.add(listener)
    return () => this.changeListeners.delete(listener)
  }

  private notifyChange(): void {
    if (!this.changedPending || this.holdNotifications) return
    this.changedPending = false
    for (const l of this.changeListeners) {
      try {
        l(this.index)
      } catch {
        // A listener must not break the apply loop.
      }
    }
  }

  /** Sets an entry in both the map of all entries and its kind's. */
  private setConfigEntry(key: string, e: ConfigEntry): void {
    this.configEntries.set(key, e)
    const ofKind = this.configByKind.get(e.kind)
    if (ofKind !== undefined) ofKind.set(key, e)
    else this.configByKind.set(e.kind, new Map([[key, e]]))
  }

  private deleteConfigEntry(key: string, kind: string): void {
    this.configEntries.delete(key)
    const ofKind = this.configByKind.get(kind)
    ofKind?.delete(key)
    if (ofKind?.size === 0) this.configByKind.delete(kind)
  }

  // ---- queries (local, on committed state) ------------------------------------------------------

  /**
   * Raft index of the last change to the intentions (a restore counts as one): readers that
   * rebuild from `listIntentions()` compare it first, instead of copying every intention after
   * every applied batch.
   */
  get intentionsModifyIndex(): number {
    return this.intentionsIndex
  }

  listIntentions(): StoredIntention[] {
    return [...this.intentions.values()].map((i) => structuredClone(i))
  }

  getIntention(source: string, destination: string): StoredIntention | undefined {
    const i = this.intentions.get(source + SEP + destination)
    return i === undefined ? undefined : structuredClone(i)
  }

  listConfigEntries(kind?: string): ConfigEntry[] {
    const entries = kind === undefined ? this.configEntries : this.configByKind.get(kind)
    return entries === undefined ? [] : [...entries.values()].map(structuredCloneOf)
  }

  /**
   * Raft index of the last change to any config entry of `kind` (a restore counts as one): a
   * reader re-parses the entries of a kind only when it moved.
   */
  configModifyIndex(kind: string): number {
    return Math.max(this.configKindIndex.get(kind) ?? 0, this.configRestoredIndex)
  }

  getConfigEntry(kind: string, name: string): ConfigEntry | undefined {
    const e = this.configEntries.get(kind + SEP + name)
    return e === undefined ? undefined : structuredClone(e)
  }

  caRoots(): CaRoots {
    const { state } = this.views()
    return structuredClone({
      roots: state.roots,
      activeRootId: this.ca.activeRootId,
      modifyIndex: this.ca.modifyIndex,
    })
  }

  /** Raft index of the CA state's last change (cheap: no copy). */
  get caModifyIndex(): number {
    return this.ca.modifyIndex
  }

  // ---- snapshots --------------------------------------------------------------------------------

  /**
   * The whole state, encoded. Every value in it passed `checkPolicyCommand` (or a snapshot's
   * checks), so encoding it is bounded; records hold no undefined (msgpack would keep it as an
   * extension type, which decoders refuse).
   */
  snapshot(): Uint8Array {
    const ca: Record<string, unknown> = { roots: this.ca.roots, modifyIndex: this.ca.modifyIndex }
    if (this.ca.activeRootId !== undefined) ca['activeRootId'] = this.ca.activeRootId
    return pack({
      version: SNAPSHOT_VERSION,
      index: this.index,
      intentions: [...this.intentions.values()],
      configEntries: [...this.configEntries.values()],
      ca,
      acl: this.acl.snapshot(),
      kv: this.kv.snapshot(),
      dedupe: [...this.dedupe.entries()].map(([clientId, r]) => ({
        clientId,
        seq: r.seq,
        result: r.result,
      })),
      ...(this.chain === undefined ? {} : { chain: this.chain }),
    })
  }

  /**
   * Why `restore` would refuse these bytes, or undefined if it would take them: restores them into
   * a scratch store, so a snapshot from a peer is checked before the Raft core takes it (a core
   * that took it would write it to disk, and an agent that cannot restore what is on its disk
   * cannot start).
   */
  snapshotProblem(bytes: Uint8Array): string | undefined {
    try {
      new PolicyStore(this.maxDedupeClients, this.options).restore(bytes)
      return undefined
    } catch (err) {
      return err instanceof Error ? err.message : String(err)
    }
  }

  /**
   * Replaces the state with a snapshot's. Checked whole before anything changes: a malformed one
   * throws a RangeError and leaves the state as it was.
   */
  restore(bytes: Uint8Array): void {
    const s = restoreSnapshotState(bytes, SNAPSHOT_VERSION)
    // Checks before it changes anything, like the line above (a snapshot from before ACLs has none).
    const kv = parseKvSnapshot(s.kv)
    this.acl.restore(s.acl)
    this.kv.restore(kv)
    this.index = s.index
    this.intentions = new Map(s.intentions.map((i) => [i.source + SEP + i.destination, i]))
    this.intentionsIndex = s.index
    this.configEntries = new Map()
    this.configByKind = new Map()
    this.configKindIndex = new Map()
    this.configRestoredIndex = s.index
    for (const e of s.configEntries) this.setConfigEntry(e.kind + SEP + e.name, e)
    this.stateBytes = s.stateBytes
    this.setCa(s.ca)
    this.dedupe = new Map(s.dedupe.map((d) => [d.clientId, { seq: d.seq, result: d.result }]))
    this.chain = s.chain
    this.changedPending = true
    this.notifyChange()
  }
}

function fail(code: PolicyErrorCode, message: string): PolicyResult {
  return policyRefusal(code, message)
}

function structuredCloneOf<T>(v: T): T {
  return structuredClone(v)
}
