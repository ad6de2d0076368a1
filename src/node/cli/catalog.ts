import { readFileSync } from 'node:fs'
import type { Command } from 'commander'
import { ApiClient } from './client.ts'
import { healthEntriesFromConsul } from './from-consul.ts'
import { ConfigError } from '../agent/errors.ts'
import { print, renderTable } from './format.ts'
import { httpOption, tokenFileOption, tokenOption } from './options.ts'

function readJsonFile(path: string): unknown {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (err) {
    throw new ConfigError(`cannot read ${path}: ${(err as NodeJS.ErrnoException).code}`, undefined, {
      cause: err,
    })
  }
  try {
    return JSON.parse(text)
  } catch (err) {
    throw new ConfigError(`${path} is not valid JSON: ${(err as Error).message}`, undefined, { cause: err })
  }
}

/** `peermesh register|deregister|services|health`: the service catalog from the command line. */
export function registerCatalogCommands(program: Command): void {
  program
    .command('register')
    .description('register a service (and its checks and sidecar) with the local agent')
    .argument('<file.json>', 'service definition')
    .addOption(httpOption())
    .addOption(tokenOption())
    .addOption(tokenFileOption())
    .action(async (file: string, opts: { http: string }) => {
      const def = readJsonFile(file)
      await new ApiClient(opts.http).call('PUT', '/v1/agent/service/register', def)
      // The file may use Consul's field names (`ID`, `Name`, any case), as the API reads them.
      const field = (name: string): unknown =>
        typeof def === 'object' && def !== null
          ? Object.entries(def).find(([k]) => k.toLowerCase() === name)?.[1]
          : undefined
      const id = field('id') || field('name')
      process.stdout.write(`registered service ${String(id)}\n`)
    })

  program
    .command('deregister')
    .description('remove a service registered with the local agent')
    .argument('<id>', 'service id')
    .addOption(httpOption())
    .addOption(tokenOption())
    .addOption(tokenFileOption())
    .action(async (id: string, opts: { http: string }) => {
      await new ApiClient(opts.http).call('PUT', `/v1/agent/service/deregister/${encodeURIComponent(id)}`)
      process.stdout.write(`deregistered service ${id}\n`)
    })

  program
    .command('services')
    .description('list the services known to the cluster, with their tags')
    .addOption(httpOption())
    .addOption(tokenOption())
    .addOption(tokenFileOption())
    .option('--json', 'machine-readable output')
    .action(async (opts: { http: string; json?: boolean }) => {
      const services = await new ApiClient(opts.http).get<Record<string, string[]>>('/v1/catalog/services')
      print(opts.json === true, services, () =>
        renderTable(
          ['SERVICE', 'TAGS'],
          Object.entries(services)
            .sort(([a], [b]) => a.localeCompare(b))
            .map(([name, tags]) => [name, tags.join(',')]),
        ),
      )
    })

  program
    .command('health')
    .description('the instances of a service and their health')
    .argument('<service>', 'service name')
    .addOption(httpOption())
    .addOption(tokenOption())
    .addOption(tokenFileOption())
    .option('--passing', 'only instances whose checks pass')
    .option('--json', 'machine-readable output')
    .action(async (service: string, opts: { http: string; json?: boolean; passing?: boolean }) => {
      const path = `/v1/health/service/${encodeURIComponent(service)}${opts.passing ? '?passing' : ''}`
      const entries = healthEntriesFromConsul(await new ApiClient(opts.http).get<unknown[]>(path))
      print(opts.json === true, entries, () =>
        renderTable(
          ['NODE', 'SERVICE ID', 'ADDRESS', 'STATUS', 'CHECKS'],
          entries.map((e) => [
            e.node.name,
            e.service.id,
            `${e.service.address}:${e.service.port}`,
            e.status,
            e.checks.map((c) => `${c.checkId}=${c.status}`).join(' '),
          ]),
        ),
      )
    })
}
