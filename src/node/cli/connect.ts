import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import type { Command } from 'commander'
import { writeFileAtomicSync } from '../../common/fs-atomic.ts'
import { caRootsFromConsul, intentionCheckFromConsul, intentionFromConsul } from './from-consul.ts'
import { ApiClient } from './client.ts'
import { ConfigError } from '../agent/errors.ts'
import { print, renderTable } from './format.ts'
import { httpOption, tokenFileOption, tokenOption } from './options.ts'

const pairQuery = (src: string, dst: string): string =>
  `source=${encodeURIComponent(src)}&destination=${encodeURIComponent(dst)}`

interface LeafJson {
  certPem: string
  privateKeyPem: string
  intermediatesPem: string[]
  rootsPem: string[]
  serviceURI: string
  validBefore: string
}

/**
 * `peermesh ca roots|rotate`, `peermesh cert export SERVICE --out DIR`,
 * `peermesh intention create|delete|list|check|default`: Connect from the command line, through
 * the local HTTP API (see connect-routes.ts for the shapes `--json` prints).
 */
export function registerConnectCommands(program: Command): void {
  const ca = program.command('ca').description('the mesh certificate authority')
  ca.command('roots')
    .description('list the trusted CA roots, the active one marked')
    .addOption(httpOption())
    .addOption(tokenOption())
    .addOption(tokenFileOption())
    .option('--json', 'machine-readable output (as GET /v1/connect/ca/roots)')
    .action(async (opts: { http: string; json?: boolean }) => {
      const roots = caRootsFromConsul(await new ApiClient(opts.http).get('/v1/connect/ca/roots'))
      print(opts.json === true, roots, () =>
        renderTable(
          ['ID', 'NAME', 'ACTIVE', 'KEY', 'NOT AFTER'],
          roots.roots.map((r) => [r.id, r.name, r.active ? 'yes' : 'no', r.keyType, r.notAfter]),
        ),
      )
    })
  ca.command('rotate')
    .description('start a root rotation: a new root, cross-signed by the current one')
    .addOption(httpOption())
    .addOption(tokenOption())
    .addOption(tokenFileOption())
    .option('--json', 'machine-readable output')
    .action(async (opts: { http: string; json?: boolean }) => {
      const r = await new ApiClient(opts.http).call<{ activeRootId: string; previousRootId: string }>(
        'POST',
        '/v1/connect/ca/rotate',
      )
      print(
        opts.json === true,
        r,
        () => `rotating: new active root ${r.activeRootId} (was ${r.previousRootId})`,
      )
    })

  const cert = program.command('cert').description('service leaf certificates')
  cert
    .command('export')
    .description('write the leaf certificate, key and CA roots of a local service as PEM files')
    .argument('<service>', 'service registered on this agent')
    .requiredOption('--out <dir>', 'directory to write leaf.pem, key.pem and root.pem into')
    .addOption(httpOption())
    .addOption(tokenOption())
    .addOption(tokenFileOption())
    .action(async (service: string, opts: { http: string; out: string }) => {
      const leaf = await new ApiClient(opts.http).get<LeafJson>(
        `/v1/agent/connect/ca/leaf/${encodeURIComponent(service)}`,
        { signal: AbortSignal.timeout(15_000) },
      )
      mkdirSync(opts.out, { recursive: true, mode: 0o700 })
      // leaf.pem carries the chain to present (leaf, then a rotation's cross-signed root if any).
      writeFileAtomicSync(
        join(opts.out, 'leaf.pem'),
        [leaf.certPem, ...leaf.intermediatesPem].map(ensureNl).join(''),
        0o644,
      )
      writeFileAtomicSync(join(opts.out, 'key.pem'), ensureNl(leaf.privateKeyPem), 0o600)
      writeFileAtomicSync(join(opts.out, 'root.pem'), leaf.rootsPem.map(ensureNl).join(''), 0o644)
      process.stdout.write(
        `wrote ${join(opts.out, 'leaf.pem')}, key.pem, root.pem (${leaf.serviceURI}, valid until ${leaf.validBefore})\n`,
      )
    })

  const intention = program.command('intention').description('who may call whom (allow|deny)')
  intention
    .command('create')
    .description('create an intention SRC -> DST (names or *)')
    .argument('<source>')
    .argument('<destination>')
    .argument('<action>', 'allow or deny')
    .option('--description <text>', 'free text')
    .option('--replace', 'replace an existing intention for the same pair')
    .addOption(httpOption())
    .addOption(tokenOption())
    .addOption(tokenFileOption())
    .action(
      async (
        source: string,
        destination: string,
        action: string,
        opts: { http: string; description?: string; replace?: boolean },
      ) => {
        if (action !== 'allow' && action !== 'deny')
          throw new ConfigError(`action: must be 'allow' or 'deny', got ${JSON.stringify(action)}`, 'action')
        const api = new ApiClient(opts.http)
        const body = {
          source,
          destination,
          action,
          ...(opts.description ? { description: opts.description } : {}),
        }
        const r = opts.replace
          ? await api.call<{ index: number }>(
              'PUT',
              `/v1/connect/intentions/exact?${pairQuery(source, destination)}`,
              body,
            )
          : await api.call<{ index: number }>('POST', '/v1/connect/intentions', body)
        process.stdout.write(`intention ${source} -> ${destination} ${action} (index ${r.index})\n`)
        await warnUnknownServices(api, [source, destination])
      },
    )
  intention
    .command('update')
    .description('change the action (and description) of the intention SRC -> DST in one write')
    .argument('<source>')
    .argument('<destination>')
    .argument('<action>', 'allow or deny')
    .option('--description <text>', 'free text (default: keep the current one)')
    .addOption(httpOption())
    .addOption(tokenOption())
    .addOption(tokenFileOption())
    .action(
      async (
        source: string,
        destination: string,
        action: string,
        opts: { http: string; description?: string },
      ) => {
        if (action !== 'allow' && action !== 'deny')
          throw new ConfigError(`action: must be 'allow' or 'deny', got ${JSON.stringify(action)}`, 'action')
        const api = new ApiClient(opts.http)
        const path = `/v1/connect/intentions/exact?${pairQuery(source, destination)}`
        // Read first only to refuse a pair that has no intention (use create for that); the change
        // itself is one replicated write, so no request ever sees the pair without an intention.
        const current = intentionFromConsul(await api.get(path))
        const description = opts.description ?? current.description
        const r = await api.call<{ index: number }>('PUT', path, {
          source,
          destination,
          action,
          ...(description ? { description } : {}),
        })
        process.stdout.write(`intention ${source} -> ${destination} ${action} (index ${r.index})\n`)
      },
    )
  intention
    .command('delete')
    .description('delete the intention SRC -> DST')
    .argument('<source>')
    .argument('<destination>')
    .addOption(httpOption())
    .addOption(tokenOption())
    .addOption(tokenFileOption())
    .action(async (source: string, destination: string, opts: { http: string }) => {
      await new ApiClient(opts.http).call(
        'DELETE',
        `/v1/connect/intentions?${pairQuery(source, destination)}`,
      )
      process.stdout.write(`deleted intention ${source} -> ${destination}\n`)
    })
  intention
    .command('list')
    .description('list intentions, highest precedence first')
    .addOption(httpOption())
    .addOption(tokenOption())
    .addOption(tokenFileOption())
    .option('--json', 'machine-readable output (a JSON array)')
    .action(async (opts: { http: string; json?: boolean }) => {
      const list = (await new ApiClient(opts.http).get<unknown[]>('/v1/connect/intentions')).map(
        intentionFromConsul,
      )
      print(opts.json === true, list, () =>
        renderTable(
          ['SOURCE', 'DESTINATION', 'ACTION', 'PRECEDENCE', 'DESCRIPTION'],
          list.map((i) => [
            i.source,
            i.destination,
            i.permissions !== undefined ? `L7 (${i.permissions.length} permissions)` : i.action,
            String(i.precedence),
            i.description ?? '',
          ]),
        ),
      )
    })
  intention
    .command('check')
    .description('would SRC be allowed to call DST? prints allowed/denied; exit 0 if allowed, 1 if not')
    .argument('<source>')
    .argument('<destination>')
    .addOption(httpOption())
    .addOption(tokenOption())
    .addOption(tokenFileOption())
    .option('--json', 'machine-readable output')
    .action(async (source: string, destination: string, opts: { http: string; json?: boolean }) => {
      const r = intentionCheckFromConsul(
        await new ApiClient(opts.http).get(`/v1/connect/intentions/check?${pairQuery(source, destination)}`),
      )
      print(opts.json === true, r, () => (r.allowed ? 'allowed' : 'denied'))
      if (!r.allowed) process.exit(1)
    })
  intention
    .command('default')
    .description('show or set the cluster-wide default action (when no intention matches)')
    .argument('[action]', 'allow or deny')
    .addOption(httpOption())
    .addOption(tokenOption())
    .addOption(tokenFileOption())
    .action(async (action: string | undefined, opts: { http: string }) => {
      const api = new ApiClient(opts.http)
      if (action === undefined) {
        const r = await api.get<{ action: string }>('/v1/connect/intentions/default')
        process.stdout.write(`${r.action}\n`)
        return
      }
      if (action !== 'allow' && action !== 'deny')
        throw new ConfigError(`action: must be 'allow' or 'deny', got ${JSON.stringify(action)}`, 'action')
      await api.call('PUT', '/v1/connect/intentions/default', { action })
      process.stdout.write(`default intention action: ${action}\n`)
    })
}

/**
 * Warns (stderr; the command still succeeds) about each name that matches no service in the
 * catalog: most likely a typo, and an intention for it protects nothing. `*` and names the
 * caller may not read are not judged.
 */
async function warnUnknownServices(api: ApiClient, names: string[]): Promise<void> {
  let known: Record<string, unknown>
  try {
    known = await api.get<Record<string, unknown>>('/v1/catalog/services')
  } catch {
    return // the intention is written; the check is only a courtesy
  }
  for (const name of new Set(names)) {
    if (name !== '*' && !Object.hasOwn(known, name))
      process.stderr.write(`warning: no service named "${name}" is registered (yet); check the spelling\n`)
  }
}

function ensureNl(pem: string): string {
  return pem.endsWith('\n') ? pem : `${pem}\n`
}
