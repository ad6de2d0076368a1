import { execFile, spawnSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import type { Server } from 'node:http'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, describe, expect, it } from 'vitest'
import { createRootCa } from '../../src/identity/ca/ca.ts'
import { freePort, runCli, TestCluster, waitFor } from './harness.ts'
import { registerService, startApp } from './mesh-helpers.ts'

const exec = promisify(execFile)
const hasOpenssl = spawnSync('openssl', ['version'], { stdio: 'ignore' }).status === 0

async function get(port: number): Promise<{ status: number; body: string } | { error: string }> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(5_000) })
    return { status: res.status, body: await res.text() }
  } catch (err) {
    return { error: String((err as Error).cause ?? err) }
  }
}

/** `openssl s_client` to a TLS port, sending one request; true when the server answered it. */
async function sClient(port: number, args: string[]): Promise<boolean> {
  const res = await exec('bash', [
    '-c',
    `printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 10 openssl s_client -connect 127.0.0.1:${port} -tls1_3 -quiet ${args.join(' ')} 2>&1; true`,
  ])
  return res.stdout.includes('api-ok')
}

describe('sidecar proxies (end to end, 3 agent processes)', () => {
  const cluster = new TestCluster()
  const apps: Server[] = []
  afterAll(async () => {
    for (const a of apps) a.close()
    await cluster.close()
  })

  it('web reaches api through mTLS sidecars while allowed; deny and foreign or missing certificates are refused', async () => {
    const key = await cluster.writeClusterKey()
    const extra = ['--bootstrap-expect', '3']
    const a = cluster.agent({ name: 'pa', clusterKeyFile: key, extraArgs: extra })
    await a.start()
    const seed = (await a.self())!.addresses[0]!
    const b = cluster.agent({ name: 'pb', clusterKeyFile: key, seeds: [seed], extraArgs: extra })
    const c = cluster.agent({ name: 'pc', clusterKeyFile: key, seeds: [seed], extraArgs: extra })
    await Promise.all([b.start(), c.start()])
    // The first leader creates the management token the registrations below carry.
    await cluster.waitForManagementToken()

    const [apiPort, apiInbound, webPort, webInbound, upstreamPort] = await Promise.all([
      freePort(),
      freePort(),
      freePort(),
      freePort(),
      freePort(),
    ])
    apps.push(await startApp(apiPort, 'api-ok'), await startApp(webPort, 'web-ok'))
    await registerService(b, {
      name: 'api',
      port: apiPort,
      address: '127.0.0.1',
      connect: { sidecarService: { port: apiInbound, protocol: 'http' } },
    })
    await registerService(a, {
      name: 'web',
      port: webPort,
      address: '127.0.0.1',
      connect: {
        sidecarService: {
          port: webInbound,
          upstreams: [{ destinationName: 'api', localBindPort: upstreamPort }],
        },
      },
    })

    const allow = await runCli(['intention', 'create', 'web', 'api', 'allow', '--http', c.http])
    expect(allow.code, allow.stderr).toBe(0)
    const ok = await waitFor(
      'web -> api through the sidecars',
      async () => {
        const r = await get(upstreamPort)
        return 'status' in r && r.status === 200 ? r : undefined
      },
      60_000,
      250,
    )
    expect(ok.body).toBe('api-ok')

    // Switch the intention to deny: the next request fails and api's inbound logs the denial.
    const del = await runCli(['intention', 'delete', 'web', 'api', '--http', c.http])
    expect(del.code, del.stderr).toBe(0)
    const deny = await runCli(['intention', 'create', 'web', 'api', 'deny', '--http', c.http])
    expect(deny.code, deny.stderr).toBe(0)
    await waitFor(
      'requests to be refused after deny',
      async () => {
        const r = await get(upstreamPort)
        return 'status' in r && r.status === 200 ? undefined : true
      },
      20_000,
      100,
    )
    await waitFor('the denial in api inbound log', async () =>
      /inbound denied/.test(b.log) ? true : undefined,
    )

    // The data plane shows on /metrics: web's upstream requests, api's inbound denials.
    const metricsA = await (await fetch(`http://${a.http}/metrics`)).text()
    expect(metricsA).toMatch(/peermesh_proxy_requests_total\{[^}]*\} [1-9]/)
    expect(metricsA).toMatch(/peermesh_proxy_latency_seconds_bucket\{/)
    const metricsB = await (await fetch(`http://${b.http}/metrics`)).text()
    expect(metricsB).toMatch(/peermesh_proxy_inbound_denied_total\{[^}]*\} [1-9]/)

    if (hasOpenssl) {
      const dir = join(cluster.dir, 'certs')
      const exp = await runCli(['cert', 'export', 'web', '--out', dir, '--http', a.http])
      expect(exp.code, exp.stderr).toBe(0)
      // No client certificate.
      expect(await sClient(apiInbound, [`-CAfile ${join(dir, 'root.pem')}`])).toBe(false)
      // A certificate from another CA.
      const foreign = await createRootCa({ trustDomain: 'evil.peermesh', nowMs: Date.now() })
      writeFileSync(join(dir, 'foreign.pem'), foreign.certPem)
      writeFileSync(join(dir, 'foreign-key.pem'), foreign.keyPem)
      expect(
        await sClient(apiInbound, [
          `-cert ${join(dir, 'foreign.pem')}`,
          `-key ${join(dir, 'foreign-key.pem')}`,
        ]),
      ).toBe(false)
      // A valid certificate of a service that intentions deny (web, now denied).
      expect(
        await sClient(apiInbound, [`-cert ${join(dir, 'leaf.pem')}`, `-key ${join(dir, 'key.pem')}`]),
      ).toBe(false)
      // And the same certificate is accepted once allowed again: the refusals above were real.
      await runCli(['intention', 'delete', 'web', 'api', '--http', c.http])
      await runCli(['intention', 'create', 'web', 'api', 'allow', '--http', c.http])
      await waitFor(
        'web allowed again',
        async () =>
          (await sClient(apiInbound, [`-cert ${join(dir, 'leaf.pem')}`, `-key ${join(dir, 'key.pem')}`]))
            ? true
            : undefined,
        20_000,
        250,
      )
    }
  })
})
