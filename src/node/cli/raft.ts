import type { Command } from 'commander'
import { print, renderTable } from './format.ts'
import { httpOption, tokenFileOption, tokenOption } from './options.ts'
import { ApiClient } from './client.ts'
import { NoLeaderError } from '../raft/errors.ts'
import type { RaftConfigurationJson } from '../raft/raft-module.ts'
import type { EnrollmentListJson } from '../api/raft-routes.ts'
import { clientFor } from './acl.ts'

/** Raised when the cluster has no Raft leader (`peermesh leader` exits 1 with one line). */
export class NoLeaderKnownError extends NoLeaderError {}

/**
 * `peermesh leader [--http] [--json]`: the Raft leader's libp2p address (as `GET /v1/status/leader`);
 * exits 1 with one line when there is none.
 * `peermesh raft peers [--http] [--json]`: the Raft configuration; `--json` prints exactly
 * `GET /v1/operator/raft/configuration`.
 * `peermesh enroll list [--json]`: the enrolled nodes, service grants and revoked peer ids (`--json`
 * prints exactly `GET /v1/operator/enrollment`); `peermesh enroll revoke NODE`: revokes a node's
 * enrollment (autopilot then removes it from Raft).
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
      // The body is Consul's "ip:port"; the libp2p address this command prints is in a header.
      let leader = ''
      await new ApiClient(opts.http).get<string>('/v1/status/leader', {
        onHeaders: (h) => {
          const v = h['x-peermesh-leader']
          leader = typeof v === 'string' ? v : ''
        },
      })
      if (leader === '') throw new NoLeaderKnownError('no raft leader known')
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

  const enroll = program
    .command('enroll')
    .description('list or revoke the nodes enrolled in the control plane')
  enroll
    .command('list')
    .description('list enrolled nodes, service grants and revoked peer ids (needs operator:read)')
    .addOption(httpOption())
    .addOption(tokenOption())
    .addOption(tokenFileOption())
    .option('--json', 'machine-readable output (as GET /v1/operator/enrollment)')
    .action(async (opts: { http: string; token?: string; tokenFile?: string; json?: boolean }) => {
      const list = await clientFor(opts).get<EnrollmentListJson>('/v1/operator/enrollment')
      print(opts.json === true, list, () => {
        const nodes = renderTable(
          ['NODE', 'PEER ID', 'VOTER', 'ACCESSOR ID', 'CREATE INDEX'],
          list.Enrollments.map((e) => [
            e.Node,
            e.PeerID,
            String(e.Voter),
            e.AccessorID,
            String(e.CreateIndex),
          ]),
        )
        if (list.Grants.length === 0) return nodes
        const grants = renderTable(
          ['SERVICE', 'PEER ID', 'ACCESSOR ID', 'CREATE INDEX'],
          list.Grants.map((g) => [g.Service, g.PeerID, g.AccessorID, String(g.CreateIndex)]),
        )
        return `${nodes}\n\n${grants}`
      })
    })
  enroll
    .command('revoke')
    .description("revoke a node's enrollment; autopilot removes it from Raft (needs operator:write)")
    .argument('<node>', 'node name')
    .addOption(httpOption())
    .addOption(tokenOption())
    .addOption(tokenFileOption())
    .option('--json', 'machine-readable output')
    .action(
      async (node: string, opts: { http: string; token?: string; tokenFile?: string; json?: boolean }) => {
        const r = await clientFor(opts).call<{ index: number }>(
          'DELETE',
          `/v1/operator/enrollment/${encodeURIComponent(node)}`,
        )
        print(opts.json === true, r, () => `Node ${node} revoked (index ${r.index})`)
      },
    )
}
