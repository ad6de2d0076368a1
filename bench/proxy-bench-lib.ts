/**
 * What the data-plane benches share (bench:proxy-overhead, bench:proxy-relay-floor): runner
 * processes started from a JSON config, certificates of one root, wrk's output, and the CPU time
 * of a process from /proc.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { type createRootCa, signLeaf } from '../src/identity/ca/ca.ts'
import { createLeafKeyAndCsr } from '../src/identity/ca/leaf.ts'
import type { KeyType } from '../src/identity/keys/keys.ts'
import type { ServiceCertificate } from '../src/proxy/types.ts'

/** A process whose CPU time a bench reads. */
export interface Proc {
  name: string
  pid: number
}

/** Clock ticks per second of /proc/PID/stat's times (USER_HZ). */
const CLK_TCK = 100

/** CPU time (user + system) of a process so far, in µs, from /proc/PID/stat; NaN once it is gone. */
export function cpuUs(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    // fields[0] is field 3 (state): utime is field 14, stime field 15.
    return ((Number(fields[11]) + Number(fields[12])) / CLK_TCK) * 1e6
  } catch {
    return Number.NaN
  }
}

/** A leaf of `root` for `service`, valid for an hour. */
export async function leafCert(
  root: Awaited<ReturnType<typeof createRootCa>>,
  service: string,
  trustDomain: string,
  keyType: KeyType,
): Promise<ServiceCertificate> {
  const nowMs = Date.now()
  const { keyPem, csrPem } = await createLeafKeyAndCsr({ service, trustDomain, keyType })
  const signed = await signLeaf(root, csrPem, { service, trustDomain, ttlMs: 3_600_000, nowMs })
  return { certPem: signed.certPem, keyPem, rootsPem: [root.certPem] }
}

/**
 * The PEM fields of `startHaproxyPair` (bench/peers/haproxy.ts) for the benches' two services: web's
 * leaf on the client side, api's on the server side, both trusting `rootPem`.
 */
export function haproxyPairCerts(
  rootPem: string,
  web: ServiceCertificate,
  api: ServiceCertificate,
): {
  caPem: string
  clientCertPem: string
  clientKeyPem: string
  serverCertPem: string
  serverKeyPem: string
} {
  return {
    caPem: rootPem,
    clientCertPem: web.certPem,
    clientKeyPem: web.keyPem,
    serverCertPem: api.certPem,
    serverKeyPem: api.keyPem,
  }
}

/**
 * Starts `script` (a runner: it reads its JSON config from the path it is given and prints one
 * `{"port": N}` line when it listens) with `config`, and waits for that line. The child is kept in
 * `live` until it exits.
 */
export async function startRunner(
  live: Set<ChildProcess>,
  dir: string,
  script: string,
  name: string,
  config: unknown,
  nodeArgs: readonly string[] = [],
): Promise<Proc & { port: number }> {
  const path = join(dir, `${name}.json`)
  writeFileSync(path, JSON.stringify(config), { mode: 0o600 })
  const child = spawn(process.execPath, [...nodeArgs, '--import', 'tsx', script, path], {
    stdio: ['pipe', 'pipe', 'inherit'],
  })
  live.add(child)
  child.on('exit', () => live.delete(child))
  const rl = createInterface({ input: child.stdout! })
  const line = await new Promise<string>((resolve, reject) => {
    rl.once('line', resolve)
    child.once('exit', (code) => reject(new Error(`${name} runner exited ${code} before it was ready`)))
  })
  rl.close()
  const { port } = JSON.parse(line) as { port: number }
  return { name, pid: child.pid!, port }
}

/** One of wrk's durations (`812.00us`, `1.20ms`, `2s`, `1m`) in µs; NaN if it is none. */
export function parseWrkDuration(text: string): number {
  const m = /^([\d.]+)(us|ms|s|m)$/.exec(text.trim())
  if (!m) return Number.NaN
  const v = Number(m[1])
  return m[2] === 'us' ? v : m[2] === 'ms' ? v * 1e3 : m[2] === 's' ? v * 1e6 : v * 60e6
}

/** The figures of a `wrk --latency` run's output. */
export interface WrkFigures {
  rps: number
  p50Us: number
  p99Us: number
  requests: number
  /** Socket errors and non-2xx/3xx responses. */
  errors: number
}

export function parseWrk(out: string): WrkFigures {
  const pct = (p: string) => parseWrkDuration(new RegExp(`^\\s*${p}%\\s+(\\S+)`, 'm').exec(out)?.[1] ?? '')
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? NaN)
  const requests = Number(/(\d+) requests in/.exec(out)?.[1] ?? NaN)
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out)
  const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0)
  const errors = (sock ? sock.slice(1, 5).reduce((a, x) => a + Number(x), 0) : 0) + non2xx
  return { rps, p50Us: pct('50'), p99Us: pct('99'), requests, errors }
}
