import { multiaddr } from '@multiformats/multiaddr'
import { afterAll, describe, expect, it } from 'vitest'
import { generateClusterKey, parseClusterKey } from '../../../src/identity/keys/cluster-key.ts'
import { loadOrCreateNodeIdentity } from '../../../src/identity/keys/node-key.ts'
import { announcedAddresses, createHost } from '../../../src/node/transport/host.ts'
import { TempDirs } from '../../temp-dir.ts'

const mas = (...s: string[]) => s.map((x) => multiaddr(x))
const strs = (m: ReturnType<typeof mas>) => m.map((x) => x.toString())

describe('announcedAddresses: what other agents are told to dial', () => {
  it('a listener on 0.0.0.0 announces its routable interfaces, never loopback', () => {
    const got = announcedAddresses(
      mas('/ip4/127.0.0.1/tcp/7946', '/ip4/10.77.0.3/tcp/7946', '/ip4/169.254.1.1/tcp/7946'),
    )
    expect(strs(got)).toEqual(['/ip4/10.77.0.3/tcp/7946'])
  })

  it('a loopback-only agent keeps its loopback address (one machine, tests, demo)', () => {
    expect(strs(announcedAddresses(mas('/ip4/127.0.0.1/tcp/7946')))).toEqual(['/ip4/127.0.0.1/tcp/7946'])
    expect(strs(announcedAddresses(mas('/ip4/0.0.0.0/tcp/1', '/ip4/127.0.0.1/tcp/1')))).toEqual([
      '/ip4/127.0.0.1/tcp/1',
    ])
  })

  it('--advertise replaces the host of every address, once per port', () => {
    const got = announcedAddresses(
      mas(
        '/ip4/127.0.0.1/tcp/7946/p2p/12D3KooWGzh9ChAuE4cgpfVXY1XkHBhC5Yr5Lx9zzBhQYqHAx6Vq',
        '/ip4/10.0.0.2/tcp/7946/p2p/12D3KooWGzh9ChAuE4cgpfVXY1XkHBhC5Yr5Lx9zzBhQYqHAx6Vq',
      ),
      '203.0.113.7',
    )
    expect(strs(got)).toEqual([
      '/ip4/203.0.113.7/tcp/7946/p2p/12D3KooWGzh9ChAuE4cgpfVXY1XkHBhC5Yr5Lx9zzBhQYqHAx6Vq',
    ])
    expect(strs(announcedAddresses(mas('/ip4/0.0.0.0/tcp/5'), '2001:db8::1'))).toEqual([
      '/ip6/2001:db8::1/tcp/5',
    ])
  })
})

describe('createHost', () => {
  const tmp = new TempDirs()
  afterAll(() => tmp.removeAll())

  it('runs no DHT: gossip is the peer routing (no kad protocol handled, no router to ask)', async () => {
    const identity = await loadOrCreateNodeIdentity(tmp.make('host'))
    const key = parseClusterKey(generateClusterKey())
    const host = await createHost({ identity, clusterKey: key, listen: ['/ip4/127.0.0.1/tcp/0'] })
    await host.start()
    try {
      expect(host.getProtocols().filter((p) => p.includes('kad'))).toEqual([])
      expect(Object.keys(host.services).sort()).toEqual(['identify', 'ping'])
      const other = await loadOrCreateNodeIdentity(tmp.make('other'))
      await expect(host.peerRouting.findPeer(other.peerId)).rejects.toMatchObject({
        name: 'NoPeerRoutersError',
      })
    } finally {
      await host.stop()
    }
  })
})
