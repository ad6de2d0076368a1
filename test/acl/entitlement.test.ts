import { describe, expect, it } from 'vitest'
import {
  AclPublishEntitlement,
  EntitlementCache,
  entitlementSubject,
  MAX_ENTITLEMENT_DECISIONS,
  MAX_REMEMBERED_SERVICE_CHARS,
  mayPublish,
} from '../../src/acl/entitlement.ts'
import { FOUNDER_ACCESSOR_ID } from '../../src/acl/constants.ts'
import { GLOBAL_MANAGEMENT_POLICY_NAME } from '../../src/acl/index.ts'
import { createToken, FakeEnrollmentState, putPolicy } from './enrollment-fakes.ts'

const ON = { enabled: true, defaultPolicy: 'deny' } as const
const PEER = 'peer-web'
const OTHER = 'peer-other'

const apiWrite = JSON.stringify({ service: { api: { policy: 'write' } } })
const apiRead = JSON.stringify({ service: { api: { policy: 'read' } } })

/** A state where PEER is enrolled with a token whose service identity is `web`. */
function webNode(): { state: FakeEnrollmentState; enroll: string } {
  const state = new FakeEnrollmentState()
  const enroll = createToken(state, { services: ['web'], nodes: ['n1'] }).accessorId
  state.enroll(PEER, 'n1', enroll)
  return { state, enroll }
}

describe('mayPublish (issue #12: service identity is granted)', () => {
  const cases: {
    name: string
    setup: (s: FakeEnrollmentState, enroll: string) => void
    service: string
    peer?: string
    want: boolean
  }[] = [
    { name: 'the enrollment token writes the service', setup: () => {}, service: 'web', want: true },
    { name: 'a sidecar follows its service', setup: () => {}, service: 'web-sidecar-proxy', want: true },
    { name: 'another service, no grant', setup: () => {}, service: 'api', want: false },
    {
      name: "another service's sidecar, no grant",
      setup: () => {},
      service: 'api-sidecar-proxy',
      want: false,
    },
    { name: 'a bare suffix is a name of its own', setup: () => {}, service: '-sidecar-proxy', want: false },
    {
      name: 'not enrolled, even for a name a token would allow',
      setup: () => {},
      service: 'web',
      peer: OTHER,
      want: false,
    },
    {
      name: 'a grant whose token writes the service',
      setup: (s) => {
        putPolicy(s, 'api-w', apiWrite)
        s.grant(PEER, 'api', createToken(s, { policies: ['api-w'] }).accessorId)
      },
      service: 'api',
      want: true,
    },
    {
      name: 'the grant covers the sidecar',
      setup: (s) => s.grant(PEER, 'api', createToken(s, { services: ['api'] }).accessorId),
      service: 'api-sidecar-proxy',
      want: true,
    },
    {
      name: 'a grant whose token only reads the service',
      setup: (s) => {
        putPolicy(s, 'api-r', apiRead)
        s.grant(PEER, 'api', createToken(s, { policies: ['api-r'] }).accessorId)
      },
      service: 'api',
      want: false,
    },
    {
      name: 'a grant for another service does not carry over',
      setup: (s) => s.grant(PEER, 'db', createToken(s, { services: ['db', 'api'] }).accessorId),
      service: 'api',
      want: false,
    },
    {
      name: 'a grant for another peer',
      setup: (s) => s.grant(OTHER, 'api', createToken(s, { services: ['api'] }).accessorId),
      service: 'api',
      want: false,
    },
    {
      name: 'a grant to a peer that is not enrolled',
      setup: (s) => s.grant(OTHER, 'api', createToken(s, { services: ['api'] }).accessorId),
      service: 'api',
      peer: OTHER,
      want: false,
    },
    {
      name: 'a grant whose token was deleted',
      setup: (s) => {
        const t = createToken(s, { services: ['api'] }).accessorId
        s.grant(PEER, 'api', t)
        s.run({ op: 'acl.token.delete', accessorId: t })
      },
      service: 'api',
      want: false,
    },
    {
      name: 'a grant whose token lost the right (policy changed to read)',
      setup: (s) => {
        const id = putPolicy(s, 'api-w', apiWrite)
        s.grant(PEER, 'api', createToken(s, { policies: ['api-w'] }).accessorId)
        putPolicy(s, 'api-w', apiRead, id)
      },
      service: 'api',
      want: false,
    },
    {
      name: 'a grant whose policy was deleted',
      setup: (s) => {
        const id = putPolicy(s, 'api-w', apiWrite)
        s.grant(PEER, 'api', createToken(s, { policies: ['api-w'] }).accessorId)
        s.run({ op: 'acl.policy.delete', id })
      },
      service: 'api',
      want: false,
    },
    {
      name: 'the enrollment token was deleted (revoked): not even its own service',
      setup: (s, enroll) => s.run({ op: 'acl.token.delete', accessorId: enroll }),
      service: 'web',
      want: false,
    },
    {
      name: 'a management token publishes anything',
      setup: (s) =>
        s.grant(PEER, 'api', createToken(s, { policies: [GLOBAL_MANAGEMENT_POLICY_NAME] }).accessorId),
      service: 'api',
      want: true,
    },
    {
      name: 'a founder publishes anything (it holds the CA key)',
      setup: (s) => s.enroll(OTHER, 'n0', FOUNDER_ACCESSOR_ID, true),
      service: 'api',
      peer: OTHER,
      want: true,
    },
    {
      name: 'an exact deny beats a prefix write',
      setup: (s) => {
        putPolicy(
          s,
          'all-but-api',
          JSON.stringify({
            service_prefix: { '': { policy: 'write' } },
            service: { api: { policy: 'deny' } },
          }),
        )
        s.grant(PEER, 'api', createToken(s, { policies: ['all-but-api'] }).accessorId)
      },
      service: 'api',
      want: false,
    },
  ]

  for (const c of cases) {
    it(`${c.name}: ${c.want}`, () => {
      const { state, enroll } = webNode()
      c.setup(state, enroll)
      expect(mayPublish(state, c.peer ?? PEER, c.service, ON)).toBe(c.want)
      // The cached answer is the same.
      const cache = new EntitlementCache()
      expect(mayPublish(state, c.peer ?? PEER, c.service, { ...ON, cache })).toBe(c.want)
      expect(mayPublish(state, c.peer ?? PEER, c.service, { ...ON, cache })).toBe(c.want)
    })
  }

  it('ACLs off: everyone publishes everything, enrolled or not', () => {
    const state = new FakeEnrollmentState()
    expect(mayPublish(state, 'anyone', 'api', { enabled: false, defaultPolicy: 'deny' })).toBe(true)
  })

  it("defaultPolicy allow: a token without a matching rule writes (as the API's checks)", () => {
    const { state } = webNode()
    putPolicy(state, 'nothing', JSON.stringify({ node: { x: { policy: 'read' } } }))
    state.grant(PEER, 'api', createToken(state, { policies: ['nothing'] }).accessorId)
    expect(mayPublish(state, PEER, 'api', ON)).toBe(false)
    expect(mayPublish(state, PEER, 'api', { enabled: true, defaultPolicy: 'allow' })).toBe(true)
  })

  it('the cache follows the state: a grant that arrives later, then its token deleted', () => {
    const { state } = webNode()
    const cache = new EntitlementCache()
    const ask = () => mayPublish(state, PEER, 'api', { ...ON, cache })
    expect(ask()).toBe(false)
    const t = createToken(state, { services: ['api'] }).accessorId
    expect(ask()).toBe(false)
    state.grant(PEER, 'api', t)
    expect(ask()).toBe(true)
    state.run({ op: 'acl.token.delete', accessorId: t })
    expect(ask()).toBe(false)
  })

  it('the cache makes a repeated question a map lookup (no token resolved again)', () => {
    const { state } = webNode()
    let lookups = 0
    const counting = new Proxy(state, {
      get(target, prop, receiver) {
        if (prop === 'token') lookups++
        const v = Reflect.get(target, prop, receiver)
        return typeof v === 'function' ? v.bind(target) : v
      },
    })
    const cache = new EntitlementCache()
    for (let i = 0; i < 100; i++) mayPublish(counting, PEER, i % 2 ? 'web' : 'api', { ...ON, cache })
    expect(lookups).toBe(1)
  })

  it('entitlementSubject strips the sidecar suffix only', () => {
    expect(entitlementSubject('web-sidecar-proxy')).toBe('web')
    expect(entitlementSubject('web')).toBe('web')
    expect(entitlementSubject('-sidecar-proxy')).toBe('-sidecar-proxy')
  })

  it('AclPublishEntitlement tells listeners of ACL changes only', () => {
    const { state } = webNode()
    const listeners = new Set<() => void>()
    const e = new AclPublishEntitlement(state, ON, (l) => {
      listeners.add(l)
      return () => listeners.delete(l)
    })
    let calls = 0
    const off = e.onChange(() => calls++)
    const fire = () => {
      for (const l of listeners) l()
    }
    fire()
    expect(calls).toBe(0)
    state.grant(PEER, 'api', createToken(state, { services: ['api'] }).accessorId)
    fire()
    expect(calls).toBe(1)
    expect(e.mayPublish(PEER, 'api')).toBe(true)
    off()
    expect(listeners.size).toBe(0)
  })
})

describe('EntitlementCache stays bounded whatever is asked (leader CSRs carry peer-chosen names)', () => {
  it('distinct (peer, service) questions keep at most the cap; every answer matches a fresh decision', () => {
    const { state } = webNode()
    const peers = [PEER]
    for (let i = 0; i < 20; i++) {
      const p = `peer-${i}`
      state.enroll(p, `n-${i}`, createToken(state, { services: [`svc-${i}`] }).accessorId)
      peers.push(p)
    }
    const cache = new EntitlementCache(64)
    for (let round = 0; round < 2; round++) {
      for (let i = 0; i < 1_000; i++) {
        const peer = peers[i % peers.length]!
        const service = i % 7 === 0 ? 'web' : `svc-${i % 40}`
        const want = mayPublish(state, peer, service, ON) // no memo: decided from the state
        expect(mayPublish(state, peer, service, { ...ON, cache })).toBe(want)
        expect(cache.size).toBeLessThanOrEqual(64)
      }
    }
    expect(cache.size).toBe(64)
    expect(mayPublish(state, 'peer-3', 'svc-3', { ...ON, cache })).toBe(true)
    expect(mayPublish(state, 'peer-3', 'svc-4', { ...ON, cache })).toBe(false)
  })

  it(`the default cap (${MAX_ENTITLEMENT_DECISIONS}) holds against an enrolled peer asking fresh names`, () => {
    const { state } = webNode()
    const cache = new EntitlementCache()
    for (let i = 0; i < MAX_ENTITLEMENT_DECISIONS + 1_000; i++)
      expect(mayPublish(state, PEER, `fresh-${i}`, { ...ON, cache })).toBe(false)
    expect(cache.size).toBe(MAX_ENTITLEMENT_DECISIONS)
    expect(mayPublish(state, PEER, 'web', { ...ON, cache })).toBe(true)
  })

  it('peers nobody enrolled, and over-long names, are answered without being remembered', () => {
    const { state } = webNode()
    const cache = new EntitlementCache()
    for (let i = 0; i < 2_000; i++)
      expect(mayPublish(state, `stranger-${i}`, `svc-${i}`, { ...ON, cache })).toBe(false)
    expect(cache.size).toBe(0)
    const long = 'w'.repeat(MAX_REMEMBERED_SERVICE_CHARS + 1)
    expect(mayPublish(state, PEER, long, { ...ON, cache })).toBe(false)
    expect(mayPublish(state, PEER, 'x'.repeat(32 * 1024), { ...ON, cache })).toBe(false)
    expect(cache.size).toBe(0)
    // A founder may publish anything: the long name is still decided each time, the right way.
    state.enroll('founder', 'f', FOUNDER_ACCESSOR_ID)
    expect(mayPublish(state, 'founder', long, { ...ON, cache })).toBe(true)
    expect(cache.size).toBe(0)
    expect(mayPublish(state, PEER, 'web', { ...ON, cache })).toBe(true)
    expect(cache.size).toBe(1)
  })

  it('a full memo is still emptied when the ACL state changes', () => {
    const { state } = webNode()
    const cache = new EntitlementCache(8)
    for (let i = 0; i < 20; i++) mayPublish(state, PEER, `svc-${i}`, { ...ON, cache })
    expect(mayPublish(state, PEER, 'svc-19', { ...ON, cache })).toBe(false)
    state.grant(PEER, 'svc-19', createToken(state, { services: ['svc-19'] }).accessorId)
    expect(mayPublish(state, PEER, 'svc-19', { ...ON, cache })).toBe(true)
    expect(cache.size).toBe(1)
    expect(() => new EntitlementCache(0)).toThrow(RangeError)
  })
})
