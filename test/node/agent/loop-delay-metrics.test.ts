import { collectDefaultMetrics, Registry } from 'prom-client'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { LoopDelayMetrics } from '../../../src/node/agent/loop-delay-metrics.ts'
import { createMetrics } from '../../../src/node/agent/metrics.ts'

/** The value of an unlabelled metric in Prometheus text. */
function value(text: string, name: string): number | undefined {
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text)
  return m ? Number(m[1]) : undefined
}

const LAG = 'pm_nodejs_eventloop_lag'
const stops: (() => void)[] = []
afterEach(() => {
  for (const s of stops.splice(0)) s()
})

function loopDelay(sampleMs: number, idleMs: number): { registry: Registry; m: LoopDelayMetrics } {
  const registry = new Registry()
  const m = new LoopDelayMetrics(registry, 'pm_', sampleMs, idleMs)
  stops.push(() => m.stop())
  return { registry, m }
}

describe('the event-loop delay metrics', () => {
  it('sample nothing until the first scrape', async () => {
    const { m } = loopDelay(10, 60_000)
    await new Promise((r) => setTimeout(r, 30)) // a few sample periods pass unscraped
    expect(m.sampling).toBe(false)
  })

  it('report the delays recorded since the previous scrape, from the first scrape on', async () => {
    const { registry, m } = loopDelay(10, 60_000)
    const first = await registry.metrics()
    expect(m.sampling).toBe(true)
    // Nothing recorded yet: zeros, not node's placeholders of an empty histogram (min 9.2e18 ns).
    expect(value(first, `${LAG}_min_seconds`)).toBe(0)
    expect(value(first, `${LAG}_p99_seconds`)).toBe(0)
    // A stall of the event loop shows in a later scrape (one made once the histogram's timer ran
    // again: a reset while a stall is being recorded loses it, as with prom-client's own). Every
    // scrape resets the histogram, so a scrape that comes too early (a loaded machine delays the
    // histogram's timer) loses the stall for good: each attempt stalls anew, at most five times.
    const maxes: (number | undefined)[] = []
    for (let attempt = 0; attempt < 5; attempt++) {
      await new Promise<void>((r) =>
        setTimeout(() => {
          const t = Date.now()
          while (Date.now() - t < 60) {} // busy: the loop stalls 60 ms
          setTimeout(r, 30)
        }, 20),
      )
      maxes.push(value(await registry.metrics(), `${LAG}_max_seconds`))
      if ((maxes.at(-1) ?? 0) >= 0.06) break
    }
    expect(maxes.at(-1), `the max of each scrape: ${maxes.join(', ')}`).toBeGreaterThanOrEqual(0.06)
  })

  it('stop sampling once nobody scraped for the idle period, and start again at the next scrape', async () => {
    const { registry, m } = loopDelay(10, 50)
    await registry.metrics()
    expect(m.sampling).toBe(true)
    await vi.waitFor(() => expect(m.sampling).toBe(false), { timeout: 2_000 })
    await registry.metrics()
    expect(m.sampling).toBe(true)
  })
})

describe("the agent's registry", () => {
  it("has every metric of prom-client's defaults, under the same names and types", async () => {
    const agent = createMetrics(() => undefined)
    stops.push(() => agent.stopSampling())
    const defaults = new Registry()
    collectDefaultMetrics({ register: defaults, prefix: 'peermesh_' })
    const types = async (r: Registry) =>
      Object.fromEntries((await r.getMetricsAsJSON()).map((x) => [x.name, x.type]))
    expect(await types(agent)).toMatchObject(await types(defaults))
  })
})
