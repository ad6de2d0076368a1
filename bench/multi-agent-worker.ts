/**
 * Runs several agents in one process (for measuring large clusters on a small machine).
 * Started by bench scripts: `tsx bench/multi-agent-worker.ts <dir> <clusterKey> <count> <prefix> [seed]`.
 * Prints one JSON line per agent `{ name, http, address }` on stdout once it is up, then runs
 * until SIGTERM, or until its stdin closes when that is a pipe (the bench exited, even killed).
 * `PEERMESH_BENCH_BOOTSTRAP=1`: the first agent bootstraps Raft (a one-voter cluster to join).
 * `PEERMESH_BENCH_GOSSIP_PROFILE=lan|local|wan`: every agent's `gossipProfile` (unset: the default).
 */
import '../src/node/agent/polyfill.ts'
import { fstatSync } from 'node:fs'
import { join } from 'node:path'
import pino from 'pino'
import { resolveAgentConfig } from '../src/node/agent/config.ts'
import { GOSSIP_PROFILES } from '../src/node/agent/config-constants.ts'
import { createAgent } from '../src/node/agent/create-agent.ts'

const [dir, keyFile, countStr, prefix, seed] = process.argv.slice(2)
const log = pino({ level: 'silent' })
const bootstrap = process.env['PEERMESH_BENCH_BOOTSTRAP'] === '1'
const profileEnv = process.env['PEERMESH_BENCH_GOSSIP_PROFILE']
const gossipProfile = GOSSIP_PROFILES.find((p) => p === profileEnv)
if (profileEnv !== undefined && profileEnv !== '' && gossipProfile === undefined)
  throw new Error(`PEERMESH_BENCH_GOSSIP_PROFILE: expected one of ${GOSSIP_PROFILES.join(', ')}`)
const agents: { stop(): Promise<void> }[] = []
for (let i = 0; i < Number(countStr); i++) {
  const name = `${prefix}${i}`
  const config = resolveAgentConfig(
    {},
    {
      name,
      dataDir: join(dir!, name),
      listen: ['/ip4/127.0.0.1/tcp/0'],
      http: '127.0.0.1:0',
      clusterKey: keyFile!,
      dns: 'off',
      ...(gossipProfile !== undefined ? { gossipProfile } : {}),
      ...(seed ? { seed: [seed] } : {}),
      ...(bootstrap && i === 0 ? { bootstrap: true } : {}),
    },
  )
  const { agent } = createAgent(config, log)
  await agent.start()
  agents.push(agent)
  const addr = agent.httpAddress!
  process.stdout.write(
    `${JSON.stringify({ name, http: `${addr.host}:${addr.port}`, address: agent.addresses()[0] })}\n`,
  )
}
const stopAll = (): void => {
  void Promise.all(agents.map((a) => a.stop().catch(() => {}))).finally(() => process.exit(0))
}
process.on('SIGTERM', stopAll)
const stdin = fstatSync(0)
if (stdin.isFIFO() || stdin.isSocket()) {
  process.stdin.on('close', stopAll)
  process.stdin.resume()
}
