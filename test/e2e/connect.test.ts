import { execFileSync } from 'node:child_process'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { type AgentProcess, authHeaders, runCli, TestCluster, waitFor } from './harness.ts'
import { type RaftStatus, startRaftCluster, status, waitForLeader } from './raft-helpers.ts'

interface IntentionJson {
  source: string
  destination: string
  action: string
}

/** An agent's intentions (Consul's shape from the API) as `peermesh intention list --json` shows them. */
async function intentionsOf(a: AgentProcess): Promise<IntentionJson[] | undefined> {
  const list =
    await a.api<{ SourceName: string; DestinationName: string; Action: string }[]>('/v1/connect/intentions')
  return list?.map((i) => ({ source: i.SourceName, destination: i.DestinationName, action: i.Action }))
}

const has = (list: IntentionJson[] | undefined, src: string, dst: string): boolean =>
  list?.some((i) => i.source === src && i.destination === dst) ?? false

/** Waits until every agent's local committed state agrees that `src -> dst` is (or is not) there. */
/** Waits until every agent lists the intention src -> dst with `action`. */
async function waitForAction(
  agents: AgentProcess[],
  src: string,
  dst: string,
  action: string,
): Promise<void> {
  await Promise.all(
    agents.map((a) =>
      waitFor(`${src} -> ${dst} ${action} on ${a.name}`, async () => {
        const list = await intentionsOf(a)
        return list?.some((i) => i.source === src && i.destination === dst && i.action === action)
          ? true
          : undefined
      }),
    ),
  )
}

async function waitOnAll(agents: AgentProcess[], src: string, dst: string, present: boolean): Promise<void> {
  await Promise.all(
    agents.map((a) =>
      waitFor(
        `${src} -> ${dst} ${present ? 'present' : 'gone'} on ${a.name}`,
        async () => (has(await intentionsOf(a), src, dst) === present ? true : undefined),
        20_000,
        25,
      ),
    ),
  )
}

/** `peermesh intention list --json` on every agent, as a user would check. */
async function listOnAll(agents: AgentProcess[]): Promise<IntentionJson[][]> {
  return Promise.all(
    agents.map(async (a) => {
      const r = await runCli(['intention', 'list', '--json', '--http', a.http])
      expect(r.code, r.stderr).toBe(0)
      return JSON.parse(r.stdout) as IntentionJson[]
    }),
  )
}

describe('connect end to end (5 agents: 3 voters + 2 learners)', () => {
  const cluster = new TestCluster()
  afterAll(() => cluster.close())

  it('intentions through any agent reach all 5 and survive a full restart; exported leaves verify with openssl', async () => {
    const agents = await startRaftCluster(cluster, 3, { extra: 2, prefix: 'c' })
    await waitForLeader(agents.slice(0, 3))
    // Autopilot adds the two joiners as learners.
    const sts = await waitFor(
      'two learners in the raft configuration',
      async () => {
        const all = await Promise.all(agents.map(status))
        return all.every((s) => s?.learners.length === 2 && s.voters.length === 3)
          ? (all as RaftStatus[])
          : undefined
      },
      20_000,
      50,
    )
    const learner = agents[sts.findIndex((s) => s.learners.includes(s.id))]!
    const voter = agents[sts.findIndex((s) => s.voters.includes(s.id) && s.leader !== s.id)]!

    // Created through a non-voter: visible on all 5.
    // (CLI processes cost ~1 s each on a loaded machine: independent ones run in parallel.)
    const [created, kept] = await Promise.all([
      runCli(['intention', 'create', 'web', 'db', 'allow', '--http', learner.http]),
      runCli(['intention', 'create', '*', 'db', 'deny', '--http', learner.http]),
    ])
    expect(created.code, created.stderr).toBe(0)
    expect(kept.code, kept.stderr).toBe(0)
    await waitOnAll(agents, 'web', 'db', true)
    for (const list of await listOnAll(agents)) {
      expect(list).toContainEqual(
        expect.objectContaining({ source: 'web', destination: 'db', action: 'allow' }),
      )
    }
    const [check, denied, dup] = await Promise.all([
      runCli(['intention', 'check', 'web', 'db', '--http', voter.http]),
      runCli(['intention', 'check', 'api', 'db', '--http', learner.http]),
      runCli(['intention', 'create', 'web', 'db', 'deny', '--http', voter.http]),
    ])
    expect([check.code, check.stdout.trim()]).toEqual([0, 'allowed'])
    expect([denied.code, denied.stdout.trim()]).toEqual([1, 'denied'])
    expect(dup.code).toBe(1)
    expect(dup.stderr).toMatch(/already exists/)
    // No service is registered yet: create warned about the names (a typo protects nothing).
    expect(created.stderr).toMatch(/warning: no service named "db" is registered/)
    expect(kept.stderr).not.toMatch(/named "\*"/)

    // `intention update` changes the action in one write; a pair without an intention is refused.
    const [upd, missing] = await Promise.all([
      runCli(['intention', 'update', 'web', 'db', 'deny', '--http', voter.http]),
      runCli(['intention', 'update', 'nobody', 'db', 'deny', '--http', voter.http]),
    ])
    expect(upd.code, upd.stderr).toBe(0)
    expect(missing.code).toBe(1)
    await waitForAction(agents, 'web', 'db', 'deny')
    const back = await runCli(['intention', 'update', 'web', 'db', 'allow', '--http', learner.http])
    expect(back.code, back.stderr).toBe(0)
    await waitForAction(agents, 'web', 'db', 'allow')

    // Deleted through another agent (a voter that is not the leader): gone on all 5.
    const del = await runCli(['intention', 'delete', 'web', 'db', '--http', voter.http])
    expect(del.code, del.stderr).toBe(0)
    // Checked through the API, which `intention list --json` prints as is.
    await waitOnAll(agents, 'web', 'db', false)
    for (const a of agents) expect(has(await intentionsOf(a), '*', 'db')).toBe(true)

    // A leaf for a service on the learner, signed by the leader, verifies with openssl.
    const reg = await fetch(`http://${learner.http}/v1/agent/service/register`, {
      method: 'PUT',
      headers: { ...authHeaders(), 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'web', port: 18080 }),
    })
    expect(reg.status).toBe(200)
    const out = join(cluster.dir, 'certs')
    const [exp, none] = await Promise.all([
      runCli(['cert', 'export', 'web', '--out', out, '--http', learner.http]),
      // A service the agent does not host gets no leaf.
      runCli(['cert', 'export', 'db', '--out', join(cluster.dir, 'none'), '--http', learner.http]),
    ])
    expect(exp.code, exp.stderr).toBe(0)
    expect(none.code).toBe(1)
    const verify = execFileSync(
      'openssl',
      ['verify', '-CAfile', join(out, 'root.pem'), join(out, 'leaf.pem')],
      {
        encoding: 'utf8',
      },
    )
    expect(verify).toMatch(/leaf\.pem: OK/)
    const text = execFileSync('openssl', ['x509', '-in', join(out, 'leaf.pem'), '-noout', '-text'], {
      encoding: 'utf8',
    })
    const roots = await learner.api<{ TrustDomain: string; ActiveRootID: string }>('/v1/connect/ca/roots')
    expect(text).toContain(`URI:spiffe://${roots!.TrustDomain}/svc/web`)

    // Custody: only the 3 voters hold a copy of the root key; every policy entry verified.
    const held = await Promise.all(agents.map((a) => a.metric('peermesh_connect_ca_key_held')))
    expect(held.filter((h) => h === 1)).toHaveLength(3)
    expect(held[agents.indexOf(learner)]).toBe(0)
    for (const a of agents) expect(await a.metric('peermesh_connect_policy_rejected_total')).toBe(0)

    // Restart all 5: the policy state and the CA come back from each agent's Raft state on disk.
    await Promise.all(agents.map((a) => a.stop('SIGTERM')))
    await Promise.all(agents.map((a) => a.start()))
    // A restarted agent may apply its log only up to the commit index it saved, then learn the
    // rest from the leader: wait for the last write (the delete), not just an earlier one.
    await waitOnAll(agents, '*', 'db', true)
    await waitOnAll(agents, 'web', 'db', false)
    for (const a of agents) {
      const list = await intentionsOf(a)
      expect(list?.map((i) => `${i.source}->${i.destination}:${i.action}`)).toEqual(['*->db:deny'])
    }
    for (const a of agents) {
      const r = await a.api<{ ActiveRootID: string }>('/v1/connect/ca/roots')
      expect(r?.ActiveRootID).toBe(roots!.ActiveRootID)
    }
  }, 120_000)
})
