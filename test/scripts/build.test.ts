/**
 * scripts/build.mjs, built into a temp dir with its metafile: what an agent loads at start, and
 * that the minified, ASCII-escaped output keeps accurate source maps for our sources.
 */
import { spawnSync } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { SourceMap } from 'node:module'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { TempDirs } from '../temp-dir.ts'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))

interface Metafile {
  outputs: Record<
    string,
    {
      entryPoint?: string
      inputs: Record<string, unknown>
      imports: { path: string; kind: string; external?: boolean }[]
    }
  >
}

describe('scripts/build.mjs', () => {
  const tmp = new TempDirs()
  let out: string
  let meta: Metafile
  /** Output file name (in `out`) → its metafile entry. */
  const outputs = new Map<string, Metafile['outputs'][string]>()

  beforeAll(() => {
    out = join(tmp.make('build'), 'dist')
    const r = spawnSync(process.execPath, ['scripts/build.mjs', '--outdir', out, '--metafile'], {
      cwd: ROOT,
      encoding: 'utf8',
    })
    expect(r.status, r.stderr).toBe(0)
    meta = JSON.parse(readFileSync(join(out, 'meta.json'), 'utf8')) as Metafile
    for (const [path, o] of Object.entries(meta.outputs)) outputs.set(path.split('/').at(-1)!, o)
  }, 120_000)
  afterAll(() => tmp.removeAll())

  /** The output files an output loads before it runs (static imports), itself included. */
  function staticClosure(name: string): Set<string> {
    const seen = new Set<string>()
    const visit = (n: string): void => {
      if (seen.has(n)) return
      seen.add(n)
      for (const i of outputs.get(n)!.imports)
        if (i.kind === 'import-statement' && !i.external) visit(i.path.split('/').at(-1)!)
    }
    visit(name)
    return seen
  }

  const outputOf = (entryPoint: string): string =>
    [...outputs].find(([, o]) => o.entryPoint === entryPoint)![0]

  it('an agent loads the data plane (proxy, http2, tls) only when its first sidecar or tracing starts', () => {
    const atStart = [
      ...staticClosure('peermesh.js'),
      ...staticClosure(outputOf('src/node/agent/create-agent.ts')),
    ]
    const inputs = new Set(atStart.flatMap((n) => Object.keys(outputs.get(n)!.inputs)))
    const builtins = new Set(
      atStart.flatMap((n) =>
        outputs
          .get(n)!
          .imports.filter((i) => i.external)
          .map((i) => i.path),
      ),
    )
    for (const file of [
      'src/proxy/sidecar.ts',
      'src/proxy/outbound-h2.ts',
      'src/proxy/inbound.ts',
      'src/proxy/otlp-exporter.ts',
    ])
      expect(inputs.has(file), file).toBe(false)
    expect(builtins.has('node:http2')).toBe(false)
    expect(builtins.has('node:tls')).toBe(false)
    // ...and they are in what the data plane's own chunk loads.
    const dataPlane = new Set(
      [...staticClosure(outputOf('src/node/sidecars/data-plane.ts'))].flatMap((n) =>
        Object.keys(outputs.get(n)!.inputs),
      ),
    )
    expect(dataPlane.has('src/proxy/sidecar.ts')).toBe(true)
  })

  it("an agent loads the CA's x509 code only when it leads or needs a leaf; no WebAssembly, no OpenTelemetry", () => {
    const inputsOf = (names: Iterable<string>): Set<string> =>
      new Set([...names].flatMap((n) => Object.keys(outputs.get(n)!.inputs)))
    const atStart = inputsOf([
      ...staticClosure('peermesh.js'),
      ...staticClosure(outputOf('src/node/agent/create-agent.ts')),
    ])
    const has = (inputs: Set<string>, pattern: RegExp): boolean => [...inputs].some((i) => pattern.test(i))
    expect(has(atStart, /node_modules\/@chainsafe\/libp2p-noise\//)).toBe(true)
    for (const pattern of [
      /node_modules\/@peculiar\/x509\//,
      /node_modules\/asn1js\//,
      /^src\/identity\/ca\/(ca|leaf|cert-info|x509-setup)\.ts$/,
      /^src\/identity\/connect\/leaf-rotator\.ts$/,
      /node_modules\/@chainsafe\/as-(sha256|chacha20poly1305)\//,
    ])
      expect(has(atStart, pattern), String(pattern)).toBe(false)
    // No output holds the WebAssembly modules at all: noise encrypts with Node's ChaCha20-Poly1305;
    // nor OpenTelemetry's API, which prom-client loads for exemplars only.
    expect(has(inputsOf(outputs.keys()), /node_modules\/@chainsafe\/as-/)).toBe(false)
    expect(has(inputsOf(outputs.keys()), /node_modules\/@opentelemetry\/api\//)).toBe(false)
    // libp2p's peer store orders by code units: no ICU collation data paged in by an idle agent.
    for (const n of staticClosure(outputOf('src/node/agent/create-agent.ts')))
      for (const m of readFileSync(join(out, n), 'utf8').matchAll(/localeCompare.{0,40}/g))
        expect(m[0], n).toMatch(/endpointsOf/) // the sidecars' endpoint list, built for a sidecar only
    // The CA's own chunk and the rotator's load the x509 code.
    for (const entry of ['src/identity/ca/ca.ts', 'src/identity/connect/leaf-rotator.ts'])
      expect(has(inputsOf(staticClosure(outputOf(entry))), /node_modules\/@peculiar\/x509\//), entry).toBe(
        true,
      )
  })

  it('pino is required, not imported (no cjs-module-lexer), and zod carries English messages only', () => {
    const text = readdirSync(out)
      .filter((f) => f.endsWith('.js'))
      .map((f) => readFileSync(join(out, f), 'utf8'))
      .join('\n')
    expect(text).toMatch(/[\w$]+\("pino"\)/) // esbuild's require helper, whatever its name
    expect(text).not.toMatch(/from\s*"pino"|import\("pino"\)/)
    expect(
      [...(meta.outputs ? Object.values(meta.outputs) : [])].some((o) =>
        Object.keys(o.inputs).some((i) => i.endsWith('zod/v4/locales/de.js')),
      ),
    ).toBe(false)
    expect(
      Object.values(meta.outputs).some((o) =>
        Object.keys(o.inputs).some((i) => i.endsWith('zod/v4/locales/en.js')),
      ),
    ).toBe(true)
  })

  it("a CLI call loads neither the agent's config schemas (zod, multiaddr) nor its logger (pino)", () => {
    const cli = staticClosure('peermesh.js')
    const inputs = new Set([...cli].flatMap((n) => Object.keys(outputs.get(n)!.inputs)))
    for (const pattern of [
      /node_modules\/zod\//,
      /node_modules\/@multiformats\//,
      /^src\/node\/agent\/(config|logger)\.ts$/,
    ])
      expect(
        [...inputs].some((i) => pattern.test(i)),
        String(pattern),
      ).toBe(false)
    for (const n of cli) expect(readFileSync(join(out, n), 'utf8'), n).not.toMatch(/[\w$]+\("pino"\)/)
    expect(inputs.has('src/node/cli/cli.ts')).toBe(true)
  })

  it('writes ASCII only, and its maps point identifiers of our sources at the same identifiers', () => {
    let checked = 0
    let same = 0
    let afterEscape = 0
    for (const f of readdirSync(out).filter((n) => n.endsWith('.js'))) {
      const text = readFileSync(join(out, f), 'utf8')
      expect(/[\u0080-\uffff]/.test(text), f).toBe(false)
      const map = new SourceMap(JSON.parse(readFileSync(join(out, `${f}.map`), 'utf8')))
      const sources = new Map<string, string[]>()
      for (const [line, lineText] of text.split('\n').entries()) {
        const escapeAt = lineText.indexOf('\\u00b5')
        for (const m of lineText.matchAll(/[A-Za-z_$][\w$]{5,}/g)) {
          const e = map.findEntry(line, m.index)
          // Only identifiers a segment starts at, in our own sources.
          if (!('originalSource' in e) || e.generatedLine !== line || e.generatedColumn !== m.index) continue
          const path = fileURLToPath(new URL(e.originalSource, `file://${out}/`))
          if (!sources.has(path)) sources.set(path, readFileSync(path, 'utf8').split('\n'))
          const original = sources.get(path)![e.originalLine] ?? ''
          checked++
          if (original.startsWith(m[0], e.originalColumn)) {
            same++
            if (escapeAt >= 0 && m.index > escapeAt) afterEscape++
          }
        }
      }
    }
    expect(checked).toBeGreaterThan(1000)
    // Identifiers esbuild renamed (a clash between modules: `Foo2`) or rewrote are the rest.
    expect(same / checked).toBeGreaterThan(0.9)
    // The build escapes at least one character (a 'µs' in a duration regular expression), and the
    // segments after it on its line still land on their identifiers.
    expect(afterEscape).toBeGreaterThan(0)
  })
})
