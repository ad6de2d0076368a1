/** A hand-written SVG plot of the failover timeline: requests/s above, errors and retries below. */

export interface SvgEvent {
  /** ms since load start. */
  t: number
  label: string
  /** Drawn lighter (e.g. a restart rather than a kill). */
  minor?: boolean
}

export interface TimelinePlot {
  bucketMs: number
  rps: number[]
  errors: number[]
  retried: number[]
  events: SvgEvent[]
  title: string
}

const W = 1100
const H = 560
const LEFT = 70
const RIGHT = 30
const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')

/** A "nice" axis maximum (1, 2, 5 × 10^k) at or above `v`. */
function niceMax(v: number): number {
  if (!(v > 0)) return 1
  const p = 10 ** Math.floor(Math.log10(v))
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p
  return 10 * p
}

export function renderTimelineSvg(plot: TimelinePlot): string {
  const n = plot.rps.length
  const totalS = (n * plot.bucketMs) / 1000
  const plotW = W - LEFT - RIGHT
  const x = (ms: number): number => Math.round((LEFT + (ms / (n * plot.bucketMs)) * plotW) * 10) / 10
  const out: string[] = []
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="22" text-anchor="middle" font-size="15">${esc(plot.title)}</text>`,
  )
  const panel = (
    top: number,
    height: number,
    series: { values: number[]; color: string; name: string }[],
    yLabel: string,
  ): void => {
    const max = niceMax(Math.max(1, ...series.flatMap((s) => s.values)))
    const y = (v: number): number => Math.round((top + height - (v / max) * height) * 10) / 10
    // Grid and y ticks.
    for (let i = 0; i <= 4; i++) {
      const v = (max * i) / 4
      out.push(
        `<line x1="${LEFT}" y1="${y(v)}" x2="${W - RIGHT}" y2="${y(v)}" stroke="#e5e5e5"/>`,
        `<text x="${LEFT - 6}" y="${y(v) + 4}" text-anchor="end">${Number.isInteger(v) ? v : v.toFixed(1)}</text>`,
      )
    }
    out.push(
      `<line x1="${LEFT}" y1="${top}" x2="${LEFT}" y2="${top + height}" stroke="black"/>`,
      `<line x1="${LEFT}" y1="${top + height}" x2="${W - RIGHT}" y2="${top + height}" stroke="black"/>`,
      `<text transform="translate(16 ${top + height / 2}) rotate(-90)" text-anchor="middle">${esc(yLabel)}</text>`,
    )
    // X ticks every second (labels every 5 s when long).
    const labelEvery = totalS > 30 ? 5 : 2
    for (let s = 0; s <= totalS; s++) {
      const xs = x(s * 1000)
      out.push(`<line x1="${xs}" y1="${top + height}" x2="${xs}" y2="${top + height + 4}" stroke="black"/>`)
      if (s % labelEvery === 0)
        out.push(`<text x="${xs}" y="${top + height + 17}" text-anchor="middle">${s}</text>`)
    }
    series.forEach((s, k) => {
      const pts = s.values
        .map((v, i) => `${x((i + 0.5) * plot.bucketMs).toFixed(1)},${y(v).toFixed(1)}`)
        .join(' ')
      out.push(`<polyline fill="none" stroke="${s.color}" stroke-width="1.5" points="${pts}"/>`)
      const lx = W - RIGHT - 200 + k * 100
      out.push(
        `<line x1="${lx}" y1="${top - 8}" x2="${lx + 18}" y2="${top - 8}" stroke="${s.color}" stroke-width="2"/>`,
        `<text x="${lx + 22}" y="${top - 4}">${esc(s.name)}</text>`,
      )
    })
  }
  panel(60, 260, [{ values: plot.rps, color: '#1f77b4', name: 'requests/s' }], 'requests/s (100 ms buckets)')
  panel(
    380,
    130,
    [
      { values: plot.errors, color: '#d62728', name: 'errors' },
      { values: plot.retried, color: '#ff7f0e', name: 'retried' },
    ],
    'per 100 ms',
  )
  out.push(`<text x="${LEFT + plotW / 2}" y="${H - 8}" text-anchor="middle">seconds since load start</text>`)
  plot.events.forEach((e, i) => {
    const xe = x(e.t)
    const color = e.minor ? '#2ca02c' : '#555'
    out.push(
      `<line x1="${xe}" y1="50" x2="${xe}" y2="510" stroke="${color}" stroke-dasharray="5,4"/>`,
      `<text x="${xe + 4}" y="${72 + (i % 3) * 14}" fill="${color}">${esc(e.label)}</text>`,
    )
  })
  out.push('</svg>')
  return `${out.join('\n')}\n`
}
