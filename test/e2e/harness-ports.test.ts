import { createServer, type Server } from 'node:net'
import { afterAll, describe, expect, it } from 'vitest'
import { freePort, TestCluster } from './harness.ts'

/** A TCP port held by this process until `close()`: another process "took" it first. */
async function holdPort(): Promise<{ port: number; server: Server }> {
  const port = await freePort()
  const server = createServer()
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, '127.0.0.1', () => resolve())
  })
  return { port, server }
}

describe('e2e harness: ports a test picked ahead and another process took before the agent bound them', () => {
  const cluster = new TestCluster()
  const held: Server[] = []
  afterAll(async () => {
    for (const s of held) s.close()
    await cluster.close()
  })

  it('with portsMayMove the agent starts on new ones; without, the start fails naming the port', async () => {
    const key = await cluster.writeClusterKey()
    const taken = await holdPort()
    held.push(taken.server)

    const fixed = cluster.agent({ name: 'fixed', clusterKeyFile: key })
    fixed.p2pPort = taken.port
    await expect(fixed.start()).rejects.toThrow(/address already in use/)

    const moving = cluster.agent({ name: 'moving', clusterKeyFile: key, portsMayMove: true })
    moving.p2pPort = taken.port
    await moving.start()
    expect(moving.p2pPort).not.toBe(taken.port)
    const self = await moving.self()
    expect(self?.addresses.some((a) => a.includes(`/tcp/${moving.p2pPort}/`))).toBe(true)
  })
})
