/**
 * bench:footprint — what one agent costs, ours next to HashiCorp Serf's, in the same run on the
 * same machine (issue #14).
 *
 * - Start: spawn to the first 200 from `GET /v1/agent/self` (ours, `node bin/peermesh.js agent`)
 *   and to the first RPC handshake answered (Serf, `serf agent`): a lone agent with a fresh data
 *   dir, the API tried every 10 ms, killed once it answered; `--starts` times (default 5) for each,
 *   interleaved, median.
 * - CLI: wall time of `node bin/peermesh.js info --http ...` (token in $PEERMESH_HTTP_TOKEN) and of
 *   `serf members -rpc-addr=...` against a three-agent cluster of each, `--cli` times (default 20)
 *   each, interleaved, median.
 * - Idle: the two three-agent clusters (ours founded with `--bootstrap-expect 3`, joined and with
 *   a leader; Serf joined), after `--settle` seconds (default 5), sampled every second for
 *   `--window` seconds (default 60): RSS from /proc/PID/status VmRSS (beside it PSS and anonymous
 *   memory from /proc/PID/smaps_rollup: RSS counts every page of the shared Node binary the agent
 *   touched, PSS divides shared pages among the processes mapping them, anonymous memory is the
 *   agent's alone), CPU from /proc/PID/stat
 *   utime + stime deltas, per agent process with its descendants. RSS: median (and mean) of every
 *   1 s sample of the three agents. CPU in percent of one core: the mean over the window (CPU time
 *   / elapsed time) per agent, averaged over the three; the median of the 1 s intervals beside it
 *   (at 100 ticks a second one interval is a multiple of 1 %, so the mean is the figure to read).
 *   Wake-ups a second (voluntary context switches of every thread, footprint-proc.ts) beside it:
 *   at rest most of an agent's CPU is being woken, and the count does not vary with load.
 * - Sidecar: two one-agent clusters, control and subject, under the same light load (`--rate`,
 *   default 10 requests a second, to each), sampled over two windows: first both without a
 *   sidecar (load to the app), then with the subject's service behind one sidecar (load through
 *   its inbound listener, mutual TLS). `sidecar_rss_delta_mib` = (subject after - before) -
 *   (control after - before), medians (footprint-sidecar.ts).
 *
 * Every agent of ours runs with ACLs on and an initial management token (a config file passed with
 * `--config`), so the figures hold whichever way ACLs default. Ours runs the compiled build
 * (dist/, `npm run build`) when it is fresh; the start and CLI figures of the TypeScript through
 * tsx (`PEERMESH_FROM_SOURCE=1`) are measured beside them unless `--no-tsx`. Load average
 * (1 min) is printed with each part: the targets hold on a quiet machine.
 *
 * `--gossip-profile lan|local|wan` (default `lan`, the agents' default): the profile of both idle
 * clusters, ours (`--gossip-profile`) and Serf's (`-profile`), so that the trade of detection time
 * for idle cost reads side by side; the JSON says which (`gossip_profile`).
 *
 * `--agent-config JSON` adds to our agents' config file (not Serf's), e.g. `gossipLan` and
 * `performance.raftMultiplier`, the explicit trades of detection and failover time for idle cost;
 * the JSON echoes it (`agent_config`).
 *
 * Flags: --window S (60), --settle S (5), --starts N (5), --cli N (20), --rate R (10), --no-tsx,
 * --no-sidecar, --gossip-profile P, --agent-config JSON, --json.
 */
import { randomUUID } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { loadavg } from 'node:os'
import { join } from 'node:path'
import { TestCluster, waitFor } from '../test/e2e/harness.ts'
import {
  compiledBuildIsFresh,
  OurAgent,
  type OurAgentOptions,
  type OursBuild,
  SerfProcess,
  timeOurCli,
  timeSerfCli,
} from './footprint-agents.ts'
import { summarize, type Usage, UsageSampler, type UsageSummary } from './footprint-proc.ts'
import { LightLoad, type SidecarSubject, startSidecarSubject } from './footprint-sidecar.ts'
import { agentConfigArg, argValue, emitJson, gossipProfileArg, median, progress, table } from './lib.ts'
import { serfAvailable } from './peers/serf.ts'

function numberArg(name: string, fallback: string, min: number): number {
  const v = Number(argValue(name, fallback))
  if (!Number.isFinite(v) || v < min) throw new Error(`--${name}: expected a number >= ${min}`)
  return v
}

const windowS = numberArg('window', '60', 2)
const settleS = numberArg('settle', '5', 0)
const starts = Math.round(numberArg('starts', '5', 1))
const cliCalls = Math.round(numberArg('cli', '20', 1))
const rate = numberArg('rate', '10', 0.1)
const withTsx = !process.argv.includes('--no-tsx')
const withSidecar = !process.argv.includes('--no-sidecar')
const N = 3
const PROFILE = gossipProfileArg('lan')
/** `--agent-config JSON`: more of our agents' config file, beside the bench's ACL settings. */
const AGENT_CONFIG = agentConfigArg()

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))
const load1 = (): number => +loadavg()[0]!.toFixed(2)
const round = (x: number, digits = 1): number => +x.toFixed(digits)

/** Samples the named processes for the window; their figures by name. */
async function sampleWindow(pids: Record<string, number>): Promise<Map<string, Usage>> {
  const sampler = new UsageSampler(pids)
  sampler.start()
  const every = Math.max(5, Math.round(windowS / 6))
  for (let s = 0; s < windowS; s += every) {
    await sleep(Math.min(every, windowS - s) * 1000)
    progress(`  ${Math.min(windowS, s + every)}/${windowS} s`)
  }
  return sampler.stop()
}

/** What every part of the run shares. */
interface Run {
  /** The build the headline figures are of: dist when fresh, else tsx. */
  build: OursBuild
  /** The builds whose start and CLI are measured (dist and tsx, or the one). */
  builds: OursBuild[]
  token: string
  dir: string
  clusterKeyFile: string
  configFile: string
  /** Options of a new agent with its own fresh data dir. */
  agent(name: string, build: OursBuild, extra?: Partial<OurAgentOptions>): OurAgentOptions
  /** Load average (1 min) at points of the run. */
  load: Record<string, number>
  /** The figures of --json. */
  out: Record<string, number | string>
}

/** Lone agents started `starts` times each, interleaved; spawn → API times (ms) by system. */
async function measureStarts(run: Run): Promise<Record<string, number[]>> {
  progress(`[start] ${starts} starts of each (ours: ${run.builds.join(', ')}; serf), load ${load1()}`)
  const ms: Record<string, number[]> = { serf: [], dist: [], tsx: [] }
  for (let i = 0; i < starts; i++) {
    for (const b of run.builds) {
      const a = await OurAgent.start(
        run.agent(`start-${b}-${i}`, b, { extraArgs: ['--bootstrap-expect', '3'] }),
      )
      ms[b]!.push(a.startMs)
      await a.kill()
    }
    const s = await SerfProcess.start(`start-serf-${i}`)
    ms['serf']!.push(s.startMs)
    await s.kill()
    progress(
      `[start] ${i + 1}/${starts}: ${run.builds.map((b) => `ours (${b}) ${ms[b]!.at(-1)!.toFixed(0)} ms`).join(', ')}, serf ${ms['serf']!.at(-1)!.toFixed(0)} ms`,
    )
  }
  run.load['after_starts'] = load1()
  return ms
}

/** Starts our N agents (founding Raft together) and N Serf agents; resolves once both converged. */
async function startClusters(run: Run, ours: OurAgent[], serf: SerfProcess[]): Promise<void> {
  progress(
    `[clusters] starting ${N} of our agents (${run.build}) and ${N} serf agents, gossip profile ${PROFILE}`,
  )
  const founder = ['--bootstrap-expect', String(N), '--gossip-profile', PROFILE]
  ours.push(await OurAgent.start(run.agent('ours-1', run.build, { extraArgs: founder })))
  const seed = (await ours[0]!.ok<{ Addresses: string[] }>('GET', '/v1/agent/self')).Addresses[0]!
  for (let i = 2; i <= N; i++)
    ours.push(await OurAgent.start(run.agent(`ours-${i}`, run.build, { seeds: [seed], extraArgs: founder })))
  serf.push(await SerfProcess.start('serf-1', undefined, PROFILE))
  for (let i = 2; i <= N; i++) serf.push(await SerfProcess.start(`serf-${i}`, serf[0]!.bind, PROFILE))
  await waitFor(
    `our ${N} agents alive to each other, with one leader that accepts the management token`,
    async () => {
      const views = await Promise.all(
        ours.map(async (a) => ({
          members: await a.call('GET', '/v1/agent/members'),
          raft: await a.call('GET', '/v1/operator/raft/status', { token: run.token }),
        })),
      )
      const leaders = new Set(views.map((v) => (v.raft.body as { leader?: string }).leader))
      const ok = views.every(
        (v) =>
          v.raft.status === 200 &&
          v.members.status === 200 &&
          (v.members.body as { State: string }[]).filter((m) => m.State === 'alive').length === N,
      )
      return ok && leaders.size === 1 && !leaders.has('') ? true : undefined
    },
    120_000,
    250,
  )
  await waitFor(
    `${N} serf agents alive to each other`,
    async () => {
      const views = await Promise.all(serf.map((s) => s.rpc.members()))
      return views.every((v) => v.filter((m) => m.Status === 'alive').length === N) ? true : undefined
    },
    60_000,
    100,
  )
}

/** CLI calls against the clusters, `cliCalls` of each, interleaved: wall times (ms) by system. */
async function measureCli(
  run: Run,
  ours: OurAgent[],
  serf: SerfProcess[],
): Promise<Record<string, number[]>> {
  progress(`[cli] ${cliCalls} calls of each, load ${load1()}`)
  const ms: Record<string, number[]> = { serf: [], dist: [], tsx: [] }
  for (let i = 0; i < cliCalls; i++) {
    for (const b of run.builds) ms[b]!.push(await timeOurCli(ours[i % N]!.http, run.token, b))
    ms['serf']!.push(await timeSerfCli(serf[i % N]!.rpcPort))
  }
  run.load['after_cli'] = load1()
  return ms
}

/** The idle clusters over the window: ours and Serf's figures. */
async function measureIdle(
  run: Run,
  ours: OurAgent[],
  serf: SerfProcess[],
): Promise<{ ours: UsageSummary; serf: UsageSummary }> {
  progress(`[idle] settling ${settleS} s, then sampling ${N} + ${N} agents for ${windowS} s`)
  await sleep(settleS * 1000)
  run.load['idle_start'] = load1()
  const usage = await sampleWindow(
    Object.fromEntries([...ours.map((a) => [a.name, a.pid]), ...serf.map((s) => [s.name, s.pid])]),
  )
  run.load['idle_end'] = load1()
  for (const [name, u] of usage) {
    const one = summarize([u])
    progress(
      `[idle] ${name}: RSS ${one.rssMedianMib.toFixed(1)} MiB (median; PSS ${one.pssMedianMib.toFixed(1)}, anonymous ${one.anonMedianMib.toFixed(1)}), CPU ${one.cpuMeanPct.toFixed(2)} % (mean), ${one.wakeUpsPerS.toFixed(1)} wake-ups/s, ${u.processes} process(es)`,
    )
  }
  return {
    ours: summarize(ours.map((a) => usage.get(a.name)!)),
    serf: summarize(serf.map((s) => usage.get(s.name)!)),
  }
}

/** Start, CLI and idle, ours and Serf's: the rows of the first table. */
async function measureAgents(run: Run): Promise<(string | number)[][]> {
  const startMs = await measureStarts(run)
  const ours: OurAgent[] = []
  const serf: SerfProcess[] = []
  let cliMs: Record<string, number[]>
  let idle: { ours: UsageSummary; serf: UsageSummary }
  try {
    await startClusters(run, ours, serf)
    cliMs = await measureCli(run, ours, serf)
    idle = await measureIdle(run, ours, serf)
  } finally {
    await Promise.all([...ours.map((a) => a.kill()), ...serf.map((s) => s.kill())])
  }
  const start = { ours: median(startMs[run.build]!), serf: median(startMs['serf']!) }
  const cli = { ours: median(cliMs[run.build]!), serf: median(cliMs['serf']!) }
  const rows = [
    row(`start → API, ms (median of ${starts})`, start.ours, start.serf),
    row(`CLI call, ms (median of ${cliCalls})`, cli.ours, cli.serf),
  ]
  if (run.build === 'dist' && run.builds.includes('tsx')) {
    const tsx = { start: median(startMs['tsx']!), cli: median(cliMs['tsx']!) }
    rows.push(
      row('  the same through tsx: start → API, ms', tsx.start, start.serf),
      row('  the same through tsx: CLI call, ms', tsx.cli, cli.serf),
    )
    Object.assign(run.out, { start_ms_ours_tsx: Math.round(tsx.start), cli_ms_ours_tsx: Math.round(tsx.cli) })
  }
  rows.push(
    row('idle RSS per agent, MiB (median of 1 s samples)', idle.ours.rssMedianMib, idle.serf.rssMedianMib),
    row('idle RSS per agent, MiB (mean)', idle.ours.rssMeanMib, idle.serf.rssMeanMib),
    row('  of it PSS (shared pages divided), MiB (median)', idle.ours.pssMedianMib, idle.serf.pssMedianMib),
    row('  of it anonymous (its own), MiB (median)', idle.ours.anonMedianMib, idle.serf.anonMedianMib),
    row('idle CPU per agent, % of a core (mean over window)', idle.ours.cpuMeanPct, idle.serf.cpuMeanPct),
    row('idle CPU per agent, % of a core (median of 1 s)', idle.ours.cpuMedianPct, idle.serf.cpuMedianPct),
    row('idle wake-ups per agent, per second (all threads)', idle.ours.wakeUpsPerS, idle.serf.wakeUpsPerS),
  )
  Object.assign(run.out, {
    start_ms_ours: Math.round(start.ours),
    start_ms_serf: Math.round(start.serf),
    start_ratio: round(start.ours / start.serf, 2),
    cli_ms_ours: Math.round(cli.ours),
    cli_ms_serf: Math.round(cli.serf),
    cli_ratio: round(cli.ours / cli.serf, 2),
    idle_rss_mib_ours: round(idle.ours.rssMedianMib),
    idle_rss_mib_serf: round(idle.serf.rssMedianMib),
    idle_rss_mib_mean_ours: round(idle.ours.rssMeanMib),
    idle_rss_mib_mean_serf: round(idle.serf.rssMeanMib),
    idle_pss_mib_ours: round(idle.ours.pssMedianMib),
    idle_pss_mib_serf: round(idle.serf.pssMedianMib),
    idle_anon_mib_ours: round(idle.ours.anonMedianMib),
    idle_anon_mib_serf: round(idle.serf.anonMedianMib),
    idle_cpu_pct_ours: round(idle.ours.cpuMeanPct, 2),
    idle_cpu_pct_serf: round(idle.serf.cpuMeanPct, 2),
    idle_cpu_pct_median_ours: round(idle.ours.cpuMedianPct, 2),
    idle_cpu_pct_median_serf: round(idle.serf.cpuMedianPct, 2),
    idle_wakeups_per_s_ours: round(idle.ours.wakeUpsPerS),
    idle_wakeups_per_s_serf: round(idle.serf.wakeUpsPerS),
  })
  return rows
}

/**
 * One agent before and after it gets one sidecar, a control agent beside it, under the same light
 * load (footprint-sidecar.ts): the second table.
 */
async function measureSidecar(run: Run): Promise<(string | number)[][]> {
  progress(`[sidecar] two one-agent clusters, control and subject, ${rate} req/s to each`)
  const base = { clusterKeyFile: run.clusterKeyFile, configFile: run.configFile, build: run.build }
  const started = await Promise.allSettled([
    startSidecarSubject('control', base, run.dir, run.token),
    startSidecarSubject('subject', base, run.dir, run.token),
  ])
  const agents = started.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []))
  const loads: LightLoad[] = []
  try {
    const failed = started.find((r) => r.status === 'rejected')
    if (failed !== undefined) throw failed.reason
    const [control, subject] = agents as [SidecarSubject, SidecarSubject]
    for (const a of agents) loads.push(new LightLoad(rate, () => a.request()))
    for (const l of loads) l.start()
    /** One window over both agents: their figures and the answered rates. */
    const window = async (
      label: string,
    ): Promise<{ control: UsageSummary; subject: UsageSummary; rates: number[] }> => {
      progress(`[sidecar] ${label}: settling ${settleS} s under load, then sampling for ${windowS} s`)
      await sleep(settleS * 1000)
      for (const l of loads) l.mark()
      run.load[`sidecar_${label}`] = load1()
      const usage = await sampleWindow({ control: control.agent.pid, subject: subject.agent.pid })
      return {
        control: summarize([usage.get('control')!]),
        subject: summarize([usage.get('subject')!]),
        rates: loads.map((l) => l.rate()),
      }
    }
    const before = await window('before')
    progress('[sidecar] registering api again on the subject, with a sidecar; its load now goes through it')
    await subject.addSidecar()
    const after = await window('after')
    for (const [i, l] of loads.entries())
      if (l.errors > 0)
        progress(`[sidecar] ${agents[i]!.agent.name}: ${l.errors} failed requests (${l.lastError})`)
    const rss = (u: UsageSummary): number => u.rssMedianMib
    const delta = rss(after.subject) - rss(before.subject) - (rss(after.control) - rss(before.control))
    const cpuDelta =
      after.subject.cpuMeanPct -
      before.subject.cpuMeanPct -
      (after.control.cpuMeanPct - before.control.cpuMeanPct)
    Object.assign(run.out, {
      sidecar_rss_delta_mib: round(delta),
      sidecar_rss_mib: round(rss(after.subject)),
      sidecar_rss_before_mib: round(rss(before.subject)),
      sidecar_control_rss_mib: round(rss(after.control)),
      sidecar_control_rss_before_mib: round(rss(before.control)),
      sidecar_cpu_pct: round(after.subject.cpuMeanPct, 2),
      sidecar_cpu_pct_before: round(before.subject.cpuMeanPct, 2),
      sidecar_cpu_delta_pct: round(cpuDelta, 2),
      sidecar_req_per_s: round(after.rates[1]!, 1),
      sidecar_failed_requests: loads[1]!.errors,
    })
    const figures = (label: string, u: UsageSummary, rps: number): (string | number)[] => [
      label,
      round(u.rssMedianMib),
      round(u.rssMeanMib),
      round(u.cpuMeanPct, 2),
      round(rps, 1),
    ]
    return [
      figures('control, window 1 (load → app)', before.control, before.rates[0]!),
      figures('control, window 2 (load → app)', after.control, after.rates[0]!),
      figures('subject, window 1 (load → app)', before.subject, before.rates[1]!),
      figures('subject, window 2 (one sidecar, load → inbound, mTLS)', after.subject, after.rates[1]!),
      ['sidecar delta (subject 2-1) - (control 2-1)', round(delta), '', round(cpuDelta, 2), ''],
    ]
  } finally {
    for (const l of loads) l.stop()
    await Promise.all(agents.map((a) => a.close()))
  }
}

async function main(): Promise<void> {
  if (!serfAvailable())
    throw new Error(
      'serf is not installed: apt-get install serf (the peer system runs in the same invocation)',
    )
  const compiled = compiledBuildIsFresh()
  const build: OursBuild = compiled ? 'dist' : 'tsx'
  if (!compiled)
    progress(
      'bench:footprint: dist/ is missing or older than src/, so bin/peermesh.js runs the TypeScript through tsx; run `npm run build` to measure the compiled build',
    )
  const tc = new TestCluster() // for its temp dir and cluster key; the agents are started here
  try {
    const token = randomUUID()
    const configFile = join(tc.dir, 'acl.json')
    writeFileSync(
      configFile,
      JSON.stringify({ ...AGENT_CONFIG, acl: { enabled: true, initialManagementToken: token } }),
      { mode: 0o600 },
    )
    const clusterKeyFile = await tc.writeClusterKey()
    let dirs = 0
    const run: Run = {
      build,
      builds: compiled && withTsx ? ['dist', 'tsx'] : [build],
      token,
      dir: tc.dir,
      clusterKeyFile,
      configFile,
      agent: (name, b, extra = {}) => ({
        name,
        dataDir: join(tc.dir, `${name}-${dirs++}`),
        clusterKeyFile,
        configFile,
        build: b,
        ...extra,
      }),
      load: { start: load1() },
      out: {
        window_s: windowS,
        ours_build: build,
        gossip_profile: PROFILE,
        ...(Object.keys(AGENT_CONFIG).length > 0 ? { agent_config: JSON.stringify(AGENT_CONFIG) } : {}),
      },
    }
    const agentRows = await measureAgents(run)
    const sidecarRows = withSidecar ? await measureSidecar(run) : []
    run.load['end'] = load1()

    const loads = Object.entries(run.load).map(([k, v]) => `${k} ${v}`)
    const what = build === 'dist' ? 'compiled dist/' : 'TypeScript through tsx'
    process.stdout.write(
      `bench:footprint: ${N} agents each, gossip profile ${PROFILE}, window ${windowS} s; ours: ${what}; load average (1 min): ${loads.join(', ')}\n\n`,
    )
    table(['figure', 'ours', 'serf', 'ratio ours/serf'], agentRows)
    if (sidecarRows.length > 0) {
      process.stdout.write(`\none-agent clusters under ${rate} req/s, two windows of ${windowS} s:\n`)
      table(
        ['agent', 'RSS MiB (median)', 'RSS MiB (mean)', 'CPU % of a core (mean)', 'req/s answered'],
        sidecarRows,
      )
    }
    for (const [k, v] of Object.entries(run.load)) run.out[`load1_${k}`] = v
    emitJson(run.out)
  } finally {
    await tc.close()
  }
}

function row(label: string, ours: number, serf: number): (string | number)[] {
  const ratio = serf > 0 ? round(ours / serf, 2) : '-'
  return [label, round(ours, ours < 10 ? 2 : 0), round(serf, serf < 10 ? 2 : 0), ratio]
}

process.once('SIGINT', () => process.exit(130))
process.once('SIGTERM', () => process.exit(143))

main().catch((err: unknown) => {
  process.stderr.write(`bench:footprint: ${err instanceof Error ? err.message : String(err)}\n`)
  process.exit(1)
})
