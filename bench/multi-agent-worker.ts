/**
 * Runs several agents in one process (for measuring large clusters on a small machine).
 * Started by bench scripts: `tsx bench/multi-agent-worker.ts <dir> <clusterKey> <count> <prefix> [seed]`.
 * Prints one JSON line per agent `{ name, http, address }` on stdout once it is up, then runs
 * until SIGTERM.
 */
import '../src/node/polyfill.ts'
import { join } from 'node:path'
import pino from 'pino'
import { resolveAgentConfig } from '../src/node/config.ts'
import { createAgent } from '../src/node/create-agent.ts'

const [dir, keyFile, countStr, prefix, seed] = process.argv.slice(2)
const log = pino({ level: 'silent' })
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
      ...(seed ? { seed: [seed] } : {}),
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
process.on('SIGTERM', () => {
  void Promise.all(agents.map((a) => a.stop().catch(() => {}))).finally(() => process.exit(0))
})
