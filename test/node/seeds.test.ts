import { createServer, type Server } from 'node:net'
import { Writable } from 'node:stream'
import pino from 'pino'
import { afterEach, describe, expect, it } from 'vitest'
import { KEY_MISMATCH_HINT, SeedDialer, tcpAccepts } from '../../src/node/transport/seeds.ts'

/** A logger whose lines land in `lines`, parsed. */
function capture(): { log: pino.Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = []
  const sink = new Writable({
    write(chunk, _enc, cb) {
      lines.push(JSON.parse(String(chunk)) as Record<string, unknown>)
      cb()
    },
  })
  return { log: pino({ level: 'debug' }, sink), lines }
}

/** Resolves with the first warn line, stopping the dialer. */
async function firstWarn(
  dialer: SeedDialer,
  lines: Record<string, unknown>[],
): Promise<Record<string, unknown>> {
  dialer.start()
  for (;;) {
    const w = lines.find((l) => l['level'] === 40)
    if (w !== undefined) {
      await dialer.stop()
      return w
    }
    await new Promise((r) => setImmediate(r))
  }
}

describe('SeedDialer: telling a key mismatch from an absent seed', () => {
  const servers: Server[] = []
  afterEach(() => {
    for (const s of servers.splice(0)) s.close()
  })

  /** A TCP listener that accepts and never says anything (what a seed with another key looks like). */
  async function silentListener(): Promise<number> {
    const server = createServer(() => {})
    servers.push(server)
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
    const addr = server.address()
    if (addr === null || typeof addr === 'string') throw new Error('no port')
    return addr.port
  }

  it('a dial that times out at a seed accepting TCP says the cluster key probably differs', async () => {
    const port = await silentListener()
    const { log, lines } = capture()
    const dialer = new SeedDialer({
      host: { dial: async () => Promise.reject(new Error('The operation was aborted due to timeout')) },
      seeds: [`/ip4/127.0.0.1/tcp/${port}`],
      log,
    })
    const warn = await firstWarn(dialer, lines)
    expect(warn['msg']).toBe('no seed answered; retrying')
    expect(warn['hint']).toBe(KEY_MISMATCH_HINT)
    expect(warn['handshakeFailed']).toEqual([`/ip4/127.0.0.1/tcp/${port}`])
  })

  it('a refused connection gives no hint (nobody is there)', async () => {
    const { log, lines } = capture()
    const probed: string[] = []
    const dialer = new SeedDialer({
      host: { dial: async () => Promise.reject(new Error('connect ECONNREFUSED 127.0.0.1:1')) },
      seeds: ['/ip4/127.0.0.1/tcp/1'],
      log,
      probeTcp: async (seed) => {
        probed.push(seed)
        return true
      },
    })
    const warn = await firstWarn(dialer, lines)
    expect(warn['hint']).toBeUndefined()
    expect(probed).toEqual([]) // a refusal needs no probe
  })

  it('tcpAccepts: true for a listener, false for a closed port and for addresses without TCP', async () => {
    const port = await silentListener()
    expect(await tcpAccepts(`/ip4/127.0.0.1/tcp/${port}`, 1000)).toBe(true)
    const closed = createServer()
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r))
    const closedPort = (closed.address() as { port: number }).port
    await new Promise<void>((r) => closed.close(() => r()))
    expect(await tcpAccepts(`/ip4/127.0.0.1/tcp/${closedPort}`, 1000)).toBe(false)
    expect(await tcpAccepts('/ip4/127.0.0.1/udp/7946', 1000)).toBe(false)
    expect(await tcpAccepts('not a multiaddr', 1000)).toBe(false)
  })
})

describe('SeedDialer: joining through every seed that answers', () => {
  it('joins through each live seed of the first round any answers in, then stops', async () => {
    const { log } = capture()
    const live = new Map([
      ['/ip4/127.0.0.1/tcp/1/p2p/a', 'peer-a'],
      ['/ip4/127.0.0.1/tcp/3/p2p/c', 'peer-c'],
    ])
    const dialed: string[] = []
    const joined: string[] = []
    let done: () => void = () => {}
    const all = new Promise<void>((r) => {
      done = r
    })
    const dialer = new SeedDialer({
      host: {
        dial: async (ma: { toString(): string }) => {
          const seed = ma.toString()
          dialed.push(seed)
          const peer = live.get(seed)
          if (peer === undefined) throw new Error('connect ECONNREFUSED')
          return { remotePeer: { toString: () => peer } } as never
        },
      } as never,
      seeds: ['/ip4/127.0.0.1/tcp/1/p2p/a', '/ip4/127.0.0.1/tcp/2/p2p/b', '/ip4/127.0.0.1/tcp/3/p2p/c'],
      log,
      onJoined: (peerId) => {
        joined.push(peerId)
        if (joined.length === 2) done()
      },
    })
    dialer.start()
    await all
    await dialer.stop()
    // Not only the first: an island of agents that each stopped at their first seed never merges.
    expect(joined).toEqual(['peer-a', 'peer-c'])
    expect(dialed).toHaveLength(3)
  })
})
