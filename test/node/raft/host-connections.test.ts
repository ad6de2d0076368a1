import { afterAll, describe, expect, it } from 'vitest'
import { generateClusterKey, parseClusterKey } from '../../../src/identity/keys/cluster-key.ts'
import { loadOrCreateNodeIdentity } from '../../../src/identity/keys/node-key.ts'
import { hostConnections } from '../../../src/node/raft/leader-liveness.ts'
import { createHost, type Host } from '../../../src/node/transport/host.ts'
import { waitFor } from '../../e2e/harness.ts'
import { TempDirs } from '../../temp-dir.ts'

const tmp = new TempDirs()
afterAll(() => tmp.removeAll())

describe('hostConnections: the libp2p host as failover sees it', () => {
  const hosts: Host[] = []
  afterAll(async () => {
    for (const h of hosts) await h.stop()
  })

  it('isConnected follows the connections to a peer, by its id string', async () => {
    const key = parseClusterKey(generateClusterKey())
    const mk = async (): Promise<Host> => {
      const identity = await loadOrCreateNodeIdentity(tmp.make('hc'))
      const h = await createHost({ identity, clusterKey: key, listen: ['/ip4/127.0.0.1/tcp/0'] })
      await h.start()
      hosts.push(h)
      return h
    }
    const [a, b] = [await mk(), await mk()]
    const stranger = (await loadOrCreateNodeIdentity(tmp.make('hc'))).peerId.toString()
    const conns = hostConnections(a)
    const peer = b.peerId.toString()
    expect(conns.isConnected(peer)).toBe(false)
    await a.peerStore.merge(b.peerId, { multiaddrs: b.getMultiaddrs() })
    await conns.dial(peer, AbortSignal.timeout(5_000))
    expect(conns.isConnected(peer)).toBe(true)
    expect(conns.isConnected(stranger)).toBe(false)
    expect(conns.isConnected('not a peer id')).toBe(false)
    await a.hangUp(b.peerId)
    await waitFor('the connection closed', async () => (conns.isConnected(peer) ? undefined : true), 5_000)
  })
})
