// A service instance for the sidecar scenario: answers every HTTP request with its name.
// Runs inside a host's namespace on its loopback; exits when stdin closes.
// usage: node app.mjs PORT NAME
import http from 'node:http'

const [port, name] = process.argv.slice(2)
http
  .createServer((_req, res) => res.end(name))
  .listen(Number(port), '127.0.0.1', () => process.stdout.write('ready\n'))
process.stdin.on('end', () => process.exit(0))
process.stdin.on('error', () => process.exit(0))
process.stdin.resume()
