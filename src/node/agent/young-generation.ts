import { PerformanceObserver } from 'node:perf_hooks'
import { getHeapSpaceStatistics, setFlagsFromString } from 'node:v8'
import { userSetsNodeFlags } from './node-flags.ts'

/**
 * The agent's young generation (V8's new space, where every short-lived object is born).
 *
 * V8 doubles the new space each time most of it survives a scavenge, up to 2 × 16 MiB on 64-bit,
 * and an agent's start (module loading, key generation, founding) is enough to take it there: an
 * idle agent then kept the whole new space resident, a large part of its RSS, to hold a small
 * fraction of it in live young objects. Held, the new space stops growing at a few MiB
 * (HOLD_NEW_SPACE_BYTES): an idle agent scavenges a little more often, each scavenge as cheap (its
 * cost follows what survives, not the space's size).
 *
 * The data plane is the exception: a sidecar under load keeps requests in flight long enough that
 * a small new space would promote them to the old generation. So the hold is released when the
 * first sidecar starts, and V8 grows the new space again as it always did.
 *
 * `--max-semi-space-size` is read once, when the heap is set up, so it cannot be changed by a
 * running process; the growth factor is read at each growth (`--semi-space-growth-factor`, 2 by
 * default). A user who sets young generation flags (`NODE_OPTIONS`, node's own arguments) keeps
 * them: nothing is changed then.
 */

/** V8's default growth factor of the new space (restored on release). */
const DEFAULT_GROWTH_FACTOR = 2

/**
 * The new space may grow up to this size before it is held: the start (module loading, key
 * generation, founding) allocates fast, and at the initial size its scavenges made an agent's start
 * markedly slower. Growth is by doubling, checked after each garbage collection: the space held is
 * this size or one step more.
 */
export const HOLD_NEW_SPACE_BYTES = 8 << 20

let held = false
let watch: PerformanceObserver | undefined

function newSpaceBytes(): number {
  return getHeapSpaceStatistics().find((s) => s.space_name === 'new_space')?.space_size ?? 0
}

function stopGrowing(): void {
  watch?.disconnect()
  watch = undefined
  setFlagsFromString('--semi-space-growth-factor=1')
}

/** Whether node was started with flags of its own for the young generation. */
export function userSetsYoungGeneration(
  execArgv: readonly string[] = process.execArgv,
  nodeOptions: string = process.env['NODE_OPTIONS'] ?? '',
): boolean {
  return userSetsNodeFlags(/semi[-_]space/, execArgv, nodeOptions)
}

/**
 * Keeps the new space at `HOLD_NEW_SPACE_BYTES` (see above); false when the user's flags win.
 */
export function holdYoungGeneration(): boolean {
  if (held || userSetsYoungGeneration()) return held
  held = true
  if (newSpaceBytes() >= HOLD_NEW_SPACE_BYTES) {
    stopGrowing()
  } else {
    watch = new PerformanceObserver(() => {
      if (held && newSpaceBytes() >= HOLD_NEW_SPACE_BYTES) stopGrowing()
    })
    watch.observe({ entryTypes: ['gc'] })
  }
  return true
}

/** Lets the new space grow again (a sidecar started); does nothing unless held. */
export function releaseYoungGeneration(): void {
  if (!held) return
  watch?.disconnect()
  watch = undefined
  setFlagsFromString(`--semi-space-growth-factor=${DEFAULT_GROWTH_FACTOR}`)
  held = false
}
