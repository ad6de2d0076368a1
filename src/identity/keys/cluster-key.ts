import { randomBytes } from 'node:crypto'
import { closeSync, fsyncSync, openSync, writeSync } from 'node:fs'
import { readFileBoundedSync, readProblem } from '../../common/read-bounded.ts'
import { ClusterKeyError } from '../errors.ts'

/**
 * The cluster key is a libp2p private-network pre-shared key in the go-ipfs "swarm.key" text
 * format (95 bytes):
 *
 *   /key/swarm/psk/1.0.0/
 *   /base16/
 *   <64 hex digits>
 *
 * Every connection is wrapped in an XSalsa20 stream keyed by it before noise even starts, so a
 * process without the key cannot complete a connection to any agent.
 */
const SWARM_KEY_RE = /^\/key\/swarm\/psk\/1\.0\.0\/\r?\n\/base16\/\r?\n([0-9a-fA-F]{64})\s*$/

/**
 * A new random cluster key, as text: 32 random bytes in the swarm.key format (what
 * `@libp2p/pnet`'s generateKey writes, without loading that package into every CLI call).
 */
export function generateClusterKey(): string {
  return `/key/swarm/psk/1.0.0/\n/base16/\n${randomBytes(32).toString('hex')}\n`
}

/** Parses and checks cluster-key text; returns the canonical bytes libp2p pnet expects. */
export function parseClusterKey(text: string, source = 'cluster key'): Uint8Array {
  const m = SWARM_KEY_RE.exec(text)
  if (m === null) {
    throw new ClusterKeyError(
      `${source} is not a peermesh cluster key (expected the 3-line format printed by 'peermesh keygen')`,
    )
  }
  return Buffer.from(`/key/swarm/psk/1.0.0/\n/base16/\n${m[1]!.toLowerCase()}`)
}

/** Largest cluster key file read (a key is 44 characters of base64). */
const MAX_CLUSTER_KEY_FILE_BYTES = 64 * 1024

/** Reads a cluster key file, with a one-line error for a missing, unreadable or malformed file. */
export function readClusterKeyFile(path: string): Uint8Array {
  let text: string
  try {
    text = readFileBoundedSync(path, MAX_CLUSTER_KEY_FILE_BYTES).toString('utf8')
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    const why =
      code === 'ENOENT'
        ? 'no such file'
        : code === 'EACCES'
          ? 'permission denied'
          : readProblem(err, MAX_CLUSTER_KEY_FILE_BYTES)
    throw new ClusterKeyError(`cannot read cluster key file ${path}: ${why}`, { cause: err })
  }
  return parseClusterKey(text, `cluster key file ${path}`)
}

/** Mode of a cluster key file: it admits a process to the cluster, so its owner alone reads it. */
export const CLUSTER_KEY_FILE_MODE = 0o600

/**
 * Writes a cluster key to a new file, mode 0600, created exclusively (`wx`): an existing file is
 * an error, never replaced (replacing a cluster's key would split the cluster), and a link placed
 * at `path` is not followed. For `peermesh keygen --out FILE`.
 */
export function writeClusterKeyFile(path: string, text: string): void {
  let fd: number
  try {
    fd = openSync(path, 'wx', CLUSTER_KEY_FILE_MODE)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    const why = code === 'EEXIST' ? 'the file exists (remove it first to replace the key)' : code
    throw new ClusterKeyError(`cannot write cluster key file ${path}: ${why}`, { cause: err })
  }
  try {
    writeSync(fd, Buffer.from(text))
    fsyncSync(fd)
  } finally {
    closeSync(fd)
  }
}
