import * as fs from 'node:fs'
import * as path from 'node:path'
import { crc32 } from './crc32.ts'
import { StorageCorruptedError } from '../errors.ts'
import { DIR_MODE, FILE_MODE, fsyncDir, SegmentedLog } from './log-file.ts'
import { openExclusiveSync } from '../../common/fs-atomic.ts'
import { pack, unpack } from '../../common/msgpack.ts'
import type { RaftStorage, StoredState } from './storage.ts'
import { EMPTY_HARD_STATE } from './storage.ts'
import type { Entry, HardState, Snapshot } from '../types.ts'

export interface FileStorageOptions {
  /** Roll to a new log segment past this size, so compaction can delete whole files. */
  segmentBytes?: number
}

/** 16 MiB: a policy log compacts long before that, so normally one or two files exist. */
export const DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024

/**
 * Durable storage in a directory:
 * - `hardstate`, `snapshot`: `u32 crc32 | msgpack`, replaced atomically (temp file, fsync, rename,
 *   fsync directory), so they are either the old or the new version after a crash;
 * - `log/*.seg`: the segmented append-only log (./log-file.ts).
 * Every method is synchronous and returns after fsync: persisted state is durable before the driver
 * sends a message that depends on it.
 */
export class FileStorage implements RaftStorage {
  private readonly log: SegmentedLog
  private snapshotIndex = 0
  /** Term and vote last written; a change of commit alone is written lazily (see setHardState). */
  private written: HardState | undefined
  private unwrittenCommit: HardState | undefined

  private constructor(
    readonly dir: string,
    log: SegmentedLog,
  ) {
    this.log = log
  }

  /** Opens or creates storage in `dir`. A torn final log record is truncated and listed in `warnings`. */
  static open(dir: string, options: FileStorageOptions = {}): { storage: FileStorage; warnings: string[] } {
    fs.mkdirSync(dir, { recursive: true, mode: DIR_MODE })
    const { log, warnings } = SegmentedLog.open(
      path.join(dir, 'log'),
      options.segmentBytes ?? DEFAULT_SEGMENT_BYTES,
    )
    const storage = new FileStorage(dir, log)
    const snap = storage.readSnapshot()
    storage.snapshotIndex = snap?.metadata.index ?? 0
    return { storage, warnings }
  }

  initialState(): StoredState {
    const hardState = this.readBlob('hardstate', (v) => parseHardState(v)) ?? { ...EMPTY_HARD_STATE }
    this.written = { ...hardState }
    const snapshot = this.readSnapshot()
    let entries: Entry[] = this.log.readAll()
    if (snapshot !== undefined) {
      const s = snapshot.metadata
      const atSnap = entries.find((e) => e.index === s.index)
      const first = entries[0]?.index
      // Entries after the snapshot are kept only if they continue it; otherwise an install was
      // interrupted between writing the snapshot and dropping the old log.
      const continues = atSnap !== undefined ? atSnap.term === s.term : first === s.index + 1
      entries = continues ? entries.filter((e) => e.index > s.index) : []
      // Finish that install: the next append must start a fresh log after the snapshot, not be
      // appended to (or truncate into) the stale one, which the next open would drop again.
      if (!continues && first !== undefined) this.log.dropAll()
    }
    return { hardState, snapshot, entries }
  }

  /**
   * Term and vote are fsynced before returning. A change of the commit index alone is only kept in
   * memory and written with the next term/vote change or on close (as etcd's `MustSync`): a stale
   * commit index after a crash is safe (it is a lower bound; the leader re-sends it), and skipping
   * the write saves two fsyncs per committed batch.
   */
  setHardState(hs: HardState): void {
    const w = this.written
    if (w !== undefined && w.term === hs.term && w.vote === hs.vote) {
      this.unwrittenCommit = { term: hs.term, vote: hs.vote, commit: hs.commit }
      return
    }
    this.writeHardState(hs)
  }

  private writeHardState(hs: HardState): void {
    this.writeBlob('hardstate', { term: hs.term, vote: hs.vote, commit: hs.commit })
    this.written = { term: hs.term, vote: hs.vote, commit: hs.commit }
    this.unwrittenCommit = undefined
  }

  append(entries: readonly Entry[]): void {
    this.checkContinues(entries)
    this.log.append(entries)
  }

  appendDeferred(entries: readonly Entry[]): void {
    this.checkContinues(entries)
    this.log.append(entries, false)
  }

  /**
   * The log checks appends against its own last entry; an empty log (after a snapshot install) must
   * continue the snapshot. A gap there would be dropped on the next open (see initialState), losing
   * entries this node acknowledged: refuse it loudly instead.
   */
  private checkContinues(entries: readonly Entry[]): void {
    const first = entries[0]?.index
    if (first === undefined || this.log.lastIndex() !== undefined) return
    if (first > this.snapshotIndex + 1) {
      throw new RangeError(`append at ${first} leaves a gap after the snapshot at ${this.snapshotIndex}`)
    }
  }

  /** fsyncs the active log segment off the event loop (see SegmentedLog.sync). */
  sync(): Promise<void> {
    return this.log.sync()
  }

  installSnapshot(snap: Snapshot): void {
    this.writeSnapshot(snap)
    this.log.dropAll()
  }

  saveSnapshot(snap: Snapshot): void {
    if (snap.metadata.index <= this.snapshotIndex) return
    this.writeSnapshot(snap)
  }

  compact(index: number): void {
    this.log.compact(Math.min(index, this.snapshotIndex))
  }

  close(): void {
    if (this.unwrittenCommit !== undefined) this.writeHardState(this.unwrittenCommit)
    this.log.close()
  }

  /** Number of log segment files (for tests and metrics). */
  segmentCount(): number {
    return this.log.segmentCount()
  }

  private writeSnapshot(snap: Snapshot): void {
    const m = snap.metadata
    this.writeBlob('snapshot', {
      metadata: { index: m.index, term: m.term, conf: { voters: m.conf.voters, learners: m.conf.learners } },
      data: snap.data,
    })
    this.snapshotIndex = m.index
  }

  private readSnapshot(): Snapshot | undefined {
    return this.readBlob('snapshot', (v) => parseSnapshot(v))
  }

  private writeBlob(name: string, value: unknown): void {
    const payload = pack(value)
    const buf = Buffer.allocUnsafe(4 + payload.length)
    buf.writeUInt32BE(crc32(payload), 0)
    buf.set(payload, 4)
    const file = path.join(this.dir, name)
    const tmp = `${file}.tmp`
    const fd = openExclusiveSync(tmp, FILE_MODE)
    try {
      fs.writeSync(fd, buf)
      fs.fsyncSync(fd)
    } finally {
      fs.closeSync(fd)
    }
    fs.renameSync(tmp, file)
    fsyncDir(this.dir)
  }

  private readBlob<T>(name: string, parse: (v: unknown) => T | undefined): T | undefined {
    const file = path.join(this.dir, name)
    let buf: Buffer
    try {
      buf = fs.readFileSync(file)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
      throw err
    }
    if (buf.length < 4 || buf.readUInt32BE(0) !== crc32(buf.subarray(4))) {
      throw new StorageCorruptedError(file, 'checksum mismatch')
    }
    let v: unknown
    try {
      v = unpack(buf.subarray(4))
    } catch (err) {
      throw new StorageCorruptedError(file, 'not msgpack', { cause: err })
    }
    const out = parse(v)
    if (out === undefined) throw new StorageCorruptedError(file, 'unexpected shape')
    return out
  }
}

function parseHardState(v: unknown): HardState | undefined {
  const o = v as Partial<HardState> | null
  if (o === null || typeof o !== 'object') return undefined
  if (!Number.isSafeInteger(o.term) || typeof o.vote !== 'string' || !Number.isSafeInteger(o.commit))
    return undefined
  return { term: o.term!, vote: o.vote, commit: o.commit! }
}

function parseSnapshot(v: unknown): Snapshot | undefined {
  const o = v as { metadata?: Snapshot['metadata']; data?: unknown } | null
  if (o === null || typeof o !== 'object' || o.metadata === undefined || !(o.data instanceof Uint8Array)) {
    return undefined
  }
  const m = o.metadata
  if (!Number.isSafeInteger(m.index) || !Number.isSafeInteger(m.term) || typeof m.conf !== 'object')
    return undefined
  const ids = (x: unknown) =>
    Array.isArray(x) && x.every((s) => typeof s === 'string') ? (x as string[]) : undefined
  const voters = ids(m.conf.voters)
  const learners = ids(m.conf.learners)
  if (voters === undefined || learners === undefined) return undefined
  return {
    metadata: { index: m.index, term: m.term, conf: { voters, learners } },
    data: new Uint8Array(o.data),
  }
}
