import type { VirtualClock } from '../../sim/virtual-clock.ts'

/**
 * Advances `clock` by `ms`, firing timers in order and letting promises settle after each one
 * (a probe's result arrives in a continuation).
 */
export async function advance(clock: VirtualClock, ms: number): Promise<void> {
  const end = clock.now() + ms
  await settle()
  while (clock.fireNext(end)) await settle()
  clock.setNow(end)
}

/** Lets resolved promises and their continuations run (no wall-clock wait). */
export async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise<void>((r) => setImmediate(r))
}

/** Polls `fn` until it returns true, failing after `ms` of wall-clock time. */
export async function eventually(fn: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms
  while (!fn()) {
    if (Date.now() > end) throw new Error('condition not met in time')
    await new Promise((r) => setTimeout(r, 10))
  }
}
