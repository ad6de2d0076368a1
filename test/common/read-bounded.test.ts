/**
 * Files that a flag or the config names are read with a bound: /dev/zero (or any file that never
 * ends) gives a one-line error naming the file, not an agent that reads until memory runs out.
 */
import { chmodSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { readFileBoundedSync } from '../../src/common/read-bounded.ts'
import { readClusterKeyFile } from '../../src/identity/keys/cluster-key.ts'
import { readConfigFile, readSecretFile } from '../../src/node/agent/config.ts'
import { makeTempDir, removeTempDir } from '../temp-dir.ts'

describe('bounded file reads', () => {
  const dir = makeTempDir('read-bounded')
  afterAll(() => removeTempDir(dir))

  it('reads a file up to the bound, and refuses one byte more with EFBIG', () => {
    const at = join(dir, 'at')
    writeFileSync(at, 'x'.repeat(1000))
    expect(readFileBoundedSync(at, 1000).toString()).toBe('x'.repeat(1000))
    expect(() => readFileBoundedSync(at, 999)).toThrow(expect.objectContaining({ code: 'EFBIG' }))
    writeFileSync(join(dir, 'empty'), '')
    expect(readFileBoundedSync(join(dir, 'empty'), 10)).toHaveLength(0)
    expect(() => readFileBoundedSync(join(dir, 'missing'), 10)).toThrow(
      expect.objectContaining({ code: 'ENOENT' }),
    )
  })

  it('ends a read of /dev/zero', () => {
    expect(() => readFileBoundedSync('/dev/zero', 1 << 20)).toThrow(
      expect.objectContaining({ code: 'EFBIG' }),
    )
  })

  it('refuses /dev/zero as a config file, a token file and a cluster key file, naming it', () => {
    expect(() => readConfigFile('/dev/zero')).toThrow(
      /cannot read config file \/dev\/zero: EFBIG \(more than 1048576 bytes\)/,
    )
    expect(() => readSecretFile('/dev/zero', 'tokenFile')).toThrow(
      /tokenFile: cannot read \/dev\/zero: EFBIG/,
    )
    expect(() => readClusterKeyFile('/dev/zero')).toThrow(/cannot read cluster key file \/dev\/zero: EFBIG/)
  })

  it('still reads an ordinary secret file', () => {
    const f = join(dir, 'token')
    writeFileSync(f, ' 11111111-2222-3333-4444-555555555555\n')
    chmodSync(f, 0o600)
    expect(readSecretFile(f, 'tokenFile')).toBe('11111111-2222-3333-4444-555555555555')
  })
})
