import { createServer } from 'node:net'
import { multiaddr } from '@multiformats/multiaddr'

/** A free TCP port on 127.0.0.1: the OS picks one, and it is released right away. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address()
      srv.close(() => resolve(typeof addr === 'object' && addr !== null ? addr.port : 0))
    })
  })
}

/**
 * Whether one of the TCP `listen` multiaddrs is taken: the OS is asked by binding each one for
 * an instant (libp2p reports a busy port only in its error text).
 */
export async function addressInUse(listen: readonly string[]): Promise<boolean> {
  for (const addr of listen) {
    let host: string
    let port: number
    try {
      const parts = multiaddr(addr).getComponents()
      const ip = parts.find((c) => c.name === 'ip4' || c.name === 'ip6')?.value
      const tcp = parts.find((c) => c.name === 'tcp')?.value
      if (ip === undefined || tcp === undefined || Number(tcp) === 0) continue
      host = ip
      port = Number(tcp)
    } catch {
      continue
    }
    const code = await new Promise<string | undefined>((resolve) => {
      const srv = createServer()
      srv.once('error', (err: NodeJS.ErrnoException) => resolve(err.code))
      srv.listen(port, host, () => srv.close(() => resolve(undefined)))
    })
    if (code === 'EADDRINUSE') return true
  }
  return false
}
