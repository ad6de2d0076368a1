import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { pino } from 'pino'
import { describe, expect, it } from 'vitest'
import {
  DEFAULT_HTTP,
  parseHostPort,
  resolveAgentConfig,
  validateAgentConfig,
} from '../../../src/node/agent/config.ts'
import { createAgent } from '../../../src/node/agent/create-agent.ts'
import { RAFT_DEFAULTS, raftTimingFor } from '../../../src/node/agent/defaults.ts'
import { makeTempDir, removeTempDir } from '../../temp-dir.ts'

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
    [{ dnsDomain: 'bad domain' }, 'dnsDomain'],
    [{ dnsDomain: '-x.example' }, 'dnsDomain'],
    [{ datacenter: 'DC 1' }, 'datacenter'],
    [{ datacenter: 'x'.repeat(65) }, 'datacenter'],
    [{ datacenter: '../dc' }, 'datacenter'],
    [{ accessLog: 'verbose' }, 'accessLog'],
    [{ accessLog: true }, 'accessLog'],
    [{ gossipProfile: 'fast' }, 'gossipProfile'],
    [{ gossipProfile: 'test' }, 'gossipProfile'],
    [{ gossipLan: { probeInterval: 300 } }, 'gossipLan.probeInterval'],
    [{ gossipLan: { probeInterval: '5ms' } }, 'gossipLan.probeInterval'],
    [{ gossipLan: { probeInterval: '2m' } }, 'gossipLan.probeInterval'],
    [{ gossipLan: { probeTimeout: 'soon' } }, 'gossipLan.probeTimeout'],
    [{ gossipLan: { probeTimeout: `${'9'.repeat(100_000)}ms` } }, 'gossipLan.probeTimeout'],
    [{ gossipLan: { gossipInterval: '1ms' } }, 'gossipLan.gossipInterval'],
    [{ gossipLan: { suspicionMult: 0 } }, 'gossipLan.suspicionMult'],
    [{ gossipLan: { suspicionMult: 2.5 } }, 'gossipLan.suspicionMult'],
    [{ gossipLan: { gossipNodes: 0 } }, 'gossipLan.gossipNodes'],
    [{ gossipLan: { retransmitMult: 1e9 } }, 'gossipLan.retransmitMult'],
    [{ gossipLan: { relayedEvidence: 'yes' } }, 'gossipLan.relayedEvidence'],
    [{ gossipLan: { probe_interval: '1s' } }, 'probe_interval'],
    [{ gossipLan: 'fast' }, 'gossipLan'],
    [{ performance: { raftMultiplier: 0 } }, 'performance.raftMultiplier'],
    [{ performance: { raftMultiplier: 11 } }, 'performance.raftMultiplier'],
    [{ performance: { raftMultiplier: 1.5 } }, 'performance.raftMultiplier'],
    [{ performance: { raftMultiplier: '2' } }, 'performance.raftMultiplier'],
    [{ performance: { raftMultiplier: 1e308 } }, 'performance.raftMultiplier'],
    [{ performance: { raft_multiplier: 2 } }, 'raft_multiplier'],
    [{ performance: 2 }, 'performance'],
  ])('rejects %j naming the field', (input, field) => {
    expect(() => validateAgentConfig(input, 'file x')).toThrow(
      expect.objectContaining({ code: 'PEERMESH_ERR_INVALID_CONFIG', field }),
    )
  })

  it('ACLs are on by default, default deny; off is an opt-out that a non-loopback API and ACL secrets refuse', () => {
    const flags = (o: object) => validateAgentConfig(o, 'flags')
    expect(resolveAgentConfig({}, {}, {}).acl).toEqual({
      enabled: true,
      defaultPolicy: 'deny',
      anonymousRead: true,
    })
    const on = resolveAgentConfig({}, flags({ http: '0.0.0.0:8500' }), {})
    expect(on.acl).toEqual({ enabled: true, defaultPolicy: 'deny', anonymousRead: true })
    const off = { acl: { enabled: false } }
    expect(resolveAgentConfig({}, flags(off), {}).acl.enabled).toBe(false)
    expect(() => resolveAgentConfig({}, flags({ ...off, http: '0.0.0.0:8500' }), {})).toThrow(/needs ACLs on/)
    expect(() => resolveAgentConfig(off, flags({ http: '10.0.0.5:8500' }), {})).toThrow(/needs ACLs on/)
    const token = '11111111-2222-3333-4444-555555555555'
    expect(() =>
      resolveAgentConfig({}, flags({ acl: { enabled: false, initialManagementToken: token } }), {}),
    ).toThrow(/need acl.enabled/)
    expect(() => validateAgentConfig({ acl: { initialManagementToken: 'nope' } }, 'flags')).toThrow(/UUID/)
  })

  it('--bootstrap-expect with ACLs on needs an initial management token, and the error names the fix', () => {
    const flags = (o: object) => validateAgentConfig(o, 'flags')
    expect(() => resolveAgentConfig({}, flags({ bootstrapExpect: 3 }), {})).toThrow(
      expect.objectContaining({
        code: 'PEERMESH_ERR_INVALID_CONFIG',
        field: 'bootstrapExpect',
        message: expect.stringMatching(/--initial-management-token-file/),
      }),
    )
    const token = '11111111-2222-3333-4444-555555555555'
    const ok = resolveAgentConfig(
      { acl: { initialManagementToken: token } },
      flags({ bootstrapExpect: 3 }),
      {},
    )
    expect(ok.acl.initialManagementToken).toBe(token)
    // A single --bootstrap agent may start without one (`peermesh acl bootstrap` gives the first token).
    expect(resolveAgentConfig({}, flags({ bootstrap: true }), {}).acl.initialManagementToken).toBeUndefined()
    // ACLs off: as before.
    expect(
      resolveAgentConfig({}, flags({ bootstrapExpect: 3, acl: { enabled: false } }), {}).bootstrapExpect,
    ).toBe(3)
  })

  it("the initial management token from a 0600 file or the environment; the file's acl fields survive a flag", () => {
    const dir = makeTempDir('imt')
    try {
      const token = '11111111-2222-3333-4444-555555555555'
      const file = join(dir, 'imt')
      writeFileSync(file, `${token}\n`, { mode: 0o600 })
      const fromFlag = resolveAgentConfig(
        { acl: { anonymousRead: false } },
        validateAgentConfig({ acl: { initialManagementTokenFile: file } }, 'flags'),
        {},
      )
      expect(fromFlag.acl).toEqual({
        enabled: true,
        defaultPolicy: 'deny',
        anonymousRead: false,
        initialManagementToken: token,
      })
      const env = { PEERMESH_ACL_INITIAL_MANAGEMENT_TOKEN: ` ${token} ` }
      expect(resolveAgentConfig({}, {}, env).acl.initialManagementToken).toBe(token)
      expect(() => resolveAgentConfig({}, {}, { PEERMESH_ACL_INITIAL_MANAGEMENT_TOKEN: 'nope' })).toThrow(
        /UUID/,
      )
      const loose = join(dir, 'loose')
      writeFileSync(loose, token, { mode: 0o644 })
      expect(() =>
        resolveAgentConfig(
          {},
          validateAgentConfig({ acl: { initialManagementTokenFile: loose } }, 'flags'),
          {},
        ),
      ).toThrow(/readable by group or others .*chmod 600/)
      const notUuid = join(dir, 'not-uuid')
      writeFileSync(notUuid, 'secret', { mode: 0o600 })
      expect(() =>
        resolveAgentConfig(
          {},
          validateAgentConfig({ acl: { initialManagementTokenFile: notUuid } }, 'flags'),
          {},
        ),
      ).toThrow(/must be a UUID/)
    } finally {
      removeTempDir(dir)
    }
  })

  it('tokenFile: read once and trimmed; a missing, empty or loose file is an error naming it', () => {
    const dir = makeTempDir('token')
    try {
      const good = join(dir, 'agent.token')
      writeFileSync(good, ' 11111111-2222-3333-4444-555555555555\n', { mode: 0o600 })
      const cfg = resolveAgentConfig({}, validateAgentConfig({ tokenFile: good }, 'flags'), {})
      expect(cfg.defaultToken).toBe('11111111-2222-3333-4444-555555555555')
      const empty = join(dir, 'empty.token')
      writeFileSync(empty, '  \n', { mode: 0o600 })
      expect(() => resolveAgentConfig({}, validateAgentConfig({ tokenFile: empty }, 'flags'), {})).toThrow(
        /tokenFile: .*empty\.token is empty/,
      )
      const missing = join(dir, 'nope.token')
      expect(() => resolveAgentConfig({}, validateAgentConfig({ tokenFile: missing }, 'flags'), {})).toThrow(
        /tokenFile: cannot read .*nope\.token: ENOENT/,
      )
      const loose = join(dir, 'loose.token')
      writeFileSync(loose, 'x', { mode: 0o640 })
      expect(() => resolveAgentConfig({}, validateAgentConfig({ tokenFile: loose }, 'flags'), {})).toThrow(
        /tokenFile: .*loose\.token is readable by group or others \(mode 0640\)/,
      )
    } finally {
      removeTempDir(dir)
    }
  })

  it('dnsDomain: unset by default (peermesh), lowercased without the trailing dot', () => {
    expect(resolveAgentConfig({}, {}).dnsDomain).toBeUndefined()
    expect(
      resolveAgentConfig({}, validateAgentConfig({ dnsDomain: 'Mesh.Example.' }, 'flags')).dnsDomain,
    ).toBe('mesh.example')
  })

  it('gossipProfile: lan by default; the file sets it and a flag wins', () => {
    expect(resolveAgentConfig({}, {}).gossipProfile).toBe('lan')
    const file = validateAgentConfig({ gossipProfile: 'local' }, 'file')
    expect(resolveAgentConfig(file, {}).gossipProfile).toBe('local')
    expect(
      resolveAgentConfig(file, validateAgentConfig({ gossipProfile: 'wan' }, 'flags')).gossipProfile,
    ).toBe('wan')
  })

  it('gossipLan: none by default; its fields over the profile, in ms, with the settings tied to the probe timeout', () => {
    expect(resolveAgentConfig({}, {}).gossipOverrides).toBeUndefined()
    const file = validateAgentConfig(
      { gossipLan: { probeInterval: '300ms', suspicionMult: 2, gossipInterval: '40ms' } },
      'file',
    )
    expect(resolveAgentConfig(file, {}).gossipOverrides).toEqual({
      probeIntervalMs: 300,
      suspicionMult: 2,
      gossipIntervalMs: 40,
    })
    // A timeout past the profile's bound for measured round trips raises the bound; the lateness
    // that counts as our own stall keeps the profile's share of the timeout (lan: 50 of 75 ms).
    const slow = validateAgentConfig({ gossipLan: { probeInterval: '2s', probeTimeout: '900ms' } }, 'file')
    expect(resolveAgentConfig(slow, {}).gossipOverrides).toEqual({
      probeIntervalMs: 2_000,
      probeTimeoutMs: 900,
      probeTimeoutMaxMs: 900,
      lateTimerMs: 600,
    })
    const local = validateAgentConfig({ gossipProfile: 'local', gossipLan: { gossipNodes: 4 } }, 'file')
    expect(resolveAgentConfig(local, {})).toMatchObject({
      gossipProfile: 'local',
      gossipOverrides: { gossipNodes: 4 },
    })
    // The relayed evidence of the Raft leader, off and on (the profile's three intervals).
    for (const [relayedEvidence, relayedEvidenceIntervals] of [
      [false, 0],
      [true, 3],
    ] as const) {
      const c = validateAgentConfig({ gossipLan: { relayedEvidence } }, 'file')
      expect(resolveAgentConfig(c, {}).gossipOverrides).toEqual({ relayedEvidenceIntervals })
    }
  })

  it('gossipLan: a timing SWIM cannot run is refused at start, in the config names, whatever the profile', () => {
    const resolve = (o: object) => () => resolveAgentConfig(validateAgentConfig(o, 'file'), {})
    // lan probes every 150 ms: a 200 ms timeout leaves no time for the indirect probe.
    expect(resolve({ gossipLan: { probeTimeout: '200ms' } })).toThrow(
      expect.objectContaining({
        code: 'PEERMESH_ERR_INVALID_CONFIG',
        field: 'gossipLan',
        message: expect.stringMatching(
          /^gossipLan: with gossipProfile lan, probeTimeout must be shorter than probeInterval/,
        ),
      }),
    )
    // wan's 3 s timeout against a 1 s interval.
    expect(resolve({ gossipProfile: 'wan', gossipLan: { probeInterval: '1s' } })).toThrow(
      expect.objectContaining({ field: 'gossipLan', message: expect.stringContaining('gossipProfile wan') }),
    )
    expect(
      resolve({ gossipProfile: 'wan', gossipLan: { probeInterval: '1s', probeTimeout: '500ms' } }),
    ).not.toThrow()
  })

  it('performance.raftMultiplier: none by default (1); m scales the Raft tick and what is counted in ticks, nothing else', () => {
    expect(resolveAgentConfig({}, {}).raftMultiplier).toBeUndefined()
    const file = validateAgentConfig({ performance: { raftMultiplier: 3 } }, 'file')
    expect(resolveAgentConfig(file, {}).raftMultiplier).toBe(3)
    expect(raftTimingFor(1)).toEqual({
      tickMs: RAFT_DEFAULTS.tickMs,
      failoverStaggerMs: RAFT_DEFAULTS.failoverStaggerMs,
      dialBackoffMs: RAFT_DEFAULTS.dialBackoffMs,
    })
    expect(raftTimingFor(3)).toEqual({
      tickMs: 3 * RAFT_DEFAULTS.tickMs,
      failoverStaggerMs: 3 * RAFT_DEFAULTS.failoverStaggerMs,
      dialBackoffMs: 3 * RAFT_DEFAULTS.dialBackoffMs,
    })
    for (const bad of [0, 11, 2.5, Number.NaN])
      expect(() => raftTimingFor(bad)).toThrow(
        expect.objectContaining({ code: 'PEERMESH_ERR_INVALID_CONFIG', field: 'performance' }),
      )
  })

  it('performance.raftMultiplier: the agent as `peermesh agent` builds it runs its Raft module with that timing', () => {
    const log = pino({ level: 'silent' })
    const timing = (o: object) =>
      createAgent(resolveAgentConfig(validateAgentConfig(o, 'file'), {}), log).raft.timing
    const base = timing({})
    expect(base).toMatchObject({ tickMs: RAFT_DEFAULTS.tickMs, electionTick: RAFT_DEFAULTS.electionTick })
    const slow = timing({ performance: { raftMultiplier: 4 } })
    expect(slow).toEqual({
      ...base,
      tickMs: 4 * RAFT_DEFAULTS.tickMs,
      failoverStaggerMs: 4 * RAFT_DEFAULTS.failoverStaggerMs,
      dialBackoffMs: 4 * RAFT_DEFAULTS.dialBackoffMs,
    })
  })

  it('parses HOST:PORT including IPv6', () => {
    expect(parseHostPort('[::1]:80')).toEqual({ host: '::1', port: 80 })
    expect(parseHostPort('a:b')).toBeUndefined()
  })
})
