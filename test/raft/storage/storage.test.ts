import { raftMessage } from '../message.ts'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { DEFAULT_RAFT_CONFIG } from '../../../src/raft/config.ts'
import { FileStorage } from '../../../src/raft/storage/file-storage.ts'
import { MemoryStorage } from '../../../src/raft/storage/memory-storage.ts'
import { Raft } from '../../../src/raft/raft.ts'
import type { RaftStorage } from '../../../src/raft/storage/storage.ts'
import type { Entry, Message, Snapshot } from '../../../src/raft/types.ts'
import { makeTempDir, removeTempDir } from '../../temp-dir.ts'

const enc = new TextEncoder()
const ent = (index: number, term: number, s = `e${index}`): Entry => ({
  index,
  term,
  type: 'normal',
  data: enc.encode(s),
})
const range = (from: number, to: number, term: number) =>
  Array.from({ length: to - from + 1 }, (_, i) => ent(from + i, term))

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn()
  } catch (err) {
    return (err as { code?: string }).code
  }
  return undefined
}

const snapAt = (index: number, term: number): Snapshot => ({
  metadata: { index, term, conf: { voters: ['a', 'b', 'c'], learners: [] } },
  data: enc.encode(`s${index}`),
})

const msg = (m: Pick<Message, 'type' | 'from' | 'term'> & Partial<Message>): Message =>
  raftMessage({ to: 'a', ...m })

/** What the driver does with each Ready, minus sending and applying: persist, then advance. */
function persist(raft: Raft, storage: RaftStorage): void {
  for (let rd = raft.ready(); rd !== undefined; rd = raft.ready()) {
    if (rd.snapshot !== undefined) storage.installSnapshot(rd.snapshot)
    storage.append(rd.entries)
    if (rd.hardState !== undefined) storage.setHardState(rd.hardState)
    raft.advance(rd)
  }
}

let dir: string
beforeEach(() => {
  dir = makeTempDir('raft')
})
afterEach(() => {
  removeTempDir(dir)
})

const segFiles = () =>
  fs
    .readdirSync(path.join(dir, 'log'))
    .filter((n) => n.endsWith('.seg'))
    .sort()
    .map((n) => path.join(dir, 'log', n))

describe.each([
  ['MemoryStorage', () => new MemoryStorage() as RaftStorage],
  ['FileStorage', () => FileStorage.open(dir).storage as RaftStorage],
])('%s semantics', (_name, make) => {
  it('appends, truncates a conflicting suffix and compacts after a snapshot', () => {
    const s = make()
    s.append(range(1, 10, 1))
    s.append([ent(6, 2), ent(7, 2)]) // replaces 6..10
    let st = s.initialState()
    expect(st.entries.map((e) => `${e.index}/${e.term}`)).toEqual([
      '1/1',
      '2/1',
      '3/1',
      '4/1',
      '5/1',
      '6/2',
      '7/2',
    ])
    const snap: Snapshot = {
      metadata: { index: 5, term: 1, conf: { voters: ['a'], learners: [] } },
      data: enc.encode('s'),
    }
    s.saveSnapshot(snap)
    s.compact(5)
    st = s.initialState()
    expect(st.snapshot?.metadata.index).toBe(5)
    expect(st.entries.filter((e) => e.index > 5).map((e) => e.index)).toEqual([6, 7])
    s.installSnapshot({ ...snap, metadata: { ...snap.metadata, index: 20, term: 3 } })
    st = s.initialState()
    expect(st.entries).toEqual([])
    s.append([ent(21, 3)])
    expect(s.initialState().entries.map((e) => e.index)).toEqual([21])
    s.close()
  })

  it('refuses an append that leaves a gap after an installed snapshot', () => {
    const s = make()
    s.append(range(1, 5, 1))
    s.installSnapshot(snapAt(12, 2))
    expect(() => s.append([ent(14, 2)])).toThrow(RangeError)
    s.append([ent(13, 2), ent(14, 2)])
    expect(s.initialState().entries.map((e) => e.index)).toEqual([13, 14])
    s.close()
  })
})

describe('FileStorage durability', () => {
  it('fsyncs term and vote at once, writes a commit-only change lazily (on close or the next vote)', () => {
    const { storage } = FileStorage.open(dir)
    storage.initialState()
    storage.append(range(1, 3, 1))
    storage.setHardState({ term: 1, vote: 'a', commit: 0 })
    storage.setHardState({ term: 1, vote: 'a', commit: 3 })
    // A crash now (no close): term and vote are durable; the commit index is a lower bound.
    const crashed = FileStorage.open(dir).storage
    expect(crashed.initialState().hardState).toEqual({ term: 1, vote: 'a', commit: 0 })
    crashed.close()
    storage.close()
    const { storage: again } = FileStorage.open(dir)
    expect(again.initialState().hardState).toEqual({ term: 1, vote: 'a', commit: 3 })
    again.close()
  })

  it('keeps term, vote, commit, entries and snapshot across reopen', () => {
    const { storage } = FileStorage.open(dir)
    storage.append(range(1, 5, 1))
    storage.setHardState({ term: 3, vote: 'b', commit: 4 })
    storage.append([{ ...ent(6, 3), requestId: { clientId: 'c1', seq: 9 } }])
    storage.close()
    const { storage: again, warnings } = FileStorage.open(dir)
    expect(warnings).toEqual([])
    const st = again.initialState()
    expect(st.hardState).toEqual({ term: 3, vote: 'b', commit: 4 })
    expect(st.entries.length).toBe(6)
    expect(st.entries[5]).toEqual({ ...ent(6, 3), requestId: { clientId: 'c1', seq: 9 } })
    again.close()
  })

  it('truncates a torn final record on open and reports it', () => {
    const { storage } = FileStorage.open(dir)
    storage.append(range(1, 5, 1))
    storage.close()
    const [file] = segFiles()
    const size = fs.statSync(file!).size
    fs.truncateSync(file!, size - 3) // a crash in the middle of writing record 5
    const { storage: again, warnings } = FileStorage.open(dir)
    expect(warnings.length).toBe(1)
    expect(again.initialState().entries.map((e) => e.index)).toEqual([1, 2, 3, 4])
    again.append([ent(5, 2)]) // and the log continues cleanly
    again.close()
    const { storage: third, warnings: w3 } = FileStorage.open(dir)
    expect(w3).toEqual([])
    expect(
      third
        .initialState()
        .entries.map((e) => `${e.index}/${e.term}`)
        .at(-1),
    ).toBe('5/2')
    third.close()
  })

  it('raises LogCorruptedError naming the offset for a flipped byte in a middle record', () => {
    const { storage } = FileStorage.open(dir)
    storage.append(range(1, 5, 1))
    storage.close()
    const [file] = segFiles()
    const buf = fs.readFileSync(file!)
    const recordBytes = buf.length / 5 // equal-size records in this test
    const at = recordBytes * 2 + 14 // inside record 3's payload
    buf[at] = buf[at]! ^ 0xff
    fs.writeFileSync(file!, buf)
    let caught: { code?: string; offset?: number } | undefined
    try {
      FileStorage.open(dir)
    } catch (err) {
      caught = err as { code?: string; offset?: number }
    }
    expect(caught?.code).toBe('PEERMESH_ERR_LOG_CORRUPTED')
    expect(caught?.offset).toBe(recordBytes * 2)
  })

  it('treats a damaged record header in the middle as corruption, not a torn tail', () => {
    const { storage } = FileStorage.open(dir)
    storage.append(range(1, 5, 1))
    storage.close()
    const [file] = segFiles()
    const buf = fs.readFileSync(file!)
    const at = buf.length / 5 + 1 // record 2's length field
    buf[at] = buf[at]! ^ 0x40
    fs.writeFileSync(file!, buf)
    expect(codeOf(() => FileStorage.open(dir))).toBe('PEERMESH_ERR_LOG_CORRUPTED')
  })

  it('rolls segments, deletes whole segments on compaction and truncates across segments', () => {
    const { storage } = FileStorage.open(dir, { segmentBytes: 200 })
    storage.append(range(1, 40, 1))
    const before = segFiles().length
    expect(before).toBeGreaterThan(3)
    storage.append([ent(15, 2)]) // truncate back into an early segment
    expect(storage.initialState().entries.length).toBe(15)
    expect(segFiles().length).toBeLessThan(before)
    storage.append(range(16, 40, 2))
    storage.saveSnapshot({
      metadata: { index: 30, term: 2, conf: { voters: ['a'], learners: [] } },
      data: new Uint8Array(),
    })
    storage.compact(30)
    storage.close()
    const { storage: again } = FileStorage.open(dir, { segmentBytes: 200 })
    const st = again.initialState()
    expect(st.snapshot?.metadata.index).toBe(30)
    expect(st.entries.map((e) => e.index)).toEqual(range(31, 40, 2).map((e) => e.index))
    expect(st.entries.every((e) => e.term === 2)).toBe(true)
    again.close()
  })

  it('finishes an interrupted snapshot install on open: the stale log goes, appends continue the snapshot', () => {
    const { storage } = FileStorage.open(dir)
    storage.append(range(1, 20, 1))
    storage.saveSnapshot(snapAt(12, 2)) // written; the crash came before the old log was dropped
    storage.close()
    const { storage: again } = FileStorage.open(dir)
    expect(again.initialState().entries).toEqual([])
    again.append([ent(13, 2)])
    again.close()
    const { storage: third } = FileStorage.open(dir)
    expect(third.initialState().entries.map((e) => `${e.index}/${e.term}`)).toEqual(['13/2'])
    third.close()
  })

  it('restarts after a snapshot got ahead of the durable log, and appends after the snapshot', () => {
    // The driver may snapshot entries it applied before its own fsync (RaftNode.maybeSnapshot).
    const { storage } = FileStorage.open(dir)
    storage.append(range(1, 18, 1))
    storage.saveSnapshot(snapAt(20, 1))
    storage.close()
    const { storage: again } = FileStorage.open(dir)
    expect(again.initialState().entries).toEqual([])
    again.append([ent(21, 1)])
    again.close()
    const { storage: third } = FileStorage.open(dir)
    expect(third.initialState().entries.map((e) => e.index)).toEqual([21])
    third.close()
  })

  it('keeps every entry a follower acknowledged after a snapshot replaced its stale tail (Raft §7)', () => {
    // Regression (property test seed 1381723097): the core reported only entries past its old
    // durable index after installing a snapshot inside its stale tail; FileStorage wrote them after
    // a gap and dropped them all on the next open.
    const cfg = { ...DEFAULT_RAFT_CONFIG, id: 'a', rng: () => 0.5 }
    const { storage } = FileStorage.open(dir)
    const raft = new Raft(cfg, storage.initialState())
    raft.bootstrap(['a', 'b', 'c'])
    persist(raft, storage)
    // b, leader of term 2, sends 4..10; they never commit.
    raft.step(
      msg({ type: 'app', from: 'b', term: 2, index: 3, logTerm: 1, entries: range(4, 10, 2), commit: 3 }),
    )
    persist(raft, storage)
    // c, leader of term 3, replaces them: a snapshot at 6 (inside the stale tail), then 7..12.
    raft.step(msg({ type: 'snap', from: 'c', term: 3, snapshot: snapAt(6, 3) }))
    persist(raft, storage)
    raft.step(
      msg({ type: 'app', from: 'c', term: 3, index: 6, logTerm: 3, entries: range(7, 12, 3), commit: 6 }),
    )
    persist(raft, storage)
    expect(raft.log.lastIndex()).toBe(12)
    storage.close()
    const { storage: again } = FileStorage.open(dir)
    const st = again.initialState()
    expect(st.snapshot?.metadata.index).toBe(6)
    expect(st.entries.map((e) => `${e.index}/${e.term}`)).toEqual(range(7, 12, 3).map((e) => `${e.index}/3`))
    const restarted = new Raft(cfg, st)
    expect(restarted.log.lastIndex()).toBe(12)
    again.close()
  })

  it('detects a corrupted hard state file', () => {
    const { storage } = FileStorage.open(dir)
    storage.setHardState({ term: 1, vote: 'a', commit: 0 })
    storage.close()
    const f = path.join(dir, 'hardstate')
    const buf = fs.readFileSync(f)
    buf[buf.length - 1] = buf[buf.length - 1]! ^ 1
    fs.writeFileSync(f, buf)
    const { storage: again } = FileStorage.open(dir)
    expect(codeOf(() => again.initialState())).toBe('PEERMESH_ERR_STORAGE_CORRUPTED')
    again.close()
  })
})
