import { Counter, Gauge, Registry } from 'prom-client'
import gc from 'prom-client/lib/metrics/gc.js'
import heapSizeAndUsed from 'prom-client/lib/metrics/heapSizeAndUsed.js'
import heapSpacesSizeAndUsed from 'prom-client/lib/metrics/heapSpacesSizeAndUsed.js'
import osMemoryHeap from 'prom-client/lib/metrics/osMemoryHeap.js'
import processCpuTotal from 'prom-client/lib/metrics/processCpuTotal.js'
import processHandles from 'prom-client/lib/metrics/processHandles.js'
import processMaxFileDescriptors from 'prom-client/lib/metrics/processMaxFileDescriptors.js'
import processOpenFileDescriptors from 'prom-client/lib/metrics/processOpenFileDescriptors.js'
import processRequests from 'prom-client/lib/metrics/processRequests.js'
import processResources from 'prom-client/lib/metrics/processResources.js'
import processStartTime from 'prom-client/lib/metrics/processStartTime.js'
import version from 'prom-client/lib/metrics/version.js'
import type { Host } from '../transport/host.ts'
import { LoopDelayMetrics } from './loop-delay-metrics.ts'

/**
 * prom-client's default metrics (its `collectDefaultMetrics`, lib/defaultMetrics.js) but the
 * event-loop delay ones, which LoopDelayMetrics registers under the same names.
 */
const DEFAULT_METRICS = [
  processCpuTotal,
  processStartTime,
  osMemoryHeap,
  processOpenFileDescriptors,
  processMaxFileDescriptors,
  processResources,
  processHandles,
  processRequests,
  heapSizeAndUsed,
  heapSpacesSizeAndUsed,
  version,
  gc,
]

/**
 * The agent's Prometheus registry: process metrics (CPU, memory, event loop lag, GC) plus
 * libp2p connection counts. Layers add their own metrics to the same registry. The event-loop
 * delay histogram samples only while the metrics are scraped (loop-delay-metrics.ts): stop it
 * with the returned `stopSampling`.
 */
export function createMetrics(getHost: () => Host | undefined): Registry & { stopSampling(): void } {
  const registry = new Registry()
  for (const register of DEFAULT_METRICS) register(registry, { prefix: 'peermesh_' })
  const loopDelay = new LoopDelayMetrics(registry, 'peermesh_')
  new Gauge({
    name: 'peermesh_libp2p_connections',
    help: 'Open libp2p connections, by direction',
    labelNames: ['direction'],
    registers: [registry],
    collect() {
      const host = getHost()
      this.reset()
      if (host === undefined) return
      let inbound = 0
      let outbound = 0
      for (const c of host.getConnections()) {
        if (c.direction === 'inbound') inbound++
        else outbound++
      }
      this.set({ direction: 'inbound' }, inbound)
      this.set({ direction: 'outbound' }, outbound)
    },
  })
  new Gauge({
    name: 'peermesh_libp2p_peers',
    help: 'Peers with at least one open libp2p connection',
    registers: [registry],
    collect() {
      this.set(getHost()?.getPeers().length ?? 0)
    },
  })
  return Object.assign(registry, { stopSampling: () => loopDelay.stop() })
}

/** A counter whose value is read from a running total at scrape time (e.g. a module's stats). */
export function counterFrom(registry: Registry, name: string, help: string, pick: () => number): void {
  new Counter({
    name,
    help,
    registers: [registry],
    collect() {
      this.reset()
      this.inc(pick())
    },
  })
}

/** A gauge whose value is read at scrape time. */
export function gaugeFrom(registry: Registry, name: string, help: string, pick: () => number): void {
  new Gauge({
    name,
    help,
    registers: [registry],
    collect() {
      this.set(pick())
    },
  })
}
