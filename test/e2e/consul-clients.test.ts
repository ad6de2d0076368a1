import { spawn, spawnSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import type { Server } from 'node:http'
import { join } from 'node:path'
import Consul from 'consul'
import { afterAll, describe, expect, it } from 'vitest'
import { type AgentProcess, freePort, TestCluster, waitFor } from './harness.ts'
import { startApp, stopApp } from './mesh-helpers.ts'

/** Debian's python3-consul (installed by .ci/run); the Python test is skipped without it. */
const hasPythonConsul =
  spawnSync('/usr/bin/python3', ['-c', 'import consul'], { stdio: 'ignore' }).status === 0

/**
 * Real Consul clients, unchanged, against a real agent (issue #15): the npm `consul` package
 * (node-consul) and Debian's python3-consul, pointed at the agent's HTTP API as at Consul's.
 */
describe('Consul clients against an agent (end to end)', () => {
  const cluster = new TestCluster()
  const apps: Server[] = []
  let agent: AgentProcess
  afterAll(async () => {
    for (const app of apps) if (app.listening) await stopApp(app)
    await cluster.close()
  })

  const client = () => {
    const [host, port] = agent.http.split(':')
    return new Consul({ host: host!, port: Number(port), defaults: { token: cluster.managementToken } })
  }

  it('node-consul: agent register (PascalCase body, HTTP check), catalog, health, status, watch', async () => {
    const key = await cluster.writeClusterKey()
    // The local gossip profile (Serf's -profile local) with the config file's probe timeout over it
    // (Consul's gossip_lan), and Consul's performance.raft_multiplier: shown in DebugConfig, and
    // the gossip module runs them.
    const configFile = join(cluster.dir, 'cc1.json')
    writeFileSync(
      configFile,
      JSON.stringify({ gossipLan: { probeTimeout: '180ms' }, performance: { raftMultiplier: 2 } }),
      { mode: 0o600 },
    )
    agent = cluster.agent({
      name: 'cc1',
      clusterKeyFile: key,
      extraArgs: ['--bootstrap', '--gossip-profile', 'local', '--config', configFile],
    })
    await agent.start()
    await cluster.waitForManagementToken()
    const consul = client()
    const appPort = await freePort()
    apps.push(await startApp(appPort))

    // node-consul sends {"Name","ID","Port","Tags","Check":{"HTTP","Interval"}}.
    await consul.agent.service.register({
      name: 'web',
      id: 'web-1',
      address: '127.0.0.1',
      port: appPort,
      tags: ['v1', 'primary'],
      check: {
        name: 'web health',
        http: `http://127.0.0.1:${appPort}/health`,
        interval: '200ms',
        timeout: '150ms',
      },
    })
    const services = await consul.agent.service.list()
    expect(services['web-1']).toMatchObject({
      ID: 'web-1',
      Service: 'web',
      Port: appPort,
      Tags: ['v1', 'primary'],
    })

    const passing = await waitFor('web passing in health/service', async () => {
      const list = await consul.health.service({ service: 'web', passing: true })
      return list.length === 1 ? list : undefined
    })
    expect(passing[0]).toMatchObject({
      Node: { Node: 'cc1', Datacenter: 'dc1' },
      Service: { ID: 'web-1', Service: 'web', Port: appPort, Address: '127.0.0.1' },
    })
    expect(passing[0]!.Checks.map((c: { CheckID: string; Status: string }) => [c.CheckID, c.Status])).toEqual(
      [
        ['serfHealth', 'passing'],
        ['service:web-1', 'passing'],
      ],
    )

    const nodes = await consul.catalog.service.nodes('web')
    expect(nodes.map((n) => `${n.ServiceAddress}:${n.ServicePort}`)).toEqual([`127.0.0.1:${appPort}`])
    expect(await consul.catalog.service.list()).toEqual({ web: ['primary', 'v1'] })
    expect(await consul.catalog.datacenters()).toEqual(['dc1'])

    // Consul's query parameters and headers, on the real agent.
    const get = (path: string) =>
      fetch(`http://${agent.http}${path}`, { headers: { 'x-consul-token': cluster.managementToken } })
    const stale = await get('/v1/health/service/web?stale&tag=v1&tag=primary&dc=dc1&near=_agent&bogus=1')
    expect(stale.status).toBe(200)
    expect(((await stale.json()) as unknown[]).length).toBe(1)
    expect(stale.headers.get('x-consul-knownleader')).toBe('true')
    expect(stale.headers.get('x-consul-lastcontact')).toBe('0')
    expect(Number(stale.headers.get('x-consul-index'))).toBeGreaterThan(0)
    expect(stale.headers.get('x-consul-effective-consistency')).toBe('stale')
    expect(((await (await get('/v1/health/service/web?tag=v1&tag=v2')).json()) as unknown[]).length).toBe(0)
    const other = await get('/v1/catalog/services?dc=other')
    expect([other.status, await other.text()]).toEqual([500, 'No path to datacenter'])
    expect(await (await get('/v1/agent/self?pretty')).text()).toMatch(/^\{\n {4}"Config": \{\n {8}"/)

    const self = await consul.agent.self()
    expect(self.Config).toMatchObject({ Datacenter: 'dc1', NodeName: 'cc1' })
    expect(self.DebugConfig).toMatchObject({
      GossipProfile: 'local',
      GossipLANProbeInterval: '500ms',
      GossipLANProbeTimeout: '180ms',
      GossipLANSuspicionMult: 3,
      RaftMultiplier: 2,
      ConsulRaftElectionTimeout: '300ms',
    })
    // The SWIM core's probe timeout is the file's 180 ms (local: 200, lan: 75), times the local
    // health multiplier (1 + score) that a busy start may have raised.
    const probeTimeout = /^peermesh_gossip_probe_timeout_ms (\d+)$/m.exec(
      await (await get('/metrics')).text(),
    )
    expect(Number(probeTimeout?.[1]) % 180).toBe(0)
    const members = await consul.agent.members()
    expect(members).toEqual([expect.objectContaining({ Name: 'cc1', Addr: '127.0.0.1', Status: 1 })])
    const leader = await consul.status.leader()
    expect(leader).toMatch(/^127\.0\.0\.1:\d+$/)
    expect(await consul.status.peers()).toEqual([leader])

    // watch: a blocking query loop on health/service/web fires on a change to web.
    const watch = consul.watch({ method: consul.health.service, options: { service: 'web' } })
    try {
      const changes: { Checks: { CheckID: string; Status: string }[] }[][] = []
      const errors: unknown[] = []
      watch.on('change', (data) => changes.push(data))
      watch.on('error', (err) => errors.push(err))
      await waitFor('the first watch answer', async () => (changes.length > 0 ? true : undefined))
      await stopApp(apps[0]!)
      const critical = await waitFor('the watch to see web critical', async () =>
        changes.at(-1)?.[0]?.Checks.find((c) => c.CheckID === 'service:web-1')?.Status === 'critical'
          ? true
          : undefined,
      )
      expect(critical).toBe(true)
      expect(errors).toEqual([])
    } finally {
      watch.end()
    }
    await consul.agent.service.deregister('web-1')
    expect(await consul.catalog.service.nodes('web')).toEqual([])
  })

  it.skipIf(!hasPythonConsul)(
    "python3-consul: registers a service with an HTTP check (lowercase singular 'check', no Content-Type) and reads it back healthy",
    async () => {
      const appPort = await freePort()
      apps.push(await startApp(appPort))
      const [host, port] = agent.http.split(':')
      const script = `
import json, sys, time, consul
c = consul.Consul(host=sys.argv[1], port=int(sys.argv[2]), token=sys.argv[3])
c.agent.service.register('pyweb', service_id='pyweb-1', address='127.0.0.1', port=int(sys.argv[4]),
                         tags=['py'], check=consul.Check.http('http://127.0.0.1:%s/health' % sys.argv[4], '200ms'))
deadline = time.time() + 30
while True:
    index, nodes = c.health.service('pyweb', passing=True)
    if nodes or time.time() > deadline:
        break
    index, nodes = c.health.service('pyweb', passing=True, index=index, wait='5s')
    if nodes:
        break
print(json.dumps({'nodes': nodes, 'catalog': c.catalog.service('pyweb')[1], 'leader': c.status.leader()}))
`
      const out = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
        const child = spawn(
          '/usr/bin/python3',
          ['-c', script, host!, port!, cluster.managementToken, String(appPort)],
          { stdio: ['ignore', 'pipe', 'pipe'] },
        )
        let stdout = ''
        let stderr = ''
        child.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
        child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
        child.on('close', (code) => resolve({ code, stdout, stderr }))
      })
      expect(out.code, out.stderr).toBe(0)
      const r = JSON.parse(out.stdout) as {
        nodes: { Service: { ID: string; Port: number }; Checks: { CheckID: string; Status: string }[] }[]
        catalog: { ServiceID: string; ServiceTags: string[] }[]
        leader: string
      }
      expect(r.nodes).toHaveLength(1)
      expect(r.nodes[0]!.Service).toMatchObject({ ID: 'pyweb-1', Port: appPort })
      expect(r.nodes[0]!.Checks.every((c) => c.Status === 'passing')).toBe(true)
      expect(r.catalog).toEqual([expect.objectContaining({ ServiceID: 'pyweb-1', ServiceTags: ['py'] })])
      expect(r.leader).toMatch(/^127\.0\.0\.1:\d+$/)
    },
  )
})
