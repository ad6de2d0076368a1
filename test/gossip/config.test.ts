import { describe, expect, it } from 'vitest'
import { lanConfig, localConfig, swimConfig, testConfig, validateConfig } from '../../src/gossip/config.ts'
import { InvalidConfigError } from '../../src/gossip/errors.ts'

function codeOf(f: () => unknown): string | undefined {
  try {
    f()
  } catch (e) {
    return (e as { code?: string }).code
  }
  return undefined
}

describe('SwimConfig', () => {
  it('profiles are valid', () => {
    for (const c of [lanConfig, localConfig, testConfig]) expect(() => validateConfig(c)).not.toThrow()
    expect(swimConfig('local').probeIntervalMs).toBe(localConfig.probeIntervalMs)
    expect(swimConfig('lan', { gossipNodes: 4 }).gossipNodes).toBe(4)
  })

  it.each([
    ['probe timeout not shorter than the interval', { probeTimeoutMs: 200 }],
    ['zero probe interval', { probeIntervalMs: 0 }],
    ['negative value', { gossipIntervalMs: -1 }],
    ['NaN', { retransmitMult: Number.NaN }],
    ['fractional fan-out', { gossipNodes: 2.5 }],
    ['no fan-out', { gossipNodes: 0 }],
    ['record larger than a message', { maxRecordBytes: 1300 }],
    ['tiny messages', { maxMessageBytes: 100 }],
    ['reap before gossip-to-the-dead ends', { reapTimeoutMs: 1000 }],
  ])('rejects %s with PEERMESH_ERR_INVALID_CONFIG', (_why, override) => {
    expect(codeOf(() => validateConfig({ ...lanConfig, ...override }))).toBe('PEERMESH_ERR_INVALID_CONFIG')
    expect(() => swimConfig('lan', override)).toThrow(InvalidConfigError)
  })
})
