// Control path of the chaos suite: runs inside a host's network namespace and forwards a Unix
// socket (a path in the file system, so reachable from the root namespace) to the agent's HTTP API
// on the namespace's own loopback. The suite's polls and writes therefore never cross the chaos
// network, and a partition of the host's eth0 does not blind the observer.
// usage: node uds-forward.mjs SOCKET_PATH PORT   (exits when stdin closes)
import { rmSync } from 'node:fs'
import net from 'node:net'

const [path, port] = process.argv.slice(2)
rmSync(path, { force: true })
const server = net.createServer((client) => {
  const upstream = net.connect(Number(port), '127.0.0.1')
  client.pipe(upstream).pipe(client)
  const close = () => {
    client.destroy()
    upstream.destroy()
  }
  client.on('error', close)
  upstream.on('error', close)
  client.on('close', close)
  upstream.on('close', close)
})
server.listen(path, () => process.stdout.write('ready\n'))
process.stdin.on('end', () => process.exit(0))
process.stdin.on('error', () => process.exit(0))
process.stdin.resume()
process.on('exit', () => rmSync(path, { force: true }))
