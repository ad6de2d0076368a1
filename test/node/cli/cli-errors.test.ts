import { existsSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { freePort, runCli } from '../../e2e/harness.ts'
import { makeTempDir, removeTempDir } from '../../temp-dir.ts'

const dir = makeTempDir('cli')
afterAll(() => removeTempDir(dir))
const file = (name: string, text: string): string => {
  const p = join(dir, name)
  // 0600, as a key file should be: the agent would otherwise (rightly) warn first.
  writeFileSync(p, text, { mode: 0o600 })
  return p
}

/** Bad input: one clear line on stderr, non-zero exit, no stack trace. */
function expectOneLineError(res: { code: number; stdout: string; stderr: string }, pattern: RegExp): void {
  expect(res.code).not.toBe(0)
  const lines = res.stderr.trim().split('\n')
  expect(lines).toHaveLength(1)
  expect(lines[0]).toMatch(/^peermesh: /)
  expect(lines[0]).toMatch(pattern)
  expect(res.stderr).not.toMatch(/\n\s+at /)
}

describe('CLI: bad input gets one clear line and a non-zero exit', () => {
  const servers: ReturnType<typeof createServer>[] = []
  afterAll(() => {
    for (const s of servers) s.close()
  })

  it.each([
    [['agent', '--bogus'], /unknown option '--bogus'/],
    [['agent', '--http', 'nope'], /--http: nope is not HOST:PORT/],
    [['agent', '--listen', '/ip4/1.2.3/tcp/1'], /--listen: .*not a valid multiaddr/],
    [['agent', '--log-level', 'loud'], /--log-level/],
    [['agent', '--config', join(dir, 'missing.json')], /cannot read config file/],
    [['agent', '--config', file('unknown.json', '{"name":"x","bogus":1}')], /unknown field "bogus"/],
    [['agent', '--config', file('type.json', '{"name":5}')], /field "name": expected string/],
    [['agent', '--config', file('syntax.json', '{nope')], /not valid JSON/],
    [['agent', '--config', file('array.json', '[]')], /must hold a JSON object/],
    [
      ['agent', '--config', file('gossip-field.json', '{"gossipLan":{"probeInterval":"1ms"}}')],
      /gossipLan.probeInterval.*must be a duration from 10ms/,
    ],
    // Each field in range, but no time left for the indirect probe: refused before anything starts.
    [
      [
        'agent',
        '--data-dir',
        join(dir, 'gossip-timing'),
        '--config',
        file('gossip-timing.json', '{"gossipLan":{"probeTimeout":"200ms"}}'),
      ],
      /gossipLan: with gossipProfile lan, probeTimeout must be shorter than probeInterval/,
    ],
    [
      ['agent', '--config', file('raft-multiplier.json', '{"performance":{"raftMultiplier":11}}')],
      /performance.raftMultiplier.*10/,
    ],
    [['agent', '--cluster-key', join(dir, 'missing.key')], /cannot read cluster key file .*no such file/],
    [['agent', '--cluster-key', file('bad.key', 'not a key\n')], /is not a peermesh cluster key/],
    [
      ['agent', '--data-dir', join(dir, 'seed-no-key'), '--seed', '/ip4/127.0.0.1/tcp/1'],
      /needs the cluster's key/,
    ],
    // ACLs are on by default: founders share an initial management token, and the error says how.
    [
      ['agent', '--data-dir', join(dir, 'expect'), '--bootstrap-expect', '3'],
      /bootstrapExpect: .*--initial-management-token-file FILE/,
    ],
    [
      ['agent', '--initial-management-token-file', join(dir, 'missing.token')],
      /acl.initialManagementTokenFile: cannot read .*ENOENT/,
    ],
    [
      ['agent', '--config', file('off.json', '{"acl":{"enabled":false}}'), '--http', '0.0.0.0:1'],
      /needs ACLs on/,
    ],
    [['info', '--http', '127.0.0.1:1'], /cannot reach the agent/],
    [['nosuchcommand'], /unknown command/],
  ])('peermesh %j', async (args, pattern) => {
    expectOneLineError(await runCli(args as string[]), pattern)
  })

  it('a gossipLan timing SWIM cannot run stops the agent before it writes anything', async () => {
    const dataDir = join(dir, 'gossip-nothing')
    const config = file('gossip-nothing.json', '{"gossipLan":{"probeInterval":"60ms"}}')
    expectOneLineError(
      await runCli(['agent', '--data-dir', dataDir, '--config', config]),
      /probeTimeout must be shorter than probeInterval/,
    )
    expect(existsSync(dataDir)).toBe(false)
  })

  it('refuses a port already in use (libp2p and HTTP) with one line', async () => {
    const busy = createServer()
    servers.push(busy)
    const port = await new Promise<number>((resolve) =>
      busy.listen(0, '127.0.0.1', () => resolve((busy.address() as { port: number }).port)),
    )
    const key = file('ok.key', (await runCli(['keygen'])).stdout)
    const common = ['agent', '--cluster-key', key, '--log-level', 'silent']
    const p2p = await runCli([
      ...common,
      '--data-dir',
      join(dir, 'p1'),
      '--listen',
      `/ip4/127.0.0.1/tcp/${port}`,
      '--http',
      `127.0.0.1:${await freePort()}`,
    ])
    expectOneLineError(p2p, /cannot listen on .*address already in use/)
    const http = await runCli([
      ...common,
      '--data-dir',
      join(dir, 'p2'),
      '--listen',
      `/ip4/127.0.0.1/tcp/${await freePort()}`,
      '--http',
      `127.0.0.1:${port}`,
    ])
    expectOneLineError(http, /cannot listen for the HTTP API .*address already in use/)
  })

  it('prints --version and --help for every command', async () => {
    const v = await runCli(['--version'])
    expect(v.code).toBe(0)
    expect(v.stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/)
    for (const cmd of ['agent', 'keygen', 'info']) {
      const h = await runCli([cmd, '--help'])
      expect(h.code).toBe(0)
      expect(h.stdout).toContain(`Usage: peermesh ${cmd}`)
    }
  })
})
