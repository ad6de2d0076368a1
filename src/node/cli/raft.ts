import type { Command } from 'commander'
import { print, renderTable } from './format.ts'
import { httpOption, tokenFileOption, tokenOption } from './options.ts'
import { ApiClient } from './client.ts'
import { NoLeaderError } from '../raft/errors.ts'
import type { RaftConfigurationJson } from '../raft/raft-module.ts'

/** Raised when the cluster has no Raft leader (`peermesh leader` exits 1 with one line). */
export class NoLeaderKnownError extends NoLeaderError {}

/**
 * `peermesh leader [--http] [--json]`: the Raft leader's libp2p address (as `GET /v1/status/leader`);
 * exits 1 with one line when there is none.
 * `peermesh raft peers [--http] [--json]`: the Raft configuration; `--json` prints exactly
 * `GET /v1/operator/raft/configuration`.
 */
export function registerRaftCommands(program: Command): void {
  program
    .command('leader')
    .description('show the address of the Raft leader')
    .addOption(httpOption())
    .addOption(tokenOption())
    .addOption(tokenFileOption())
    .option('--json', 'machine-readable output (a JSON string)')
    .action(async (opts: { http: string; json?: boolean }) => {
      const leader = await new ApiClient(opts.http).get<string>('/v1/status/leader')
      if (typeof leader !== 'string' || leader === '') throw new NoLeaderKnownError('no raft leader known')
      print(opts.json === true, leader, () => leader)
    })

  const raft = program.command('raft').description('inspect the Raft group')
  raft
    .command('peers')
    .description('list the Raft voters and learners')
    .addOption(httpOption())
    .addOption(tokenOption())
    .addOption(tokenFileOption())
    .option('--json', 'machine-readable output (as GET /v1/operator/raft/configuration)')
    .action(async (opts: { http: string; json?: boolean }) => {
      const conf = await new ApiClient(opts.http).get<RaftConfigurationJson>(
        '/v1/operator/raft/configuration',
      )
      print(opts.json === true, conf, () =>
        renderTable(
          ['NODE', 'ID', 'ADDRESS', 'STATE', 'VOTER'],
          conf.servers.map((s) => [
            s.node,
            s.id,
            s.address,
            s.leader ? 'leader' : s.voter ? 'follower' : 'learner',
            String(s.voter),
          ]),
        ),
      )
    })
}
