import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { writeFileAtomicSync } from '../../common/fs-atomic.ts'
import {
  BadFoundingMessageError,
  checkCommitment,
  type FoundingCommitment,
  type FoundingRecordStore,
} from './founding.ts'

/** File in the data dir holding this agent's founding commitment (next to the `raft` dir). */
export const FOUNDING_RECORD_FILE = 'raft-founding.json'

/**
 * The founding commitment on disk (`<dataDir>/raft-founding.json`), written atomically and fsynced
 * before `save` returns: the safety of founding rests on it surviving `kill -9` (founding.ts).
 * A file that cannot be read back is an error at start, like a corrupted Raft log: guessing would
 * let this agent commit to a second founder set.
 */
export class FoundingRecordFile implements FoundingRecordStore {
  private readonly path: string
  private cached: FoundingCommitment | undefined

  constructor(dataDir: string) {
    this.path = join(dataDir, FOUNDING_RECORD_FILE)
    if (!existsSync(this.path)) return
    try {
      this.cached = checkCommitment(JSON.parse(readFileSync(this.path, 'utf8')))
    } catch (err) {
      throw new BadFoundingMessageError(
        `${this.path} is unreadable (${(err as Error).message}); restore it or, if this agent never ` +
          'founded a cluster, remove it',
        { cause: err },
      )
    }
  }

  load(): FoundingCommitment | undefined {
    return this.cached
  }

  save(c: FoundingCommitment): void {
    const copy = { set: [...c.set], witnesses: [...c.witnesses] }
    writeFileAtomicSync(this.path, `${JSON.stringify(copy)}\n`)
    this.cached = copy
  }
}
