import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import {
  LocalServiceRegistry,
  SERVICES_FILE,
  type ServiceChange,
} from '../../../src/node/catalog/local-services.ts'
import { parseServiceDefinition } from '../../../src/node/catalog/service-definition.ts'
import { TempDirs } from '../../temp-dir.ts'

const tmp = new TempDirs()
const dataDir = (): string => tmp.make('catalog')
afterEach(() => tmp.removeAll())

const def = (json: object) => parseServiceDefinition(json, 'test')
const web = def({
  name: 'web',
  port: 8080,
  checks: [{ ttl: '30s' }],
  connect: { sidecarService: { port: 21000 } },
})
const db = def({ name: 'db', port: 5432, tags: ['primary'] })

describe('LocalServiceRegistry', () => {
  it('persists registrations across a reopen', () => {
    const dir = dataDir()
    const reg = LocalServiceRegistry.open({ dataDir: dir })
    reg.register(web)
    reg.register(db)
    reg.deregister('db')
    reg.register(def({ name: 'db', id: 'db-2', port: 5433 }))
    const again = LocalServiceRegistry.open({ dataDir: dir })
    expect(again.list()).toEqual([reg.get('db-2'), web])
    expect(again.get('web')).toEqual(web)
  })

  it('emits service:change and bumps its index only on real changes', () => {
    const reg = LocalServiceRegistry.open({ dataDir: dataDir() })
    const events: ServiceChange[] = []
    reg.on('service:change', (e) => events.push(e))
    const i0 = reg.index.current
    reg.register(web)
    reg.register(structuredClone(web)) // identical: no change
    reg.deregister('web')
    expect(events.map((e) => [e.op, e.id])).toEqual([
      ['register', 'web'],
      ['deregister', 'web'],
    ])
    expect(reg.index.current).toBe(i0 + 2)
  })

  it('refuses an unknown id, a check id owned by another service, and too much, changing nothing', () => {
    const dir = dataDir()
    const reg = LocalServiceRegistry.open({ dataDir: dir, maxPayloadBytes: 100 })
    reg.register(web)
    const before = readFileSync(join(dir, SERVICES_FILE), 'utf8')
    expect(() => reg.deregister('nope')).toThrow(
      expect.objectContaining({ code: 'PEERMESH_ERR_SERVICE_NOT_FOUND' }),
    )
    expect(() =>
      reg.register(def({ name: 'x', port: 1, checks: [{ ttl: '5s', id: 'service:web' }] })),
    ).toThrow(expect.objectContaining({ code: 'PEERMESH_ERR_INVALID_SERVICE', field: 'checks.0.id' }))
    const big = def({ name: 'big', port: 1, tags: Array.from({ length: 20 }, (_, i) => `tag-number-${i}`) })
    expect(() => reg.register(big)).toThrow(
      expect.objectContaining({ code: 'PEERMESH_ERR_CATALOG_PAYLOAD_TOO_LARGE' }),
    )
    expect(reg.list()).toEqual([web])
    expect(readFileSync(join(dir, SERVICES_FILE), 'utf8')).toBe(before)
  })

  it('reports a corrupt services file with a coded error', () => {
    const dir = dataDir()
    writeFileSync(join(dir, SERVICES_FILE), '{"version":1,"services":[{"name":"BAD"}]}')
    expect(() => LocalServiceRegistry.open({ dataDir: dir })).toThrow(
      expect.objectContaining({ code: 'PEERMESH_ERR_SERVICES_FILE' }),
    )
    writeFileSync(join(dir, SERVICES_FILE), '{not json')
    expect(() => LocalServiceRegistry.open({ dataDir: dir })).toThrow(
      expect.objectContaining({ code: 'PEERMESH_ERR_SERVICES_FILE' }),
    )
  })
})
