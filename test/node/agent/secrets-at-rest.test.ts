/**
 * Secrets at rest (#12): the data dir 0700 and what is in it 0600, tightened at start with a
 * warning; a loose cluster key file warned about; keygen --out and temporary files 0600 and
 * exclusive. Then one real agent, attacked through its HTTP API as a browser page would.
 */
import { request } from 'node:http'
import {
  chmodSync,
  closeSync,
  existsSync,
  mkdirSync,
  readdirSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs'
import { join } from 'node:path'
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest'
import { openExclusiveSync, writeFileAtomic, writeFileAtomicSync } from '../../../src/common/fs-atomic.ts'
import { loadOrCreateNodeIdentity } from '../../../src/identity/keys/node-key.ts'
import {
  checkSecretsAtRest,
  SecretsAtRestError,
  secureDataDir,
  tightenedMode,
  warnIfClusterKeyLoose,
} from '../../../src/node/agent/secrets-at-rest.ts'
import { FileStorage } from '../../../src/raft/storage/file-storage.ts'
import { runCli, TestCluster, waitFor } from '../../e2e/harness.ts'
import { makeTempDir } from '../../temp-dir.ts'

const mode = (p: string): number => statSync(p).mode & 0o777

function memoryLog() {
  const warnings: { obj: object; msg: string }[] = []
  return { warnings, warn: (obj: object, msg: string) => void warnings.push({ obj, msg }) }
}

let dir = ''
let oldUmask = 0
beforeEach(() => {
  dir = makeTempDir('secrets')
  // A careless umask: whatever the agent creates must still come out 0600/0700.
  oldUmask = process.umask(0)
})
afterEach(() => {
  process.umask(oldUmask)
  rmSync(dir, { recursive: true, force: true })
})

describe('tightenedMode (pure)', () => {
  it.each([
    [0o600, 'file', undefined],
    [0o400, 'file', undefined],
    [0o644, 'file', 0o600],
    [0o640, 'file', 0o600],
    [0o604, 'file', 0o600],
    [0o666, 'file', 0o600],
    [0o700, 'dir', undefined],
    [0o755, 'dir', 0o700],
    [0o750, 'dir', 0o700],
    [0o777, 'dir', 0o700],
  ] as [number, 'dir' | 'file', number | undefined][])('%o (%s) -> %o', (m, kind, want) => {
    expect(tightenedMode(m, kind)).toBe(want)
  })
})

describe('what the agent writes is 0600 in 0700 directories, even under umask 0', () => {
  it('node key, Raft storage, atomic files', async () => {
    const data = join(dir, 'data')
    await loadOrCreateNodeIdentity(data)
    const { storage } = FileStorage.open(join(data, 'raft'), { segmentBytes: 4096 })
    storage.initialState()
    storage.setHardState({ term: 1, vote: 'x', commit: 0 })
    storage.append([{ index: 1, term: 1, type: 'normal', data: new Uint8Array([1]) }])
    storage.close()
    writeFileAtomicSync(join(data, 'services.json'), '{}')
    await writeFileAtomic(join(data, 'gossip.json'), '{}')
    expect(mode(data)).toBe(0o700)
    expect(mode(join(data, 'node.key'))).toBe(0o600)
    expect(mode(join(data, 'raft'))).toBe(0o700)
    expect(mode(join(data, 'raft', 'log'))).toBe(0o700)
    expect(mode(join(data, 'services.json'))).toBe(0o600)
    expect(mode(join(data, 'gossip.json'))).toBe(0o600)
    const walk = (d: string): string[] =>
      readdirSync(d, { withFileTypes: true }).flatMap((e) =>
        e.isDirectory() ? walk(join(d, e.name)) : [join(d, e.name)],
      )
    for (const f of walk(data)) expect(mode(f), f).toBe(0o600)
    // Nothing to tighten afterwards.
    const log = memoryLog()
    expect(secureDataDir(data, log)).toEqual([])
    expect(log.warnings).toEqual([])
  })

  it('temporary files are created exclusively: a link planted at the temp name is not followed', () => {
    const target = join(dir, 'target')
    writeFileSync(target, 'do not touch')
    const file = join(dir, 'state.json')
    // The temp name writeFileAtomicSync uses; a leftover (or a planted link) is replaced, not followed.
    symlinkSync(target, `${file}.tmp-${process.pid}`)
    writeFileAtomicSync(file, 'new')
    expect(mode(file)).toBe(0o600)
    expect(statSync(target).size).toBe('do not touch'.length)
    const fd = openExclusiveSync(join(dir, 'x.tmp'))
    closeSync(fd)
    expect(mode(join(dir, 'x.tmp'))).toBe(0o600)
  })
})

describe('the agent tightens a loose data dir at start', () => {
  it('0755 dirs and 0644 key/Raft files become 0700/0600, each with a warning', () => {
    const data = join(dir, 'data')
    mkdirSync(join(data, 'raft', 'log'), { recursive: true, mode: 0o755 })
    chmodSync(data, 0o755)
    const loose = [
      join(data, 'node.key'),
      join(data, 'cluster.key'),
      join(data, 'raft', 'hardstate'),
      join(data, 'raft', 'log', '00000000000000000001.seg'),
    ]
    for (const f of loose) writeFileSync(f, 'secret', { mode: 0o644 })
    writeFileSync(join(data, 'ok.json'), '{}', { mode: 0o600 })
    // A link out of the data dir is neither followed nor changed.
    const outside = join(dir, 'outside')
    writeFileSync(outside, 'x', { mode: 0o644 })
    symlinkSync(outside, join(data, 'link'))
    const log = memoryLog()
    const changed = secureDataDir(data, log)
    expect(changed.map((c) => c.path).sort()).toEqual(
      [data, join(data, 'raft'), join(data, 'raft', 'log'), ...loose].sort(),
    )
    for (const d of [data, join(data, 'raft'), join(data, 'raft', 'log')]) expect(mode(d)).toBe(0o700)
    for (const f of loose) expect(mode(f)).toBe(0o600)
    expect(mode(outside)).toBe(0o644)
    expect(log.warnings).toHaveLength(changed.length)
    expect(log.warnings.find((w) => w.msg.includes('node.key'))?.msg).toMatch(
      /readable by others.*mode 0644.*tightened to 0600/,
    )
  })

  it('a data dir not created yet is left for the agent to create', () => {
    expect(secureDataDir(join(dir, 'nope'), memoryLog())).toEqual([])
  })

  it('refuses to start when tightening fails, naming the file', () => {
    const data = join(dir, 'data')
    mkdirSync(data, { mode: 0o700 })
    writeFileSync(join(data, 'node.key'), 'k', { mode: 0o644 })
    // A read-only file system, or a file chmod may not change.
    const readOnly = {
      chmod: () => {
        throw Object.assign(new Error('EROFS: read-only file system'), { code: 'EROFS' })
      },
    }
    try {
      secureDataDir(data, memoryLog(), readOnly)
      expect.unreachable()
    } catch (err) {
      expect((err as SecretsAtRestError).code).toBe(SecretsAtRestError.code)
      expect((err as Error).message).toMatch(/node\.key has mode 0644 and cannot be tightened to 0600: EROFS/)
    }
    expect(mode(join(data, 'node.key'))).toBe(0o644)
  })

  it('warns about a cluster key file readable by group or others, without changing it', () => {
    const key = join(dir, 'cluster.key')
    writeFileSync(key, 'k', { mode: 0o644 })
    const log = memoryLog()
    checkSecretsAtRest({ dataDir: join(dir, 'data'), clusterKeyFile: key }, log)
    expect(log.warnings).toHaveLength(1)
    expect(log.warnings[0]!.msg).toMatch(/cluster key file .* readable by group or others \(mode 0644\)/)
    expect(mode(key)).toBe(0o644)
    chmodSync(key, 0o600)
    expect(warnIfClusterKeyLoose(key, memoryLog())).toBe(false)
  })
})

describe('peermesh keygen --out', () => {
  it('writes a new 0600 file and never replaces one', async () => {
    process.umask(0)
    const out = join(dir, 'cluster.key')
    const r = await runCli(['keygen', '--out', out])
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).toBe('')
    expect(mode(out)).toBe(0o600)
    const again = await runCli(['keygen', '--out', out])
    expect(again.code).not.toBe(0)
    expect(again.stderr).toMatch(/PEERMESH_ERR_CLUSTER_KEY|exists/)
  })
})

describe('a real agent: loose files tightened at start, its API refuses a browser-borne write', () => {
  const cluster = new TestCluster()
  afterAll(() => cluster.close())

  function send(
    http: string,
    method: string,
    path: string,
    headers: Record<string, string>,
    body?: string,
  ): Promise<{ status: number; text: string }> {
    const [host, port] = http.split(':')
    return new Promise((resolve, reject) => {
      const req = request({ host, port: Number(port), method, path, headers, agent: false }, (res) => {
        let text = ''
        res.on('data', (d: Buffer) => (text += d.toString()))
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text }))
      })
      req.on('error', reject)
      req.end(body)
    })
  }

  it('starts, tightens, and refuses text/plain, a foreign Host and a foreign Origin', async () => {
    process.umask(0o022)
    const key = await cluster.writeClusterKey()
    chmodSync(key, 0o644)
    const dataDir = join(cluster.dir, 'a1')
    mkdirSync(dataDir, { mode: 0o755 })
    chmodSync(dataDir, 0o755)
    const a = cluster.agent({
      name: 'a1',
      clusterKeyFile: key,
      dataDir,
      extraArgs: ['--bootstrap-expect', '1'],
    })
    await a.start()
    expect(a.log).toMatch(/was readable by others than this agent's user \(mode 0755\): tightened to 0700/)
    expect(a.log).toMatch(/cluster key file .* readable by group or others/)
    expect(mode(dataDir)).toBe(0o700)
    expect(mode(join(dataDir, 'node.key'))).toBe(0o600)
    await waitFor('a leader', async () => ((await a.api<string>('/v1/status/leader')) ? true : undefined))
    // The leader creates the CA, then applies the management token: the reads below use it.
    await a.waitForManagementToken()
    await waitFor('raft files', async () => (existsSync(join(dataDir, 'raft', 'log')) ? true : undefined))
    expect(mode(join(dataDir, 'raft'))).toBe(0o700)
    for (const f of readdirSync(join(dataDir, 'raft', 'log')))
      expect(mode(join(dataDir, 'raft', 'log', f))).toBe(0o600)

    const allowAll = JSON.stringify({ source: '*', destination: '*', action: 'allow' })
    const path = '/v1/connect/intentions'
    const plain = await send(a.http, 'POST', path, { 'content-type': 'text/plain;charset=UTF-8' }, allowAll)
    expect(plain.status).toBe(415)
    const rebound = await send(
      a.http,
      'POST',
      path,
      { host: 'evil.example', 'content-type': 'application/json' },
      allowAll,
    )
    expect(rebound.status).toBe(403)
    const crossOrigin = await send(
      a.http,
      'POST',
      path,
      { origin: 'http://evil.example', 'content-type': 'application/json' },
      allowAll,
    )
    expect(crossOrigin.status).toBe(403)
    expect(await a.api(path)).toEqual([])
    // The CLI (a JSON client) still writes.
    const ok = await runCli(['intention', 'create', 'web', 'db', 'allow', '--http', a.http])
    expect(ok.code, ok.stderr).toBe(0)
    const list = await a.api<{ SourceName: string; DestinationName: string }[]>(path)
    expect(list?.map((i) => `${i.SourceName}->${i.DestinationName}`)).toEqual(['web->db'])
  })
})
