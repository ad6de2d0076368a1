/** `peermesh demo`: the command's flags checked, then the demo run (demo.ts). */
import { MAX_AGENTS, MAX_DURATION_S, MIN_AGENTS, MIN_DURATION_S } from './constants.ts'
import { runDemo } from './demo.ts'

export type { DemoOptions, DemoSummary } from './demo.ts'
export { runDemo }

/** Exit code of a usage error (a flag out of range), as commander's. */
const USAGE_EXIT = 2

export interface DemoFlags {
  agents: string
  duration: string
  failover: boolean
  keep?: boolean
  json?: boolean
  dir?: string
}

/**
 * Checks the flags (a bad one: one line on stderr, exit code 2, nothing started) and runs the
 * demo; resolves with its exit code.
 */
export async function runDemoCommand(flags: DemoFlags): Promise<number> {
  const agents = wholeNumber(flags.agents)
  if (agents === undefined || agents < MIN_AGENTS || agents > MAX_AGENTS)
    return usage(
      `--agents: the demo needs ${MIN_AGENTS} to ${MAX_AGENTS} agents (got ${flags.agents}): its story kills the ` +
        'Raft leader, and the survivors must still be a quorum (2 of 3)',
    )
  const durationS = wholeNumber(flags.duration)
  if (durationS === undefined || durationS < MIN_DURATION_S || durationS > MAX_DURATION_S)
    return usage(
      `--duration: expected whole seconds from ${MIN_DURATION_S} to ${MAX_DURATION_S} (got ${flags.duration})`,
    )
  return runDemo({
    agents,
    durationS,
    failover: flags.failover,
    keep: flags.keep === true,
    json: flags.json === true,
    ...(flags.dir !== undefined ? { dir: flags.dir } : {}),
  })
}

function wholeNumber(s: string): number | undefined {
  return /^\d{1,6}$/.test(s) ? Number(s) : undefined
}

function usage(message: string): number {
  process.stderr.write(`peermesh demo: ${message}\n`)
  return USAGE_EXIT
}
