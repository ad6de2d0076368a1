import { type IntervalHistogram, monitorEventLoopDelay } from 'node:perf_hooks'
import { Gauge, type Registry } from 'prom-client'

/** Period of the event-loop delay samples behind `peermesh_nodejs_eventloop_lag_*`. */
export const EVENT_LOOP_SAMPLE_MS = 100

/**
 * Sampling stops this long after the last scrape. Prometheus scrapes every 15 s to 1 min by
 * default, so a scraped agent samples without a gap; one nobody scrapes stops paying for it.
 */
export const EVENT_LOOP_SAMPLING_IDLE_MS = 5 * 60_000

/** The histogram's gauges, as prom-client's default metrics name them (their aggregators too). */
const HISTOGRAM_GAUGES = [
  ['min', 'The minimum recorded event loop delay.', 'min'],
  ['max', 'The maximum recorded event loop delay.', 'max'],
  ['mean', 'The mean of the recorded event loop delays.', 'average'],
  ['stddev', 'The standard deviation of the recorded event loop delays.', 'average'],
  ['p50', 'The 50th percentile of the recorded event loop delays.', 'average'],
  ['p90', 'The 90th percentile of the recorded event loop delays.', 'average'],
  ['p99', 'The 99th percentile of the recorded event loop delays.', 'average'],
] as const

type Stat = (typeof HISTOGRAM_GAUGES)[number][0]

function read(h: IntervalHistogram, stat: Stat): number {
  switch (stat) {
    case 'min':
    case 'max':
    case 'mean':
    case 'stddev':
      return h[stat]
    case 'p50':
      return h.percentile(50)
    case 'p90':
      return h.percentile(90)
    case 'p99':
      return h.percentile(99)
  }
}

/**
 * prom-client's event-loop metrics (`<prefix>nodejs_eventloop_lag_seconds` and the
 * `_min/_max/_mean/_stddev/_p50/_p90/_p99_seconds` of node's delay histogram), with one difference:
 * the histogram samples only while someone scrapes.
 *
 * prom-client enables node's histogram for the life of the process, and its timer wakes the agent
 * `1000 / EVENT_LOOP_SAMPLE_MS` times a second, scraped or not: on this machine a wake-up of an
 * otherwise idle Node process costs about 0.14 ms of CPU, so 10 a second were 5% of an idle agent's
 * CPU. Here the first scrape starts the sampling and it stops EVENT_LOOP_SAMPLING_IDLE_MS after
 * the last one. A scrape reports the delays recorded since the previous scrape (as prom-client
 * does: it resets the histogram); a scrape with nothing recorded (the first) reports zeros rather
 * than node's placeholders for an empty histogram (a minimum of 2^63 ns, a NaN mean).
 */
export class LoopDelayMetrics {
  private histogram: IntervalHistogram | undefined
  private idleTimer: NodeJS.Timeout | undefined
  private readonly lag: Gauge
  private readonly gauges: { stat: Stat; gauge: Gauge }[]

  constructor(
    registry: Registry,
    prefix: string,
    private readonly sampleMs = EVENT_LOOP_SAMPLE_MS,
    private readonly idleMs = EVENT_LOOP_SAMPLING_IDLE_MS,
  ) {
    const self = this
    this.lag = new Gauge({
      name: `${prefix}nodejs_eventloop_lag_seconds`,
      help: 'Lag of event loop in seconds.',
      registers: [registry],
      aggregator: 'average',
      // One metric's `collect` sets them all (prom-client's way).
      collect() {
        self.collect()
      },
    })
    this.gauges = HISTOGRAM_GAUGES.map(([stat, help, aggregator]) => ({
      stat,
      gauge: new Gauge({
        name: `${prefix}nodejs_eventloop_lag_${stat}_seconds`,
        help,
        registers: [registry],
        aggregator,
      }),
    }))
  }

  /** Whether the histogram is sampling now. */
  get sampling(): boolean {
    return this.histogram !== undefined
  }

  /** Stops sampling (the agent is shutting down). */
  stop(): void {
    clearTimeout(this.idleTimer)
    this.idleTimer = undefined
    this.histogram?.disable()
    this.histogram = undefined
  }

  private collect(): void {
    const start = process.hrtime.bigint()
    setImmediate(() => this.lag.set(Number(process.hrtime.bigint() - start) / 1e9))
    const h = this.histogram
    if (h !== undefined && h.count > 0) {
      for (const { stat, gauge } of this.gauges) gauge.set(read(h, stat) / 1e9)
      h.reset()
    } else {
      for (const { gauge } of this.gauges) gauge.reset()
    }
    if (h === undefined) {
      this.histogram = monitorEventLoopDelay({ resolution: this.sampleMs })
      this.histogram.enable()
      this.idleTimer = setTimeout(() => this.stop(), this.idleMs)
      this.idleTimer.unref()
    } else {
      this.idleTimer?.refresh()
    }
  }
}
