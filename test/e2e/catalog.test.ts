import { execFile, spawnSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import type { Server } from 'node:http'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { freePort, runCli, TestCluster, waitFor } from './harness.ts'
import { startApp, stopApp } from './mesh-helpers.ts'

interface HealthEntry {
  node: { name: string }
  service: { id: string; name: string; address: string; port: number }
  status: 'passing' | 'warning' | 'critical'
}

async function health(http: string, name: string): Promise<HealthEntry[]> {
  const res = await runCli(['health', name, '--http', http, '--json'])
  if (res.code !== 0) throw new Error(res.stderr)
  return JSON.parse(res.stdout) as HealthEntry[]
}

const hasDig = spawnSync('dig', ['-v'], { stdio: 'ignore' }).status === 0

describe('service catalog and health (end to end, 3 agent processes)', () => {
  const cluster = new TestCluster()
  let app: Server | undefined
  afterAll(async () => {
    if (app?.listening) await stopApp(app)
    await cluster.close()
  })

  it('an HTTP check on agent A is seen passing/critical/passing on agent C, by CLI, blocking query and DNS', async () => {
    const key = await cluster.writeClusterKey()
    const dnsPort = await freePort()
    /** `dig +short` of C's DNS interface; run without blocking this process, which serves the app. */
    const dig = (name: string, type: string) =>
      new Promise<string>((resolve, reject) =>
        execFile('dig', ['@127.0.0.1', '-p', String(dnsPort), '+short', name, type], (err, out) =>
          err ? reject(err) : resolve(out),
        ),
      )
    // `ca` bootstraps a one-voter Raft group: its first term creates the management token the
    // writes below need (ACLs are on by default); cb and cc follow as learners.
    const a = cluster.agent({ name: 'ca', clusterKeyFile: key, extraArgs: ['--bootstrap'] })
    await a.start()
    const seed = (await a.self())!.addresses[0]!
    const b = cluster.agent({ name: 'cb', clusterKeyFile: key, seeds: [seed] })
    const c = cluster.agent({ name: 'cc', clusterKeyFile: key, seeds: [seed], dns: `127.0.0.1:${dnsPort}` })
    await Promise.all([b.start(), c.start()])
    await cluster.waitForManagementToken()

    const appPort = await freePort()
    app = await startApp(appPort)
    const def = join(cluster.dir, 'web.json')
    writeFileSync(
      def,
      JSON.stringify({
        name: 'web',
        id: 'web-1',
        address: '127.0.0.1',
        port: appPort,
        tags: ['v1'],
        // The app answers from this test's own process, which a loaded machine can hold up for
        // longer than a short timeout: the check then flaps critical and back ("timed out after
        // 200 ms" at load 8), and a blocking query or a DNS answer read during the flap sees the
        // wrong state. The agent caps a probe's timeout at the interval (as Consul does), so both
        // are 1 s. A stopped app is refused at once: the critical turn comes within an interval.
        checks: [{ http: `http://127.0.0.1:${appPort}/health`, interval: '1s', timeout: '1s' }],
      }),
    )
    const reg = await runCli(['register', def, '--http', a.http])
    expect(reg.code, reg.stderr).toBe(0)

    const statusOnC = async (want: string) =>
      (await health(c.http, 'web')).find((e) => e.service.id === 'web-1')?.status === want ? true : undefined
    await waitFor('web-1 passing on C', () => statusOnC('passing'), 20_000, 100)
    const entries = await health(c.http, 'web')
    expect(entries).toHaveLength(1)
    expect(entries[0]!.node.name).toBe('ca')
    expect(entries[0]!.service.port).toBe(appPort)

    if (hasDig) {
      // Read until the answer comes: on a loaded machine a member can be suspected for a moment
      // (its node check turns critical, and DNS answers only passing or warning instances).
      await waitFor(
        'web SRV and v1.web A answered by C',
        async () => {
          const srv = await dig('web.service.peermesh', 'SRV')
          const tagged = await dig('v1.web.service.peermesh', 'A')
          return srv.includes(String(appPort)) && tagged.trim() === '127.0.0.1' ? true : undefined
        },
        20_000,
        100,
      )
    }

    // A blocking query on C, parked at the current index, returns once something changes; the one
    // that says critical comes within 10 s of A's check failing (a member suspected for a moment
    // on a loaded machine is a change too: the query is parked again at the new index).
    const first = await fetch(`http://${c.http}/v1/health/service/web`)
    let index = Number(first.headers.get('x-peermesh-index'))
    expect(index).toBeGreaterThan(0)
    let blocked = fetch(`http://${c.http}/v1/health/service/web?index=${index}&wait=30s`)
    await stopApp(app)
    const t0 = Date.now()
    for (;;) {
      const res = await blocked
      const next = Number(res.headers.get('x-peermesh-index'))
      expect(next).toBeGreaterThan(index)
      if (((await res.json()) as { Status: string }[])[0]!.Status === 'critical') break
      index = next
      blocked = fetch(`http://${c.http}/v1/health/service/web?index=${index}&wait=30s`)
    }
    expect(Date.now() - t0).toBeLessThan(10_000)
    await waitFor('web-1 critical on C (CLI)', () => statusOnC('critical'), 20_000, 100)

    if (hasDig) {
      const none = await dig('web.service.peermesh', 'SRV')
      expect(none.trim()).toBe('')
    }

    app = await startApp(appPort)
    await waitFor('web-1 passing again on C', () => statusOnC('passing'), 20_000, 100)

    // Deregistration removes it everywhere.
    const dereg = await runCli(['deregister', 'web-1', '--http', a.http])
    expect(dereg.code, dereg.stderr).toBe(0)
    await waitFor(
      'web gone on C',
      async () => ((await health(c.http, 'web')).length === 0 ? true : undefined),
      20_000,
      100,
    )
  })
})
