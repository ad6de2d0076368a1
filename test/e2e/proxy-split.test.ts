import type { Server } from 'node:http'
import { afterAll, describe, expect, it } from 'vitest'
import { authHeaders, freePort, TestCluster, waitFor } from './harness.ts'
import { startApp } from './mesh-helpers.ts'

describe('traffic split through the sidecars (end to end, 3 agent processes)', () => {
  const cluster = new TestCluster()
  const apps: Server[] = []
  afterAll(async () => {
    for (const a of apps) a.close()
    await cluster.close()
  })

  it('a service-splitter of 90/10 by tag is observed within ±3 points over 10,000 requests', async () => {
    const key = await cluster.writeClusterKey()
    const extra = ['--bootstrap-expect', '3']
    const a = cluster.agent({ name: 'sa', clusterKeyFile: key, extraArgs: extra })
    await a.start()
    const seed = (await a.self())!.addresses[0]!
    const b = cluster.agent({ name: 'sb', clusterKeyFile: key, seeds: [seed], extraArgs: extra })
    const c = cluster.agent({ name: 'sc', clusterKeyFile: key, seeds: [seed], extraArgs: extra })
    await Promise.all([b.start(), c.start()])
    await waitFor(
      'a Raft leader',
      async () => ((await a.api<string>('/v1/status/leader')) ? true : undefined),
      30_000,
    )
    // The leader created the management token; the writes below carry it, through any agent.
    await cluster.waitForManagementToken()

    const [v1App, v2App, v1In, v2In, webIn, upstream] = await Promise.all(
      Array.from({ length: 6 }, () => freePort()),
    )
    apps.push(await startApp(v1App!, 'v1'), await startApp(v2App!, 'v2'))
    const put = async (agentApi: typeof a, path: string, body: object, method = 'PUT') => {
      const res = await fetch(`http://${agentApi.http}${path}`, {
        method,
        headers: { ...authHeaders(), 'content-type': 'application/json' },
        body: JSON.stringify(body),
      })
      expect(res.status, await res.text()).toBe(200)
    }
    const api = (id: string, port: number, inbound: number, tag: string) => ({
      name: 'api',
      id,
      port,
      address: '127.0.0.1',
      tags: [tag],
      connect: { sidecarService: { port: inbound, protocol: 'http' } },
    })
    await put(b, '/v1/agent/service/register', api('api-v1', v1App!, v1In!, 'v1'))
    await put(c, '/v1/agent/service/register', api('api-v2', v2App!, v2In!, 'v2'))
    await put(a, '/v1/agent/service/register', {
      name: 'web',
      port: webIn,
      connect: {
        sidecarService: { port: webIn, upstreams: [{ destinationName: 'api', localBindPort: upstream }] },
      },
    })
    await put(c, '/v1/connect/intentions', { source: 'web', destination: 'api', action: 'allow' }, 'POST')
    await put(b, '/v1/config', {
      kind: 'service-splitter',
      name: 'api',
      splits: [
        { weight: 90, serviceSubset: 'v1' },
        { weight: 10, serviceSubset: 'v2' },
      ],
    })

    // Wait until both subsets answer through web's sidecar (the split is in force once v2 shows up
    // at about a tenth of the traffic).
    await waitFor(
      'both versions reachable through the split',
      async () => {
        const seen = new Set<string>()
        for (let i = 0; i < 60; i++) {
          const r = await fetch(`http://127.0.0.1:${upstream}/`).catch(() => undefined)
          if (r?.ok) seen.add(await r.text())
        }
        return seen.has('v1') && seen.has('v2') ? true : undefined
      },
      60_000,
      200,
    )

    const counts = { v1: 0, v2: 0, failed: 0 }
    const total = 10_000
    let next = 0
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (next < total) {
          next++
          const r = await fetch(`http://127.0.0.1:${upstream}/`).catch(() => undefined)
          const body = r?.ok ? await r.text() : undefined
          if (body === 'v1') counts.v1++
          else if (body === 'v2') counts.v2++
          else counts.failed++
        }
      }),
    )
    expect(counts.failed).toBe(0)
    const share = (counts.v1 / (counts.v1 + counts.v2)) * 100
    expect(share).toBeGreaterThanOrEqual(87)
    expect(share).toBeLessThanOrEqual(93)
  }, 180_000)
})
