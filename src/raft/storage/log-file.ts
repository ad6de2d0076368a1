import * as fs from 'node:fs'
import * as path from 'node:path'
import { crc32 } from './crc32.ts'
import { LogCorruptedError } from '../errors.ts'
import { pack, unpack } from '../../common/msgpack.ts'
import type { Entry } from '../types.ts'

/**
 * Append-only, segmented Raft log on node:fs.
 *
 * Each segment file `<first index, 20 digits>.seg` holds consecutive records:
 *
 *     u32 length | u32 crc32(length bytes) | u32 crc32(payload) | payload (msgpack Entry)
 *
 * (big-endian; CRC-32/IEEE from ./crc32.ts). The header has its own checksum so that a corrupted
 * length is recognised as corruption, not mistaken for a record that runs past the end of the file.
 * On open, only the *last* record of the *last* segment may be incomplete (a torn write during a
 * crash): it is truncated and reported as a warning. Any other bad record raises LogCorruptedError
 * naming the file and offset; nothing is ever silently skipped.
 */
export const RECORD_HEADER_BYTES = 12

export function encodeRecord(payload: Uint8Array): Buffer {
  const buf = Buffer.allocUnsafe(RECORD_HEADER_BYTES + payload.length)
  writeRecord(buf, 0, payload)
  return buf
}

/** Writes the record of `payload` into `buf` at `at`; returns where it ends. */
function writeRecord(buf: Buffer, at: number, payload: Uint8Array): number {
  buf.writeUInt32BE(payload.length, at)
  buf.writeUInt32BE(crc32(buf.subarray(at, at + 4)), at + 4)
  buf.writeUInt32BE(crc32(payload), at + 8)
  buf.set(payload, at + RECORD_HEADER_BYTES)
  return at + RECORD_HEADER_BYTES + payload.length
}

export interface ParsedSegment {
  payloads: { offset: number; payload: Uint8Array }[]
  /** Bytes of valid records; less than the file size when a torn tail was found. */
  validBytes: number
  tornReason?: string
}

/** Parses one segment. `isLast`: a bad final record is a torn write rather than corruption. */
export function parseSegment(file: string, buf: Uint8Array, isLast: boolean): ParsedSegment {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength)
  const payloads: ParsedSegment['payloads'] = []
  let off = 0
  const torn = (reason: string): ParsedSegment => {
    if (!isLast) throw new LogCorruptedError(file, off, reason)
    return { payloads, validBytes: off, tornReason: `${reason} at offset ${off}` }
  }
  while (off < buf.length) {
    if (buf.length - off < RECORD_HEADER_BYTES) return torn('incomplete record header')
    const len = view.getUint32(off)
    if (view.getUint32(off + 4) !== crc32(buf.subarray(off, off + 4))) {
      // A zero-filled tail is what a crash leaves after the file size was extended; anything else
      // in a header is damage.
      if (isLast && buf.subarray(off).every((b) => b === 0)) return torn('zero-filled tail')
      throw new LogCorruptedError(file, off, 'record header checksum mismatch')
    }
    const end = off + RECORD_HEADER_BYTES + len
    if (end > buf.length) return torn('record extends past end of file')
    const payload = buf.subarray(off + RECORD_HEADER_BYTES, end)
    if (view.getUint32(off + 8) !== crc32(payload)) {
      if (end === buf.length) return torn('final record checksum mismatch')
      throw new LogCorruptedError(file, off, 'record checksum mismatch')
    }
    payloads.push({ offset: off, payload })
    off = end
  }
  return { payloads, validBytes: off }
}

interface Segment {
  first: number
  file: string
  /** Byte offset of each record; record i holds index first + i. */
  offsets: number[]
  size: number
}

const SEGMENT_RE = /^(\d{20})\.seg$/

/** Modes of what Raft stores: the policy log is readable by this agent's user only. */
export const FILE_MODE = 0o600
export const DIR_MODE = 0o700

function segmentName(first: number): string {
  return `${String(first).padStart(20, '0')}.seg`
}

export function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, 'r')
  try {
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
}

export function decodeEntry(file: string, offset: number, payload: Uint8Array): Entry {
  let v: unknown
  try {
    v = unpack(payload)
  } catch (err) {
    throw new LogCorruptedError(file, offset, 'record payload is not msgpack', { cause: err })
  }
  const e = v as Partial<Entry> | null
  if (
    e === null ||
    typeof e !== 'object' ||
    !Number.isSafeInteger(e.term) ||
    !Number.isSafeInteger(e.index) ||
    (e.type !== 'normal' && e.type !== 'conf') ||
    !(e.data instanceof Uint8Array)
  ) {
    throw new LogCorruptedError(file, offset, 'record payload is not an entry')
  }
  const out: Entry = { term: e.term!, index: e.index!, type: e.type, data: new Uint8Array(e.data) }
  if (e.requestId !== undefined) out.requestId = { clientId: e.requestId.clientId, seq: e.requestId.seq }
  return out
}

export function encodeEntry(e: Entry): Uint8Array {
  const o: Record<string, unknown> = { term: e.term, index: e.index, type: e.type, data: e.data }
  if (e.requestId !== undefined) o['requestId'] = { clientId: e.requestId.clientId, seq: e.requestId.seq }
  return pack(o)
}

export interface LogOpenResult {
  log: SegmentedLog
  entries: Entry[]
  warnings: string[]
}

export class SegmentedLog {
  private segments: Segment[] = []
  private fd: number | undefined

  private constructor(
    private readonly dir: string,
    private readonly segmentBytes: number,
  ) {}

  /** Opens (creating if needed) the log in `dir`, repairing a torn tail; see the file comment. */
  static open(dir: string, segmentBytes: number): LogOpenResult {
    fs.mkdirSync(dir, { recursive: true, mode: DIR_MODE })
    const log = new SegmentedLog(dir, segmentBytes)
    const { entries, warnings } = log.load(true)
    return { log, entries, warnings }
  }

  /** Reads every entry from disk (for a restart). */
  readAll(): Entry[] {
    return this.load(false).entries
  }

  private load(repair: boolean): { entries: Entry[]; warnings: string[] } {
    const names = fs
      .readdirSync(this.dir)
      .filter((n) => SEGMENT_RE.test(n))
      .sort()
    const warnings: string[] = []
    const entries: Entry[] = []
    const segments: Segment[] = []
    for (let s = 0; s < names.length; s++) {
      const name = names[s]!
      const file = path.join(this.dir, name)
      const first = Number(SEGMENT_RE.exec(name)![1])
      const buf = fs.readFileSync(file)
      const isLast = s === names.length - 1
      const parsed = parseSegment(file, buf, isLast)
      if (parsed.tornReason !== undefined) {
        warnings.push(`truncated torn final record in ${file}: ${parsed.tornReason}`)
        if (repair) {
          fs.truncateSync(file, parsed.validBytes)
          const fd = fs.openSync(file, 'r+')
          fs.fsyncSync(fd)
          fs.closeSync(fd)
        }
      }
      const prev = segments.at(-1)
      if (prev !== undefined && prev.first + prev.offsets.length !== first) {
        throw new LogCorruptedError(
          file,
          0,
          `segment starts at ${first}, expected ${prev.first + prev.offsets.length}`,
        )
      }
      const seg: Segment = { first, file, offsets: [], size: parsed.validBytes }
      parsed.payloads.forEach(({ offset, payload }, i) => {
        const e = decodeEntry(file, offset, payload)
        if (e.index !== first + i) {
          throw new LogCorruptedError(file, offset, `record holds index ${e.index}, expected ${first + i}`)
        }
        seg.offsets.push(offset)
        entries.push(e)
      })
      segments.push(seg)
    }
    if (repair) {
      this.segments = segments
      this.openActive()
    }
    return { entries, warnings }
  }

  private openActive(): void {
    if (this.fd !== undefined) fs.closeSync(this.fd)
    this.fd = undefined
    const last = this.segments.at(-1)
    if (last !== undefined) this.fd = fs.openSync(last.file, 'r+')
  }

  lastIndex(): number | undefined {
    const last = this.segments.at(-1)
    return last === undefined ? undefined : last.first + last.offsets.length - 1
  }

  /**
   * Appends entries, replacing any suffix from entries[0].index. With `sync` (the default) they are
   * durable on return (one fsync per call); without, they are written but durable only once the
   * promise of a later `sync()` resolves (a segment roll or a truncation still fsyncs at once).
   */
  append(entries: readonly Entry[], sync = true): void {
    if (entries.length === 0) return
    const first = entries[0]!.index
    const last = this.lastIndex()
    if (last !== undefined && first <= last) this.truncateFrom(first)
    const now = this.lastIndex()
    if (now !== undefined && first !== now + 1)
      throw new RangeError(`append at ${first} leaves a gap after ${now}`)
    if (this.segments.length === 0) this.newSegment(first)
    // Records are gathered and written with one call per segment (a roll writes what it has).
    let pending: Uint8Array[] = []
    let pendingBytes = 0
    const flush = () => {
      if (pending.length === 0) return
      const seg = this.segments.at(-1)!
      const buf = Buffer.allocUnsafe(pendingBytes)
      let at = 0
      for (const p of pending) at = writeRecord(buf, at, p)
      fs.writeSync(this.fd!, buf, 0, buf.length, seg.size)
      seg.size += buf.length
      pending = []
      pendingBytes = 0
    }
    for (const e of entries) {
      const seg = this.segments.at(-1)!
      if (seg.offsets.length > 0 && seg.size + pendingBytes >= this.segmentBytes) {
        flush()
        fs.fsyncSync(this.fd!)
        this.newSegment(e.index)
      }
      const payload = encodeEntry(e)
      const active = this.segments.at(-1)!
      active.offsets.push(active.size + pendingBytes)
      pending.push(payload)
      pendingBytes += RECORD_HEADER_BYTES + payload.length
    }
    flush()
    if (sync) fs.fsyncSync(this.fd!)
  }

  /**
   * Makes every write so far durable, fsyncing on the libuv thread pool so the event loop keeps
   * sending and receiving meanwhile. The caller must not append, truncate, compact or close until
   * it settles (the fd must stay the same file).
   */
  sync(): Promise<void> {
    const fd = this.fd
    if (fd === undefined) return Promise.resolve()
    return new Promise((resolve, reject) => fs.fsync(fd, (err) => (err ? reject(err) : resolve())))
  }

  private newSegment(first: number): void {
    const file = path.join(this.dir, segmentName(first))
    fs.writeFileSync(file, new Uint8Array(0), { mode: FILE_MODE })
    this.segments.push({ first, file, offsets: [], size: 0 })
    this.openActive()
    fsyncDir(this.dir)
  }

  /** Removes entries >= index: later segments are deleted first, then the one holding index is cut. */
  truncateFrom(index: number): void {
    let removed = false
    while (this.segments.length > 0 && this.segments.at(-1)!.first >= index) {
      const seg = this.segments.pop()!
      if (this.fd !== undefined) {
        fs.closeSync(this.fd)
        this.fd = undefined
      }
      fs.unlinkSync(seg.file)
      removed = true
    }
    if (removed) fsyncDir(this.dir)
    this.openActive()
    const seg = this.segments.at(-1)
    if (seg === undefined) return
    const k = index - seg.first
    if (k < seg.offsets.length) {
      seg.size = seg.offsets[k]!
      seg.offsets.length = k
      fs.ftruncateSync(this.fd!, seg.size)
      fs.fsyncSync(this.fd!)
    }
  }

  /** Deletes whole segments whose entries are all <= index. */
  compact(index: number): void {
    let removed = false
    while (this.segments.length > 1 && this.segments[1]!.first <= index + 1) {
      fs.unlinkSync(this.segments.shift()!.file)
      removed = true
    }
    if (removed) fsyncDir(this.dir)
  }

  /** Deletes every segment (a snapshot from the leader replaces the log). */
  dropAll(): void {
    if (this.fd !== undefined) fs.closeSync(this.fd)
    this.fd = undefined
    for (const seg of this.segments) fs.unlinkSync(seg.file)
    this.segments = []
    fsyncDir(this.dir)
  }

  segmentCount(): number {
    return this.segments.length
  }

  close(): void {
    if (this.fd !== undefined) fs.closeSync(this.fd)
    this.fd = undefined
  }
}
