import pino from 'pino'
import { describe, expect, it } from 'vitest'
import { Catalog } from '../../../src/node/catalog/catalog.ts'
import { LocalServiceRegistry } from '../../../src/node/catalog/local-services.ts'
import { parseServiceDefinition } from '../../../src/node/catalog/service-definition.ts'
import { type MeshSecurity, SidecarModule } from '../../../src/node/sidecars/sidecar-module.ts'
import { VirtualClock } from '../../sim/virtual-clock.ts'
import { advance } from '../catalog/helpers.ts'
import { makeTempDir, removeTempDir } from '../../temp-dir.ts'

describe('sidecars of services this agent may not publish (issue #12)', () => {
  it('are not started and do not wait for a leaf the leader refuses; logged once; looked at again', async () => {
    const dir = makeTempDir('sidecar-si')
    const local = LocalServiceRegistry.open({ dataDir: dir })
    // `api` first: before, its minute-long wait for a leaf held `web`'s sidecar back.
    local.register(
      parseServiceDefinition({ name: 'api', port: 9000, connect: { sidecarService: { port: 21001 } } }, 't'),
    )
    local.register(
      parseServiceDefinition({ name: 'web', port: 8000, connect: { sidecarService: { port: 21000 } } }, 't'),
    )
    const waited: string[] = []
    let entitledApi = false
    const security = {
      trustDomain: () => 'test.peermesh',
      entitled: (service: string) => service === 'web' || entitledApi,
      ready: async (service: string) => {
        waited.push(service)
        return false
      },
    } as unknown as MeshSecurity
    const lines: { msg: string; service?: string }[] = []
    const log = pino({ level: 'info' }, { write: (s: string) => lines.push(JSON.parse(s)) })
    const clock = new VirtualClock()
    const sidecars = new SidecarModule({ catalog: { catalog: new Catalog(), local }, security, clock })
    try {
      await sidecars.start({
        log,
        http: { route: () => {} },
        config: { listen: ['/ip4/127.0.0.1/tcp/0'] },
      } as never)
      await advance(clock, 0)
      expect(waited).toEqual(['web'])
      await advance(clock, 5_000)
      expect(waited.filter((s) => s === 'api')).toEqual([])
      const notEntitled = lines.filter((l) => l.msg.startsWith('sidecar not started'))
      expect(notEntitled.map((l) => l.service)).toEqual(['api'])
      // A grant later: its sidecar now waits for the leaf like any other.
      entitledApi = true
      await advance(clock, 5_000)
      expect(waited).toContain('api')
    } finally {
      await sidecars.stop()
      removeTempDir(dir)
    }
  })
})
