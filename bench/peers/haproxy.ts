import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import net from 'node:net'
import { join } from 'node:path'
import { progress } from '../lib.ts'
import { freePort } from '../../src/node/transport/free-port.ts'

/**
 * HAProxy 2.6 (Debian package `haproxy`, binary /usr/sbin/haproxy) as the peer of the sidecar
 * data plane, in the shape of ANCHORS.md: two instances, nbthread 1 each, TCP mode —
 * A: a plain listener on 127.0.0.1 -> mutual TLS 1.3 (`verify required`) -> B -> the app.
 *
 * Both ends present leaves from the same CA as our sidecars (HAProxy wants certificate and key
 * in one PEM file). HAProxy checks the chain both ways but, unlike our sidecar, not the SPIFFE
 * id in the URI SAN (it has no option for it in TCP mode).
 *
 * Every process started here is killed by `close()`, and by a process `exit` hook if the caller
 * never gets that far.
 */

export const HAPROXY = '/usr/sbin/haproxy'
export const WRK = '/usr/bin/wrk'

function runs(cmd: string, args: string[]): boolean {
  const r = spawnSync(cmd, args, { stdio: 'ignore' })
  return r.error === undefined && r.status !== null
}

export function haproxyAvailable(): boolean {
  return runs(HAPROXY, ['-v'])
}

export function wrkAvailable(): boolean {
  return runs(WRK, ['--version'])
}

/**
 * Installs `haproxy` and `wrk` with apt-get when either is missing and we are root (running
 * `apt-get update` first if the install fails on a stale index); throws with the command otherwise.
 */
export function ensureInstalled(): void {
  const missing = [...(haproxyAvailable() ? [] : ['haproxy']), ...(wrkAvailable() ? [] : ['wrk'])]
  if (missing.length === 0) return
  if (process.getuid?.() !== 0) {
    throw new Error(`missing ${missing.join(', ')}; run: apt-get install -y ${missing.join(' ')} (as root)`)
  }
  progress(`installing ${missing.join(', ')} with apt-get`)
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
  const install = (): number | null =>
    spawnSync('apt-get', ['install', '-y', '--no-install-recommends', ...missing], {
      stdio: ['ignore', 'ignore', 'inherit'],
      env,
    }).status
  if (install() !== 0) {
    spawnSync('apt-get', ['update'], { stdio: ['ignore', 'ignore', 'inherit'], env })
    if (install() !== 0) throw new Error(`apt-get install -y ${missing.join(' ')} failed`)
  }
  if (!haproxyAvailable() || !wrkAvailable()) {
    throw new Error(`${missing.join(', ')} still missing after apt-get install`)
  }
}

export function haproxyVersion(): string {
  const out = spawnSync(HAPROXY, ['-v'], { encoding: 'utf8' }).stdout ?? ''
  return /version (\S+)/.exec(out)?.[1] ?? 'unknown'
}

/** Resolves once something accepts TCP connections on 127.0.0.1:port; rejects after `timeoutMs`. */
export async function waitForPort(port: number, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ port, host: '127.0.0.1' })
      s.once('connect', () => {
        s.destroy()
        resolve(true)
      })
      s.once('error', () => resolve(false))
    })
    if (ok) return
    if (Date.now() > deadline) throw new Error(`nothing listening on 127.0.0.1:${port}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

export interface HaproxyPairInit {
  /** Working directory for configs and PEM files. */
  dir: string
  /** CA certificate (PEM) both ends trust. */
  caPem: string
  /** Certificate + key of the client side (A presents it to B). */
  clientCertPem: string
  clientKeyPem: string
  /** Certificate + key of the server side (B's listener). */
  serverCertPem: string
  serverKeyPem: string
  /** Where B forwards: the app on 127.0.0.1. */
  appPort: number
  /**
   * `tcp` (default): TCP mode, as in ANCHORS.md. `h2`: HTTP mode end to end in HTTP/2 — A takes
   * h2c, speaks h2 over mutual TLS (ALPN h2) to B, and B h2c to the app: per-request balancing
   * over multiplexed connections, the job of our sidecars in `protocol: http2`.
   */
  mode?: 'tcp' | 'h2'
}

export interface HaproxyPair {
  /** A's plain listener: point the load generator here. */
  port: number
  /** PIDs of A (client side) and B (server side), for /proc/PID/status. */
  pidA: number
  pidB: number
  close(): Promise<void>
}

const global = (mode: 'tcp' | 'http'): string => `global
  nbthread 1
  maxconn 8192
  ssl-default-bind-options ssl-min-ver TLSv1.3
  ssl-default-server-options ssl-min-ver TLSv1.3

defaults
  mode ${mode}
  timeout connect 5s
  timeout client 120s
  timeout server 120s
`

/** Starts B, then A; both in the foreground (`-db`), so the PID we hold is the process doing the work. */
export async function startHaproxyPair(init: HaproxyPairInit): Promise<HaproxyPair> {
  const ca = join(init.dir, 'haproxy-ca.pem')
  const clientPem = join(init.dir, 'haproxy-web.pem')
  const serverPem = join(init.dir, 'haproxy-api.pem')
  writeFileSync(ca, init.caPem)
  writeFileSync(clientPem, `${init.clientCertPem.trim()}\n${init.clientKeyPem.trim()}\n`, { mode: 0o600 })
  writeFileSync(serverPem, `${init.serverCertPem.trim()}\n${init.serverKeyPem.trim()}\n`, { mode: 0o600 })
  const portA = await freePort()
  const portB = await freePort()
  const h2 = init.mode === 'h2'
  const cfgB = join(init.dir, h2 ? 'haproxy-h2-b.cfg' : 'haproxy-b.cfg')
  const cfgA = join(init.dir, h2 ? 'haproxy-h2-a.cfg' : 'haproxy-a.cfg')
  const GLOBAL = global(h2 ? 'http' : 'tcp')
  writeFileSync(
    cfgB,
    `${GLOBAL}
frontend inbound
  bind 127.0.0.1:${portB} ssl crt ${serverPem} ca-file ${ca} verify required${h2 ? ' alpn h2' : ''}
  default_backend app

backend app
  server app 127.0.0.1:${init.appPort}${h2 ? ' proto h2' : ''}
`,
  )
  writeFileSync(
    cfgA,
    `${GLOBAL}
frontend outbound
  bind 127.0.0.1:${portA}${h2 ? ' proto h2' : ''}
  default_backend api

backend api
  server b 127.0.0.1:${portB} ssl crt ${clientPem} ca-file ${ca} verify required${h2 ? ' alpn h2' : ''}
`,
  )
  for (const cfg of [cfgA, cfgB]) {
    const check = spawnSync(HAPROXY, ['-c', '-q', '-f', cfg], { encoding: 'utf8' })
    if (check.status !== 0) throw new Error(`haproxy rejected ${cfg}: ${check.stderr || check.stdout}`)
  }

  const children: ChildProcess[] = []
  const killAll = (): void => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL')
  }
  process.on('exit', killAll)
  const start = (cfg: string): ChildProcess => {
    const child = spawn(HAPROXY, ['-db', '-f', cfg], { stdio: ['ignore', 'ignore', 'pipe'] })
    children.push(child)
    child.stderr?.on('data', (d: Buffer) => {
      const text = d.toString().trim()
      if (text !== '') progress(`haproxy: ${text}`)
    })
    return child
  }
  const close = async (): Promise<void> => {
    const exits = children
      .filter((c) => c.exitCode === null && c.signalCode === null)
      .map((c) => new Promise<void>((resolve) => c.once('exit', () => resolve())))
    killAll()
    await Promise.all(exits)
    process.off('exit', killAll)
  }
  try {
    const b = start(cfgB)
    await waitForPort(portB)
    const a = start(cfgA)
    await waitForPort(portA)
    return { port: portA, pidA: a.pid!, pidB: b.pid!, close }
  } catch (error) {
    await close()
    throw error
  }
}

export { freePort }
