// A small time-series chart as inline SVG (no library): one line per series over a fixed window.
const SVG = 'http://www.w3.org/2000/svg'

function el(name, attrs, text) {
  const e = document.createElementNS(SVG, name)
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v))
  if (text !== undefined) e.textContent = text
  return e
}

/** A "nice" axis maximum at or above `v` (1, 2, 5 times a power of ten). */
export function niceMax(v) {
  if (!(v > 0)) return 1
  const p = 10 ** Math.floor(Math.log10(v))
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p
  return 10 * p
}

/**
 * An SVG chart of `series` ([{ name, points: [[timeMs, value]] }]) over the `windowMs` before
 * `now`; `unit` labels the y axis. Series colours come from the CSS classes s0..s5.
 */
export function lineChart(series, { now, windowMs, unit, width = 900, height = 120 }) {
  const pad = { l: 44, r: 8, t: 8, b: 18 }
  const w = width - pad.l - pad.r
  const h = height - pad.t - pad.b
  let max = 0
  for (const s of series) for (const [, v] of s.points) max = Math.max(max, v)
  max = niceMax(max)
  const svg = el('svg', {
    viewBox: `0 0 ${width} ${height}`,
    class: 'chart',
    role: 'img',
    'aria-label': `${unit} over the last ${Math.round(windowMs / 1000)} s`,
  })
  for (const f of [0, 0.5, 1]) {
    const y = pad.t + h - f * h
    svg.append(el('line', { x1: pad.l, x2: pad.l + w, y1: y, y2: y, class: 'grid' }))
    svg.append(el('text', { x: pad.l - 4, y: y + 4, class: 'axis', 'text-anchor': 'end' }, fmtAxis(f * max)))
  }
  svg.append(el('text', { x: pad.l, y: height - 4, class: 'axis' }, `-${Math.round(windowMs / 1000)} s`))
  svg.append(
    el('text', { x: pad.l + w, y: height - 4, class: 'axis', 'text-anchor': 'end' }, `now · ${unit}`),
  )
  series.forEach((s, i) => {
    const pts = s.points
      .filter(([t]) => t >= now - windowMs)
      .map(([t, v]) => {
        const x = pad.l + ((t - (now - windowMs)) / windowMs) * w
        const y = pad.t + h - (v / max) * h
        return `${x.toFixed(1)},${y.toFixed(1)}`
      })
    if (pts.length === 0) return
    const line = el('polyline', { points: pts.join(' '), class: `series s${i % 6}` })
    line.append(el('title', {}, s.name))
    svg.append(line)
  })
  return svg
}

function fmtAxis(v) {
  if (v === 0) return '0'
  if (v >= 100) return String(Math.round(v))
  return String(Number(v.toPrecision(2)))
}
