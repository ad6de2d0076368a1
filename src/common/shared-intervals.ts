import type { Cancel, Clock } from './clock.ts'

/**
 * A clock whose intervals of the same period share one timer: the Raft module's periodic work
 * (autopilot, the voter connections, the founders' enrollment, all every `autopilotIntervalMs`)
 * and the leader's CA check (every 500 ms too) then wake the process once a period instead of once
 * per task. The agent's clock is one (`Agent`), and the Raft module wraps it again. Node groups timers by duration
 * but fires each at its own due time, so three 200 ms intervals started a few milliseconds apart
 * were three wake-ups.
 *
 * A task added to a running period first runs at that period's next tick (sooner than a timer of
 * its own would). Tasks run in the order they were added. The shared timer stops when its last
 * task is cancelled. Time, timeouts and `defer` are the underlying clock's.
 */
export function sharedIntervals(clock: Clock): Clock {
  /** The tasks of one period; the array is replaced (never changed) when a task is added or removed. */
  const periods = new Map<number, { tasks: SharedTask[]; cancel: Cancel }>()
  return {
    now: () => clock.now(),
    wallNow: () => clock.wallNow(),
    setTimeout: (fn, ms) => clock.setTimeout(fn, ms),
    defer: (fn) => clock.defer(fn),
    setInterval(fn, ms) {
      let period = periods.get(ms)
      if (period === undefined) {
        const created: { tasks: SharedTask[]; cancel: Cancel } = { tasks: [], cancel: () => {} }
        created.cancel = clock.setInterval(() => {
          // The tasks as they were when the tick began (no copy: the array is never changed); a
          // task cancelled by an earlier one in this tick does not run.
          for (const task of created.tasks) if (task.live) task.fn()
        }, ms)
        period = created
        periods.set(ms, period)
      }
      const shared = period
      // Each registration is its own entry, even for the same function.
      const task: SharedTask = { fn, live: true }
      shared.tasks = [...shared.tasks, task]
      return () => {
        if (!task.live) return
        task.live = false
        shared.tasks = shared.tasks.filter((t) => t !== task)
        if (shared.tasks.length > 0) return
        shared.cancel()
        if (periods.get(ms) === shared) periods.delete(ms)
      }
    },
  }
}

interface SharedTask {
  fn: () => void
  /** False once cancelled. */
  live: boolean
}
