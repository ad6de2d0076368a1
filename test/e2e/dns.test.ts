import { execFileSync, spawnSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { freePort, runCli, TestCluster, waitFor } from './harness.ts'

const hasDig = spawnSync('dig', ['-v'], { stdio: 'ignore' }).status === 0

/** `dig` against an agent's DNS port: the status and the answer section's records. */
function dig(port: number, ...args: string[]): { status: string; answers: string[][] } {
  const out = execFileSync(
    'dig',
    ['@127.0.0.1', '-p', String(port), '+tries=1', '+time=5', '+noall', '+comments', '+answer', ...args],
    { encoding: 'utf8' },
  )
  const status = /status: ([A-Z]+)/.exec(out)?.[1] ?? 'none'
  const answers = out
    .split('\n')
    .filter((l) => l.trim() !== '' && !l.startsWith(';'))
    .map((l) => l.trim().split(/\s+/))
  return { status, answers }
}

describe.skipIf(!hasDig)('DNS interface (end to end, real agents, real dig)', () => {
  const cluster = new TestCluster()
  afterAll(() => cluster.close())

  it('answers api.service.consul, NODE.node.consul, SRV, PTR and all-critical services as Consul does', async () => {
    const key = await cluster.writeClusterKey()
    const dnsPort = await freePort()
    const a = cluster.agent({ name: 'da', clusterKeyFile: key, extraArgs: ['--bootstrap'] })
    await a.start()
    const seed = (await a.self())!.addresses[0]!
    const b = cluster.agent({ name: 'db', clusterKeyFile: key, seeds: [seed], dns: `127.0.0.1:${dnsPort}` })
    await b.start()
    await cluster.waitForManagementToken()

    // `api` on both agents (one host: both at 127.0.0.1), twice on A; `down` with a TTL check
    // that never passed (critical).
    const register = async (agent: typeof a, json: object) => {
      const file = join(cluster.dir, `${(json as { id: string }).id}.json`)
      writeFileSync(file, JSON.stringify(json))
      const r = await runCli(['register', file, '--http', agent.http])
      expect(r.code, r.stderr).toBe(0)
    }
    await register(a, { name: 'api', id: 'api-1', port: 9001, tags: ['v1'] })
    await register(a, { name: 'api', id: 'api-2', port: 9002 })
    await register(b, { name: 'api', id: 'api-3', port: 9003 })
    await register(a, { name: 'down', id: 'down-1', port: 9004, checks: [{ ttl: '30s' }] })

    await waitFor(
      'three api instances in DNS on B',
      async () => (dig(dnsPort, '_api._tcp.service.consul', 'SRV').answers.length === 3 ? true : undefined),
      30_000,
      200,
    )

    const aRecords = dig(dnsPort, 'api.service.consul', 'A')
    expect(aRecords.status).toBe('NOERROR')
    // Three instances on one address: one A record, not three.
    expect(aRecords.answers.map((r) => [r[0], r[3], r[4]])).toEqual([
      ['api.service.consul.', 'A', '127.0.0.1'],
    ])
    expect(dig(dnsPort, 'api.service.peermesh', 'A').answers.map((r) => r[4])).toEqual(['127.0.0.1'])
    expect(dig(dnsPort, 'api.service.dc1.consul', 'A').answers.map((r) => r[4])).toEqual(['127.0.0.1'])
    expect(dig(dnsPort, 'api.service.dc2.consul', 'A').status).toBe('NXDOMAIN')

    const srv = dig(dnsPort, '_api._tcp.service.consul', 'SRV')
    expect(srv.answers.map((r) => Number(r[6])).sort()).toEqual([9001, 9002, 9003])
    expect(new Set(srv.answers.map((r) => `${r[3]} ${r[7]}`))).toEqual(new Set(['SRV 7f000001.addr.consul.']))
    expect(dig(dnsPort, '_api._v1.service.consul', 'SRV').answers.map((r) => r[6])).toEqual(['9001'])

    const node = dig(dnsPort, 'da.node.consul', 'A')
    expect(node.status).toBe('NOERROR')
    expect(node.answers.map((r) => [r[0], r[3], r[4]])).toEqual([['da.node.consul.', 'A', '127.0.0.1']])
    expect(dig(dnsPort, 'nosuchnode.node.consul', 'A').status).toBe('NXDOMAIN')

    const ptr = dig(dnsPort, '-x', '127.0.0.1')
    expect(ptr.status).toBe('NOERROR')
    expect(ptr.answers).toHaveLength(1)
    expect(ptr.answers[0]![3]).toBe('PTR')
    expect(['da.node.dc1.peermesh.', 'db.node.dc1.peermesh.']).toContain(ptr.answers[0]![4])
    expect(dig(dnsPort, '-x', '192.0.2.1').status).toBe('NXDOMAIN')

    const down = dig(dnsPort, 'down.service.consul', 'A')
    expect(down.status).toBe('NXDOMAIN')
    expect(down.answers).toEqual([])
    expect(dig(dnsPort, 'example.com', 'A').status).toBe('REFUSED')
  })
})
