import { Counter, collectDefaultMetrics, Gauge, Registry } from 'prom-client'
import type { Host } from '../transport/host.ts'

/** Period of the event-loop delay samples behind `peermesh_nodejs_eventloop_lag_*`. */
export const EVENT_LOOP_SAMPLE_MS = 100

/**
 * The agent's Prometheus registry: process metrics (CPU, memory, event loop lag, GC) plus
 * libp2p connection counts. Layers add their own metrics to the same registry.
 */
export function createMetrics(getHost: () => Host | undefined): Registry {
  const registry = new Registry()
  collectDefaultMetrics({
    register: registry,
    prefix: 'peermesh_',
    // The event-loop delay histogram samples on a timer of this period (prom-client's default, 10
    // ms, woke an idle agent 100 times a second). Every stall of 100 ms or more is still recorded.
    eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS,
  })
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
  return registry
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
