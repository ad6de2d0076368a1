// bench:fuzz loads this into the agents it starts (NODE_OPTIONS="--expose-gc --import ..."): on
// SIGUSR2 the agent runs a full garbage collection and prints one stderr line,
// `fuzz-gc-probe {"rss":..,"heapUsed":..,"external":..,"arrayBuffers":..}` (bytes), so the fuzzer
// can tell memory still referenced (a leak) from memory the collector has not yet reclaimed, or
// that the allocator keeps (slack). With FUZZ_HEAP_SNAPSHOT_DIR set, it also writes a heap snapshot
// there each time (to see what is held). Not part of the agent: a bench instrument.
import { writeHeapSnapshot } from 'node:v8'

let snapshots = 0
process.on('SIGUSR2', () => {
  globalThis.gc?.()
  const dir = process.env.FUZZ_HEAP_SNAPSHOT_DIR
  if (dir) writeHeapSnapshot(`${dir}/${process.pid}-${++snapshots}.heapsnapshot`)
  const { rss, heapUsed, heapTotal, external, arrayBuffers } = process.memoryUsage()
  process.stderr.write(
    `fuzz-gc-probe ${JSON.stringify({ rss, heapUsed, heapTotal, external, arrayBuffers })}\n`,
  )
})
