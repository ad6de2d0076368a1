import { setFlagsFromString } from 'node:v8'
import { userSetsNodeFlags } from './node-flags.ts'

/**
 * V8's memory reducer in the agent process: one collection where V8 runs up to three.
 *
 * After a full garbage collection V8 waits 8 s and, if the process then allocates little, shrinks
 * the heap with full collections about 0.6 s apart, up to three of them (V8's `MemoryReducer`). An
 * agent goes quiet right after its start, so it always gets them, inside its first ten seconds. The
 * first does nearly all the shrinking (an idle leader's heap 27.4 → 22.0 MiB used; the next two
 * each took it back to 21.9), and the ones after it cost more than their own pauses: in
 * side-by-side idle 3-agent clusters, the first minute after a start took about 0.12 points of a
 * core less per agent with one (README, Footprint, session 23), for about 1 MiB more RSS in that
 * minute.
 *
 * `--memory-reducer-single-gc` is read when the reducer decides on its next collection, so setting
 * it at the agent's start is early enough. A user who sets memory reducer flags of their own
 * (`NODE_OPTIONS`, node's own arguments) keeps them: nothing is changed then.
 */

/** Whether node was started with memory reducer flags of its own. */
export function userSetsMemoryReducer(
  execArgv: readonly string[] = process.execArgv,
  nodeOptions: string = process.env['NODE_OPTIONS'] ?? '',
): boolean {
  return userSetsNodeFlags(/memory[-_]reducer/, execArgv, nodeOptions)
}

/**
 * Asks V8's memory reducer for a single collection per quiet spell (see above); false when the
 * user's flags win. `setFlags` is V8's, replaced in tests.
 */
export function reduceMemoryOnce(
  setFlags: (flags: string) => void = setFlagsFromString,
  userFlags: boolean = userSetsMemoryReducer(),
): boolean {
  if (userFlags) return false
  setFlags('--memory-reducer-single-gc')
  return true
}
