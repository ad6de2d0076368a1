import { afterAll, describe, expect, it } from 'vitest'
import { authHeaders, runCli, TestCluster, waitFor } from './harness.ts'
import { getKv, putKv, type RaftConfiguration, startRaftCluster, waitForLeader } from './raft-helpers.ts'

describe('raft in the agent (end to end, 3 agent processes)', () => {
  const cluster = new TestCluster()
  afterAll(() => cluster.close())

  it('bootstraps with --bootstrap-expect 3, elects one leader, forwards writes, shows peers', async () => {
    const agents = await startRaftCluster(cluster, 3)
    const leader = await waitForLeader(agents)
    const follower = agents.find((a) => a !== leader)!

    // A write through a non-leader is forwarded, committed, and visible on all three.
    const index = await putKv(follower, 'greeting', 'hello')
    expect(index).toBeGreaterThan(0)
    for (const a of agents) {
      await waitFor(`write visible on ${a.name}`, async () =>
        (await getKv(a, 'greeting')) === 'hello' ? true : undefined,
      )
      expect(await getKv(a, 'greeting', { consistent: true })).toBe('hello')
    }
    // Raft traffic moves onto the direct TLS connections (docs/ARCHITECTURE.md, libp2p): the
    // leader's heartbeats reach each follower over one, and no listener refused anything.
    const metric = async (a: (typeof agents)[number], name: string): Promise<number> => {
      const text = await (await fetch(`http://${a.http}/metrics`, { headers: authHeaders() })).text()
      const line = text.split('\n').find((l) => l.startsWith(`${name} `))
      return line === undefined ? Number.NaN : Number(line.slice(name.length + 1))
    }
    const directSent = 'peermesh_raft_transport_messages_total{path="direct",direction="sent"}'
    const directReceived = 'peermesh_raft_transport_messages_total{path="direct",direction="received"}'
    await waitFor('the leader sends over direct connections', async () =>
      (await metric(leader, directSent)) > 0 ? true : undefined,
    )
    for (const a of agents.filter((x) => x !== leader)) {
      await waitFor(`${a.name} receives over a direct connection`, async () =>
        (await metric(a, directReceived)) > 0 ? true : undefined,
      )
    }
    for (const a of agents) {
      for (const reason of ['direct_address_refused', 'direct_certificate_rejected', 'direct_hello_refused'])
        expect(await metric(a, `peermesh_raft_inputs_refused_total{reason="${reason}"}`)).toBe(0)
    }
    const entry = await follower.api<{ kind: string; name: string; value: string; modifyIndex: number }>(
      '/v1/config/kv/greeting',
    )
    expect(entry).toMatchObject({ kind: 'kv', name: 'greeting', value: 'hello', modifyIndex: index })

    // peermesh raft peers --json: the configuration API's JSON.
    const peers = await runCli(['raft', 'peers', '--http', follower.http, '--json'])
    expect(peers.code).toBe(0)
    const conf = JSON.parse(peers.stdout) as RaftConfiguration
    expect(conf.index).toBeGreaterThan(0)
    expect(conf.servers).toHaveLength(3)
    expect(conf.servers.filter((s) => s.voter)).toHaveLength(3)
    expect(conf.servers.filter((s) => s.leader)).toHaveLength(1)
    expect(new Set(conf.servers.map((s) => s.node))).toEqual(new Set(agents.map((a) => a.name)))
    for (const s of conf.servers) {
      expect(s.id).toMatch(/^12D3KooW/)
      expect(s.address.endsWith(`/p2p/${s.id}`)).toBe(true)
    }
    const leaderServer = conf.servers.find((s) => s.leader)!
    expect(leaderServer.node).toBe(leader.name)

    // peermesh leader: the leader's libp2p address; the API answers Consul's "ip:port" of it.
    const out = await runCli(['leader', '--http', follower.http])
    expect(out.code).toBe(0)
    expect(out.stdout.trim()).toBe(leaderServer.address)
    const ipPort = /^\/ip4\/([^/]+)\/tcp\/(\d+)/.exec(leaderServer.address)!
    expect(await follower.api<string>('/v1/status/leader')).toBe(`${ipPort[1]}:${ipPort[2]}`)
    const statusPeers = await follower.api<string[]>('/v1/status/peers')
    expect(statusPeers).toContain(`${ipPort[1]}:${ipPort[2]}`)
    expect(statusPeers).toHaveLength(conf.servers.filter((s) => s.voter).length)
    const table = await runCli(['raft', 'peers', '--http', leader.http])
    expect(table.stdout).toMatch(/NODE\s+ID\s+ADDRESS\s+STATE\s+VOTER/)

    // Bad input: 400 naming the field; the CLI: one line, exit 1.
    const bad = await fetch(`http://${follower.http}/v1/config`, {
      method: 'PUT',
      headers: { ...authHeaders(), 'content-type': 'application/json' },
      body: JSON.stringify({ kind: 'kv', name: 'x', value: 42 }),
    })
    expect(bad.status).toBe(400)
    expect(((await bad.json()) as { error: string }).error).toMatch(/^value:/)
    const noKind = await fetch(`http://${follower.http}/v1/config`, {
      method: 'PUT',
      headers: { ...authHeaders(), 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'x' }),
    })
    expect(noKind.status).toBe(400)
    expect(((await noKind.json()) as { error: string }).error).toMatch(/^kind:/)
    expect(
      (await fetch(`http://${follower.http}/v1/config/kv/missing`, { headers: authHeaders() })).status,
    ).toBe(404)
    // ACLs are on by default: the same write without a token is refused, naming the permission.
    const anonymous = await fetch(`http://${follower.http}/v1/config`, {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ kind: 'kv', name: 'x', value: 'v' }),
    })
    expect(anonymous.status).toBe(403)
    expect(((await anonymous.json()) as { error: string }).error).toMatch(/key:write/)
    // One entry over the per-entry cap (64 KiB): 413, refused before it took a log entry.
    const huge = await fetch(`http://${follower.http}/v1/config`, {
      method: 'PUT',
      headers: { ...authHeaders(), 'content-type': 'application/json' },
      body: JSON.stringify({ kind: 'kv', name: 'big', value: 'x'.repeat(65_536) }),
    })
    expect(huge.status).toBe(413)
    expect((await fetch(`http://${follower.http}/v1/config/kv/big`, { headers: authHeaders() })).status).toBe(
      404,
    )
    const badHttp = await runCli(['raft', 'peers', '--http', 'nonsense'])
    expect(badHttp.code).toBe(1)
    expect(badHttp.stderr.trim().split('\n')).toHaveLength(1)
  })
})
