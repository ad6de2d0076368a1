import { describe, expect, it } from 'vitest'
import { Catalog, type CatalogEvents, type MemberUpdate } from '../../../src/node/catalog/catalog.ts'
import { encodeNodePayload } from '../../../src/node/catalog/node-payload.ts'
import { type CheckStatus, parseServiceDefinition } from '../../../src/node/catalog/service-definition.ts'
import {
  CatalogEndpointSource,
  type EndpointCatalog,
  endpointsOf,
} from '../../../src/node/sidecars/sidecar-module.ts'

const api = (id: string, tags: string[], sidecar = true) =>
  parseServiceDefinition(
    {
      name: 'api',
      id,
      port: 9000,
      tags,
      weights: { passing: 3, warning: 1 },
      checks: [{ ttl: '10s' }],
      ...(sidecar ? { connect: { sidecarService: { port: 21000, protocol: 'http' } } } : {}),
    },
    'test',
  )

function member(
  n: number,
  services: ReturnType<typeof api>[],
  status: CheckStatus,
  over: Partial<MemberUpdate> = {},
) {
  return {
    id: `peer${n}`,
    name: `node${n}`,
    address: `/ip4/127.0.0.${n}/tcp/4001/p2p/peer${n}`,
    status: 'alive' as const,
    version: 1,
    payload: encodeNodePayload(services, () => status),
    ...over,
  }
}

describe('sidecar endpoints from the catalog', () => {
  it('keeps passing and warning instances that have a sidecar, weighted by their health', () => {
    const c = new Catalog()
    c.applyMember(member(1, [api('api-1', ['v1'])], 'passing'))
    c.applyMember(member(2, [api('api-2', ['v2'])], 'warning'))
    c.applyMember(member(3, [api('api-3', ['v1'])], 'critical'))
    c.applyMember(member(4, [api('api-4', ['v1'], false)], 'passing'))
    const eps = endpointsOf(c.health('api'))
    expect(eps.map((e) => [e.id, e.address, e.port, e.weight, e.tags])).toEqual([
      ['peer1/api-1', '127.0.0.1', 21000, 3, ['v1']],
      ['peer2/api-2', '127.0.0.2', 21000, 1, ['v2']],
    ])
  })

  it("dials a sidecar at its node's address, not at the app's (loopback) address", () => {
    const c = new Catalog()
    const lo = parseServiceDefinition(
      {
        name: 'api',
        id: 'api-lo',
        port: 9000,
        address: '127.0.0.1',
        connect: { sidecarService: { port: 21000 } },
      },
      'test',
    )
    const remote = parseServiceDefinition(
      {
        name: 'api',
        id: 'api-x',
        port: 9000,
        address: '10.1.1.1',
        connect: { sidecarService: { port: 21000 } },
      },
      'test',
    )
    c.applyMember(member(7, [lo, remote], 'passing'))
    expect(endpointsOf(c.health('api')).map((e) => [e.id, e.address])).toEqual([
      ['peer7/api-lo', '127.0.0.7'],
      ['peer7/api-x', '127.0.0.7'],
    ])
  })

  it('announces changes only when the healthy set changes, and drops a failed node at once', () => {
    const c = new Catalog()
    c.applyMember(member(1, [api('api-1', ['v1'])], 'passing'))
    c.applyMember(member(2, [api('api-2', ['v1'])], 'passing'))
    const src = new CatalogEndpointSource(c, 'api')
    expect(src.protocol()).toBe('http')
    const seen: string[][] = []
    src.on('endpoints:change', (eps) => seen.push(eps.map((e) => e.id)))
    c.applyMember(member(5, [], 'passing', { name: 'unrelated' }))
    expect(seen).toEqual([])
    c.applyMember(member(2, [api('api-2', ['v1'])], 'passing', { status: 'dead' }))
    expect(seen).toEqual([['peer1/api-1']])
    expect(src.current().map((e) => e.id)).toEqual(['peer1/api-1'])
    src.close()
  })

  it('releases its catalog subscription and its own listeners on close', () => {
    const listeners = new Set<() => void>()
    const catalog: EndpointCatalog = {
      health: () => [],
      on<K extends keyof CatalogEvents>(_type: K, listener: (detail: CatalogEvents[K]) => void) {
        const l = () => listener({ index: 1 } as CatalogEvents[K])
        listeners.add(l)
        return () => {
          listeners.delete(l)
        }
      },
    }
    const src = new CatalogEndpointSource(catalog, 'api')
    expect(listeners.size).toBe(1)
    let calls = 0
    src.on('endpoints:change', () => calls++)
    src.close()
    expect(listeners.size).toBe(0)
    expect(calls).toBe(0)
  })
})
