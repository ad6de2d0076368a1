import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import {
  DEFAULT_HTTP,
  parseHostPort,
  resolveAgentConfig,
  validateAgentConfig,
} from '../../../src/node/agent/config.ts'

describe('agent config', () => {
  it('fills defaults and lets flags win over the file', () => {
    const cfg = resolveAgentConfig(
      validateAgentConfig({ name: 'file', http: '127.0.0.1:9000', seed: ['/ip4/127.0.0.1/tcp/1'] }, 'file'),
      validateAgentConfig({ name: 'flag' }, 'flags'),
    )
    expect(cfg.name).toBe('flag')
    expect(cfg.http).toEqual({ host: '127.0.0.1', port: 9000 })
    expect(cfg.seed).toEqual(['/ip4/127.0.0.1/tcp/1'])
    expect(cfg.dataDir).toBe('.peermesh/flag')
    expect(resolveAgentConfig({}, {}).http).toEqual(parseHostPort(DEFAULT_HTTP))
    expect(resolveAgentConfig({}, validateAgentConfig({ advertise: '10.0.0.7' }, 'flags')).advertise).toBe(
      '10.0.0.7',
    )
  })

  it.each([
    [{ bogus: 1 }, 'bogus'],
    [{ name: '' }, 'name'],
    [{ name: 'bad name' }, 'name'],
    [{ http: 'localhost' }, 'http'],
    [{ http: '127.0.0.1:99999' }, 'http'],
    [{ listen: ['/ip4/127.0.0.1/udp/1'] }, 'listen.0'],
    [{ seed: 'not-an-array' }, 'seed'],
    [{ bootstrap: 'yes' }, 'bootstrap'],
    [{ advertise: 'example.com' }, 'advertise'],
    [{ advertise: '0.0.0.0' }, 'advertise'],
    [{ logLevel: 'loud' }, 'logLevel'],
  ])('rejects %j naming the field', (input, field) => {
    expect(() => validateAgentConfig(input, 'file x')).toThrow(
      expect.objectContaining({ code: 'PEERMESH_ERR_INVALID_CONFIG', field }),
    )
  })

  it('an API other machines can reach needs ACLs on; ACL secrets need ACLs on', () => {
    const flags = (o: object) => validateAgentConfig(o, 'flags')
    expect(() => resolveAgentConfig({}, flags({ http: '0.0.0.0:8500' }))).toThrow(/needs ACLs on/)
    expect(() => resolveAgentConfig({}, flags({ http: '10.0.0.5:8500' }))).toThrow(/needs ACLs on/)
    const on = resolveAgentConfig({}, flags({ http: '0.0.0.0:8500', acl: { enabled: true } }))
    expect(on.acl).toEqual({ enabled: true, defaultPolicy: 'deny', anonymousRead: true })
    expect(resolveAgentConfig({}, {}).acl.enabled).toBe(false)
    const token = '11111111-2222-3333-4444-555555555555'
    expect(() => resolveAgentConfig({}, flags({ acl: { initialManagementToken: token } }))).toThrow(
      /need acl.enabled/,
    )
    expect(() => validateAgentConfig({ acl: { initialManagementToken: 'nope' } }, 'flags')).toThrow(/UUID/)
  })

  it('tokenFile: read once and trimmed; a missing or empty file is an error naming it', () => {
    const dir = mkdtempSync(join(tmpdir(), 'pm-token-'))
    try {
      const on = { acl: { enabled: true } }
      const good = join(dir, 'agent.token')
      writeFileSync(good, ' 11111111-2222-3333-4444-555555555555\n', { mode: 0o600 })
      const cfg = resolveAgentConfig({}, validateAgentConfig({ ...on, tokenFile: good }, 'flags'))
      expect(cfg.defaultToken).toBe('11111111-2222-3333-4444-555555555555')
      const empty = join(dir, 'empty.token')
      writeFileSync(empty, '  \n', { mode: 0o600 })
      expect(() => resolveAgentConfig({}, validateAgentConfig({ ...on, tokenFile: empty }, 'flags'))).toThrow(
        /tokenFile: .*empty\.token is empty/,
      )
      const missing = join(dir, 'nope.token')
      expect(() =>
        resolveAgentConfig({}, validateAgentConfig({ ...on, tokenFile: missing }, 'flags')),
      ).toThrow(/tokenFile: cannot read .*nope\.token: ENOENT/)
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })

  it('parses HOST:PORT including IPv6', () => {
    expect(parseHostPort('[::1]:80')).toEqual({ host: '::1', port: 80 })
    expect(parseHostPort('a:b')).toBeUndefined()
  })
})
