// bench:fuzz loads this into the agents it starts (NODE_OPTIONS="--expose-gc --import ..."): on
// SIGUSR2 the agent runs a full garbage collection and prints one stderr line,
// `fuzz-gc-probe {"rss":..,"heapUsed":..,"external":..,"arrayBuffers":..}` (bytes), so the fuzzer
// can tell memory still referenced (a leak) from memory the collector has not yet reclaimed, or
// that the allocator keeps (slack). Not part of the agent: a bench instrument.
process.on('SIGUSR2', () => {
  globalThis.gc?.()
  const { rss, heapUsed, heapTotal, external, arrayBuffers } = process.memoryUsage()
  process.stderr.write(
    `fuzz-gc-probe ${JSON.stringify({ rss, heapUsed, heapTotal, external, arrayBuffers })}\n`,
  )
})
