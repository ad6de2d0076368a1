/**
 * bench:policy-propagation — time from an intention write at a non-leader agent to the moment every
 * agent has applied it to its local committed state (what its proxies authorize with).
 *
 * For each N (5, 20): N real agents on 127.0.0.1 (one per process at N = 5; several per process
 * above, `--per-process K`, default 4), the first bootstrapping Raft, the others joining as
 * learners (autopilot promotes up to 3 voters). Writes alternate the action of one intention
 * (`PUT /v1/connect/intentions/exact?source=bench-a&destination=bench-b`) through an agent that is
 * not the leader, so each one is forwarded to the leader, committed, and replicated to all.
 * Every agent is watched with a blocking query (`GET /v1/connect/intentions?index=I&wait=W`,
 * re-issued with each reply's index until the reply shows the new action); a write's propagation
 * time is from just before it is sent to the last agent's reply showing it. No polling.
 *
 * Flags: --sizes 5,20  --writes 200  --warmup 10 (uncounted)  --per-process K  --json.
 * JSON (last line): propagation_ms_p50/_p99/_max (N = 20), the same with `_n5`, `writes`, `missed`.
 *
 * Runs itself as the agent worker: `tsx bench/policy-propagation.ts --worker DIR KEY COUNT PREFIX
 * BOOTSTRAP(0|1) [SEED]` starts COUNT agents in one process (the first bootstrapping Raft when
 * BOOTSTRAP is 1) and prints one JSON line `{ name, http, address }` per agent.
 */
import '../src/node/polyfill.ts'
import { type ChildProcess, spawn } from 'node:child_process'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { TestCluster, waitFor } from '../test/e2e/harness.ts'
import { argValue, emitJson, progress, quantile, table } from './lib.ts'

const SELF = fileURLToPath(import.meta.url)
const SOURCE = 'bench-a'
const DESTINATION = 'bench-b'
/** A write not seen everywhere by then counts as missed (recorded at this value). */
const WRITE_TIMEOUT_MS = 15_000
/** Writes slower than this are reported on stderr with their slowest agents. */
const SLOW_MS = 100

/** The cluster being measured, killed on Ctrl-C too. */
let active: Cluster | undefined

if (process.argv[2] === '--worker') await runWorker(process.argv.slice(3))
else await runBench()

async function runWorker(args: string[]): Promise<void> {
  const [dir, keyFile, countStr, prefix, bootstrap, seed] = args
  const pino = (await import('pino')).default
  const { resolveAgentConfig } = await import('../src/node/config.ts')
  const { createAgent } = await import('../src/node/create-agent.ts')
  const log = pino({ level: 'silent' })
  const agents: { stop(): Promise<void> }[] = []
  for (let i = 0; i < Number(countStr); i++) {
    const name = `${prefix}${i}`
    const config = resolveAgentConfig(
      {},
      {
        name,
        dataDir: join(dir!, name),
        listen: ['/ip4/127.0.0.1/tcp/0'],
        http: '127.0.0.1:0',
        clusterKey: keyFile!,
        dns: 'off',
        ...(bootstrap === '1' && i === 0 ? { bootstrap: true } : {}),
        ...(seed ? { seed: [seed] } : {}),
      },
    )
    const { agent } = createAgent(config, log)
    await agent.start()
    agents.push(agent)
    const addr = agent.httpAddress!
    process.stdout.write(
      `${JSON.stringify({ name, http: `${addr.host}:${addr.port}`, address: agent.addresses()[0] })}\n`,
    )
  }
  const stop = (): void => {
    void Promise.all(agents.map((a) => a.stop().catch(() => {}))).finally(() => process.exit(0))
  }
  process.on('SIGTERM', stop)
  // The bench holds our stdin open: when it exits (even killed), so do we.
  process.stdin.on('close', stop)
  process.stdin.resume()
}

interface Cluster {
  https: string[]
  close(): Promise<void>
}

async function api(http: string, path: string, init?: RequestInit): Promise<Response> {
  return fetch(`http://${http}${path}`, { ...init, signal: AbortSignal.timeout(WRITE_TIMEOUT_MS + 5_000) })
}

async function startCluster(n: number, perProcess: number): Promise<Cluster> {
  const tc = new TestCluster() // for its temp dir and cluster key
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
  const key = await tc.writeClusterKey()
  const startWorker = (count: number, prefix: string, bootstrap: boolean, seed?: string) => {
    const child = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        SELF,
        '--worker',
        tc.dir,
        key,
        String(count),
        prefix,
        bootstrap ? '1' : '0',
        ...(seed ? [seed] : []),
      ],
      { stdio: ['pipe', 'pipe', 'inherit'] },
    )
    children.push(child)
    const out: { http: string; address: string }[] = []
    return new Promise<{ http: string; address: string }[]>((resolve, reject) => {
      const lines = createInterface({ input: child.stdout! })
      lines.on('line', (line) => {
        out.push(JSON.parse(line) as { http: string; address: string })
        if (out.length === count) resolve(out)
      })
      child.once('exit', (code) => reject(new Error(`agent worker ${prefix} exited with ${code}`)))
    })
  }
  try {
    const [first] = await startWorker(1, 'pp0-', true)
    const https = [first!.http]
    let left = n - 1
    // Two workers at a time: many cold tsx starts at once starve a small machine.
    const batches: { count: number; prefix: string }[] = []
    for (let w = 1; left > 0; w++) {
      const count = Math.min(perProcess, left)
      batches.push({ count, prefix: `pp${w}-` })
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

interface IntentionJson {
  source: string
  destination: string
  action: string
}

function actionIn(list: IntentionJson[]): string | undefined {
  return list.find((i) => i.source === SOURCE && i.destination === DESTINATION)?.action
}

async function current(http: string): Promise<{ index: string; action: string | undefined }> {
  const res = await api(http, '/v1/connect/intentions')
  if (!res.ok) throw new Error(`${http}: intentions answered ${res.status}`)
  return {
    index: res.headers.get('x-peermesh-index') ?? '0',
    action: actionIn((await res.json()) as IntentionJson[]),
  }
}

/** Blocking queries from `index` until a reply shows `want`; the reply's time and index. */
async function watch(
  http: string,
  index: string,
  want: string,
  deadline: number,
): Promise<{ at: number; index: string } | undefined> {
  let idx = index
  while (performance.now() < deadline) {
    const waitS = Math.max(1, Math.ceil((deadline - performance.now()) / 1000))
    const res = await api(http, `/v1/connect/intentions?index=${idx}&wait=${waitS}s`)
    if (!res.ok) throw new Error(`${http}: blocking query answered ${res.status}`)
    const body = (await res.json()) as IntentionJson[]
    const at = performance.now()
    idx = res.headers.get('x-peermesh-index') ?? idx
    if (actionIn(body) === want) return { at, index: idx }
  }
  return undefined
}

interface RaftStatus {
  id: string
  leader: string
  voters: string[]
  learners: string[]
}

interface Result {
  n: number
  perProcess: number
  times: number[]
  acks: number[]
  missed: number
}

async function measure(
  n: number,
  writes: number,
  warmup: number,
  perProcessFlag: string | undefined,
): Promise<Result> {
  const perProcess = perProcessFlag !== undefined ? Number(perProcessFlag) : n <= 5 ? 1 : 4
  progress(`N=${n}: starting ${n} agents, ${perProcess} per process`)
  const cluster = await startCluster(n, perProcess)
  active = cluster
  try {
    const { https } = cluster
    let lastReport = performance.now()
    const sts = await waitFor(
      `all ${n} agents in the raft configuration with one leader`,
      async () => {
        const all = await Promise.all(
          https.map(async (h) => (await (await api(h, '/v1/operator/raft/status')).json()) as RaftStatus),
        )
        const leader = all[0]?.leader
        if (performance.now() - lastReport > 10_000) {
          lastReport = performance.now()
          const sizes = all.map((s) => `${s.leader.slice(-4)}:${s.voters.length}+${s.learners.length}`)
          progress(
            `N=${n}: waiting for raft membership (leader:voters+learners per agent) ${sizes.join(' ')}`,
          )
        }
        const ok =
          leader !== undefined &&
          leader !== '' &&
          all.every((s) => s.leader === leader && s.voters.length + s.learners.length === n)
        return ok ? all : undefined
      },
      // Generous: on a loaded 2-core machine 20 agents' learners join over a minute or more.
      180_000,
      200,
    )
    // Write through the last agent that is not the leader (a learner when there are any).
    const writerIdx = sts
      .map((s, i) => ({ s, i }))
      .reverse()
      .find(({ s }) => s.leader !== s.id)!.i
    const writer = https[writerIdx]!
    progress(`N=${n}: converged (${sts[0]!.voters.length} voters); writing through agent ${writerIdx}`)
    const put = (action: string) =>
      api(writer, `/v1/connect/intentions/exact?source=${SOURCE}&destination=${DESTINATION}`, {
        method: 'PUT',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ action }),
      })
    const first = await put('deny')
    if (!first.ok) throw new Error(`first write answered ${first.status}: ${await first.text()}`)
    const indexes = await waitFor(
      `first intention on all ${n} agents`,
      async () => {
        const now = await Promise.all(https.map(current))
        return now.every((c) => c.action === 'deny') ? now.map((c) => c.index) : undefined
      },
      30_000,
      50,
    )
    const times: number[] = []
    /** Time until the writer's HTTP reply (committed and applied on the leader), for comparison. */
    const acks: number[] = []
    let missed = 0
    let action = 'deny'
    for (let i = -warmup; i < writes; i++) {
      const want = action === 'allow' ? 'deny' : 'allow'
      const t0 = performance.now()
      const deadline = t0 + WRITE_TIMEOUT_MS
      const watchers = https.map((h, k) => watch(h, indexes[k]!, want, deadline))
      const res = await put(want)
      const acked = performance.now() - t0
      if (!res.ok) throw new Error(`write answered ${res.status}: ${await res.text()}`)
      const seen = await Promise.all(watchers)
      action = want
      const counted = i >= 0
      if (seen.some((s) => s === undefined)) {
        if (counted) {
          missed++
          times.push(WRITE_TIMEOUT_MS)
        }
        const now = await Promise.all(https.map(current))
        for (const [k, c] of now.entries()) indexes[k] = c.index
        continue
      }
      for (const [k, s] of seen.entries()) indexes[k] = s!.index
      if (!counted) continue
      const each = seen.map((s) => s!.at - t0)
      const worst = Math.max(...each)
      times.push(worst)
      acks.push(acked)
      if (worst > SLOW_MS) {
        const order = each.map((ms, k) => ({ k, ms })).sort((a, b) => b.ms - a.ms)
        progress(
          `N=${n}: write ${i + 1} slow: ${order
            .slice(0, 3)
            .map((o) => `agent ${o.k} ${o.ms.toFixed(0)} ms`)
            .join(', ')}; median agent ${order[order.length >> 1]!.ms.toFixed(0)} ms`,
        )
      }
      if ((i + 1) % 50 === 0 || i + 1 === writes) {
        progress(
          `N=${n}: ${i + 1}/${writes} writes, p50 ${quantile(times, 0.5).toFixed(1)} ms, p99 ${quantile(times, 0.99).toFixed(1)} ms`,
        )
      }
    }
    return { n, perProcess, times, acks, missed }
  } finally {
    active = undefined
    await cluster.close()
  }
}

async function runBench(): Promise<void> {
  const sizes = (argValue('sizes', '5,20') ?? '5,20').split(',').map(Number)
  const writes = Number(argValue('writes', '200'))
  const warmup = Number(argValue('warmup', '10'))
  const perProcessFlag = argValue('per-process')
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      progress(`${sig}: stopping agents`)
      void (active?.close() ?? Promise.resolve()).finally(() => process.exit(130))
    })
  }
  const results: Result[] = []
  for (const n of sizes) results.push(await measure(n, writes, warmup, perProcessFlag))
  const round = (x: number): number => Math.round(x * 10) / 10
  table(
    ['agents', 'per process', 'writes', 'p50 ms', 'p99 ms', 'max ms', 'write ack p50 ms', 'missed'],
    results.map((r) => [
      r.n,
      r.perProcess,
      r.times.length,
      round(quantile(r.times, 0.5)),
      round(quantile(r.times, 0.99)),
      round(Math.max(...r.times)),
      round(quantile(r.acks, 0.5)),
      r.missed,
    ]),
  )
  const figures: Record<string, unknown> = { writes }
  for (const r of results) {
    const suffix = r.n === 20 ? '' : `_n${r.n}`
    figures[`propagation_ms_p50${suffix}`] = round(quantile(r.times, 0.5))
    figures[`propagation_ms_p99${suffix}`] = round(quantile(r.times, 0.99))
    figures[`propagation_ms_max${suffix}`] = round(Math.max(...r.times))
    figures[`write_ack_ms_p50${suffix}`] = round(quantile(r.acks, 0.5))
    figures[`missed${suffix}`] = r.missed
    figures[`agents_per_process${suffix}`] = r.perProcess
  }
  emitJson(figures)
  process.exit(0)
}
