/**
 * The demo's traffic generator: `drained(port)` waits for the requests sent to an entry the
 * traffic moved away from, and for nothing else (the leader-kill step waits on it before the kill,
 * so that requests through the victim's own web instance are not counted as the mesh's failures).
 */
import { createServer, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import { Traffic } from '../../../src/node/demo/traffic.ts'

const servers: ReturnType<typeof createServer>[] = []
afterEach(async () => {
  for (const s of servers.splice(0)) {
    s.closeAllConnections()
    await new Promise<void>((r) => s.close(() => r()))
  }
})

/** An HTTP server answering `api-1 v1`; `hold` keeps every answer until `release()`. */
async function server(hold: boolean) {
  const held: ServerResponse[] = []
  let served = 0
  let holding = hold
  const s = createServer((_req, res) => {
    served++
    if (holding) held.push(res)
    else res.end('api-1 v1')
  })
  servers.push(s)
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()))
  return {
    port: (s.address() as AddressInfo).port,
    held: () => held.length,
    served: () => served,
    release: () => {
      holding = false
      for (const res of held.splice(0)) res.end('api-1 v1')
    },
  }
}

async function until(what: string, check: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !check(); i++) await new Promise((r) => setTimeout(r, 10))
  if (!check()) throw new Error(`timed out waiting for ${what}`)
}

describe('demo traffic', () => {
  it('drained(port) resolves once the requests sent to that entry completed, not before', async () => {
    const old = await server(true)
    const next = await server(false)
    const traffic = new Traffic(old.port)
    traffic.start()
    try {
      await until('requests held at the old entry', () => old.held() >= 2)
      traffic.entryPort = next.port
      let drained = false
      const wait = traffic.drained(old.port).then(() => {
        drained = true
      })
      // Traffic goes on through the new entry meanwhile; the old entry's requests are still open.
      await until('requests through the new entry', () => traffic.window(0).ok >= 3)
      expect(drained).toBe(false)
      expect(old.served()).toBe(old.held())
      old.release()
      await wait
      expect(traffic.window(0).failed).toBe(0)
      // An entry with nothing in flight is drained at once.
      await traffic.drained(old.port)
    } finally {
      await traffic.stop()
    }
  })
})
