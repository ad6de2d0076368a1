import { createHash } from 'node:crypto'
import { existsSync, readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { gzipSync } from 'node:zlib'
import { UiAssetsMissingError } from './errors.ts'

/** One file of the UI, read and compressed once when the agent starts. */
export interface UiAsset {
  /** Path under `/ui` ('' is the page itself). */
  name: string
  contentType: string
  body: Buffer
  /** The gzip form, sent to a client that accepts it (the page is mostly text). */
  gzip: Buffer
  /** Strong validator: the SHA-256 of `body`, quoted. */
  etag: string
}

/** The files served and their content types: nothing else under `static/` is reachable. */
export const UI_FILES: Readonly<Record<string, { file: string; contentType: string }>> = {
  '': { file: 'index.html', contentType: 'text/html; charset=utf-8' },
  'app.css': { file: 'app.css', contentType: 'text/css; charset=utf-8' },
  'app.js': { file: 'app.js', contentType: 'text/javascript; charset=utf-8' },
  'metrics.js': { file: 'metrics.js', contentType: 'text/javascript; charset=utf-8' },
  'chart.js': { file: 'chart.js', contentType: 'text/javascript; charset=utf-8' },
}

/**
 * Where `static/` is: beside this module when run from the TypeScript sources (tsx, tests), or
 * `src/node/ui/static` of the checkout when run from the esbuild bundle in `dist/` (whose chunks
 * sit in `dist/`, so `import.meta.url` is not this file's).
 */
export function staticDir(): string {
  const candidates = [
    new URL('./static/', import.meta.url),
    new URL('../src/node/ui/static/', import.meta.url),
  ]
  for (const c of candidates) {
    const dir = fileURLToPath(c)
    if (existsSync(`${dir}index.html`)) return dir
  }
  throw new UiAssetsMissingError(
    `web UI files not found (looked in ${candidates.map((c) => fileURLToPath(c)).join(', ')})`,
  )
}

/** Reads every UI file; throws `UiAssetsMissingError` if one is missing. */
export function loadUiAssets(dir: string = staticDir()): Map<string, UiAsset> {
  const out = new Map<string, UiAsset>()
  for (const [name, { file, contentType }] of Object.entries(UI_FILES)) {
    let body: Buffer
    try {
      body = readFileSync(`${dir}${dir.endsWith('/') ? '' : '/'}${file}`)
    } catch (err) {
      throw new UiAssetsMissingError(`web UI file ${file} cannot be read in ${dir}`, { cause: err })
    }
    const etag = `"${createHash('sha256').update(body).digest('base64url').slice(0, 27)}"`
    out.set(name, { name, contentType, body, gzip: gzipSync(body, { level: 9 }), etag })
  }
  return out
}
