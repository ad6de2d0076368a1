import { Command, CommanderError, Option } from 'commander'
import { generateClusterKey, writeClusterKeyFile } from '../../identity/keys/cluster-key.ts'
import type { Agent } from '../agent/agent.ts'
import type { AgentConfigInput } from '../agent/config.ts'
import {
  DEFAULT_HTTP,
  GOSSIP_PROFILES,
  INITIAL_MANAGEMENT_TOKEN_ENV,
  LOG_LEVELS,
} from '../agent/config-constants.ts'
import { isUserFacing } from '../agent/errors.ts'
import { VERSION } from '../agent/version.ts'
import { reduceMemoryOnce } from '../agent/memory-reducer.ts'
import { holdYoungGeneration } from '../agent/young-generation.ts'
import { registerAclCommands, resolveCliToken } from './acl.ts'
import { registerCatalogCommands } from './catalog.ts'
import { registerConfigCommands } from './config.ts'
import { agentInfoFromConsul, membersFromConsul } from './from-consul.ts'
import { ApiClient, setCliToken } from './client.ts'
import { registerConnectCommands } from './connect.ts'
import { print, renderTable } from './format.ts'
import { httpOption, tokenFileOption, tokenOption } from './options.ts'
import { registerRaftCommands } from './raft.ts'

/** How long a graceful stop may take before the process exits anyway. */
const STOP_DEADLINE_MS = 1_800

/** Parses an integer flag; anything else is left as is for the schema to reject, naming the flag. */
const parseIntArg = (value: string): number | string => (/^-?\d+$/.test(value) ? Number(value) : value)

const collect = (value: string, previous: string[] = []): string[] => [...previous, value]

export interface AgentInfo {
  name: string
  peerId: string
  addresses: string[]
  version: string
  peers: string[]
}

/**
 * commander's error as one line: `error: unknown command 'memebrs'\n(Did you mean members?)` becomes
 * `peermesh: unknown command 'memebrs'. Did you mean 'members'?` (the same for options).
 */
export function oneLineError(text: string): string {
  const [first = '', ...rest] = text.trim().split('\n')
  const line = `peermesh: ${first.replace(/^error: /, '')}`
  const suggestion = /^\(Did you mean (one of )?(.+)\?\)$/.exec(rest.join(' ').trim())
  if (suggestion === null) return `${line}\n`
  const names = suggestion[2]!
    .split(', ')
    .map((name) => `'${name}'`)
    .join(', ')
  return `${line}. Did you mean ${suggestion[1] ?? ''}${names}?\n`
}

export function buildCli(): Command {
  const program = new Command('peermesh')
    .description('A service mesh with no central server')
    .version(VERSION, '-v, --version')
    .showSuggestionAfterError()
    .configureOutput({
      outputError: (str, write) => write(oneLineError(str)),
    })
    // Every client command sends the token its --token / --token-file gave (else the env's).
    .hook('preAction', (_program, action) => setCliToken(resolveCliToken(action.opts())))

  program
    .command('agent')
    .description('run the peermesh agent on this machine')
    .option('--config <file.json>', 'JSON config file; accepts every flag as a camelCase field')
    .option('--name <name>', 'node name (default: host name)')
    .option('--data-dir <dir>', 'data directory (default: ./.peermesh/<name>)')
    .option(
      '--listen <multiaddr>',
      'libp2p listen address, repeatable (default /ip4/127.0.0.1/tcp/7946)',
      collect,
    )
    .option('--advertise <ip>', 'IP other agents reach this one at (default: the listen addresses)')
    .option('--http <host:port>', `local HTTP API address (default ${DEFAULT_HTTP})`)
    .option('--seed <multiaddr>', 'seed peer to join through, repeatable', collect)
    .option('--bootstrap', 'bootstrap a new Raft cluster on this agent')
    .option('--bootstrap-expect <n>', 'bootstrap once N agents are alive (same N on each)', parseIntArg)
    .option('--raft-voters <n>', 'target number of Raft voters: 1, 3 or 5 (default 3)', parseIntArg)
    .addOption(
      new Option(
        '--gossip-profile <profile>',
        'gossip timing: lan detects a failure in about 1 s, local in about 3 s at a third of the traffic, wan for wide-area links (default lan)',
      ).choices(GOSSIP_PROFILES),
    )
    .option('--datacenter <name>', 'datacenter name of the Consul-compatible API (default dc1)')
    .option('--dns <host:port|off>', 'DNS interface address, or "off" (default 127.0.0.1:8600)')
    .option('--dns-domain <domain>', 'primary DNS zone (default peermesh; consul is served too)')
    .option('--cluster-key <file>', 'cluster key file (peermesh keygen > cluster.key)')
    .option(
      '--token-file <file>',
      "file (0600) holding this agent's token: it enrolls the node, and is the token of requests that carry none",
    )
    .option(
      '--initial-management-token-file <file>',
      `file (0600) holding the initial management token (a UUID) the founders share; or $${INITIAL_MANAGEMENT_TOKEN_ENV}`,
    )
    .addOption(new Option('--log-level <level>', 'log level').choices(LOG_LEVELS))
    .option(
      '--otlp-endpoint <url>',
      'send OpenTelemetry spans of sidecar HTTP requests to this OTLP/HTTP collector, e.g. http://127.0.0.1:4318 (default: off)',
    )
    .action(async (opts: Record<string, unknown>) => {
      // Before anything large is loaded: an agent's start would grow the new space for good.
      holdYoungGeneration()
      // One memory-reducing collection after the start instead of three (memory-reducer.ts).
      reduceMemoryOnce()
      // Loaded here, as the agent below, so that the light commands load neither the config's
      // schemas (zod) nor the logger (pino).
      const [{ readConfigFile, resolveAgentConfig, validateAgentConfig }, { createLogger }] =
        await Promise.all([import('../agent/config.ts'), import('../agent/logger.ts')])
      const flags = validateAgentConfig(
        {
          name: opts['name'],
          dataDir: opts['dataDir'],
          listen: opts['listen'],
          advertise: opts['advertise'],
          http: opts['http'],
          seed: opts['seed'],
          bootstrap: opts['bootstrap'],
          bootstrapExpect: opts['bootstrapExpect'],
          raftVoters: opts['raftVoters'],
          gossipProfile: opts['gossipProfile'],
          clusterKey: opts['clusterKey'],
          tokenFile: opts['tokenFile'],
          ...(opts['initialManagementTokenFile'] !== undefined
            ? { acl: { initialManagementTokenFile: opts['initialManagementTokenFile'] } }
            : {}),
          ...(opts['otlpEndpoint'] !== undefined ? { tracing: { otlpEndpoint: opts['otlpEndpoint'] } } : {}),
          datacenter: opts['datacenter'],
          dns: opts['dns'],
          dnsDomain: opts['dnsDomain'],
          logLevel: opts['logLevel'],
        },
        'flags',
      )
      const file: AgentConfigInput = typeof opts['config'] === 'string' ? readConfigFile(opts['config']) : {}
      const config = resolveAgentConfig(file, flags)
      const log = createLogger(config.logLevel, { node: config.name })
      // Loaded here so that the light commands don't pay for importing libp2p.
      const { createAgent } = await import('../agent/create-agent.ts')
      const { agent } = createAgent(config, log)
      await agent.start()
      await waitForSignal(agent)
    })

  program
    .command('keygen')
    .description('print a new cluster key (peermesh keygen > cluster.key)')
    .option('--out <file>', 'write it to a new file, mode 0600, instead of printing it')
    .action((opts: { out?: string }) => {
      if (opts.out === undefined) process.stdout.write(generateClusterKey())
      else writeClusterKeyFile(opts.out, generateClusterKey())
    })

  program
    .command('info')
    .description("show this agent's name, peer id, addresses and connected peers")
    .addOption(httpOption())
    .addOption(tokenOption())
    .addOption(tokenFileOption())
    .option('--json', 'machine-readable output')
    .action(async (opts: { http: string; json?: boolean }) => {
      const api = new ApiClient(opts.http)
      const info: AgentInfo = agentInfoFromConsul(await api.get('/v1/agent/self'))
      print(opts.json === true, info, () =>
        [
          `name:      ${info.name}`,
          `peer id:   ${info.peerId}`,
          `version:   ${info.version}`,
          `addresses: ${info.addresses.join('\n           ')}`,
          `peers:     ${info.peers.length === 0 ? '(none)' : info.peers.join('\n           ')}`,
        ].join('\n'),
      )
    })

  program
    .command('members')
    .description('list the members of the cluster as gossip sees them')
    .addOption(httpOption())
    .addOption(tokenOption())
    .addOption(tokenFileOption())
    .option('--json', 'machine-readable output')
    .action(async (opts: { http: string; json?: boolean }) => {
      const members = membersFromConsul(await new ApiClient(opts.http).get<unknown[]>('/v1/agent/members'))
      members.sort((a, b) => a.name.localeCompare(b.name))
      print(opts.json === true, members, () =>
        renderTable(
          ['NAME', 'PEER ID', 'ADDRESS', 'STATUS', 'INCARNATION', 'TAGS'],
          members.map((m) => [
            m.name,
            m.peerId,
            m.address,
            m.status,
            String(m.incarnation),
            Object.entries(m.tags)
              .map(([k, v]) => `${k}=${v}`)
              .join(','),
          ]),
        ),
      )
    })

  program
    .command('demo')
    .description('start a local demo cluster of agents on 127.0.0.1 and show what the mesh does')
    .option('--agents <n>', 'number of agents (at least 3)', '3')
    .option('--duration <seconds>', 'length of the traffic and the story', '20')
    .option('--no-failover', 'skip the kills (instance and Raft leader)')
    .option('--keep', 'keep the cluster running after the story, until Ctrl-C')
    .option('--json', 'the last stdout line is a JSON summary')
    .option('--dir <dir>', 'keep agent data dirs here (default: a temp dir, removed at the end)')
    .action(
      async (opts: {
        agents: string
        duration: string
        failover: boolean
        keep?: boolean
        json?: boolean
        dir?: string
      }) => {
        const { runDemoCommand } = await import('../demo/index.ts')
        const code = await runDemoCommand(opts)
        if (code !== 0) process.exit(code)
      },
    )

  registerCatalogCommands(program)
  registerRaftCommands(program)
  registerConnectCommands(program)
  registerAclCommands(program)
  registerConfigCommands(program)
  return program
}

async function waitForSignal(agent: Agent): Promise<void> {
  await new Promise<void>((resolve) => {
    let stopping = false
    const onSignal = (signal: NodeJS.Signals): void => {
      if (stopping) process.exit(1)
      stopping = true
      agent.log.info({ signal }, 'stopping')
      const deadline = setTimeout(() => {
        agent.log.warn('graceful stop took too long; exiting')
        process.exit(0)
      }, STOP_DEADLINE_MS)
      deadline.unref()
      agent
        .stop()
        .catch((err: unknown) => agent.log.error({ err }, 'error while stopping'))
        .finally(() => {
          clearTimeout(deadline)
          resolve()
        })
    }
    process.on('SIGINT', onSignal)
    process.on('SIGTERM', onSignal)
    // Consul's `PUT /v1/agent/leave`: a graceful leave and stop, as on SIGTERM.
    agent.events.on('agent:leave', () => onSignal('SIGTERM'))
  })
}

/** Runs the CLI; user errors become one line on stderr and exit code 1, never a stack trace. */
export async function main(argv: string[]): Promise<void> {
  const program = buildCli()
  program.exitOverride()
  try {
    await program.parseAsync(argv)
    // The agent command resolves after a graceful stop; other commands after printing.
    process.exit(0)
  } catch (err) {
    if (err instanceof CommanderError) {
      // commander already printed its one-line message (or help/version, with exit code 0).
      process.exit(err.exitCode)
    }
    if (isUserFacing(err)) {
      process.stderr.write(`peermesh: ${err.message}\n`)
    } else {
      process.stderr.write(
        `peermesh: unexpected error: ${err instanceof Error ? err.message : String(err)}\n`,
      )
      if (process.env['PEERMESH_DEBUG']) console.error(err)
    }
    process.exit(1)
  }
}
