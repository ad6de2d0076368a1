import type { AgentProcess, TestCluster } from './harness.ts'
import { authHeaders, waitFor } from './harness.ts'

/** `GET /v1/operator/raft/configuration`. */
export interface RaftConfiguration {
  servers: { id: string; node: string; address: string; leader: boolean; voter: boolean }[]
  index: number
}

export interface RaftStatus {
  id: string
  term: number
  role: string
  leader: string
  commitIndex: number
  appliedIndex: number
  voters: string[]
  learners: string[]
}

/** Starts `n` agents that bootstrap together with `--bootstrap-expect n`, then `extra` joiners. */
export async function startRaftCluster(
  cluster: TestCluster,
  n: number,
  opts: { extra?: number; prefix?: string; extraArgs?: string[] } = {},
): Promise<AgentProcess[]> {
  const key = await cluster.writeClusterKey()
  const prefix = opts.prefix ?? 'r'
  const first = cluster.agent({
    name: `${prefix}1`,
    clusterKeyFile: key,
    extraArgs: ['--bootstrap-expect', String(n), ...(opts.extraArgs ?? [])],
  })
  await first.start()
  const seed = (await first.self())!.addresses[0]!
  const start = async (from: number, to: number, founder: boolean): Promise<AgentProcess[]> => {
    const started: AgentProcess[] = []
    for (let i = from; i <= to; i++) {
      started.push(
        cluster.agent({
          name: `${prefix}${i}`,
          clusterKeyFile: key,
          seeds: [seed],
          extraArgs: [...(founder ? ['--bootstrap-expect', String(n)] : []), ...(opts.extraArgs ?? [])],
        }),
      )
    }
    await Promise.all(started.map((a) => a.start()))
    return started
  }
  const founders = [first, ...(await start(2, n, true))]
  if ((opts.extra ?? 0) === 0) return founders
  // Joiners start once the founders have a leader: `--bootstrap-expect N` counts alive members,
  // so agents without the flag alive at that moment could be picked as founders.
  await waitForLeader(founders)
  return [...founders, ...(await start(n + 1, n + (opts.extra ?? 0), false))]
}

export async function status(a: AgentProcess): Promise<RaftStatus | undefined> {
  return a.api<RaftStatus>('/v1/operator/raft/status')
}

/** Waits until every given agent names the same leader, which is one of them; returns it. */
export async function waitForLeader(agents: AgentProcess[], timeoutMs = 20_000): Promise<AgentProcess> {
  try {
    return await waitFor(
      'one leader agreed by all',
      async () => {
        const sts = await Promise.all(agents.map(status))
        const leader = sts[0]?.leader
        if (leader === undefined || leader === '' || !sts.every((s) => s?.leader === leader)) return undefined
        return agents[sts.findIndex((s) => s?.id === leader)]
      },
      timeoutMs,
      50,
    )
  } catch (err) {
    await describeAgents(agents)
    throw err
  }
}

/**
 * Prints what each agent says of Raft, and the founding, Raft and leader lines of its log: enough
 * to tell a founding that never completed from leaders that kept changing. For a wait that timed out.
 */
export async function describeAgents(agents: AgentProcess[]): Promise<void> {
  const sts = await Promise.all(agents.map((a) => status(a).catch(() => undefined)))
  for (const [i, a] of agents.entries()) {
    const s = sts[i]
    console.log(
      `${a.name}: ${s === undefined ? 'no status' : `term ${s.term} role ${s.role} leader ${s.leader || '-'} commit ${s.commitIndex} voters ${s.voters.length}`}`,
    )
    const lines = a.log.split('\n').filter((l) => /founding|bootstrap|leader|raft: peer|round failed/.test(l))
    for (const l of lines.slice(-12)) console.log(`  ${l.slice(0, 300)}`)
  }
}

/** `PUT /v1/config` of a kv entry with the management token; returns the index, or throws with the status and error. */
export async function putKv(
  a: AgentProcess,
  name: string,
  value: string,
  opts: { timeoutMs?: number; signal?: AbortSignal } = {},
): Promise<number> {
  const res = await fetch(`http://${a.http}/v1/config`, {
    method: 'PUT',
    body: JSON.stringify({ kind: 'kv', name, value }),
    headers: { ...authHeaders(a.cluster.managementToken), 'content-type': 'application/json' },
    signal: opts.signal ?? AbortSignal.timeout(opts.timeoutMs ?? 10_000),
  })
  const body = (await res.json()) as { index?: number; error?: string }
  if (!res.ok) throw new Error(`PUT ${name} on ${a.name}: ${res.status} ${body.error}`)
  return body.index!
}

/** `GET /v1/config/kv/:name` with the management token; null when missing (404). */
export async function getKv(
  a: AgentProcess,
  name: string,
  opts: { consistent?: boolean; timeoutMs?: number; signal?: AbortSignal } = {},
): Promise<string | null> {
  const q = opts.consistent ? '?consistent' : ''
  const res = await fetch(`http://${a.http}/v1/config/kv/${encodeURIComponent(name)}${q}`, {
    headers: authHeaders(a.cluster.managementToken),
    signal: opts.signal ?? AbortSignal.timeout(opts.timeoutMs ?? 10_000),
  })
  if (res.status === 404) return null
  const body = (await res.json()) as { value?: string; error?: string }
  if (!res.ok) throw new Error(`GET ${name} on ${a.name}: ${res.status} ${body.error}`)
  return body.value!
}
