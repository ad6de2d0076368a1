/**
 * `npm run chaos [-- --scenario NAME ... --rounds N --short --json --keep-logs]`
 *
 * Real hosts: one network namespace per agent on a bridge (10.77.0.0/24, inside namespaces only),
 * faults injected with iptables inside the namespaces (see net.ts). Progress on stderr, one line of
 * figures per scenario and a summary on stdout, and with `--json` the last stdout line is one JSON
 * object. Exit code 0 when every check of every scenario run held, 1 when one failed, 0 with a
 * "skipped" line when network namespaces cannot be used here.
 */
import { closeSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { cpus, loadavg, tmpdir } from 'node:os'
import { log, stopAllSync } from './cluster.ts'
import { cleanupStale, killAll, whyNoNetns } from './net.ts'
import { median, SCENARIOS, type ScenarioResult, SHORT_SET } from './scenarios.ts'

const USAGE = `usage: npm run chaos -- [--scenario NAME]... [--rounds N] [--short] [--json] [--keep-logs]
scenarios: ${Object.keys(SCENARIOS).join(', ')}
  --short      the CI form: ${SHORT_SET.join(', ')}, fewer rounds and shorter fault windows
  --rounds N   rounds per scenario (default: 3, with --short: 3 for kill-leader and bootstrap-all, 1 otherwise)
  --json       the last stdout line is one JSON object of the figures
  --keep-logs  keep the agents' data dirs and logs (always kept for a failed scenario)
  --cleanup    only remove what a killed run left (pmc-* namespaces and their processes, and
               every kept data dir /tmp/pmc-chaos-*), then exit (every run does the first part itself)
needs root, iproute2 (ip netns) and iptables (nf_tables or legacy); delay-loss also python3`

interface Args {
  scenarios: string[]
  rounds?: number
  short: boolean
  json: boolean
  keepLogs: boolean
  cleanupOnly: boolean
}

function parseArgs(argv: string[]): Args {
  const a: Args = { scenarios: [], short: false, json: false, keepLogs: false, cleanupOnly: false }
  for (let i = 0; i < argv.length; i++) {
    const x = argv[i]!
    if (x === '--scenario') {
      const v = argv[++i]
      if (v === undefined || !(v in SCENARIOS))
        fail(`--scenario: expected one of ${Object.keys(SCENARIOS).join(', ')}`)
      a.scenarios.push(v)
    } else if (x === '--rounds') {
      const v = Number(argv[++i])
      if (!Number.isInteger(v) || v < 1 || v > 100) fail('--rounds: expected a whole number from 1 to 100')
      a.rounds = v
    } else if (x === '--short') a.short = true
    else if (x === '--json') a.json = true
    else if (x === '--keep-logs') a.keepLogs = true
    else if (x === '--cleanup') a.cleanupOnly = true
    else if (x === '--help' || x === '-h') {
      process.stdout.write(`${USAGE}\n`)
      process.exit(0)
    } else fail(`unknown argument ${x}`)
  }
  if (a.scenarios.length === 0) a.scenarios = a.short ? [...SHORT_SET] : Object.keys(SCENARIOS)
  return a
}

function fail(msg: string): never {
  process.stderr.write(`chaos: ${msg}\n${USAGE}\n`)
  process.exit(2)
}

const LOCK = '/run/pmc-chaos.lock'

/** One chaos run at a time on a machine: the names it uses are fixed. */
function takeLock(): void {
  try {
    const fd = openSync(LOCK, 'wx')
    writeFileSync(fd, String(process.pid))
    closeSync(fd)
  } catch {
    const pid = Number(readFileSync(LOCK, 'utf8'))
    let alive = false
    try {
      process.kill(pid, 0)
      alive = pid !== process.pid
    } catch {
      alive = false
    }
    if (alive) fail(`another chaos run (pid ${pid}) holds ${LOCK}`)
    writeFileSync(LOCK, String(process.pid))
  }
}

function releaseLock(): void {
  try {
    if (Number(readFileSync(LOCK, 'utf8')) === process.pid) rmSync(LOCK)
  } catch {
    // none
  }
}

function sum(rs: ScenarioResult[], key: string): number | null {
  const xs = rs.map((r) => r.figures[key]).filter((v): v is number => typeof v === 'number')
  return xs.length ? xs.reduce((s, v) => s + v, 0) : null
}

function med(rs: ScenarioResult[], key: string): number | null {
  const xs = rs.map((r) => r.figures[key]).filter((v): v is number => typeof v === 'number')
  return xs.length ? median(xs) : null
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2))
  if (args.cleanupOnly) {
    takeLock()
    cleanupStale()
    const dirs = readdirSync(tmpdir()).filter((d) => d.startsWith('pmc-chaos-'))
    for (const d of dirs) rmSync(join(tmpdir(), d), { recursive: true, force: true })
    releaseLock()
    process.stdout.write(
      `chaos: removed leftover pmc-* namespaces, their processes and ${dirs.length} data dirs\n`,
    )
    return
  }
  const why = whyNoNetns()
  if (why !== undefined) {
    process.stdout.write(
      `chaos: skipped: ${why}\nchaos: 0 passed, 0 failed, ${args.scenarios.length} skipped\n`,
    )
    const none = {
      acked_writes_lost: null,
      minority_acks: null,
      terms_with_two_leaders: null,
      false_deaths: null,
    }
    const none2 = { new_leader_ms: null, converge_ms: null, failed_requests: null, scenarios: {} }
    if (args.json) process.stdout.write(`${JSON.stringify({ ok: true, skipped: why, ...none, ...none2 })}\n`)
    return
  }
  takeLock()
  let cleaned = false
  const cleanup = (): void => {
    if (cleaned) return
    cleaned = true
    stopAllSync()
    killAll()
    cleanupStale()
    releaseLock()
  }
  process.on('exit', cleanup)
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      process.stderr.write(`chaos: ${sig}, cleaning up\n`)
      cleanup()
      process.exit(130)
    })
  }
  const t0 = Date.now()
  const load0 = loadavg()
  const results: ScenarioResult[] = []
  for (const name of args.scenarios) {
    const rounds =
      args.rounds ?? (args.short ? (name === 'kill-leader' || name === 'bootstrap-all' ? 3 : 1) : 3)
    log(`=== ${name} (rounds ${rounds}${args.short ? ', short' : ''})`)
    const ts = Date.now()
    let r: ScenarioResult
    try {
      r = await SCENARIOS[name]!({ rounds, short: args.short, keepLogs: args.keepLogs })
    } catch (err) {
      r = { name, ok: false, failures: [`error: ${(err as Error).stack ?? String(err)}`], figures: {} }
    }
    r.figures.seconds = Math.round((Date.now() - ts) / 100) / 10
    results.push(r)
    log(
      `=== ${name}: ${r.ok ? 'ok' : 'FAILED'} in ${r.figures.seconds} s${r.logs ? ` (logs: ${r.logs})` : ''}`,
    )
    for (const f of r.failures) log(`    ${f}`)
    const shown = Object.entries(r.figures)
      .filter(([, v]) => typeof v === 'number' || typeof v === 'boolean' || v === null)
      .map(([k, v]) => `${k}=${v}`)
      .join(' ')
    process.stdout.write(`${name.padEnd(17)} ${r.ok ? 'ok    ' : 'FAILED'} ${shown}\n`)
    for (const f of r.failures) process.stdout.write(`  - ${f.split('\n')[0]}\n`)
  }
  cleanup()
  const summary = {
    ok: results.every((r) => r.ok),
    acked_writes_lost: sum(results, 'acked_writes_lost'),
    minority_acks: sum(results, 'minority_acks'),
    terms_with_two_leaders: sum(results, 'terms_with_two_leaders'),
    false_deaths: sum(results, 'false_deaths'),
    new_leader_ms: med(results, 'new_leader_ms'),
    converge_ms: med(results, 'converge_ms'),
    failed_requests: sum(results, 'failed_requests'),
    seconds: Math.round((Date.now() - t0) / 1000),
    short: args.short,
    load_average_before: load0.map((x) => Math.round(x * 100) / 100),
    load_average_after: loadavg().map((x) => Math.round(x * 100) / 100),
    cpus: cpus().length,
    node: process.version,
    scenarios: Object.fromEntries(
      results.map((r) => [
        r.name,
        { ok: r.ok, failures: r.failures, ...r.figures, ...(r.logs ? { logs: r.logs } : {}) },
      ]),
    ),
  }
  process.stdout.write(
    `summary: ${summary.ok ? 'ok' : 'FAILED'} acked_writes_lost=${summary.acked_writes_lost} minority_acks=${summary.minority_acks} ` +
      `terms_with_two_leaders=${summary.terms_with_two_leaders} false_deaths=${summary.false_deaths} new_leader_ms=${summary.new_leader_ms} ` +
      `converge_ms=${summary.converge_ms} failed_requests=${summary.failed_requests} (${summary.seconds} s, load ${summary.load_average_after.join(' ')})\n`,
  )
  // The plain closing line CI reads ("N passed, N failed"), then the JSON as the very last line.
  const passed = results.filter((r) => r.ok).length
  process.stdout.write(`chaos: ${passed} passed, ${results.length - passed} failed\n`)
  if (args.json) process.stdout.write(`${JSON.stringify(summary)}\n`)
  process.exitCode = summary.ok ? 0 : 1
}

main().catch((err: unknown) => {
  process.stderr.write(`chaos: ${(err as Error).stack ?? String(err)}\n`)
  killAll()
  try {
    cleanupStale()
  } catch {
    // best effort
  }
  releaseLock()
  process.exit(1)
})
