import net, { type AddressInfo } from 'node:net'
import pino from 'pino'
import { HttpApi } from '../../../src/node/api/server.ts'
import { Registry } from 'prom-client'
import { describe, expect, it } from 'vitest'
import { Catalog } from '../../../src/node/catalog/catalog.ts'
import { LocalServiceRegistry } from '../../../src/node/catalog/local-services.ts'
import { parseServiceDefinition } from '../../../src/node/catalog/service-definition.ts'
import { SidecarChecks } from '../../../src/node/sidecars/sidecar-checks.ts'
import { type MeshSecurity, SidecarModule } from '../../../src/node/sidecars/sidecar-module.ts'
import { IntentionAuthorizer, StaticCertificateSource } from '../../../src/proxy/sources.ts'
import { leafFor, makeRoot, TD } from '../../proxy/helpers.ts'
import { VirtualClock } from '../../sim/virtual-clock.ts'
import { makeTempDir, removeTempDir } from '../../temp-dir.ts'

async function listenAnywhere(): Promise<net.Server> {
  const s = net.createServer()
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r))
  return s
}

describe('sidecar readiness', () => {
  it('reports a taken port, marks the instance critical without a stack trace, and recovers on re-registration', async () => {
    const root = await makeRoot()
    const cert = await leafFor(root, 'web')
    const dir = makeTempDir('sidecar-ready')
    const blocker = await listenAnywhere()
    const taken = (blocker.address() as AddressInfo).port
    const local = LocalServiceRegistry.open({ dataDir: dir })
    const security = {
      trustDomain: () => TD,
      ready: async () => true,
      certificates: () => new StaticCertificateSource(cert),
      authorizer: () => IntentionAuthorizer.from([]),
    } as unknown as MeshSecurity
    const lines: { level: number; msg: string; err?: unknown }[] = []
    const log = pino({ level: 'info' }, { write: (s: string) => lines.push(JSON.parse(s)) })
    const health = new SidecarChecks()
    const clock = new VirtualClock()
    const sidecars = new SidecarModule({
      catalog: { catalog: new Catalog(), local },
      security,
      health,
      clock,
    })
    // The readiness route (`peermesh register` waits on it) on a real HTTP API; ACLs off here.
    const http = new HttpApi(log)
    await sidecars.start({
      log,
      metrics: new Registry(),
      http,
      config: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    } as never)
    const { port: apiPort } = await http.listen('127.0.0.1', 0)
    const readiness = async (id: string) => {
      const res = await fetch(`http://127.0.0.1:${apiPort}/v1/agent/sidecar/${id}?timeout=5000`)
      return { status: res.status, body: (await res.json()) as unknown }
    }
    try {
      local.register(
        parseServiceDefinition(
          { name: 'web', port: 8000, connect: { sidecarService: { port: taken, upstreams: [] } } },
          't',
        ),
      )
      const failed = await sidecars.whenReady('web', { signal: AbortSignal.timeout(10_000) })
      expect(failed).toEqual({ ok: false, error: `port ${taken} (inbound) is in use` })
      expect(health.checksFor('web').map((c) => [c.status, c.name])).toEqual([
        ['critical', `Connect Sidecar Listening: port ${taken} (inbound) is in use`],
      ])
      expect(lines.some((l) => l.err !== undefined || l.level >= 50)).toBe(false)
      // Asked again: the known outcome, at once; and so answers the route, naming the port.
      expect(await sidecars.whenReady('web')).toEqual(failed)
      expect(await readiness('web')).toEqual({
        status: 200,
        body: { ServiceID: 'web', Ready: false, Error: `port ${taken} (inbound) is in use` },
      })
      expect((await readiness('nope')).status).toBe(404)

      // An upstream's local port taken is named too.
      const free = await listenAnywhere()
      const freePort = (free.address() as AddressInfo).port
      await new Promise<void>((r) => free.close(() => r()))
      local.register(
        parseServiceDefinition(
          {
            name: 'web',
            port: 8000,
            connect: {
              sidecarService: {
                port: freePort,
                upstreams: [{ destinationName: 'api', localBindPort: taken }],
              },
            },
          },
          't',
        ),
      )
      await expect
        .poll(() => sidecars.whenReady('web'))
        .toEqual({
          ok: false,
          error: `port ${taken} (upstream api) is in use`,
        })

      // Back to the first definition; the port freed: the next retry starts the sidecar and the check goes.
      local.register(
        parseServiceDefinition(
          { name: 'web', port: 8000, connect: { sidecarService: { port: taken, upstreams: [] } } },
          't',
        ),
      )
      await expect.poll(() => sidecars.whenReady('web')).toEqual(failed)
      await new Promise<void>((r) => blocker.close(() => r()))
      clock.advance(5_000)
      await expect.poll(() => sidecars.whenReady('web')).toEqual({ ok: true })
      expect(sidecars.sidecar('web')?.inbound.port).toBe(taken)
      expect(health.checksFor('web')).toEqual([])
      expect(await readiness('web')).toEqual({ status: 200, body: { ServiceID: 'web', Ready: true } })
    } finally {
      await http.close()
      await sidecars.stop()
      if (blocker.listening) blocker.close()
      removeTempDir(dir)
    }
  })

  it('whenReady gives up when its signal fires', async () => {
    const dir = makeTempDir('sidecar-ready')
    const local = LocalServiceRegistry.open({ dataDir: dir })
    const sidecars = new SidecarModule({
      catalog: { catalog: new Catalog(), local },
      security: { trustDomain: () => TD } as unknown as MeshSecurity,
    })
    try {
      expect(await sidecars.whenReady('nothing', { signal: AbortSignal.timeout(50) })).toEqual({
        ok: false,
        error: 'sidecar not started yet',
      })
    } finally {
      removeTempDir(dir)
    }
  })
})
