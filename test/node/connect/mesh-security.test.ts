import { describe, expect, it } from 'vitest'
import { TypedEmitter } from '../../../src/common/events.ts'
import type { ConnectEvents } from '../../../src/node/connect/events.ts'
import { ConnectMeshSecurity } from '../../../src/node/connect/mesh-security.ts'
import { IntentionIndex } from '../../../src/proxy/intentions.ts'
import { PolicyStore } from '../../../src/raft/policy/policy-store.ts'

function setup() {
  const events = new TypedEmitter<ConnectEvents>()
  let index = new IntentionIndex([], 'deny')
  const leaf = {
    keyPem: 'K',
    certPem: 'C',
    intermediatesPem: [],
    spiffeId: 's',
    serialNumber: '1',
    notBefore: 0,
    notAfter: 1,
  }
  const connect = {
    events,
    currentLeaf: () => leaf,
    trustedRootsPem: () => ['R'],
    activeTrustDomain: () => 'test.peermesh',
    leaf: async () => leaf,
    intentionIndex: () => index,
  }
  const mesh = new ConnectMeshSecurity(connect, new PolicyStore())
  return { events, mesh, setIndex: (i: IntentionIndex) => (index = i) }
}

describe('ConnectMeshSecurity', () => {
  it('passes connect events to the sidecars: a leaf of its service or a CA change re-issues its certificate', () => {
    const { events, mesh, setIndex } = setup()
    const seen: string[] = []
    mesh.certificates('web').on('cert:rotated', (c) => seen.push(c.certPem))
    events.emit('cert:rotated', { service: 'db', current: {} as never })
    events.emit('cert:rotated', { service: 'web', current: {} as never })
    events.emit('ca:change', { activeRootId: 'r', roots: 2 })
    expect(seen).toEqual(['C', 'C'])
    setIndex(new IntentionIndex([{ source: 'web', destination: 'db', action: 'allow' }], 'deny'))
    events.emit('intention:change', { index: 1, intentions: [], defaultAction: 'deny' })
    expect(mesh.authorizer().decide('web', 'db')).toBe('allow')
  })

  it('releases every subscription on stop (and a source listener on its own unsubscribe)', () => {
    const { events, mesh } = setup()
    const off = mesh.certificates('web').on('cert:rotated', () => {})
    mesh.certificates('db').on('cert:rotated', () => {})
    expect(events.listenerCount('cert:rotated')).toBe(2)
    off()
    expect(events.listenerCount('cert:rotated')).toBe(1)
    mesh.stop()
    for (const type of ['cert:rotated', 'ca:change', 'intention:change'] as const)
      expect(events.listenerCount(type)).toBe(0)
  })
})
