/**
 * bench:founding-acl — issue #12's must-show, repeated: `--bootstrap-expect 3` with ACLs on, 3 agents
 * sharing the initial management token and 1 plain joiner (ACLs on, no token) whose peer id sorts
 * first, all four started at once as real processes on 127.0.0.1. A run passes when every agent
 * shows one configuration whose voters are the 3 token holders, every founder set written is that
 * one, and the joiner wrote none and is no voter (test/e2e/founding-acl-scenario.ts).
 *
 * Flags: --repeat 20 (runs)  --timeout-ms 60000 (per run)  --json.
 * JSON (last line): runs, passed, failed, and over the passed runs agents_up_ms_p50/_max (process
 * start) and one_configuration_ms_p50/_p95/_max (from starting the processes).
 */
import { runFoundingAcl } from '../test/e2e/founding-acl-scenario.ts'
import { argValue, emitJson, progress, quantile, table } from './lib.ts'

const repeat = Number(argValue('repeat', '20'))
const timeoutMs = Number(argValue('timeout-ms', '60000'))

const rows: (string | number)[][] = []
const up: number[] = []
const configured: number[] = []
const failures: string[] = []
for (let i = 1; i <= repeat; i++) {
  try {
    const run = await runFoundingAcl(`b${i}`, timeoutMs)
    up.push(run.startMs)
    configured.push(run.ms)
    const servers = run.configuration.split(',')
    const learners = servers.filter((s) => s.endsWith(':learner')).length
    rows.push([i, 'one configuration', run.startMs, run.ms, servers.length - learners, learners])
    progress(`run ${i}/${repeat}: ok, agents up ${run.startMs} ms, one configuration ${run.ms} ms`)
  } catch (err) {
    const why = String((err as Error).message ?? err).split('\n')[0]!
    failures.push(`run ${i}: ${why}`)
    rows.push([i, `FAILED: ${why.slice(0, 100)}`, '', '', '', ''])
    progress(`run ${i}/${repeat}: FAILED: ${why}`)
  }
}

table(['run', 'result', 'agents up ms', 'one configuration ms', 'voters', 'learners'], rows)
const figures = {
  runs: repeat,
  passed: configured.length,
  failed: failures.length,
  agents_up_ms_p50: Math.round(quantile(up, 0.5)),
  agents_up_ms_max: Math.max(...up),
  one_configuration_ms_p50: Math.round(quantile(configured, 0.5)),
  one_configuration_ms_p95: Math.round(quantile(configured, 0.95)),
  one_configuration_ms_max: Math.max(...configured),
}
process.stdout.write(
  `\n${figures.passed}/${repeat} runs: one configuration on every agent, the joiner never a voter\n`,
)
for (const f of failures) process.stdout.write(`${f}\n`)
emitJson(figures)
if (failures.length > 0) process.exitCode = 1
