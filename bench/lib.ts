import { type ChildProcess, spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { GOSSIP_PROFILES, type GossipProfileName } from '../src/node/agent/config-constants.ts'
import { authHeaders, TestCluster } from '../test/e2e/harness.ts'

/**
 * The benchmark convention: `npm run bench:NAME` runs `bench/NAME.ts`; progress goes to stderr,
 * a table to stdout, and with `--json` the last stdout line is one JSON object of the figures.
 */
export const jsonMode = process.argv.includes('--json')

/** `--gossip-profile P` (one of the agent's profiles), or `fallback`; exits with 2 on anything else. */
export function gossipProfileArg(fallback: GossipProfileName): GossipProfileName {
  const v = argValue('gossip-profile', fallback)
  const profile = GOSSIP_PROFILES.find((p) => p === v)
  if (profile === undefined) {
    process.stderr.write(`--gossip-profile: expected one of ${GOSSIP_PROFILES.join(', ')}\n`)
    process.exit(2)
  }
  return profile
}

/**
 * `--agent-config JSON`: more of our agents' config file (the agent checks it at start), e.g. the
 * explicit trades of detection and failover time for idle CPU:
 * '{"gossipLan":{"probeInterval":"300ms","suspicionMult":2},"performance":{"raftMultiplier":3}}'.
 * `acl` stays the bench's own. `{}` when not given.
 */
export function agentConfigArg(): Record<string, unknown> {
  const raw = argValue('agent-config') ?? '{}'
  let v: unknown
  try {
    v = JSON.parse(raw)
  } catch {
    v = undefined
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    process.stderr.write('--agent-config: expected a JSON object\n')
    process.exit(2)
  }
  if ('acl' in v) {
    process.stderr.write("--agent-config: acl is the bench's own\n")
    process.exit(2)
  }
  return v as Record<string, unknown>
}

/** Value of `--name VALUE` on the command line, or the fallback. */
export function argValue(name: string, fallback?: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback
}

export function progress(...parts: unknown[]): void {
  process.stderr.write(`${parts.map(String).join(' ')}\n`)
}

/** Prints an aligned text table to stdout. */
export function table(headers: string[], rows: (string | number)[][]): void {
  const cells = [headers, ...rows.map((r) => r.map((c) => (typeof c === 'number' ? fmt(c) : c)))]
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => String(r[i] ?? '').length)))
  const line = (r: (string | number)[]): string => r.map((c, i) => String(c).padEnd(widths[i]!)).join('  ')
  process.stdout.write(`${line(cells[0]!)}\n${widths.map((w) => '-'.repeat(w)).join('  ')}\n`)
  for (const r of cells.slice(1)) process.stdout.write(`${line(r)}\n`)
}

/** With --json, prints the figures as the last stdout line. */
export function emitJson(figures: Record<string, unknown>): void {
  if (jsonMode) process.stdout.write(`${JSON.stringify(figures)}\n`)
}

export function fmt(n: number): string {
  if (!Number.isFinite(n)) return String(n)
  if (Number.isInteger(n)) return String(n)
  return Math.abs(n) >= 100 ? n.toFixed(0) : Math.abs(n) >= 1 ? n.toFixed(2) : n.toFixed(3)
}

export function median(xs: number[]): number {
  return quantile(xs, 0.5)
}

/** Quantile by linear interpolation between closest ranks. */
export function quantile(xs: number[], q: number): number {
  if (xs.length === 0) return Number.NaN
  const s = [...xs].sort((a, b) => a - b)
  const pos = (s.length - 1) * q
  const lo = Math.floor(pos)
  const hi = Math.ceil(pos)
  return s[lo]! + (s[hi]! - s[lo]!) * (pos - lo)
}

// ---- agents hosted several per process, watched through blocking queries ---------------------------

/** One agent as a bench sees it: reached only through its HTTP API (and its libp2p address). */
export interface AgentEndpoint {
  name: string
  http: string
  address: string
}

/** N agents, however they are hosted; killed by `close()`. */
export interface BenchCluster {
  /** HTTP `host:port` of each agent, the first one being the first started (the seed). */
  https: string[]
  close(): Promise<void>
}

const WORKER = fileURLToPath(new URL('./multi-agent-worker.ts', import.meta.url))

/**
 * Starts `n` agents, `perProcess` per `multi-agent-worker.ts` process: first one agent alone (the
 * seed, bootstrapping Raft when `bootstrap`), then the others joining through it, two worker
 * processes at a time (many cold tsx starts at once starve a small machine). Workers get a pipe on
 * stdin, so they exit with the bench even if it is killed.
 */
export async function startWorkerCluster(opts: {
  n: number
  perProcess: number
  /** Agent names are `<prefix><worker>-<i>`. */
  prefix: string
  bootstrap?: boolean
}): Promise<BenchCluster> {
  const tc = new TestCluster() // for its temp dir and cluster key; its agent list stays empty
  const children: ChildProcess[] = []
  const close = async (): Promise<void> => {
    await Promise.all(
      children.map(
        (c) =>
          new Promise<void>((resolve) => {
            if (c.exitCode !== null || c.signalCode !== null) return resolve()
            c.once('exit', () => resolve())
            c.kill('SIGKILL')
          }),
      ),
    )
    await tc.close()
  }
  let key = ''
  const startWorker = (count: number, prefix: string, bootstrap: boolean, seed?: string) => {
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', WORKER, tc.dir, key, String(count), prefix, ...(seed ? [seed] : [])],
      {
        stdio: ['pipe', 'pipe', 'inherit'],
        // Every agent gets the cluster's management token as initial management token (ACLs are
        // on): the first leader creates it, and the bench's requests carry it (`apiFetch`).
        env: {
          ...process.env,
          PEERMESH_BENCH_BOOTSTRAP: bootstrap ? '1' : '0',
          PEERMESH_ACL_INITIAL_MANAGEMENT_TOKEN: tc.managementToken,
        },
      },
    )
    children.push(child)
    const out: AgentEndpoint[] = []
    return new Promise<AgentEndpoint[]>((resolve, reject) => {
      const lines = createInterface({ input: child.stdout! })
      lines.on('line', (line) => {
        out.push(JSON.parse(line) as AgentEndpoint)
        if (out.length === count) resolve(out)
      })
      child.once('exit', (code) => reject(new Error(`agent worker ${prefix} exited with ${code}`)))
    })
  }
  try {
    key = await tc.writeClusterKey()
    const [first] = await startWorker(1, `${opts.prefix}0-`, opts.bootstrap ?? false)
    const https = [first!.http]
    const batches: { count: number; prefix: string }[] = []
    for (let w = 1, left = opts.n - 1; left > 0; w++) {
      const count = Math.min(opts.perProcess, left)
      batches.push({ count, prefix: `${opts.prefix}${w}-` })
      left -= count
    }
    for (let i = 0; i < batches.length; i += 2) {
      const started = await Promise.all(
        batches.slice(i, i + 2).map((b) => startWorker(b.count, b.prefix, false, first!.address)),
      )
      for (const group of started) for (const a of group) https.push(a.http)
    }
    return { https, close }
  } catch (err) {
    await close()
    throw err
  }
}

/** `fetch` of an agent's HTTP API with a time limit, carrying the management token. */
export function apiFetch(
  http: string,
  path: string,
  timeoutMs: number,
  init?: RequestInit,
): Promise<Response> {
  return fetch(`http://${http}${path}`, {
    ...init,
    headers: { ...authHeaders(), ...(init?.headers as Record<string, string> | undefined) },
    signal: AbortSignal.timeout(timeoutMs),
  })
}

/** The blocking-query index (`X-Peermesh-Index`) and JSON body of a GET answered at once. */
export async function currentView<T>(http: string, path: string): Promise<{ index: string; body: T }> {
  const res = await apiFetch(http, path, 20_000)
  if (!res.ok) throw new Error(`${http}: ${path} answered ${res.status}`)
  return { index: res.headers.get('x-peermesh-index') ?? '0', body: (await res.json()) as T }
}

/**
 * Watches one agent with blocking queries (`path?index=I&wait=W`, re-issued with the index of each
 * reply) until a reply's body satisfies `done`; resolves with the performance.now() at which that
 * reply was read and the index it carried, or undefined at the deadline. No polling: each query
 * returns when the agent's state passes the index. A query that fails on the connection (an
 * agent-side keep-alive close racing the next query, seen under heavy load) is re-issued; the time
 * it costs counts.
 */
export async function watchBlocking<T>(
  http: string,
  path: string,
  index: string,
  done: (body: T) => boolean,
  deadline: number,
): Promise<{ at: number; index: string } | undefined> {
  let idx = index
  const sep = path.includes('?') ? '&' : '?'
  while (performance.now() < deadline) {
    const waitS = Math.max(1, Math.ceil((deadline - performance.now()) / 1000))
    let res: Response
    try {
      res = await apiFetch(http, `${path}${sep}index=${idx}&wait=${waitS}s`, waitS * 1000 + 5_000)
    } catch (err) {
      if ((err as Error).name === 'TimeoutError' || performance.now() >= deadline) return undefined
      await new Promise((r) => setTimeout(r, 10))
      continue
    }
    if (!res.ok) throw new Error(`${http}: blocking query ${path} answered ${res.status}`)
    const body = (await res.json()) as T
    const at = performance.now()
    idx = res.headers.get('x-peermesh-index') ?? idx
    if (done(body)) return { at, index: idx }
  }
  return undefined
}
