import { VirtualClock } from '../../sim/virtual-clock.ts'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { describe, expect, it } from 'vitest'
import {
  type CheckUpdate,
  CheckRunner,
  type ProbeResult,
  type Probes,
  systemProbes,
} from '../../../src/node/catalog/checks.ts'
import { parseServiceDefinition } from '../../../src/node/catalog/service-definition.ts'
import { eventually, advance } from './helpers.ts'

/** Probes whose answers the test scripts; a probe with `hang` never settles by itself. */
function scriptedProbes() {
  const state = { tcp: 'passing' as ProbeResult['status'] | 'hang', http: 200 as number | 'hang', calls: 0 }
  const hang = (signal: AbortSignal) =>
    new Promise<ProbeResult>((resolve) =>
      signal.addEventListener('abort', () => resolve({ status: 'critical', output: 'aborted' })),
    )
  const probes: Probes = {
    async tcp(_t, { signal }) {
      state.calls++
      if (state.tcp === 'hang') return hang(signal)
      return { status: state.tcp, output: `tcp ${state.tcp}` }
    },
    async http(_r, { signal }) {
      state.calls++
      if (state.http === 'hang') return hang(signal)
      const code = state.http
      return {
        status: code < 300 ? 'passing' : code === 429 ? 'warning' : 'critical',
        output: `HTTP ${code}`,
      }
    },
  }
  return { state, probes }
}

function setup(checks: object[]) {
  const clock = new VirtualClock()
  const { state, probes } = scriptedProbes()
  const runner = new CheckRunner({ clock, probes })
  const updates: CheckUpdate[] = []
  runner.on('check:update', (u) => updates.push(u))
  runner.sync([parseServiceDefinition({ name: 'web', port: 8080, checks }, 'test')])
  runner.start()
  return { clock, state, runner, updates }
}

describe('CheckRunner on a virtual clock', () => {
  it('TCP: probes every interval and emits only transitions', async () => {
    const { clock, state, runner, updates } = setup([
      { tcp: '127.0.0.1:8080', interval: '10s', timeout: '1s' },
    ])
    expect(runner.status('service:web')).toBe('critical')
    await advance(clock, 0)
    expect(runner.status('service:web')).toBe('passing')
    await advance(clock, 30_000) // three more probes, all passing
    expect(state.calls).toBe(4)
    state.tcp = 'critical'
    await advance(clock, 10_000)
    state.tcp = 'passing'
    await advance(clock, 10_000)
    expect(updates.map((u) => [u.previous, u.status])).toEqual([
      ['critical', 'passing'],
      ['passing', 'critical'],
      ['critical', 'passing'],
    ])
    expect(updates[1]).toMatchObject({ checkId: 'service:web', serviceId: 'web', output: 'tcp critical' })
  })

  it('HTTP: 2xx passing, 429 warning, 500 critical, timeout critical', async () => {
    const { clock, state, runner, updates } = setup([
      { http: 'http://127.0.0.1:8080/h', interval: '5s', timeout: '2s' },
    ])
    await advance(clock, 0)
    expect(runner.status('service:web')).toBe('passing')
    state.http = 429
    await advance(clock, 5000)
    expect(runner.status('service:web')).toBe('warning')
    state.http = 500
    await advance(clock, 5000)
    expect(runner.status('service:web')).toBe('critical')
    state.http = 200
    await advance(clock, 5000)
    state.http = 'hang'
    await advance(clock, 5000) // probe starts, hangs
    expect(runner.status('service:web')).toBe('passing')
    await advance(clock, 2000) // timeout elapses
    expect(runner.status('service:web')).toBe('critical')
    expect(runner.get('service:web')?.output).toMatch(/timed out after 2000 ms/)
    expect(updates.map((u) => u.status)).toEqual(['passing', 'warning', 'critical', 'passing', 'critical'])
  })

  it('TTL: pass/warn/fail set the status, silence past the TTL makes it critical', async () => {
    const { clock, runner, updates } = setup([{ ttl: '30s' }])
    expect(runner.status('service:web')).toBe('critical')
    runner.updateTtl('service:web', 'passing', 'all good')
    expect(runner.get('service:web')).toMatchObject({ status: 'passing', output: 'all good' })
    await advance(clock, 20_000)
    runner.updateTtl('service:web', 'warning', 'slow')
    await advance(clock, 20_000) // 40 s after start, 20 s after the last update: still warning
    expect(runner.status('service:web')).toBe('warning')
    runner.updateTtl('service:web', 'critical', 'broken')
    runner.updateTtl('service:web', 'passing')
    await advance(clock, 29_999)
    expect(runner.status('service:web')).toBe('passing')
    await advance(clock, 1)
    expect(runner.status('service:web')).toBe('critical')
    expect(runner.get('service:web')?.output).toMatch(/TTL expired/)
    expect(updates.map((u) => u.status)).toEqual(['passing', 'warning', 'critical', 'passing', 'critical'])
  })

  it('TTL updates are refused for unknown and non-TTL checks', () => {
    const { runner } = setup([{ tcp: '127.0.0.1:1', interval: '1s' }])
    expect(() => runner.updateTtl('nope', 'passing')).toThrow(
      expect.objectContaining({ code: 'PEERMESH_ERR_CHECK_NOT_FOUND' }),
    )
    expect(() => runner.updateTtl('service:web', 'passing')).toThrow(
      expect.objectContaining({ code: 'PEERMESH_ERR_CHECK_NOT_TTL' }),
    )
  })

  it('sync keeps unchanged checks and their status, drops removed ones; stop clears every timer', async () => {
    const { clock, runner } = setup([{ tcp: '127.0.0.1:8080', interval: '10s' }])
    await advance(clock, 0)
    expect(runner.status('service:web')).toBe('passing')
    runner.sync([
      parseServiceDefinition(
        { name: 'web', port: 8080, checks: [{ tcp: '127.0.0.1:8080', interval: '10s' }] },
        't',
      ),
    ])
    expect(runner.status('service:web')).toBe('passing')
    runner.sync([])
    expect(runner.list()).toEqual([])
    expect(clock.pending).toBe(0)
    runner.sync([parseServiceDefinition({ name: 'api', port: 1, checks: [{ ttl: '5s' }] }, 't')])
    runner.stop()
    expect(clock.pending).toBe(0)
  })
})

describe('CheckRunner with the real HTTP probe', () => {
  it('follows a local server through 200 -> 429 -> 500', async () => {
    let code = 200
    const server = createServer((_req, res) => {
      res.writeHead(code).end(`status ${code}`)
    })
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
    const port = (server.address() as AddressInfo).port
    const clock = new VirtualClock()
    const runner = new CheckRunner({ clock, probes: systemProbes })
    const updates: CheckUpdate[] = []
    runner.on('check:update', (u) => updates.push(u))
    runner.sync([
      parseServiceDefinition(
        {
          name: 'web',
          port,
          checks: [{ http: `http://127.0.0.1:${port}/health`, interval: '1s', timeout: '1s' }],
        },
        't',
      ),
    ])
    try {
      runner.start()
      for (const [next, want] of [
        [200, 'passing'],
        [429, 'warning'],
        [500, 'critical'],
      ] as const) {
        code = next
        await eventually(() => clock.pending === 1) // the next probe is scheduled
        await advance(clock, 1000) // fires it; the real request completes on its own
        await eventually(() => runner.status('service:web') === want)
      }
      expect(updates.map((u) => u.status)).toEqual(['passing', 'warning', 'critical'])
      expect(runner.get('service:web')?.output).toMatch(/: 500 .*Output: status 500/)
    } finally {
      runner.stop()
      await new Promise((r) => server.close(r))
    }
  })

  it('real TCP probe: passing on an open port, critical on a closed one', async () => {
    const server = createServer()
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
    const port = (server.address() as AddressInfo).port
    const signal = new AbortController().signal
    expect((await systemProbes.tcp({ host: '127.0.0.1', port }, { signal, timeoutMs: 1000 })).status).toBe(
      'passing',
    )
    await new Promise((r) => server.close(r))
    expect((await systemProbes.tcp({ host: '127.0.0.1', port }, { signal, timeoutMs: 1000 })).status).toBe(
      'critical',
    )
  })
})
