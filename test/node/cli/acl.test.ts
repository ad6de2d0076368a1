import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { Command } from 'commander'
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest'
import { ConfigError } from '../../../src/node/agent/errors.ts'
import type { HttpApi } from '../../../src/node/api/server.ts'
import {
  parseNodeIdentity,
  parseServiceIdentity,
  readRulesArg,
  registerAclCommands,
  resolveCliToken,
} from '../../../src/node/cli/acl.ts'
import { startAclApi } from '../../acl/fake-acl-backend.ts'
import { makeTempDir, removeTempDir } from '../../temp-dir.ts'

const dir = makeTempDir('acl-cli')
afterAll(() => removeTempDir(dir))
const file = (name: string, text: string): string => {
  const p = join(dir, name)
  writeFileSync(p, text)
  return p
}

describe('resolveCliToken: --token, --token-file, $PEERMESH_HTTP_TOKEN, $CONSUL_HTTP_TOKEN', () => {
  const tf = file('token', '  from-file \n')
  it.each<[string, { token?: string; tokenFile?: string }, Record<string, string>, string | undefined]>([
    ['none: anonymous', {}, {}, undefined],
    ['--token', { token: 'flag' }, { PEERMESH_HTTP_TOKEN: 'p', CONSUL_HTTP_TOKEN: 'c' }, 'flag'],
    ['--token beats --token-file (as Consul)', { token: 'flag', tokenFile: tf }, {}, 'flag'],
    ['--token-file, trimmed', { tokenFile: tf }, { PEERMESH_HTTP_TOKEN: 'p' }, 'from-file'],
    [
      '$PEERMESH_HTTP_TOKEN before $CONSUL_HTTP_TOKEN',
      {},
      { PEERMESH_HTTP_TOKEN: 'p', CONSUL_HTTP_TOKEN: 'c' },
      'p',
    ],
    ['$CONSUL_HTTP_TOKEN', {}, { CONSUL_HTTP_TOKEN: 'c' }, 'c'],
    ['empty variables are absent', {}, { PEERMESH_HTTP_TOKEN: ' ', CONSUL_HTTP_TOKEN: 'c' }, 'c'],
  ])('%s', (_name, opts, env, want) => {
    expect(resolveCliToken(opts, env)).toBe(want)
  })

  it.each([
    [{ tokenFile: join(dir, 'missing') }, /^--token-file: cannot read .*missing: ENOENT/],
    [{ tokenFile: file('empty', '\n') }, /^--token-file: .*empty is empty/],
  ])('refuses a bad token file with one line: %j', (opts, message) => {
    expect(() => resolveCliToken(opts, {})).toThrow(message)
    expect(() => resolveCliToken(opts, {})).toThrow(ConfigError)
  })
})

describe('argument formats', () => {
  it.each([
    ['web', { ServiceName: 'web' }],
    ['web:dc1,dc2', { ServiceName: 'web', Datacenters: ['dc1', 'dc2'] }],
    ['web:', { ServiceName: 'web' }],
  ])('--service-identity %s', (arg, want) => {
    expect(parseServiceIdentity(arg)).toEqual(want)
  })
  it.each([
    ['n1', { NodeName: 'n1', Datacenter: 'dc1' }],
    ['n1:east', { NodeName: 'n1', Datacenter: 'east' }],
  ])('--node-identity %s', (arg, want) => {
    expect(parseNodeIdentity(arg)).toEqual(want)
  })
  it('refuses identities without a name', () => {
    expect(() => parseServiceIdentity(':dc1')).toThrow(/--service-identity/)
    expect(() => parseNodeIdentity(':dc1')).toThrow(/--node-identity/)
  })
  it('--rules: @file, a file path, -, or the text itself', () => {
    const f = file('rules.hcl', 'operator = "read"')
    expect(readRulesArg(`@${f}`)).toBe('operator = "read"')
    expect(readRulesArg(f)).toBe('operator = "read"')
    expect(readRulesArg('-', () => 'from stdin')).toBe('from stdin')
    expect(readRulesArg('{"acl": "read"}')).toBe('{"acl": "read"}')
    expect(() => readRulesArg(`@${join(dir, 'nope')}`)).toThrow(/^--rules: cannot read .*ENOENT/)
  })
})

describe('peermesh acl ... against a real HTTP API', () => {
  let http: HttpApi
  let address: string
  let out: string[]

  beforeAll(async () => {
    const made = await startAclApi()
    http = made.http
    address = made.address
  })
  afterAll(() => http.close())
  beforeEach(() => {
    out = []
    vi.spyOn(process.stdout, 'write').mockImplementation((chunk) => {
      out.push(String(chunk))
      return true
    })
    vi.stubEnv('PEERMESH_HTTP_TOKEN', '')
    vi.stubEnv('CONSUL_HTTP_TOKEN', '')
  })
  afterEach(() => {
    vi.restoreAllMocks()
    vi.unstubAllEnvs()
  })

  async function run(...args: string[]): Promise<string> {
    out = []
    const program = new Command('peermesh').exitOverride()
    registerAclCommands(program)
    await program.parseAsync(['node', 'peermesh', ...args, '--http', address])
    return out.join('')
  }
  // biome-ignore lint/suspicious/noExplicitAny: JSON output of the commands
  const json = async (...args: string[]): Promise<any> => JSON.parse(await run(...args, '--json'))

  it('bootstraps, creates a policy and a token, lists, reads and deletes them', async () => {
    const root = (await json('acl', 'bootstrap')).SecretID as string
    expect(root).toMatch(/^[0-9a-f-]{36}$/)
    await expect(run('acl', 'bootstrap')).rejects.toThrow(/ACL bootstrap no longer allowed/)

    const rules = file('readers.hcl', 'service_prefix "" { policy = "read" }\n')
    const p = await json(
      'acl',
      'policy',
      'create',
      '--name',
      'readers',
      '--rules',
      `@${rules}`,
      '--token',
      root,
    )
    expect(p).toMatchObject({ Name: 'readers', Rules: 'service_prefix "" { policy = "read" }\n' })

    await expect(
      run('acl', 'policy', 'create', '--name', 'bad', '--rules', 'service "a" {', '--token', root),
    ).rejects.toThrow(/^Rules: rules: unexpected end/)

    const tokenFile = file('root.token', `${root}\n`)
    const t = await json(
      'acl',
      'token',
      'create',
      '--description',
      'web',
      '--policy-name',
      'readers',
      '--service-identity',
      'web',
      '--service-identity',
      'api:dc1',
      '--node-identity',
      'n1',
      '--voter',
      '--token-file',
      tokenFile,
    )
    expect(t).toMatchObject({
      Description: 'web',
      Policies: [{ ID: p.ID, Name: 'readers' }],
      ServiceIdentities: [{ ServiceName: 'web' }, { ServiceName: 'api', Datacenters: ['dc1'] }],
      NodeIdentities: [{ NodeName: 'n1', Datacenter: 'dc1' }],
      Voter: true,
      Local: false,
    })
    expect(t.SecretID).toMatch(/^[0-9a-f-]{36}$/)

    // The token from the environment, sent as X-Consul-Token.
    vi.stubEnv('PEERMESH_HTTP_TOKEN', root)
    const list = await run('acl', 'token', 'list')
    expect(list.split('\n')[0]).toMatch(/^ACCESSOR ID\s+DESCRIPTION\s+POLICIES\s+VOTER\s+LOCAL$/)
    expect(list).toContain(t.AccessorID)
    expect(await run('acl', 'token', 'read', t.AccessorID)).toMatch(
      /Service Identities:\n {3}web \(Datacenters: all\)/,
    )
    vi.stubEnv('PEERMESH_HTTP_TOKEN', '')
    vi.stubEnv('CONSUL_HTTP_TOKEN', t.SecretID)
    expect((await json('acl', 'token', 'read', '--self')).AccessorID).toBe(t.AccessorID)
    // That token has no acl:read.
    await expect(run('acl', 'token', 'list')).rejects.toThrow(
      `Permission denied: token with AccessorID '${t.AccessorID}' lacks permission 'acl:read'`,
    )
    vi.stubEnv('CONSUL_HTTP_TOKEN', '')

    expect(await run('acl', 'policy', 'read', '--name', 'readers', '--token', root)).toMatch(
      /^ID: +.*\nName: +readers/,
    )
    expect(
      (await json('acl', 'policy', 'list', '--token', root)).map((x: { Name: string }) => x.Name),
    ).toEqual(['global-management', 'readers'])
    expect(await run('acl', 'token', 'delete', '--id', t.AccessorID, '--token', root)).toMatch(
      /deleted successfully/,
    )
    expect(await run('acl', 'policy', 'delete', '--name', 'readers', '--token', root)).toMatch(
      /deleted successfully/,
    )
    await expect(run('acl', 'policy', 'read', p.ID, '--token', root)).rejects.toMatchObject({ status: 404 })
  })

  it('is anonymous without a token; an unknown token is "ACL not found"', async () => {
    await expect(run('acl', 'policy', 'list')).rejects.toThrow(
      "Permission denied: token with AccessorID '00000000-0000-0000-0000-000000000002' lacks permission 'acl:read'",
    )
    await expect(
      run('acl', 'policy', 'create', '--name', 'x', '--rules', 'service "a" {', '--token', 'nope'),
    ).rejects.toThrow('ACL not found')
  })

  it('--secret-out writes the SecretID to a new 0600 file and prints where it went instead', async () => {
    // A cluster of its own (the other tests bootstrapped theirs).
    const fresh = await startAclApi()
    const shared = address
    address = fresh.address
    try {
      const out = join(dir, 'boot.secret')
      const boot = await json('acl', 'bootstrap', '--secret-out', out)
      const root = readFileSync(out, 'utf8').trim()
      expect(root).toMatch(/^[0-9a-f-]{36}$/)
      expect(boot.SecretID).toBe(`<written to ${out}>`)
      expect(statSync(out).mode & 0o777).toBe(0o600)
      const agentFile = join(dir, 'b.token')
      const create = ['acl', 'token', 'create', '--node-identity', 'b', '--secret-out', agentFile]
      const text = await run(...create, '--token', root)
      expect(text).toMatch(/SecretID: +<written to .*b\.token>/)
      expect(text).toMatch(/Node Identities:\n {3}b \(Datacenter: dc1\)/)
      const secret = readFileSync(agentFile, 'utf8').trim()
      expect(secret).toMatch(/^[0-9a-f-]{36}$/)
      expect(text).not.toContain(secret)
      // An existing file is not replaced, and no token is created for it.
      const count = async () => (await json('acl', 'token', 'list', '--token', root)).length
      const before = await count()
      await expect(run(...create, '--token', root)).rejects.toThrow(
        /^--secret-out: cannot write .*b\.token: the file exists/,
      )
      expect(await count()).toBe(before)
      // A refused request leaves no file behind.
      const refused = join(dir, 'refused.token')
      await expect(run('acl', 'token', 'create', '--secret-out', refused)).rejects.toThrow(/acl:write/)
      expect(existsSync(refused)).toBe(false)
    } finally {
      address = shared
      await fresh.http.close()
    }
  })

  it('needs an ID to read or delete', async () => {
    await expect(run('acl', 'token', 'read')).rejects.toThrow(/give the token AccessorID/)
    await expect(run('acl', 'policy', 'delete')).rejects.toThrow(/give the policy ID/)
  })
})
