/**
 * Secrets at rest (#12): what an agent keeps on disk — its node key, the cluster key, the Raft log
 * with the sealed CA key, registrations — is readable by the agent's user alone. At start the
 * agent checks its data dir: directories 0700, files 0600. Anything looser (a copied file, an
 * archive restored with other modes, a umask of 0) is tightened with a warning that says so; the
 * agent refuses to start only when tightening fails. A cluster key file given with
 * `--cluster-key` lives outside the data dir and is the operator's: a loose one gets a warning.
 *
 * Symbolic links are neither followed nor changed; entries owned by another user are reported,
 * not changed (chmod would fail, and the data dir is this user's).
 */
import { chmodSync, lstatSync, readdirSync, type Stats, statSync } from 'node:fs'
import { join } from 'node:path'
import { PeermeshError } from '../../common/errors.ts'

/** The mode each kind of entry in the data dir should have. */
export const DATA_DIR_MODE = 0o700
export const DATA_FILE_MODE = 0o600
/** Deeper than the agent ever nests (data dir / raft / log / segment): a bound on the walk. */
const MAX_DEPTH = 8

/** A data dir entry that could not be tightened: the agent does not start. */
export class SecretsAtRestError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_SECRETS_AT_REST'
}

export interface SecretsLog {
  warn(obj: object, msg: string): void
}

/** One entry whose mode was changed. */
export interface Tightened {
  path: string
  from: number
  to: number
}

/**
 * The mode an entry should get, or undefined when group and others have no access (the owner's
 * own bits are the owner's business: a read-only 0400 key stays so). Pure.
 */
export function tightenedMode(mode: number, kind: 'dir' | 'file'): number | undefined {
  if ((mode & 0o077) === 0) return undefined
  return kind === 'dir' ? DATA_DIR_MODE : DATA_FILE_MODE
}

/** `0644`-style text of a mode's permission bits. */
export function modeText(mode: number): string {
  return `0${(mode & 0o777).toString(8).padStart(3, '0')}`
}

/**
 * Tightens the data dir and everything in it (see the file comment). Returns what it changed;
 * each change is also logged as a warning. A data dir that does not exist yet is left alone: the
 * agent creates it, and what goes in it, with these modes.
 */
export function secureDataDir(
  dataDir: string,
  log: SecretsLog,
  fs: { chmod(path: string, mode: number): void } = { chmod: chmodSync },
): Tightened[] {
  if (process.platform === 'win32') return []
  const changed: Tightened[] = []
  const uid = process.getuid?.()
  const visit = (path: string, depth: number): void => {
    let st: Stats
    try {
      st = lstatSync(path)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return
      throw new SecretsAtRestError(`cannot check ${path}: ${(err as Error).message}`, { cause: err })
    }
    if (st.isSymbolicLink()) return
    const kind = st.isDirectory() ? 'dir' : st.isFile() ? 'file' : undefined
    if (kind === undefined) return
    const want = tightenedMode(st.mode, kind)
    if (want !== undefined) {
      if (uid !== undefined && st.uid !== uid) {
        throw new SecretsAtRestError(
          `${path} has mode ${modeText(st.mode)} and belongs to another user (uid ${st.uid}); it must be ${modeText(want)} and this agent's`,
        )
      }
      try {
        fs.chmod(path, want)
      } catch (err) {
        throw new SecretsAtRestError(
          `${path} has mode ${modeText(st.mode)} and cannot be tightened to ${modeText(want)}: ${(err as Error).message}`,
          { cause: err },
        )
      }
      changed.push({ path, from: st.mode & 0o777, to: want })
      log.warn(
        { path, was: modeText(st.mode), now: modeText(want) },
        `${path} was readable by others than this agent's user (mode ${modeText(st.mode)}): tightened to ${modeText(want)}`,
      )
    }
    if (kind === 'dir' && depth < MAX_DEPTH) {
      for (const name of readdirSync(path)) visit(join(path, name), depth + 1)
    }
  }
  visit(dataDir, 0)
  return changed
}

/**
 * Warns when a cluster key file is readable by group or others (the key admits a process to the
 * cluster). Returns whether it warned. A missing file is left to the key loader to report.
 */
export function warnIfClusterKeyLoose(path: string, log: SecretsLog): boolean {
  if (process.platform === 'win32') return false
  let mode: number
  try {
    mode = statSync(path).mode
  } catch {
    return false
  }
  if ((mode & 0o077) === 0) return false
  log.warn(
    { path, mode: modeText(mode) },
    `cluster key file ${path} is readable by group or others (mode ${modeText(mode)}); anyone who reads it can join the cluster: chmod 600 it`,
  )
  return true
}

/** What the agent checks at start: its data dir, and a cluster key file given from outside it. */
export function checkSecretsAtRest(
  init: { dataDir: string; clusterKeyFile?: string | undefined },
  log: SecretsLog,
): Tightened[] {
  const changed = secureDataDir(init.dataDir, log)
  if (init.clusterKeyFile !== undefined) warnIfClusterKeyLoose(init.clusterKeyFile, log)
  return changed
}
