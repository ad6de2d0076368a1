import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { LatestFileWriter } from '../../src/common/fs-atomic.ts'
import { TempDirs } from '../temp-dir.ts'

const tmp = new TempDirs()
afterAll(() => tmp.removeAll())

describe('LatestFileWriter', () => {
  it('ends with the latest contents, one write in flight at a time, no temporary file left', async () => {
    const dir = tmp.make('writer')
    const errors: unknown[] = []
    const w = new LatestFileWriter(join(dir, 'state.json'), (e) => errors.push(e))
    for (let i = 0; i < 50; i++) w.write(JSON.stringify({ i }))
    await w.flush()
    expect(JSON.parse(readFileSync(join(dir, 'state.json'), 'utf8'))).toEqual({ i: 49 })
    w.write('{"i":50}')
    await w.flush()
    expect(readFileSync(join(dir, 'state.json'), 'utf8')).toBe('{"i":50}')
    expect(readdirSync(dir)).toEqual(['state.json'])
    expect(errors).toEqual([])
  })

  it('reports a failed write instead of throwing, and keeps going', async () => {
    const dir = tmp.make('writer')
    const errors: unknown[] = []
    const w = new LatestFileWriter(join(dir, 'missing-dir', 'state.json'), (e) => errors.push(e))
    w.write('x')
    await w.flush()
    expect(errors).toHaveLength(1)
    expect((errors[0] as NodeJS.ErrnoException).code).toBe('ENOENT')
  })
})
