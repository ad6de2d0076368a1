/**
 * `peermesh config write|read|list|delete` (issue #16) against a real agent, as a user runs them:
 * files and stdin, `--json`, `--cas`, one clear line for bad input, and the attacker's side (no
 * token, a made-up token: refused, nothing changed).
 */
import { spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type AgentProcess, BIN, runCli, TestCluster } from './harness.ts'
import { startRaftCluster, waitForLeader } from './raft-helpers.ts'

const splitter = {
  kind: 'service-splitter',
  name: 'api',
  splits: [
    { weight: 90, serviceSubset: 'v1' },
    { weight: 10, serviceSubset: 'v2' },
  ],
}

/** The CLI with `input` on stdin and the management token. */
function runCliWithStdin(
  args: string[],
  input: string,
  token: string,
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const env = { ...process.env, PEERMESH_HTTP_TOKEN: token }
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['pipe', 'pipe', 'pipe'], env })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    child.once('error', reject)
    child.once('exit', (code) => resolve({ code: code ?? -1, stdout, stderr }))
    child.stdin.end(input)
  })
}

/** Bad input or a refusal: exit 1, one line on stderr matching `pattern`, no stack trace. */
function expectOneLineError(res: { code: number; stdout: string; stderr: string }, pattern: RegExp): void {
  expect(res.code, res.stdout + res.stderr).toBe(1)
  expect(res.stderr.trim().split('\n')).toHaveLength(1)
  expect(res.stderr).toMatch(/^peermesh: /)
  expect(res.stderr).toMatch(pattern)
  expect(res.stdout).toBe('')
}

describe('peermesh config (config entries in Raft, through one agent)', () => {
  const cluster = new TestCluster()
  let agent: AgentProcess
  const file = (name: string, body: unknown): string => {
    const p = join(cluster.dir, name)
    writeFileSync(p, typeof body === 'string' ? body : JSON.stringify(body))
    return p
  }
  const cli = (...args: string[]) => runCli([...args, '--http', agent.http])
  const listJson = async (kind: string) =>
    JSON.parse((await cli('config', 'list', kind, '--json')).stdout) as unknown[]

  beforeAll(async () => {
    const agents = await startRaftCluster(cluster, 1, { prefix: 'cfg' })
    agent = agents[0]!
    await waitForLeader(agents)
    await cluster.waitForManagementToken()
  })
  afterAll(() => cluster.close())

  it('writes from a file and stdin, reads, lists and deletes; --json prints what the API answered', async () => {
    const written = await cli('config', 'write', file('split.json', splitter))
    expect(written.code, written.stderr).toBe(0)
    expect(written.stdout).toMatch(/^config entry service-splitter\/api written \(index \d+\)\n$/)

    const read = await cli('config', 'read', 'service-splitter', 'api', '--json')
    expect(read.code, read.stderr).toBe(0)
    const entry = JSON.parse(read.stdout) as Record<string, unknown>
    expect(entry).toMatchObject({
      ...splitter,
      createIndex: expect.any(Number),
      modifyIndex: expect.any(Number),
    })
    // Without --json the entry is JSON too (structured data), the same document.
    expect(
      JSON.parse((await cli('config', 'read', 'service-splitter', 'api', '--consistent')).stdout),
    ).toEqual(entry)

    const kv = await runCliWithStdin(
      ['config', 'write', '-', '--json', '--http', agent.http],
      JSON.stringify({ kind: 'kv', name: 'greeting', value: 'hello' }),
      cluster.managementToken,
    )
    expect(kv.code, kv.stderr).toBe(0)
    const { index } = JSON.parse(kv.stdout) as { index: number }
    expect(index).toBeGreaterThan(entry['modifyIndex'] as number)

    const table = await cli('config', 'list', 'kv')
    expect(table.code, table.stderr).toBe(0)
    expect(table.stdout.split('\n')[0]).toMatch(/^KIND\s+NAME\s+CREATE INDEX\s+MODIFY INDEX$/)
    expect(table.stdout).toMatch(new RegExp(`^kv\\s+greeting\\s+${index}\\s+${index}$`, 'm'))
    expect(await listJson('kv')).toEqual([
      { kind: 'kv', name: 'greeting', value: 'hello', createIndex: index, modifyIndex: index },
    ])
    expect((await cli('config', 'list', 'service-resolver')).stdout).toBe(
      'no service-resolver config entries\n',
    )

    // --cas: 0 means "only if it does not exist"; the current modify index replaces it.
    const kvFile = file('kv2.json', { kind: 'kv', name: 'greeting', value: 'bonjour' })
    expectOneLineError(await cli('config', 'write', kvFile, '--cas', '0'), /cas: /)
    const cas = await cli('config', 'write', kvFile, '--cas', String(index))
    expect(cas.code, cas.stderr).toBe(0)
    expect(await listJson('kv')).toMatchObject([{ name: 'greeting', value: 'bonjour' }])

    const deleted = await cli('config', 'delete', 'kv', 'greeting')
    expect(deleted.code, deleted.stderr).toBe(0)
    expect(deleted.stdout).toMatch(/^config entry kv\/greeting deleted \(index \d+\)\n$/)
    expect(await listJson('kv')).toEqual([])
    expectOneLineError(await cli('config', 'read', 'kv', 'greeting'), /no config entry kv\/greeting/)
    expectOneLineError(await cli('config', 'delete', 'kv', 'greeting'), /no config entry kv\/greeting/)
  })

  it("takes Consul's config entry files: Kind and Name in PascalCase", async () => {
    const written = await cli(
      'config',
      'write',
      file('defaults.json', { Kind: 'service-defaults', Name: 'pascal', Protocol: 'http' }),
    )
    expect(written.code, written.stderr).toBe(0)
    expect(written.stdout).toMatch(/^config entry service-defaults\/pascal written/)
    const read = await cli('config', 'read', 'service-defaults', 'pascal', '--json')
    expect(read.code, read.stderr).toBe(0)
    expect(JSON.stringify(JSON.parse(read.stdout))).toMatch(/"Protocol":"http"/)
  })

  it('refuses bad input with one line and changes nothing', async () => {
    const before = await listJson('service-splitter')
    const cases: [string[], RegExp][] = [
      [['config', 'write', join(cluster.dir, 'missing.json')], /cannot read .*missing\.json: ENOENT/],
      [['config', 'write', file('bad.json', '{"kind":')], /bad\.json is not valid JSON/],
      [['config', 'write', file('array.json', [splitter])], /expected one JSON object/],
      [
        ['config', 'write', file('noname.json', { Kind: 'kv', value: 'y' })],
        /"name" must be a non-empty string/,
      ],
      [
        ['config', 'write', file('kind.json', { kind: 'no-such-kind', name: 'x' })],
        /kind: unknown config entry kind "no-such-kind" \(known: .*service-splitter/,
      ],
      [
        ['config', 'write', file('sum.json', { ...splitter, splits: [{ weight: 50, serviceSubset: 'v1' }] })],
        /weights must sum to 100/i,
      ],
      [['config', 'write', file('field.json', { kind: 'kv', name: 'x', value: 'y', extra: 1 })], /extra/],
      [
        ['config', 'write', file('ok.json', splitter), '--cas', 'soon'],
        /--cas: expected a non-negative integer/,
      ],
      [['config', 'read', 'service-splitter'], /missing required argument 'name'/],
      [['config', 'lst', 'kv'], /unknown command 'lst'\. Did you mean 'list'\?/],
    ]
    for (const [args, pattern] of cases) expectOneLineError(await cli(...args), pattern)
    expect(await listJson('service-splitter')).toEqual(before)
    expect(await listJson('kv')).toEqual([])
  })

  it('from the attacker: no token or a made-up one is refused (403), nothing written or deleted', async () => {
    expect((await cli('config', 'write', file('split.json', splitter))).code).toBe(0)
    const before = await listJson('service-splitter')
    expect(before).toHaveLength(1)
    const evil = file('evil.json', { ...splitter, splits: [{ weight: 100, serviceSubset: 'evil' }] })
    // Anonymous: Consul's refusal naming the missing permission; an unknown secret: "ACL not found".
    const refusals: [string | false, RegExp][] = [
      [false, /Permission denied: token with AccessorID '.*' lacks permission '(service|key):write'/],
      [randomUUID(), /ACL not found/],
    ]
    for (const [token, refused] of refusals) {
      const as = (...args: string[]) => runCli([...args, '--http', agent.http], { token })
      expectOneLineError(await as('config', 'write', evil), refused)
      expectOneLineError(await as('config', 'delete', 'service-splitter', 'api'), refused)
      expectOneLineError(
        await as('config', 'write', file('kv-evil.json', { kind: 'kv', name: 'k', value: 'v' })),
        refused,
      )
    }
    expect(await listJson('service-splitter')).toEqual(before)
    expect(await listJson('kv')).toEqual([])
  })
})
