import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { seededRng } from '../../../src/common/rng.ts'
import { MAX_PLAUSIBLE_INCARNATION } from '../../../src/gossip/incarnation.ts'
import { Swim } from '../../../src/gossip/swim.ts'
import {
  GOSSIP_STATE_FILE,
  GossipStateWriter,
  loadGossipState,
} from '../../../src/node/gossip/gossip-state.ts'
import { TempDirs } from '../../temp-dir.ts'

const tmp = new TempDirs()
afterAll(() => tmp.removeAll())

function recordingLog() {
  const lines: { level: string; fields: object; message: string }[] = []
  return {
    lines,
    warn: (fields: object, message: string) => lines.push({ level: 'warn', fields, message }),
    error: (fields: object, message: string) => lines.push({ level: 'error', fields, message }),
  }
}

describe('gossip.json: an out-of-range incarnation is repaired at start', () => {
  const cases: [string, string, { incarnation: number; version: number }, boolean][] = [
    ['sane', '{"incarnation":41,"version":7}', { incarnation: 41, version: 7 }, false],
    [
      '2^53 (the refutation of a forged 2^53−1)',
      '{"incarnation":9007199254740992,"version":7}',
      { incarnation: 0, version: 7 },
      true,
    ],
    [
      '2^53 + 1 written as digits',
      '{"incarnation":9007199254740993,"version":3}',
      { incarnation: 0, version: 3 },
      true,
    ],
    [
      'absurdly far ahead',
      `{"incarnation":${MAX_PLAUSIBLE_INCARNATION + 1},"version":3}`,
      { incarnation: 0, version: 3 },
      true,
    ],
    ['negative', '{"incarnation":-5,"version":3}', { incarnation: 0, version: 3 }, true],
    ['fractional version', '{"incarnation":5,"version":1.5}', { incarnation: 5, version: 0 }, true],
  ]
  it.each(cases)('%s', (_name, text, expected, warned) => {
    const dir = tmp.make('gs')
    writeFileSync(join(dir, GOSSIP_STATE_FILE), text)
    const log = recordingLog()
    expect(loadGossipState(dir, log)).toEqual(expected)
    expect(log.lines.some((l) => l.level === 'warn')).toBe(warned)
    // The node starts above what was loaded, a safe integer.
    const swim = new Swim({
      self: { id: 'x', name: 'x', addresses: [] },
      rng: seededRng(1),
      lastIncarnation: expected.incarnation,
      lastVersion: expected.version,
    })
    expect(swim.localIncarnation).toBe(expected.incarnation + 1)
  })

  it('the core ignores an out-of-range lastIncarnation passed to it directly', () => {
    const swim = new Swim({
      self: { id: 'x', name: 'x', addresses: [] },
      rng: seededRng(1),
      lastIncarnation: 2 ** 53,
    })
    expect(swim.localIncarnation).toBe(1)
  })

  it('keeps the user event Lamport time when there is one; an out-of-range one is left out', async () => {
    const dir = tmp.make('gs')
    const log = recordingLog()
    const w = new GossipStateWriter(dir, log)
    w.save(3, 1, 42)
    await w.flush()
    expect(JSON.parse(readFileSync(join(dir, GOSSIP_STATE_FILE), 'utf8'))).toEqual({
      incarnation: 3,
      version: 1,
      eventTime: 42,
    })
    expect(loadGossipState(dir, log)).toEqual({ incarnation: 3, version: 1, eventTime: 42 })
    writeFileSync(join(dir, GOSSIP_STATE_FILE), `{"incarnation":3,"version":1,"eventTime":${2 ** 41}}`)
    expect(loadGossipState(dir, log)).toEqual({ incarnation: 3, version: 1 })
  })

  it('an out-of-range incarnation is never written', async () => {
    const dir = tmp.make('gs')
    const log = recordingLog()
    const w = new GossipStateWriter(dir, log)
    w.save(3, 1)
    await w.flush()
    w.save(2 ** 53, 1)
    await w.flush()
    expect(JSON.parse(readFileSync(join(dir, GOSSIP_STATE_FILE), 'utf8'))).toEqual({
      incarnation: 3,
      version: 1,
    })
    expect(log.lines.filter((l) => l.level === 'error')).toHaveLength(1)
  })
})
