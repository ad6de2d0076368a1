import { closeSync, fchmodSync, fsyncSync, openSync, renameSync, unlinkSync, writeSync } from 'node:fs'
import { type FileHandle, open, rename, unlink } from 'node:fs/promises'
import { dirname } from 'node:path'

/**
 * Creates a temporary file for writing with O_CREAT|O_EXCL (`wx`) and `mode` (0600 by default):
 * never opened through a link or a file someone else placed there. A leftover of a crashed write
 * (the same name) is removed first (unlink removes a link, not its target), then created anew.
 * The mode is set again on the open file, so the umask cannot loosen or tighten it.
 */
export function openExclusiveSync(path: string, mode = 0o600): number {
  let fd: number
  try {
    fd = openSync(path, 'wx', mode)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
    unlinkSync(path)
    fd = openSync(path, 'wx', mode)
  }
  try {
    fchmodSync(fd, mode)
  } catch (err) {
    closeSync(fd)
    throw err
  }
  return fd
}

/** openExclusiveSync off the event loop. */
export async function openExclusive(path: string, mode = 0o600): Promise<FileHandle> {
  let file: FileHandle
  try {
    file = await open(path, 'wx', mode)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
    await unlink(path)
    file = await open(path, 'wx', mode)
  }
  try {
    await file.chmod(mode)
  } catch (err) {
    await file.close()
    throw err
  }
  return file
}

/**
 * Writes `data` to `path` so that a crash (even `kill -9` or power loss) leaves either the old
 * file or the new one, never a torn mix: write a temporary file, fsync it, rename it over the
 * target, fsync the directory so the rename itself is durable. The file gets `mode` (0600 by
 * default: what the agent writes is its own), its temporary file is created exclusively.
 */
export function writeFileAtomicSync(path: string, data: Uint8Array | string, mode = 0o600): void {
  const tmp = `${path}.tmp-${process.pid}`
  const fd = openExclusiveSync(tmp, mode)
  try {
    writeSync(fd, typeof data === 'string' ? Buffer.from(data) : data)
    fsyncSync(fd)
  } finally {
    closeSync(fd)
  }
  renameSync(tmp, path)
  fsyncDirSync(dirname(path))
}

/** fsync a directory so that entries created or renamed in it survive a crash. */
export function fsyncDirSync(dir: string): void {
  const fd = openSync(dir, 'r')
  try {
    fsyncSync(fd)
  } finally {
    closeSync(fd)
  }
}

/**
 * writeFileAtomicSync off the event loop (the fsyncs run on the thread pool): for state written
 * often by a busy agent. Concurrent calls for one path must be serialized by the caller (they
 * share the temporary file name).
 */
export async function writeFileAtomic(path: string, data: Uint8Array | string, mode = 0o600): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`
  const file = await openExclusive(tmp, mode)
  try {
    await file.writeFile(typeof data === 'string' ? Buffer.from(data) : data)
    await file.sync()
  } finally {
    await file.close()
  }
  await rename(tmp, path)
  const dir = await open(dirname(path), 'r')
  try {
    await dir.sync()
  } finally {
    await dir.close()
  }
}

/**
 * Keeps one file up to date with the latest contents given, atomically and off the event loop:
 * at most one write in flight; contents given meanwhile replace each other and are written next.
 */
export class LatestFileWriter {
  private pending: string | undefined
  private running: Promise<void> | undefined

  constructor(
    readonly path: string,
    private readonly onError: (err: unknown) => void,
  ) {}

  write(text: string): void {
    this.pending = text
    this.running ??= this.drain()
  }

  /** Resolves once everything given so far is on disk (or failed and was reported). */
  async flush(): Promise<void> {
    while (this.running !== undefined) await this.running
  }

  private async drain(): Promise<void> {
    while (this.pending !== undefined) {
      const text = this.pending
      this.pending = undefined
      try {
        await writeFileAtomic(this.path, text)
      } catch (err) {
        this.onError(err)
      }
    }
    this.running = undefined
  }
}
