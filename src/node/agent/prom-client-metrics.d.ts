// prom-client's default metrics, one module each (lib/defaultMetrics.js registers them all; the
// agent registers them without the event-loop delay one: loop-delay-metrics.ts).
declare module 'prom-client/lib/metrics/*' {
  import type { Registry } from 'prom-client'
  const register: (registry: Registry, config?: { prefix?: string }) => void
  export default register
}
