import { writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import { join } from 'node:path'
import { type AgentProcess, runCli } from './harness.ts'

/** A local app on 127.0.0.1:`port` answering every request with `body`. */
export function startApp(port: number, body = 'ok'): Promise<Server> {
  const server = createServer((_req, res) => res.end(body))
  return new Promise((resolve) => server.listen(port, '127.0.0.1', () => resolve(server)))
}

/** Closes an app, its open (keep-alive) connections included. */
export function stopApp(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve())
    server.closeAllConnections()
  })
}

/**
 * `peermesh register FILE.json` against `agent`, as a user would, with the cluster's management
 * token; throws unless it exits 0.
 */
export async function registerService(
  agent: AgentProcess,
  definition: { name: string; [field: string]: unknown },
): Promise<void> {
  const path = join(agent.cluster.dir, `${agent.name}-${definition.name}.json`)
  writeFileSync(path, JSON.stringify(definition))
  const r = await runCli(['register', path, '--http', agent.http], { token: agent.cluster.managementToken })
  if (r.code !== 0) throw new Error(`register ${definition.name} on ${agent.name}: ${r.stderr.trim()}`)
}

/**
 * The non-zero samples of a counter in an agent's `GET /metrics`, keyed by their labels (`{}` when
 * it has none): what a failing check prints, so that it says which reason or route it was.
 */
export async function metricSamples(agent: AgentProcess, name: string): Promise<Record<string, number>> {
  const text = await (await fetch(`http://${agent.http}/metrics`)).text()
  const out: Record<string, number> = {}
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+)(\{[^}]*\})? (\S+)$/.exec(line)
    if (m?.[1] === name && Number(m[3]) !== 0) out[m[2] ?? '{}'] = Number(m[3])
  }
  return out
}
