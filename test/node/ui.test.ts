import { request } from 'node:http'
import pino from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { HttpApi } from '../../src/node/api/server.ts'
import { UiAssetsMissingError } from '../../src/node/ui/errors.ts'
import { acceptsGzip, loadUiAssets, UI_CSP, UI_FILES, UiModule } from '../../src/node/ui/index.ts'

/** A raw GET (fetch hides Content-Encoding and refuses some headers). */
function get(
  base: string,
  path: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = request(`${base}${path}`, { headers }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }),
      )
    })
    req.on('error', reject)
    req.end()
  })
}

describe('web UI routes', () => {
  const api = new HttpApi(pino({ level: 'silent' }))
  let base = ''
  beforeAll(async () => {
    new UiModule().start({ http: api })
    const { port } = await api.listen('127.0.0.1', 0)
    base = `http://127.0.0.1:${port}`
  })
  afterAll(() => api.close())

  it('serves the page as HTML with a strict Content-Security-Policy and revalidated caching', async () => {
    const res = await get(base, '/ui')
    expect(res.status).toBe(200)
    expect(res.headers['content-type']).toBe('text/html; charset=utf-8')
    const csp = String(res.headers['content-security-policy'])
    expect(csp).toBe(UI_CSP)
    expect(csp).toContain("default-src 'none'")
    expect(csp).toContain("script-src 'self'")
    expect(csp).not.toMatch(/unsafe-inline|unsafe-eval/)
    expect(res.headers['x-content-type-options']).toBe('nosniff')
    expect(res.headers['x-frame-options']).toBe('DENY')
    expect(res.headers['cache-control']).toBe('no-cache')
    expect(res.headers['etag']).toMatch(/^"[\w-]+"$/)
    expect(res.body.toString()).toContain('<title>peermesh</title>')
    // A trailing slash is the same page.
    expect((await get(base, '/ui/')).status).toBe(200)
  })

  it('answers 304 to a client holding the current version, and gzip to one that accepts it', async () => {
    const first = await get(base, '/ui/app.js')
    expect(first.headers['content-type']).toBe('text/javascript; charset=utf-8')
    const etag = String(first.headers['etag'])
    const again = await get(base, '/ui/app.js', { 'if-none-match': etag })
    expect(again.status).toBe(304)
    expect(again.body.length).toBe(0)
    const gz = await get(base, '/ui/app.js', { 'accept-encoding': 'gzip, deflate' })
    expect(gz.headers['content-encoding']).toBe('gzip')
    expect(gz.headers['vary']).toBe('Accept-Encoding')
    expect(gz.body.length).toBeLessThan(first.body.length / 2)
  })

  it('serves each file with its content type and nothing else under /ui', async () => {
    for (const [name, { contentType }] of Object.entries(UI_FILES)) {
      const res = await get(base, `/ui/${name}`)
      expect(res.status, name).toBe(200)
      expect(res.headers['content-type'], name).toBe(contentType)
    }
    for (const path of ['/ui/nope.js', '/ui/index.html', '/ui/..%2Fassets.ts', '/ui/static/app.js'])
      expect((await get(base, path)).status, path).toBe(404)
  })

  it('answers HEAD with the headers and no body', async () => {
    const res = await new Promise<{ status: number; length: string | undefined; body: number }>(
      (resolve, reject) => {
        const req = request(`${base}/ui`, { method: 'HEAD' }, (r) => {
          let n = 0
          r.on('data', (c: Buffer) => (n += c.length))
          r.on('end', () =>
            resolve({ status: r.statusCode ?? 0, length: r.headers['content-length'], body: n }),
          )
        })
        req.on('error', reject)
        req.end()
      },
    )
    expect(res).toMatchObject({ status: 200, body: 0 })
    expect(Number(res.length)).toBeGreaterThan(0)
  })

  it('redirects / to /ui', async () => {
    const res = await get(base, '/')
    expect(res.status).toBe(302)
    expect(res.headers['location']).toBe('/ui')
  })

  it('refuses a page load through a foreign Host (DNS rebinding) like any API route', async () => {
    expect((await get(base, '/ui', { host: 'evil.example' })).status).toBe(403)
  })
})

describe('web UI files', () => {
  const assets = loadUiAssets()
  const page = assets.get('')!.body.toString()

  it('stay small: under 60 KB in all, under 20 KB compressed', () => {
    const raw = [...assets.values()].reduce((n, a) => n + a.body.length, 0)
    const gz = [...assets.values()].reduce((n, a) => n + a.gzip.length, 0)
    expect(raw).toBeLessThan(60_000)
    expect(gz).toBeLessThan(20_000)
  })

  it('need nothing the CSP forbids: no inline script, style or handler, every reference served', () => {
    expect(page).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/)
    expect(page).not.toMatch(/<style/)
    expect(page).not.toMatch(/\sstyle=/)
    expect(page).not.toMatch(/\son[a-z]+=/)
    const refs = [...page.matchAll(/(?:src|href)="\/ui\/([^"]+)"/g)].map((m) => m[1]!)
    expect(refs.length).toBeGreaterThan(0)
    for (const r of refs) expect(assets.has(r), r).toBe(true)
    for (const a of assets.values()) {
      if (!a.contentType.startsWith('text/javascript')) continue
      const text = a.body.toString()
      expect(text, a.name).not.toMatch(/\beval\(|new Function|innerHTML|setAttribute\('style'/)
      for (const m of text.matchAll(/from '\.\/([^']+)'/g)) expect(assets.has(m[1]!), m[1]).toBe(true)
    }
  })

  it('a missing file fails loading with a coded error', () => {
    expect(() => loadUiAssets('/nonexistent-ui-dir/')).toThrow(
      expect.objectContaining({ code: UiAssetsMissingError.code }),
    )
  })

  it('accept-encoding: gzip unless refused with q=0', () => {
    expect(acceptsGzip('gzip, deflate, br')).toBe(true)
    expect(acceptsGzip('*')).toBe(true)
    expect(acceptsGzip('gzip;q=0, deflate')).toBe(false)
    expect(acceptsGzip('deflate')).toBe(false)
    expect(acceptsGzip(undefined)).toBe(false)
  })
})
