// The peermesh web UI: reads the agent's HTTP API with the logged-in token and renders members,
// Raft, services with health, intentions (create, edit, delete) and sidecar traffic.
// DOM is built with textContent only (names and check output are data, never markup).
import { lineChart } from './chart.js'
import { parsePrometheus, trafficRates, trafficSnapshot } from './metrics.js'

const TOKEN_KEY = 'peermesh.token'
const POLL_MS = 1000
/** Blocking-query wait: a change shows at once; without one, health is re-read this often. */
const CATALOG_WAIT = '3s'
const INTENTIONS_WAIT = '30s'
const CHART_WINDOW_MS = 60_000

const $ = (id) => document.getElementById(id)

class HttpError extends Error {
  constructor(status, message) {
    super(message)
    this.status = status
  }
}

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) ?? localStorage.getItem(TOKEN_KEY) ?? '',
  /** Aborted on log in / log out: every loop restarts with the new token. */
  run: new AbortController(),
  intentions: [],
  editing: new Map(),
  confirmDelete: undefined,
  lastOk: 0,
  traffic: { prev: undefined, prevAt: 0, history: new Map() },
  rendered: new Map(),
}

/** One call to the agent's API; JSON (or text with `raw`) and the blocking-query index. */
async function api(path, { method = 'GET', body, signal, raw = false, token = state.token } = {}) {
  const headers = { Accept: raw ? 'text/plain' : 'application/json' }
  if (token) headers['X-Consul-Token'] = token
  if (body !== undefined) headers['Content-Type'] = 'application/json'
  let res
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: 'no-store',
      credentials: 'omit',
    })
  } catch (err) {
    if (err.name === 'AbortError') throw err
    setConn(false, 'agent unreachable')
    throw new HttpError(0, `the agent did not answer (${err.message})`)
  }
  setConn(true)
  const text = await res.text()
  let data = text
  if (!raw) {
    try {
      data = text === '' ? null : JSON.parse(text)
    } catch {
      data = text
    }
  }
  if (!res.ok) {
    const msg =
      data !== null && typeof data === 'object' && data.error ? data.error : `${res.status} ${res.statusText}`
    throw new HttpError(res.status, msg)
  }
  const index = Number(res.headers.get('X-Peermesh-Index') ?? res.headers.get('X-Consul-Index') ?? 0)
  return { data, index }
}

// ---- small DOM helpers ----

function h(tag, attrs = {}, ...children) {
  const e = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === false) continue
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v)
    else if (k === 'class') e.className = v
    else if (k === 'value') e.value = v
    else e.setAttribute(k, v === true ? '' : String(v))
  }
  for (const c of children.flat()) if (c !== undefined && c !== null && c !== false) e.append(c)
  return e
}

const badge = (text, cls = text) => h('span', { class: `badge ${cls}` }, text)

function table(head, rows, empty) {
  if (rows.length === 0) return h('p', { class: 'muted' }, empty)
  return h(
    'table',
    {},
    h(
      'thead',
      {},
      h(
        'tr',
        {},
        head.map((c) => h('th', {}, c)),
      ),
    ),
    h('tbody', {}, rows),
  )
}

function section(id) {
  const s = $(id)
  return { body: s.querySelector('.body'), err: s.querySelector('.err') }
}

/** Replaces a section's body, unless `key` (the data it shows) is what is already there. */
function show(id, key, build) {
  const s = section(id)
  s.err.hidden = true
  if (key !== undefined && state.rendered.get(id) === key) return
  state.rendered.set(id, key)
  const built = build()
  s.body.replaceChildren(...(Array.isArray(built) ? built : [built]))
}

function fail(id, err, hint) {
  const s = section(id)
  s.err.textContent = hint ?? explain(err)
  s.err.hidden = false
}

function explain(err) {
  if (err instanceof HttpError) {
    if (err.status === 403 && /ACL not found/.test(err.message))
      return 'the token was not accepted (ACL not found): log in with another one'
    if (err.status === 0) return err.message
    return `${err.status}: ${err.message}`
  }
  return String(err?.message ?? err)
}

function setConn(ok, why) {
  const c = $('conn')
  if (ok) state.lastOk = Date.now()
  c.textContent = ok ? 'connected' : why
  c.className = `badge ${ok ? 'ok' : 'bad'}`
}

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const t = setTimeout(resolve, ms)
    signal?.addEventListener('abort', () => {
      clearTimeout(t)
      resolve()
    })
  })

/** Runs `step` about every `ms` until the run is aborted; a failing step shows its error. */
async function every(ms, signal, step) {
  while (!signal.aborted) {
    try {
      await step()
    } catch (err) {
      if (err.name !== 'AbortError') console.warn(err)
    }
    await sleep(ms, signal)
  }
}

/**
 * A Consul blocking-query loop on `path`: waits for an index above the last one seen (or `wait`),
 * then calls `onData`. An index that went backwards (a restarted agent) starts over from 0.
 */
async function blocking(path, wait, signal, onData, onError) {
  let index = 0
  while (!signal.aborted) {
    try {
      const sep = path.includes('?') ? '&' : '?'
      const q = index > 0 ? `${path}${sep}index=${index}&wait=${wait}` : path
      const r = await api(q, { signal })
      index = r.index < index ? 0 : r.index
      await onData(r.data)
      // No index to block on (a route or state without one): poll instead of spinning.
      if (index === 0) await sleep(POLL_MS, signal)
    } catch (err) {
      if (err.name === 'AbortError') return
      index = 0
      onError(err)
      await sleep(err.status === 403 ? 5 * POLL_MS : POLL_MS, signal)
    }
  }
}

// ---- sections ----

async function refreshAgent(signal) {
  try {
    const { data } = await api('/v1/agent/self', { signal })
    $('agent').textContent = `agent ${data.Config.NodeName} · v${data.Config.Version}`
    document.title = `peermesh · ${data.Config.NodeName}`
  } catch (err) {
    if (err.name !== 'AbortError') $('agent').textContent = `agent (${explain(err)})`
  }
}

async function refreshMembers(signal) {
  try {
    const { data } = await api('/v1/agent/members', { signal })
    // Consul's shape (`Name`, `Status: 1`...); peermesh's SWIM state and address in `State`, `Address`.
    const members = data
      .map((m) => ({
        name: m.Name,
        status: m.State,
        incarnation: m.Incarnation,
        address: m.Address,
        peerId: m.PeerID,
      }))
      .sort((a, b) => (a.name < b.name ? -1 : 1))
    show('members', JSON.stringify(members), () =>
      table(
        ['name', 'status', 'incarnation', 'address'],
        members.map((m) =>
          h(
            'tr',
            { 'data-member': m.name },
            h('td', {}, m.name),
            h('td', {}, badge(m.status)),
            h('td', { class: 'num' }, String(m.incarnation)),
            h('td', { class: 'mono', title: m.peerId }, m.address),
          ),
        ),
        'no members',
      ),
    )
  } catch (err) {
    if (err.name !== 'AbortError') fail('members', err)
  }
}

async function refreshRaft(signal) {
  try {
    const { data } = await api('/v1/operator/raft/configuration', { signal })
    show('raft', JSON.stringify(data.servers), () =>
      table(
        ['node', 'role', 'address'],
        data.servers.map((s) =>
          h(
            'tr',
            {},
            h('td', {}, s.node || s.id.slice(-8)),
            h('td', {}, s.leader ? badge('leader') : badge(s.voter ? 'voter' : 'learner', '')),
            h('td', { class: 'mono' }, s.address),
          ),
        ),
        'Raft is not running yet (no configuration)',
      ),
    )
  } catch (err) {
    if (err.name === 'AbortError') return
    if (err.status !== 403) return fail('raft', err)
    // Anonymous (or a token without operator:read): the leader's address is public.
    let leader = ''
    try {
      leader = (await api('/v1/status/leader', { signal })).data
    } catch {
      // shown below as unknown
    }
    show('raft', `403|${leader}`, () =>
      h(
        'div',
        {},
        h('p', {}, 'leader: ', h('span', { class: 'mono' }, leader || 'none known')),
        h(
          'p',
          { class: 'muted' },
          'Voters and learners need a token with operator:read (GET /v1/operator/raft/configuration): log in above.',
        ),
      ),
    )
  }
}

async function readServices(data, signal) {
  const names = Object.keys(data).sort()
  const health = await Promise.all(
    names.map((n) =>
      api(`/v1/health/service/${encodeURIComponent(n)}`, { signal }).then(
        (r) => r.data,
        (err) => ({ error: explain(err) }),
      ),
    ),
  )
  const view = names.map((n, i) => ({ name: n, tags: data[n], health: health[i] }))
  show('services', JSON.stringify(view), () =>
    table(
      ['service', 'instance', 'node', 'address', 'health', 'checks'],
      view.flatMap((s) => {
        if (!Array.isArray(s.health))
          return [h('tr', {}, h('td', {}, s.name), h('td', { colspan: 5, class: 'err' }, s.health.error))]
        if (s.health.length === 0)
          return [h('tr', {}, h('td', {}, s.name), h('td', { colspan: 5, class: 'muted' }, 'no instances'))]
        return s.health.map((e, j) =>
          h(
            'tr',
            { 'data-service': s.name },
            h(
              'td',
              {},
              j === 0 ? s.name : '',
              j === 0 && s.tags.length ? h('div', { class: 'muted' }, s.tags.join(', ')) : '',
            ),
            h(
              'td',
              { class: 'mono' },
              e.Service.ID,
              e.Service.Tags.length ? h('div', { class: 'muted' }, e.Service.Tags.join(', ')) : '',
            ),
            h('td', {}, e.Node.Node),
            h('td', { class: 'mono' }, `${e.Service.Address}:${e.Service.Port}`),
            h('td', {}, badge(e.Status)),
            h(
              'td',
              {},
              h(
                'ul',
                { class: 'checks' },
                e.Checks.map((c) =>
                  h(
                    'li',
                    {},
                    badge(c.Status),
                    ' ',
                    c.Name || c.CheckID,
                    c.Output ? h('span', { class: 'out' }, c.Output) : '',
                  ),
                ),
              ),
            ),
          ),
        )
      }),
      'no services registered',
    ),
  )
}

function intentionKey(i) {
  return `${i.source}\u0000${i.destination}`
}

function pairQuery(i) {
  return `source=${encodeURIComponent(i.source)}&destination=${encodeURIComponent(i.destination)}`
}

function renderIntentions() {
  const list = state.intentions
  const key = JSON.stringify([list, [...state.editing], state.confirmDelete ?? '', state.token === ''])
  // The list is filtered by intention:read, so an anonymous caller sees an empty list, not a 403.
  const hint =
    state.token === ''
      ? h(
          'p',
          { class: 'hint muted' },
          'Anonymous: intentions are listed only to a token with intention:read; log in above.',
        )
      : ''
  show('intentions', key, () => [
    hint,
    table(
      ['source', 'destination', 'action', 'description', 'precedence', ''],
      list.map((i) => {
        const k = intentionKey(i)
        const ed = state.editing.get(k)
        const row = { 'data-intention': `${i.source}->${i.destination}` }
        if (ed !== undefined) {
          return h(
            'tr',
            row,
            h('td', {}, i.source),
            h('td', {}, i.destination),
            h(
              'td',
              {},
              h(
                'select',
                { class: 'edit-action', onchange: (e) => (ed.action = e.target.value) },
                ['allow', 'deny'].map((a) => h('option', { selected: a === ed.action }, a)),
              ),
            ),
            h(
              'td',
              {},
              h('input', {
                class: 'edit-desc',
                value: ed.description,
                oninput: (e) => (ed.description = e.target.value),
              }),
            ),
            h('td', { class: 'num' }, String(i.precedence)),
            h(
              'td',
              {},
              h('button', { type: 'button', onclick: () => saveIntention(i, ed) }, 'Save'),
              ' ',
              h('button', { type: 'button', class: 'plain', onclick: () => stopEditing(k) }, 'Cancel'),
            ),
          )
        }
        const confirming = state.confirmDelete === k
        return h(
          'tr',
          row,
          h('td', {}, i.source),
          h('td', {}, i.destination),
          h('td', {}, badge(i.action)),
          h('td', {}, i.description ?? ''),
          h('td', { class: 'num' }, String(i.precedence)),
          h(
            'td',
            {},
            h(
              'button',
              {
                type: 'button',
                class: 'plain',
                onclick: () => {
                  state.editing.set(k, { action: i.action, description: i.description ?? '' })
                  renderIntentions()
                },
              },
              'Edit',
            ),
            ' ',
            h(
              'button',
              { type: 'button', class: 'danger', onclick: () => deleteIntention(i, k) },
              confirming ? 'Really delete?' : 'Delete',
            ),
          ),
        )
      }),
      'no intentions (the default action applies to every pair)',
    ),
  ])
}

function stopEditing(k) {
  state.editing.delete(k)
  renderIntentions()
}

function intentionMsg(text, bad = false) {
  const m = $('int-msg')
  m.textContent = text
  m.className = bad ? 'err' : 'muted'
}

async function saveIntention(i, ed) {
  try {
    const body = { action: ed.action, ...(ed.description ? { description: ed.description } : {}) }
    await api(`/v1/connect/intentions/exact?${pairQuery(i)}`, { method: 'PUT', body })
    state.editing.delete(intentionKey(i))
    intentionMsg(`saved ${i.source} → ${i.destination}: ${ed.action}`)
    renderIntentions()
  } catch (err) {
    intentionMsg(explainWrite(err), true)
  }
}

async function deleteIntention(i, k) {
  if (state.confirmDelete !== k) {
    state.confirmDelete = k
    renderIntentions()
    return
  }
  state.confirmDelete = undefined
  try {
    await api(`/v1/connect/intentions/exact?${pairQuery(i)}`, { method: 'DELETE' })
    intentionMsg(`deleted ${i.source} → ${i.destination}`)
  } catch (err) {
    intentionMsg(explainWrite(err), true)
  }
  renderIntentions()
}

function explainWrite(err) {
  if (err instanceof HttpError && err.status === 403 && !/ACL not found/.test(err.message))
    return `${err.message} — log in with a token that has intention:write on the destination`
  return explain(err)
}

async function createIntention(ev) {
  ev.preventDefault()
  const body = {
    source: $('int-src').value.trim(),
    destination: $('int-dst').value.trim(),
    action: $('int-action').value,
  }
  const desc = $('int-desc').value.trim()
  if (desc) body.description = desc
  const btn = $('int-create')
  btn.disabled = true
  intentionMsg('creating…')
  try {
    await api('/v1/connect/intentions', { method: 'POST', body })
    intentionMsg(`created ${body.source} → ${body.destination}: ${body.action}`)
    $('int-form').reset()
  } catch (err) {
    intentionMsg(explainWrite(err), true)
  } finally {
    btn.disabled = false
  }
}

async function refreshDefaultAction(signal) {
  try {
    const { data } = await api('/v1/connect/intentions/default', { signal })
    $('default-action').textContent = `default: ${data.action}`
  } catch {
    $('default-action').textContent = ''
  }
}

// ---- traffic ----

async function refreshTraffic(signal) {
  try {
    const { data } = await api('/metrics', { signal, raw: true })
    const now = Date.now()
    const t = state.traffic
    const snap = trafficSnapshot(parsePrometheus(data))
    const rates = trafficRates(t.prev, snap, (now - t.prevAt) / 1000)
    const first = t.prev === undefined
    t.prev = snap
    t.prevAt = now
    if (!first) {
      for (const r of rates) {
        const hist = t.history.get(r.key) ?? []
        hist.push([now, r.rps])
        while (hist.length > 0 && hist[0][0] < now - CHART_WINDOW_MS) hist.shift()
        t.history.set(r.key, hist)
      }
    }
    renderTraffic(rates, now)
  } catch (err) {
    if (err.name === 'AbortError') return
    fail(
      'traffic',
      err,
      err.status === 403
        ? 'Traffic (/metrics) needs agent:read on this node: log in with a token that has it.'
        : undefined,
    )
  }
}

const label = (r) =>
  r.direction === 'outbound' ? `${r.service} → ${r.upstream}` : `→ ${r.service} (inbound)`
const ms = (s) =>
  s === undefined ? '–' : s < 0.001 ? `${(s * 1000).toFixed(2)}` : `${(s * 1000).toFixed(1)}`

function renderTraffic(rates, now) {
  const s = section('traffic')
  s.err.hidden = true
  const chartBox = $('traffic').querySelector('.chart-box')
  const series = rates.map((r) => ({ name: label(r), points: state.traffic.history.get(r.key) ?? [] }))
  chartBox.replaceChildren(
    rates.length === 0 ? '' : lineChart(series, { now, windowMs: CHART_WINDOW_MS, unit: 'requests/s' }),
  )
  s.body.replaceChildren(
    table(
      ['listener', 'requests/s', 'errors/s', 'total', 'errors', 'open', 'p50 ms', 'p90 ms', 'p99 ms'],
      rates.map((r, i) =>
        h(
          'tr',
          { 'data-upstream': r.key },
          h('td', {}, h('span', { class: `key k${i % 6}` }), label(r)),
          h('td', { class: 'num' }, r.rps.toFixed(1)),
          h('td', { class: `num${r.eps > 0 ? ' err' : ''}` }, r.eps.toFixed(1)),
          h('td', { class: 'num' }, String(r.requests)),
          h('td', { class: 'num' }, String(r.errors)),
          h('td', { class: 'num' }, String(r.active)),
          h('td', { class: 'num' }, ms(r.p50)),
          h('td', { class: 'num' }, ms(r.p90)),
          h('td', { class: 'num' }, ms(r.p99)),
        ),
      ),
      'no sidecar on this agent has carried traffic yet',
    ),
  )
}

// ---- login ----

async function showWho(signal) {
  const who = $('who')
  $('logout-btn').hidden = state.token === ''
  $('token').hidden = state.token !== ''
  $('remember').parentElement.hidden = state.token !== ''
  $('login-btn').hidden = state.token !== ''
  if (state.token === '') {
    who.textContent = 'anonymous'
    return
  }
  try {
    const { data } = await api('/v1/acl/token/self', { signal })
    who.textContent = `token: ${data.Description || data.AccessorID.slice(0, 8)}`
  } catch (err) {
    if (err.name !== 'AbortError') who.textContent = `token (${explain(err)})`
  }
}

async function login(ev) {
  ev.preventDefault()
  const token = $('token').value.trim()
  if (token === '') return
  try {
    await api('/v1/acl/token/self', { token })
  } catch (err) {
    // 503: this agent has not caught up with the ACL state yet; the token may well be good.
    if (!(err instanceof HttpError && err.status === 503)) {
      banner(`log in: ${explain(err)}`)
      return
    }
  }
  banner('')
  ;($('remember').checked ? localStorage : sessionStorage).setItem(TOKEN_KEY, token)
  $('token').value = ''
  setToken(token)
}

function logout() {
  sessionStorage.removeItem(TOKEN_KEY)
  localStorage.removeItem(TOKEN_KEY)
  setToken('')
}

function setToken(token) {
  state.token = token
  state.rendered.clear()
  start()
}

function banner(text) {
  const b = $('banner')
  b.textContent = text
  b.hidden = text === ''
}

// ---- main ----

function start() {
  state.run.abort()
  const run = new AbortController()
  state.run = run
  const signal = run.signal
  void showWho(signal)
  void every(10 * POLL_MS, signal, () => refreshAgent(signal))
  void every(POLL_MS, signal, () => refreshMembers(signal))
  void every(POLL_MS, signal, () => refreshRaft(signal))
  void every(POLL_MS, signal, () => refreshTraffic(signal))
  void every(10 * POLL_MS, signal, () => refreshDefaultAction(signal))
  void blocking(
    '/v1/catalog/services',
    CATALOG_WAIT,
    signal,
    (data) => readServices(data, signal),
    (err) => fail('services', err),
  )
  void blocking(
    '/v1/connect/intentions',
    INTENTIONS_WAIT,
    signal,
    (data) => {
      // Consul's intentions (`SourceName`, `DestinationName`, `Action`...) in the page's terms.
      state.intentions = data.map((i) => ({
        source: i.SourceName,
        destination: i.DestinationName,
        action: i.Action,
        ...(i.Description ? { description: i.Description } : {}),
        precedence: i.Precedence,
      }))
      renderIntentions()
    },
    (err) =>
      fail(
        'intentions',
        err,
        err.status === 403 && !/ACL not found/.test(err.message)
          ? 'Reading intentions needs a token (intention:read): log in above.'
          : undefined,
      ),
  )
}

window.addEventListener('error', (e) => banner(`UI error: ${e.message}`))
window.addEventListener('unhandledrejection', (e) => banner(`UI error: ${explain(e.reason)}`))
$('login').addEventListener('submit', login)
$('logout-btn').addEventListener('click', logout)
$('int-form').addEventListener('submit', createIntention)
setInterval(() => {
  const ago =
    state.lastOk === 0 ? '' : `updated ${Math.max(0, Math.round((Date.now() - state.lastOk) / 1000))} s ago`
  $('updated').textContent = ago
  if (state.lastOk !== 0 && Date.now() - state.lastOk > 5000) setConn(false, 'agent unreachable')
}, 1000)
start()
