import Consul from 'consul'
import { afterAll, describe, expect, it } from 'vitest'
import { apiCall, TestCluster, waitFor } from './harness.ts'

interface EventJson {
  ID: string
  Name: string
  Payload: string | null
  NodeFilter: string
  ServiceFilter: string
  TagFilter: string
  Version: number
  LTime: number
}

describe('user events (end to end, 3 agent processes, gossip)', () => {
  const cluster = new TestCluster()
  afterAll(() => cluster.close())

  it('an event fired on A is listed on B and C; a filtered one only where it applies; no token fires nothing', async () => {
    const key = await cluster.writeClusterKey()
    const a = cluster.agent({ name: 'ea', clusterKeyFile: key, extraArgs: ['--bootstrap'] })
    await a.start()
    const seed = (await a.self())!.addresses[0]!
    const b = cluster.agent({ name: 'eb', clusterKeyFile: key, seeds: [seed] })
    const c = cluster.agent({ name: 'ec', clusterKeyFile: key, seeds: [seed] })
    await Promise.all([b.start(), c.start()])
    await cluster.waitForManagementToken()
    const token = cluster.managementToken
    const list = async (agent: typeof a, query = '') =>
      (await apiCall(agent, 'GET', `/v1/event/list${query}`, { token })).json as EventJson[]
    // Every agent sees the two others alive before the event is fired (gossip reaches members).
    await waitFor(
      'all three members alive everywhere',
      async () => {
        for (const agent of [a, b, c]) {
          // Consul's member shape: Status 1 is alive.
          const m = (await agent.api<{ Status: number }[]>('/v1/agent/members')) ?? []
          if (m.filter((x) => x.Status === 1).length !== 3) return undefined
        }
        return true
      },
      30_000,
    )

    // Attacker side: no token, nothing fired anywhere.
    const anon = await apiCall(a, 'PUT', '/v1/event/fire/deploy', { body: { v: 1 } })
    expect(anon.status).toBe(403)

    const fired = await apiCall(a, 'PUT', '/v1/event/fire/deploy', { token, body: { version: '2' } })
    expect(fired.status).toBe(200)
    const ev = fired.json as EventJson
    expect(ev.Name).toBe('deploy')
    expect(Buffer.from(ev.Payload!, 'base64').toString()).toBe('{"version":"2"}')
    for (const agent of [a, b, c]) {
      const got = await waitFor(
        `the event on ${agent.name}`,
        async () => (await list(agent, '?name=deploy')).find((e) => e.ID === ev.ID),
        20_000,
      )
      expect(got).toEqual(ev)
    }
    // The anonymous request fired nothing: one deploy event everywhere.
    for (const agent of [a, b, c]) expect((await list(agent, '?name=deploy')).length).toBe(1)

    // Only for node ec: listed there, not on ea or eb (they received it and dropped it).
    const only = (await apiCall(a, 'PUT', '/v1/event/fire/restart?node=^ec$', { token })).json as EventJson
    await waitFor(
      'the filtered event on ec',
      async () => (await list(c)).find((e) => e.ID === only.ID),
      20_000,
    )
    // A later unfiltered event reaching ea and eb shows the filtered one had its chance there too.
    const after = (await apiCall(a, 'PUT', '/v1/event/fire/later', { token })).json as EventJson
    for (const agent of [a, b]) {
      await waitFor(
        `the later event on ${agent.name}`,
        async () => (await list(agent)).find((e) => e.ID === after.ID),
        20_000,
      )
      expect((await list(agent)).some((e) => e.ID === only.ID)).toBe(false)
    }
    // Lamport times: later events are ordered after earlier ones on every agent. C lists the
    // later event once gossip has brought it there (the wait above covered only A and B).
    const onC = await waitFor(
      'the later event on ec',
      async () => {
        const got = await list(c)
        return got.some((e) => e.ID === after.ID) ? got : undefined
      },
      20_000,
    )
    expect(onC.map((e) => e.Name)).toEqual(['deploy', 'restart', 'later'])
    expect(onC[2]!.LTime).toBeGreaterThan(onC[0]!.LTime)

    // A real Consul client: node-consul (the npm `consul` package) fires on B, with an opaque
    // payload that is not JSON, and lists on C.
    const client = (agent: typeof a) => {
      const [host, port] = agent.http.split(':')
      return new Consul({ host: host!, port: Number(port), defaults: { token } })
    }
    const sent = await client(b).event.fire({ name: 'node-consul', payload: 'v3 ready' })
    expect(sent.Name).toBe('node-consul')
    const seen = await waitFor(
      'the node-consul event on ec',
      async () => (await client(c).event.list({ name: 'node-consul' })).find((e) => e.ID === sent.ID),
      20_000,
    )
    expect(seen.Payload).toBe('v3 ready')
  })
})
