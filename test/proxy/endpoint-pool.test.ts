import { describe, expect, it } from 'vitest'
import { EndpointPool } from '../../src/proxy/endpoint-pool.ts'
import { DEFAULT_OUTLIER_CONFIG } from '../../src/proxy/outlier.ts'
import { StaticEndpointSource } from '../../src/proxy/sources.ts'
import type { Endpoint } from '../../src/proxy/types.ts'
import { VirtualClock } from '../sim/virtual-clock.ts'

const endpoint = (id: string, tag: string): Endpoint => ({
  id,
  service: 'api',
  address: '127.0.0.1',
  port: 20_000 + Number(id.slice(-1)),
  weight: 1,
  tags: [tag],
})

function pool() {
  const source = new StaticEndpointSource([
    endpoint('api-1', 'v1'),
    endpoint('api-2', 'v1'),
    endpoint('api-3', 'v2'),
  ])
  let seed = 1
  const p = new EndpointPool({
    source,
    outlier: DEFAULT_OUTLIER_CONFIG,
    clock: new VirtualClock(),
    rng: () => {
      seed = (seed * 48271) % 2147483647
      return seed / 2147483647
    },
  })
  p.start()
  return p
}

const v2 = (e: Endpoint): boolean => e.tags.includes('v2')

describe('EndpointPool subsets', () => {
  it('a tag subset whose only instance failed lets the whole service serve the retry', () => {
    const p = pool()
    const first = p.pickFrom(v2, true, [], undefined, undefined, false)
    expect(first?.endpoint.id).toBe('api-3')
    // The retry after api-3 refused the connection (it died with its agent): another instance,
    // not api-3 again.
    const retry = p.pickFrom(v2, true, [first!], undefined, undefined, false)
    expect(retry?.endpoint.id).toMatch(/^api-[12]$/)
  })

  it('a subset a resolver defines (strict) has no such fallback: its own instance again, or nothing', () => {
    const p = pool()
    const first = p.pickFrom(v2, false, [], undefined, undefined, false)!
    expect(p.pickFrom(v2, false, [first], undefined, undefined, false)).toBeUndefined()
    expect(p.pickFrom(v2, false, [first], undefined, undefined, true)?.endpoint.id).toBe('api-3')
  })
})
