import { readFileSync } from 'node:fs'
import type { Command } from 'commander'
import { ConfigError } from '../agent/errors.ts'
import type { ConfigEntryJson } from '../api/raft-routes.ts'
import { clientFor } from './acl.ts'
import { print, renderTable } from './format.ts'
import { httpOption, tokenFileOption, tokenOption } from './options.ts'

interface ClientOpts {
  http: string
  token?: string
  tokenFile?: string
  json?: boolean
}

/**
 * The config entry in `source` (a file, or `-` for stdin): one JSON object with `kind`, `name` and
 * the kind's fields (`{ "kind": "service-splitter", "name": "api", "splits": [...] }`). Only the
 * shape is checked here; the agent checks the kind and its fields and names what is wrong.
 */
export function readConfigEntryArg(
  source: string,
  readStdin: () => string = () => readFileSync(0, 'utf8'),
): { kind: string; name: string } & Record<string, unknown> {
  const where = source === '-' ? 'stdin' : source
  let text: string
  try {
    text = source === '-' ? readStdin() : readFileSync(source, 'utf8')
  } catch (err) {
    throw new ConfigError(
      `cannot read ${where}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
      undefined,
      {
        cause: err,
      },
    )
  }
  let entry: unknown
  try {
    entry = JSON.parse(text)
  } catch (err) {
    throw new ConfigError(`${where} is not valid JSON: ${(err as Error).message}`, undefined, { cause: err })
  }
  if (entry === null || typeof entry !== 'object' || Array.isArray(entry))
    throw new ConfigError(`${where}: expected one JSON object { "kind": ..., "name": ..., ... }`)
  // `kind` and `name` in any case (Consul's files say `Kind` and `Name`), sent as `kind`/`name`.
  const e: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(entry as Record<string, unknown>)) {
    const lower = k.toLowerCase()
    e[lower === 'kind' || lower === 'name' ? lower : k] = v
  }
  for (const field of ['kind', 'name'] as const) {
    if (typeof e[field] !== 'string' || e[field] === '')
      throw new ConfigError(`${where}: "${field}" must be a non-empty string`)
  }
  return e as { kind: string; name: string } & Record<string, unknown>
}

const entryPath = (kind: string, name?: string): string =>
  `/v1/config/${encodeURIComponent(kind)}${name === undefined ? '' : `/${encodeURIComponent(name)}`}`

const withConsistent = (path: string, consistent: boolean | undefined): string =>
  consistent === true ? `${path}?consistent` : path

/**
 * `peermesh config write FILE|-`, `config read KIND NAME`, `config list KIND`,
 * `config delete KIND NAME`: the config entries kept in Raft (`service-splitter`, `kv`, ...),
 * through `PUT /v1/config`, `GET /v1/config/:kind[/:name]` and `DELETE /v1/config/:kind/:name`.
 * `--json` prints exactly what the API answered. Writes need `service:write` on the name for the
 * service kinds, `key:write` for `kv`, `mesh:write` otherwise; reads the matching read rule.
 */
export function registerConfigCommands(program: Command): void {
  const config = program
    .command('config')
    .description('write, read, list and delete config entries (service-splitter, kv, ...)')

  config
    .command('write')
    .description(
      'create or replace a config entry from a JSON file ({ "kind", "name", ... }), or - for stdin',
    )
    .argument('<file>', 'JSON file holding the entry, or - to read it from stdin')
    .option(
      '--cas <index>',
      'write only if the entry is still at this modify index (0: only if it does not exist)',
    )
    .addOption(httpOption())
    .addOption(tokenOption())
    .addOption(tokenFileOption())
    .option('--json', 'machine-readable output (as PUT /v1/config: { index })')
    .action(async (file: string, opts: ClientOpts & { cas?: string }) => {
      const entry = readConfigEntryArg(file)
      if (opts.cas !== undefined && !/^\d{1,15}$/.test(opts.cas))
        throw new ConfigError(`--cas: expected a non-negative integer index, not "${opts.cas}"`, 'cas')
      const query = opts.cas === undefined ? '' : `?cas=${opts.cas}`
      const r = await clientFor(opts).call<{ index: number }>('PUT', `/v1/config${query}`, entry)
      print(
        opts.json === true,
        r,
        () => `config entry ${entry.kind}/${entry.name} written (index ${r.index})`,
      )
    })

  config
    .command('read')
    .description('show one config entry')
    .argument('<kind>', 'the entry kind, e.g. service-splitter')
    .argument('<name>', 'the entry name')
    .option('--consistent', 'read through the Raft leader (sees every acknowledged write)')
    .addOption(httpOption())
    .addOption(tokenOption())
    .addOption(tokenFileOption())
    .option('--json', 'machine-readable output (as GET /v1/config/:kind/:name)')
    .action(async (kind: string, name: string, opts: ClientOpts & { consistent?: boolean }) => {
      const entry = await clientFor(opts).get<ConfigEntryJson>(
        withConsistent(entryPath(kind, name), opts.consistent),
      )
      // The entry is structured data: both forms print it as JSON.
      print(true, entry, () => '')
    })

  config
    .command('list')
    .description('list the config entries of a kind')
    .argument('<kind>', 'the entry kind, e.g. service-splitter')
    .option('--consistent', 'read through the Raft leader (sees every acknowledged write)')
    .addOption(httpOption())
    .addOption(tokenOption())
    .addOption(tokenFileOption())
    .option('--json', 'machine-readable output (as GET /v1/config/:kind)')
    .action(async (kind: string, opts: ClientOpts & { consistent?: boolean }) => {
      const entries = await clientFor(opts).get<ConfigEntryJson[]>(
        withConsistent(entryPath(kind), opts.consistent),
      )
      entries.sort((a, b) => a.name.localeCompare(b.name))
      print(opts.json === true, entries, () =>
        entries.length === 0
          ? `no ${kind} config entries`
          : renderTable(
              ['KIND', 'NAME', 'CREATE INDEX', 'MODIFY INDEX'],
              entries.map((e) => [e.kind, e.name, String(e.createIndex), String(e.modifyIndex)]),
            ),
      )
    })

  config
    .command('delete')
    .description('delete a config entry')
    .argument('<kind>', 'the entry kind, e.g. service-splitter')
    .argument('<name>', 'the entry name')
    .addOption(httpOption())
    .addOption(tokenOption())
    .addOption(tokenFileOption())
    .option('--json', 'machine-readable output (as DELETE /v1/config/:kind/:name: { index })')
    .action(async (kind: string, name: string, opts: ClientOpts) => {
      const r = await clientFor(opts).call<{ index: number }>('DELETE', entryPath(kind, name))
      print(opts.json === true, r, () => `config entry ${kind}/${name} deleted (index ${r.index})`)
    })
}
