import { closeSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs'
import type { Command, Option } from 'commander'
import { ConfigError } from '../agent/errors.ts'
import type { AclPolicyJson, AclTokenJson } from '../api/acl-routes.ts'
import { print, renderTable } from './format.ts'
import { ApiClient } from './client.ts'
import { httpOption, tokenFileOption, tokenOption } from './options.ts'

// ---- tokens for every client command ----------------------------------------------------------

/** `--token` and `--token-file`, for any command that talks to the agent API. */
export function tokenOptions(): Option[] {
  return [tokenOption(), tokenFileOption()]
}

/**
 * The token a CLI command sends: `--token`, else `--token-file`, else `$PEERMESH_HTTP_TOKEN`,
 * else `$CONSUL_HTTP_TOKEN`; undefined (anonymous) when none. As Consul, `--token` wins over
 * `--token-file`. An unreadable or empty token file is an error naming it.
 */
export function resolveCliToken(
  opts: { token?: string; tokenFile?: string },
  env: NodeJS.ProcessEnv = process.env,
): string | undefined {
  if (opts.token !== undefined && opts.token !== '') return opts.token
  if (opts.tokenFile !== undefined) {
    let text: string
    try {
      text = readFileSync(opts.tokenFile, 'utf8')
    } catch (err) {
      throw new ConfigError(
        `--token-file: cannot read ${opts.tokenFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
        'tokenFile',
        { cause: err },
      )
    }
    const token = text.trim()
    if (token === '') throw new ConfigError(`--token-file: ${opts.tokenFile} is empty`, 'tokenFile')
    return token
  }
  for (const name of ['PEERMESH_HTTP_TOKEN', 'CONSUL_HTTP_TOKEN']) {
    const v = env[name]?.trim()
    if (v) return v
  }
  return undefined
}

/** The client for a command's `--http` and token options. */
export function clientFor(opts: { http: string; token?: string; tokenFile?: string }): ApiClient {
  return new ApiClient(opts.http, resolveCliToken(opts))
}

// ---- secrets to files ---------------------------------------------------------------------------

/** Mode of a file `--secret-out` writes: the owner's alone, as the agent's `--token-file` needs. */
export const SECRET_FILE_MODE = 0o600

/**
 * A new file `path`, mode 0600, for a secret (`--secret-out`): opened before the request that
 * creates the secret, so an unusable path fails before anything is created. An existing file is
 * left alone: an error says to remove it.
 */
export class SecretFile {
  private readonly fd: number

  constructor(readonly path: string) {
    try {
      this.fd = openSync(path, 'wx', SECRET_FILE_MODE)
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      const why = code === 'EEXIST' ? 'the file exists (remove it first to replace it)' : code
      throw new ConfigError(`--secret-out: cannot write ${path}: ${why}`, 'secretOut', { cause: err })
    }
  }

  /** Writes the secret and a newline, and closes the file. */
  write(secret: string): void {
    try {
      writeSync(this.fd, `${secret}\n`)
    } finally {
      closeSync(this.fd)
    }
  }

  /** Closes and removes the file (the request failed: no secret to keep). */
  discard(): void {
    closeSync(this.fd)
    rmSync(this.path, { force: true })
  }
}

/**
 * Creates a token with `create` and prints it; with `--secret-out FILE` the SecretID goes to the
 * file (0600) and the output shows where it went instead, so the secret stays out of terminals
 * and logs.
 */
async function createAndPrint(
  create: () => Promise<AclTokenJson>,
  opts: { json?: boolean; secretOut?: string },
): Promise<void> {
  const file = opts.secretOut !== undefined ? new SecretFile(opts.secretOut) : undefined
  let t: AclTokenJson
  try {
    t = await create()
  } catch (err) {
    file?.discard()
    throw err
  }
  if (file !== undefined) {
    file.write(t.SecretID)
    t = { ...t, SecretID: `<written to ${file.path}>` }
  }
  const shown = t
  print(opts.json === true, shown, () => formatToken(shown))
}

const secretOutOption = (cmd: Command): Command =>
  cmd.option(
    '--secret-out <file>',
    'write the SecretID to this new file (mode 0600) instead of printing it, e.g. for an agent --token-file',
  )

// ---- output -----------------------------------------------------------------------------------

/** Consul's `acl token read` text. */
export function formatToken(t: AclTokenJson): string {
  const lines = [
    `AccessorID:       ${t.AccessorID}`,
    `SecretID:         ${t.SecretID}`,
    `Description:      ${t.Description}`,
    `Local:            ${t.Local}`,
    `Voter:            ${t.Voter}`,
    `Create Time:      ${t.CreateTime}`,
  ]
  if (t.Policies.length > 0) lines.push('Policies:', ...t.Policies.map((p) => `   ${p.ID} - ${p.Name}`))
  if (t.ServiceIdentities?.length)
    lines.push(
      'Service Identities:',
      ...t.ServiceIdentities.map(
        (s) =>
          `   ${s.ServiceName} (Datacenters: ${s.Datacenters?.length ? s.Datacenters.join(', ') : 'all'})`,
      ),
    )
  if (t.NodeIdentities?.length)
    lines.push(
      'Node Identities:',
      ...t.NodeIdentities.map((n) => `   ${n.NodeName} (Datacenter: ${n.Datacenter})`),
    )
  return lines.join('\n')
}

/** Consul's `acl policy read` text. */
export function formatPolicy(p: AclPolicyJson): string {
  const lines = [
    `ID:           ${p.ID}`,
    `Name:         ${p.Name}`,
    `Description:  ${p.Description}`,
    `Datacenters:  ${p.Datacenters?.join(', ') ?? ''}`,
  ]
  if (p.Rules !== undefined) lines.push('Rules:', p.Rules)
  return lines.join('\n')
}

// ---- arguments --------------------------------------------------------------------------------

const collect = (value: string, previous: string[] = []): string[] => [...previous, value]

/** Default datacenter of a node identity given without one (Consul's default datacenter name). */
export const DEFAULT_DATACENTER = 'dc1'

/** `SVC` or `SVC:DC1,DC2` (Consul's `-service-identity` format). */
export function parseServiceIdentity(s: string): { ServiceName: string; Datacenters?: string[] } {
  const [name, dcs] = splitOnce(s, ':')
  if (name === '') throw new ConfigError(`--service-identity: "${s}" has no service name`, 'serviceIdentity')
  if (dcs === undefined) return { ServiceName: name }
  const list = dcs.split(',').filter((d) => d !== '')
  return list.length === 0 ? { ServiceName: name } : { ServiceName: name, Datacenters: list }
}

/** `NODE` or `NODE:DC` (Consul's `-node-identity` format; the datacenter defaults to dc1). */
export function parseNodeIdentity(s: string): { NodeName: string; Datacenter: string } {
  const [name, dc] = splitOnce(s, ':')
  if (name === '') throw new ConfigError(`--node-identity: "${s}" has no node name`, 'nodeIdentity')
  return { NodeName: name, Datacenter: dc === undefined || dc === '' ? DEFAULT_DATACENTER : dc }
}

function splitOnce(s: string, sep: string): [string, string | undefined] {
  const i = s.indexOf(sep)
  return i < 0 ? [s, undefined] : [s.slice(0, i), s.slice(i + 1)]
}

/**
 * `--rules`: `@FILE` or `-` (stdin) as Consul, a path to an existing file, or the rules
 * themselves (JSON or HCL).
 */
export function readRulesArg(value: string, readStdin: () => string = () => readFileSync(0, 'utf8')): string {
  if (value === '-') return readStdin()
  const path = value.startsWith('@') ? value.slice(1) : value
  try {
    return readFileSync(path, 'utf8')
  } catch (err) {
    if (value.startsWith('@'))
      throw new ConfigError(`--rules: cannot read ${path}: ${(err as NodeJS.ErrnoException).code}`, 'rules', {
        cause: err,
      })
    return value
  }
}

function idArg(positional: string | undefined, opts: { id?: string }, what: string): string {
  const id = positional ?? opts.id
  if (id === undefined || id === '')
    throw new ConfigError(`give the ${what} to act on (argument or --id)`, 'id')
  return id
}

// ---- commands ---------------------------------------------------------------------------------

interface ClientOpts {
  http: string
  token?: string
  tokenFile?: string
  json?: boolean
}

function withClientOptions(cmd: Command): Command {
  cmd.addOption(httpOption())
  for (const o of tokenOptions()) cmd.addOption(o)
  return cmd.option('--json', 'machine-readable output (the API JSON)')
}

/**
 * `peermesh acl ...`: bootstrap, and tokens and policies as Consul's `consul acl` (same HTTP API).
 * Every subcommand takes `--http`, `--token`/`--token-file` and `--json`.
 */
export function registerAclCommands(program: Command): void {
  const acl = program.command('acl').description('manage ACL tokens and policies')

  secretOutOption(
    withClientOptions(
      acl.command('bootstrap').description('create the initial management token (once per cluster)'),
    ),
  ).action(async (opts: ClientOpts & { secretOut?: string }) => {
    await createAndPrint(() => clientFor(opts).call<AclTokenJson>('PUT', '/v1/acl/bootstrap'), opts)
  })

  // -- tokens
  const token = acl.command('token').description('create, list, read and delete ACL tokens')
  secretOutOption(withClientOptions(token.command('create').description('create a token')))
    .option('--description <text>', 'description of the token')
    .option('--policy-name <name>', 'link a policy by name, repeatable', collect)
    .option('--policy-id <id>', 'link a policy by ID, repeatable', collect)
    .option('--service-identity <svc[:dc,...]>', 'service identity, repeatable', collect)
    .option(
      '--node-identity <node[:dc]>',
      `node identity, repeatable: the node name, e.g. b (datacenter default ${DEFAULT_DATACENTER})`,
      collect,
    )
    .option('--voter', 'allow this token to enroll a node as a Raft voter')
    .option('--local', "create a datacenter-local token (Consul's flag; no effect with one datacenter)")
    .action(
      async (
        opts: ClientOpts & {
          description?: string
          policyName?: string[]
          policyId?: string[]
          serviceIdentity?: string[]
          nodeIdentity?: string[]
          voter?: boolean
          local?: boolean
          secretOut?: string
        },
      ) => {
        const body = {
          ...(opts.description !== undefined ? { Description: opts.description } : {}),
          Policies: [
            ...(opts.policyId ?? []).map((ID) => ({ ID })),
            ...(opts.policyName ?? []).map((Name) => ({ Name })),
          ],
          ServiceIdentities: (opts.serviceIdentity ?? []).map(parseServiceIdentity),
          NodeIdentities: (opts.nodeIdentity ?? []).map(parseNodeIdentity),
          Voter: opts.voter === true,
          Local: opts.local === true,
        }
        await createAndPrint(() => clientFor(opts).call<AclTokenJson>('PUT', '/v1/acl/token', body), opts)
      },
    )

  withClientOptions(token.command('list').description('list tokens (SecretIDs need acl:write)')).action(
    async (opts: ClientOpts) => {
      const list = await clientFor(opts).get<AclTokenJson[]>('/v1/acl/tokens')
      print(opts.json === true, list, () =>
        renderTable(
          ['ACCESSOR ID', 'DESCRIPTION', 'POLICIES', 'VOTER', 'LOCAL'],
          list.map((t) => [
            t.AccessorID,
            t.Description,
            t.Policies.map((p) => p.Name).join(','),
            String(t.Voter),
            String(t.Local),
          ]),
        ),
      )
    },
  )

  withClientOptions(token.command('read').description('show a token').argument('[accessorId]'))
    .option('--id <accessorId>', 'AccessorID of the token')
    .option('--self', 'show the token this command runs with')
    .action(async (accessor: string | undefined, opts: ClientOpts & { id?: string; self?: boolean }) => {
      const path =
        opts.self === true
          ? '/v1/acl/token/self'
          : `/v1/acl/token/${encodeURIComponent(idArg(accessor, opts, 'token AccessorID'))}`
      const t = await clientFor(opts).get<AclTokenJson>(path)
      print(opts.json === true, t, () => formatToken(t))
    })

  withClientOptions(token.command('delete').description('delete a token').argument('[accessorId]'))
    .option('--id <accessorId>', 'AccessorID of the token')
    .action(async (accessor: string | undefined, opts: ClientOpts & { id?: string }) => {
      const id = idArg(accessor, opts, 'token AccessorID')
      await clientFor(opts).call('DELETE', `/v1/acl/token/${encodeURIComponent(id)}`)
      print(opts.json === true, true, () => `Token "${id}" deleted successfully`)
    })

  // -- policies
  const policy = acl.command('policy').description('create, list, read and delete ACL policies')
  withClientOptions(policy.command('create').description('create a policy'))
    .requiredOption('--name <name>', 'unique policy name')
    .option('--description <text>', 'description of the policy')
    .option('--rules <rules|@file|file|->', 'the rules (JSON or HCL), a file, or - for stdin', '')
    .option('--datacenter <dc>', 'limit to a datacenter, repeatable', collect)
    .action(
      async (
        opts: ClientOpts & { name: string; description?: string; rules: string; datacenter?: string[] },
      ) => {
        const body = {
          Name: opts.name,
          ...(opts.description !== undefined ? { Description: opts.description } : {}),
          Rules: opts.rules === '' ? '' : readRulesArg(opts.rules),
          ...(opts.datacenter !== undefined ? { Datacenters: opts.datacenter } : {}),
        }
        const p = await clientFor(opts).call<AclPolicyJson>('PUT', '/v1/acl/policy', body)
        print(opts.json === true, p, () => formatPolicy(p))
      },
    )

  withClientOptions(policy.command('list').description('list policies')).action(async (opts: ClientOpts) => {
    const list = await clientFor(opts).get<AclPolicyJson[]>('/v1/acl/policies')
    print(opts.json === true, list, () =>
      renderTable(
        ['ID', 'NAME', 'DESCRIPTION'],
        list.map((p) => [p.ID, p.Name, p.Description]),
      ),
    )
  })

  withClientOptions(policy.command('read').description('show a policy').argument('[id]'))
    .option('--id <id>', 'ID of the policy')
    .option('--name <name>', 'name of the policy')
    .action(async (id: string | undefined, opts: ClientOpts & { id?: string; name?: string }) => {
      const path =
        opts.name !== undefined
          ? `/v1/acl/policy/name/${encodeURIComponent(opts.name)}`
          : `/v1/acl/policy/${encodeURIComponent(idArg(id, opts, 'policy ID'))}`
      const p = await clientFor(opts).get<AclPolicyJson>(path)
      print(opts.json === true, p, () => formatPolicy(p))
    })

  withClientOptions(policy.command('delete').description('delete a policy').argument('[id]'))
    .option('--id <id>', 'ID of the policy')
    .option('--name <name>', 'name of the policy')
    .action(async (idArgValue: string | undefined, opts: ClientOpts & { id?: string; name?: string }) => {
      const client = clientFor(opts)
      const id =
        opts.name !== undefined
          ? (await client.get<AclPolicyJson>(`/v1/acl/policy/name/${encodeURIComponent(opts.name)}`)).ID
          : idArg(idArgValue, opts, 'policy ID')
      await client.call('DELETE', `/v1/acl/policy/${encodeURIComponent(id)}`)
      print(opts.json === true, true, () => `Policy "${id}" deleted successfully`)
    })
}
