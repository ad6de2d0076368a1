import { spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { existsSync, mkdirSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { inflateSync } from 'node:zlib'
import { afterAll, describe, expect, it } from 'vitest'
import { type Browser, chromium } from 'playwright-core'
import { type AgentProcess, BIN, freePort, runCli, TestCluster, waitFor } from './harness.ts'
import { startRaftCluster } from './raft-helpers.ts'

/** Debian's chromium (installed by .ci/run). */
const CHROMIUM = process.env['PEERMESH_CHROMIUM'] ?? '/usr/bin/chromium'
const chromiumAvailable = existsSync(CHROMIUM)

/** Runs the CLI with extra environment (the token as a user would export it). */
function cli(
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...env },
    })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000)
    child.once('error', reject)
    child.once('exit', (code) => {
      clearTimeout(timer)
      resolve({ code: code ?? -1, stdout, stderr })
    })
  })
}

/**
 * Decodes an 8-bit RGB/RGBA non-interlaced PNG (what chromium writes) enough to tell a blank
 * image from a page: its size, the number of distinct colours, and the share of pixels that are
 * not the most common colour (the background).
 */
export function pngStats(png: Buffer): {
  width: number
  height: number
  colours: number
  foreground: number
} {
  if (png.subarray(0, 8).toString('hex') !== '89504e470d0a1a0a') throw new Error('not a PNG')
  let off = 8
  let width = 0
  let height = 0
  let channels = 0
  const idat: Buffer[] = []
  while (off < png.length) {
    const len = png.readUInt32BE(off)
    const type = png.toString('latin1', off + 4, off + 8)
    const data = png.subarray(off + 8, off + 8 + len)
    if (type === 'IHDR') {
      width = data.readUInt32BE(0)
      height = data.readUInt32BE(4)
      const [depth, colourType, , , interlace] = [data[8], data[9], data[10], data[11], data[12]]
      if (depth !== 8 || interlace !== 0 || (colourType !== 2 && colourType !== 6))
        throw new Error(`unsupported PNG: depth ${depth}, colour type ${colourType}, interlace ${interlace}`)
      channels = colourType === 6 ? 4 : 3
    } else if (type === 'IDAT') idat.push(data)
    else if (type === 'IEND') break
    off += 12 + len
  }
  const raw = inflateSync(Buffer.concat(idat))
  const stride = width * channels
  const prev = Buffer.alloc(stride)
  const cur = Buffer.alloc(stride)
  const counts = new Map<number, number>()
  for (let y = 0; y < height; y++) {
    const base = y * (stride + 1)
    const filter = raw[base]!
    for (let x = 0; x < stride; x++) {
      const v = raw[base + 1 + x]!
      const a = x >= channels ? cur[x - channels]! : 0
      const b = prev[x]!
      const c = x >= channels ? prev[x - channels]! : 0
      let p = 0
      if (filter === 1) p = a
      else if (filter === 2) p = b
      else if (filter === 3) p = (a + b) >> 1
      else if (filter === 4) {
        const pa = Math.abs(b - c)
        const pb = Math.abs(a - c)
        const pc = Math.abs(a + b - 2 * c)
        p = pa <= pb && pa <= pc ? a : pb <= pc ? b : c
      }
      cur[x] = (v + p) & 0xff
    }
    for (let x = 0; x < stride; x += channels) {
      const rgb = (cur[x]! << 16) | (cur[x + 1]! << 8) | cur[x + 2]!
      counts.set(rgb, (counts.get(rgb) ?? 0) + 1)
    }
    cur.copy(prev)
  }
  const top = Math.max(...counts.values())
  return { width, height, colours: counts.size, foreground: 1 - top / (width * height) }
}

const ROOT = fileURLToPath(new URL('../../', import.meta.url))

describe.skipIf(!chromiumAvailable)(
  chromiumAvailable
    ? 'web UI in headless chromium (2 agents, ACLs on)'
    : `web UI in headless chromium: SKIPPED, ${CHROMIUM} not found (.ci/run installs Debian's chromium)`,
  () => {
    const cluster = new TestCluster()
    let app: Server | undefined
    let browser: Browser | undefined
    afterAll(async () => {
      await browser?.close()
      app?.close()
      await cluster.close()
    })

    it('logs in with a token; lists members, services and Raft; an intention created in the page is seen by the CLI on the other agent; traffic and its chart show; edit and delete work', async () => {
      const mgmt = randomUUID()
      const config = join(cluster.dir, 'acl.json')
      writeFileSync(config, JSON.stringify({ acl: { enabled: true, initialManagementToken: mgmt } }), {
        mode: 0o600,
      })
      const [a1, a2] = (await startRaftCluster(cluster, 2, {
        prefix: 'ui',
        extraArgs: ['--config', config],
      })) as [AgentProcess, AgentProcess]
      const auth = { headers: { 'x-consul-token': mgmt } }
      await waitFor(
        'the management token accepted and one leader on both agents',
        async () => {
          const st = await Promise.all(
            [a1, a2].map((a) => a.api<{ leader: string }>('/v1/operator/raft/status', auth)),
          )
          return st.every((s) => s !== undefined && s.leader !== '' && s.leader === st[0]?.leader)
            ? true
            : undefined
        },
        30_000,
      )

      // A service with an HTTP check on agent 1, and its client, so the intention names real services.
      // api (with an HTTP check and a sidecar) on agent 2; web with a sidecar and an upstream to api
      // on agent 1, whose UI shows web's outbound traffic.
      const [appPort, apiInbound, webPort, webInbound, upstreamPort] = await Promise.all(
        [1, 2, 3, 4, 5].map(() => freePort()),
      )
      app = createServer((_, res) => res.end('ok'))
      await new Promise<void>((r) => app!.listen(appPort!, '127.0.0.1', r))
      const defs: [AgentProcess, object][] = [
        [
          a2,
          {
            name: 'api',
            id: 'api-1',
            address: '127.0.0.1',
            port: appPort,
            tags: ['v1'],
            checks: [{ http: `http://127.0.0.1:${appPort}/`, interval: '1s' }],
            connect: { sidecarService: { port: apiInbound, protocol: 'http' } },
          },
        ],
        [
          a1,
          {
            name: 'web',
            id: 'web-1',
            address: '127.0.0.1',
            port: webPort,
            connect: {
              sidecarService: {
                port: webInbound,
                upstreams: [{ destinationName: 'api', localBindPort: upstreamPort }],
              },
            },
          },
        ],
      ]
      for (const [agent, def] of defs) {
        const file = join(cluster.dir, `${agent.name}-service.json`)
        writeFileSync(file, JSON.stringify(def))
        const reg = await runCli(['register', file, '--http', agent.http, '--token', mgmt])
        expect(reg.code, reg.stderr).toBe(0)
      }

      browser = await chromium.launch({
        executablePath: CHROMIUM,
        headless: true,
        args: ['--no-sandbox', '--headless'],
      })
      const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
      const problems: string[] = []
      page.on('console', (m) => {
        if (m.type() === 'error' && !/the server responded with a status of 403/.test(m.text()))
          problems.push(m.text())
      })
      page.on('pageerror', (e) => problems.push(e.message))

      const started = Date.now()
      await page.goto(`http://${a1.http}/ui`, { waitUntil: 'load' })
      const loaded = Date.now() - started
      // Anonymous: members and services are public; intentions are filtered, with a hint to log in.
      await page.waitForSelector('#members tr[data-member]', { timeout: 15_000 })
      const firstData = Date.now() - started
      await page.waitForSelector('#intentions .hint:has-text("intention:read")', { timeout: 15_000 })

      // Log in with the management token.
      await page.fill('#token', mgmt)
      await page.click('#login-btn')
      await page.waitForSelector('#who:has-text("token:")', { timeout: 15_000 })
      expect(await page.evaluate<string | null>("sessionStorage.getItem('peermesh.token')")).toBe(mgmt)

      // Members (both agents, alive), services (api with its check, web), Raft with a leader.
      for (const n of ['ui1', 'ui2'])
        await page.waitForSelector(`#members tr[data-member="${n}"] .alive`, { timeout: 15_000 })
      await page.waitForSelector('#services tr[data-service="api"] .passing', { timeout: 15_000 })
      await page.waitForSelector('#services tr[data-service="web"]', { timeout: 15_000 })
      await page.waitForSelector('#raft .leader', { timeout: 15_000 })

      // Create web -> api allow in the page.
      await page.fill('#int-src', 'web')
      await page.fill('#int-dst', 'api')
      await page.selectOption('#int-action', 'allow')
      await page.fill('#int-desc', 'created in the web UI')
      await page.click('#int-create')
      await page.waitForSelector('#int-msg:has-text("created web")', { timeout: 15_000 })
      await page.waitForSelector('#intentions tr[data-intention="web->api"] .allow', { timeout: 15_000 })

      // The CLI, on the other agent, with the token exported as a user would.
      const listed = await waitFor(
        'web -> api in `intention list` on agent 2',
        async () => {
          const r = await cli(['intention', 'list', '--http', a2.http, '--json'], {
            PEERMESH_HTTP_TOKEN: mgmt,
          })
          if (r.code !== 0) throw new Error(r.stderr)
          const list = JSON.parse(r.stdout) as { source: string; destination: string; action: string }[]
          return list.find((i) => i.source === 'web' && i.destination === 'api')
        },
        20_000,
        250,
      )
      expect(listed.action).toBe('allow')

      // Traffic through web's upstream (allowed by the intention made in the page) shows as a row
      // with a rate and latency percentiles, and as a line on the chart.
      let sending = true
      const sender = (async () => {
        while (sending) {
          await fetch(`http://127.0.0.1:${upstreamPort}/`, { signal: AbortSignal.timeout(2_000) })
            .then((r) => r.text())
            .catch(() => {})
          await new Promise((r) => setTimeout(r, 20))
        }
      })()
      const row = '#traffic tr[data-upstream="web|outbound|api"]'
      try {
        await waitFor(
          'a request rate for web -> api in the page',
          async () => {
            const rps = Number(await page.textContent(`${row} td:nth-child(2)`).catch(() => null))
            return rps > 0 ? rps : undefined
          },
          60_000,
          250,
        )
        await page.waitForSelector('#traffic svg polyline.series', { timeout: 15_000 })
        expect(await page.textContent(`${row} td:nth-child(7)`)).toMatch(/^\d+(\.\d+)?$/)
      } finally {
        sending = false
        await sender
      }

      // The figures: page weight (the UI's own files) and time to first render.
      const perf = await page.evaluate<{
        fcp: number
        transfer: number
        decoded: number
        files: number
      }>(`(() => {
        const nav = performance.getEntriesByType('navigation')[0]
        const res = performance.getEntriesByType('resource').filter((r) => new URL(r.name).pathname.startsWith('/ui'))
        const all = [nav, ...res]
        const fcp = performance.getEntriesByName('first-contentful-paint')[0]
        return {
          fcp: fcp ? fcp.startTime : -1,
          transfer: all.reduce((n, e) => n + e.transferSize, 0),
          decoded: all.reduce((n, e) => n + e.decodedBodySize, 0),
          files: all.length,
        }
      })()`)
      console.log(
        `web UI: page weight ${(perf.transfer / 1024).toFixed(1)} KB transferred (${(perf.decoded / 1024).toFixed(1)} KB uncompressed, ${perf.files} files); ` +
          `first contentful paint ${perf.fcp.toFixed(0)} ms; load event ${loaded} ms; members listed ${firstData} ms after navigation`,
      )
      expect(perf.transfer).toBeGreaterThan(0)
      expect(perf.decoded).toBeLessThan(300 * 1024)
      expect(perf.fcp).toBeGreaterThan(0)

      // A screenshot that shows members, services and intentions, and is not blank.
      const text = (await page.textContent('main')) ?? ''
      for (const want of ['ui1', 'ui2', 'api', 'web', 'created in the web UI']) expect(text).toContain(want)
      mkdirSync(join(ROOT, '.tmp'), { recursive: true })
      const shot = await page.screenshot({ path: join(ROOT, '.tmp', 'ui.png'), fullPage: true })
      const stats = pngStats(shot)
      console.log(
        `web UI: screenshot .tmp/ui.png ${stats.width}x${stats.height}, ${(shot.length / 1024).toFixed(0)} KB, ${stats.colours} colours, ${(stats.foreground * 100).toFixed(1)}% non-background`,
      )
      expect(shot.length).toBeGreaterThan(20_000)
      expect(stats.colours).toBeGreaterThan(50)
      expect(stats.foreground).toBeGreaterThan(0.02)

      // Edit (PUT /v1/connect/intentions/exact) to deny, then delete, from the page; agent 2 agrees.
      const irow = '#intentions tr[data-intention="web->api"]'
      const onA2 = async () => {
        const list = await a2.api<{ SourceName: string; DestinationName: string; Action: string }[]>(
          '/v1/connect/intentions',
          auth,
        )
        if (list === undefined) throw new Error('intentions not readable on agent 2')
        const i = list.find((x) => x.SourceName === 'web' && x.DestinationName === 'api')
        return i === undefined
          ? undefined
          : { source: i.SourceName, destination: i.DestinationName, action: i.Action }
      }
      await page.click(`${irow} button:has-text("Edit")`)
      await page.selectOption(`${irow} select.edit-action`, 'deny')
      await page.click(`${irow} button:has-text("Save")`)
      await page.waitForSelector(`${irow} .deny`, { timeout: 15_000 })
      await waitFor('web -> api deny on agent 2', async () =>
        (await onA2())?.action === 'deny' ? true : undefined,
      )
      await page.click(`${irow} button:has-text("Delete")`)
      await page.click(`${irow} button:has-text("Really delete?")`)
      await page.waitForSelector(irow, { state: 'detached', timeout: 15_000 })
      await waitFor('web -> api gone on agent 2', async () =>
        (await onA2()) === undefined ? true : undefined,
      )

      // No script error and no CSP violation while the agent was up.
      expect(problems).toEqual([])

      // The agent going away leaves the last data on screen with the error, never a blank page.
      await a1.stop('SIGKILL')
      await page.waitForSelector('#conn:has-text("agent unreachable")', { timeout: 15_000 })
      await page.waitForSelector('#members .err:has-text("did not answer")', { timeout: 15_000 })
      expect(await page.textContent('#members .body')).toContain('ui2')
    }, 180_000)
  },
)
