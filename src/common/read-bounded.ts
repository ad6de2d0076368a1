import { closeSync, openSync, readSync } from 'node:fs'

/**
 * Reads at most `maxBytes` of the file at `path`, for files a flag or a config names: a path
 * such as /dev/zero or a growing file must end in an error, not in an agent that reads until
 * memory runs out. Pipes (`--token-file <(...)`) read as files do. Throws node's errors for open
 * and read, and one with code `EFBIG` when there is more than `maxBytes`.
 */
export function readFileBoundedSync(path: string, maxBytes: number): Buffer {
  const fd = openSync(path, 'r')
  try {
    const chunks: Buffer[] = []
    let total = 0
    for (;;) {
      const buf = Buffer.allocUnsafe(Math.min(64 * 1024, maxBytes + 1 - total))
      const n = readSync(fd, buf, 0, buf.length, null)
      if (n === 0) break
      total += n
      if (total > maxBytes)
        throw Object.assign(new Error(`${path}: more than ${maxBytes} bytes`), { code: 'EFBIG', path })
      chunks.push(buf.subarray(0, n))
    }
    return Buffer.concat(chunks, total)
  } finally {
    closeSync(fd)
  }
}

/** What went wrong reading a file, for a one-line message: the errno code, EFBIG with the limit. */
export function readProblem(err: unknown, maxBytes: number): string {
  const code = (err as NodeJS.ErrnoException).code
  if (code === 'EFBIG') return `EFBIG (more than ${maxBytes} bytes)`
  return code ?? (err as Error).message
}
