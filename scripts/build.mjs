#!/usr/bin/env node
// Compiles the agent and CLI to JavaScript in dist/ (run by `npm ci` through the `prepare`
// script): one ES module per entry point plus lazily loaded chunks (the agent, the demo), with
// source maps. bin/peermesh.js runs this build when it is newer than every source file, and the
// TypeScript through tsx otherwise.
//
// Dependencies are bundled too, except those listed in KEEP_EXTERNAL: Node resolves, opens, reads
// and links every ES module file separately, and libp2p, zod and multiformats come as hundreds of
// small files. Bundled, a CLI call and an agent start read a few large files instead (a CLI call
// takes about a third less CPU, an agent start about 30% less wall time on this machine).
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'

/**
 * Loaded from node_modules as they are, because they find files of their own at run time:
 * pino starts transports in worker threads by file path (thread-stream), and msgpackr loads its
 * optional native extension (msgpackr-extract) through node-gyp-build.
 */
const KEEP_EXTERNAL = ['pino', 'msgpackr']

/**
 * Of KEEP_EXTERNAL, the CommonJS packages: loaded with require() rather than import. Node imports
 * a CommonJS module into an ES module by first scanning its source for its export names with
 * cjs-module-lexer, a WebAssembly module it compiles and keeps for the process's life; require()
 * needs no scan.
 */
const REQUIRE_EXTERNAL = ['pino']

/** `import x from 'pino'` made `require('pino')` through a small CommonJS module of the bundle. */
const requireExternals = {
  name: 'require-externals',
  setup(b) {
    const filter = new RegExp(`^(${REQUIRE_EXTERNAL.join('|')})$`)
    b.onResolve({ filter }, (args) =>
      args.namespace === 'require-external'
        ? { path: args.path, external: true }
        : { path: args.path, namespace: 'require-external' },
    )
    b.onLoad({ filter: /.*/, namespace: 'require-external' }, (args) => ({
      contents: `module.exports = require(${JSON.stringify(args.path)})`,
      loader: 'js',
    }))
  },
}

/**
 * zod's `z` namespace carries its error messages in 48 languages (`z.locales`), a third of zod's
 * size in the bundle, all kept in memory as module source. peermesh uses the English messages
 * only (zod's default, which its schemas import directly): the bundle's `z.locales` and
 * `z.core.locales` hold `en`.
 */
const zodEnglishOnly = {
  name: 'zod-english-only',
  setup(b) {
    b.onResolve({ filter: /^\.\.\/locales\/index\.js$/ }, (args) =>
      /[\\/]zod[\\/]v4[\\/](classic[\\/]external|core[\\/]index)\.js$/.test(args.importer)
        ? { path: join(dirname(args.importer), '../locales/en.js'), namespace: 'zod-locales' }
        : undefined,
    )
    b.onLoad({ filter: /.*/, namespace: 'zod-locales' }, (args) => ({
      contents: `export { default as en } from ${JSON.stringify(args.path)}`,
      loader: 'js',
      resolveDir: dirname(args.path),
    }))
  },
}

/**
 * libp2p-noise encrypts a message under 1,200 bytes with ChaCha20-Poly1305 compiled to WebAssembly
 * (@chainsafe/as-chacha20poly1305) and larger ones with Node's, and it imports @chainsafe/as-sha256
 * for hashing it does with Node's: each module instantiates its WebAssembly at import, with 0.5 MiB
 * of memory and the compiled code an agent keeps for its whole life. Here both are Node's: the
 * modules stand in for them and call noise's own Node implementation. Node's cipher costs a few
 * microseconds more CPU per small message (a cipher object per call): at an idle agent's message
 * rate, nothing measurable.
 */
const noiseNodeCrypto = {
  name: 'noise-node-crypto',
  setup(b) {
    const noiseCrypto = /[\\/]@chainsafe[\\/]libp2p-noise[\\/]dist[\\/]src[\\/]crypto[\\/]index\.js$/
    b.onResolve({ filter: /^@chainsafe\/as-(chacha20poly1305|sha256)$/ }, (args) =>
      noiseCrypto.test(args.importer)
        ? { path: args.path, namespace: 'noise-node-crypto', pluginData: { importer: args.importer } }
        : undefined,
    )
    b.onLoad({ filter: /.*/, namespace: 'noise-node-crypto' }, (args) => ({
      contents:
        args.path === '@chainsafe/as-sha256'
          ? `import { createHash } from 'node:crypto'
export function digest(data) { return createHash('sha256').update(data).digest() }`
          : `import { nodeCrypto } from './index.js'
export function newInstance() { return undefined }
export class ChaCha20Poly1305 {
  seal(k, nonce, plaintext, ad) { return nodeCrypto.chaCha20Poly1305Encrypt(plaintext, nonce, ad, k) }
  open(k, nonce, ciphertext, ad, dst) {
    try { return nodeCrypto.chaCha20Poly1305Decrypt(ciphertext, nonce, ad, k, dst) } catch { return null }
  }
}`,
      loader: 'js',
      resolveDir: dirname(args.pluginData.importer),
    }))
  },
}

/**
 * prom-client requires @opentelemetry/api in one place, for exemplars (trace ids beside the CPU
 * counters), which peermesh never turns on; loading it set up OpenTelemetry's global API in every
 * agent. Here prom-client gets a stand-in that says so if it is ever called.
 */
const promClientWithoutOtel = {
  name: 'prom-client-without-otel',
  setup(b) {
    b.onResolve({ filter: /^@opentelemetry\/api$/ }, (args) =>
      /[\\/]prom-client[\\/]/.test(args.importer)
        ? { path: args.path, namespace: 'prom-client-otel' }
        : undefined,
    )
    b.onLoad({ filter: /.*/, namespace: 'prom-client-otel' }, () => ({
      contents: `const off = () => { throw new Error('prom-client exemplars are off in peermesh: @opentelemetry/api is not bundled') }
module.exports = { trace: { getSpan: off }, context: { active: off } }`,
      loader: 'js',
    }))
  },
}

/**
 * libp2p's peer store sorts protocols, metadata keys and addresses, and compares peer records,
 * with `String.prototype.localeCompare` only to get one canonical order. Its first call loads
 * ICU's collation data: 2.3 MiB of the Node binary's pages that every agent then kept resident.
 * Here those comparisons are by UTF-16 code units, as canonical and without ICU. Each rewrite is
 * listed with the number of times it must apply: a dependency update that changes them fails the
 * build rather than being left as it was.
 */
const CODE_UNIT_ORDER = [
  {
    file: /[\\/]@libp2p[\\/]peer-record[\\/]dist[\\/]src[\\/]peer-record[\\/]utils\.js$/,
    rewrites: [
      ['a.toString().localeCompare(b.toString())', 'compareCodeUnits(a.toString(), b.toString())', 1],
    ],
  },
  {
    file: /[\\/]@libp2p[\\/]peer-store[\\/]dist[\\/]src[\\/]utils[\\/]dedupe-addresses\.js$/,
    rewrites: [
      [
        'a.multiaddr.toString().localeCompare(b.multiaddr.toString())',
        'compareCodeUnits(a.multiaddr.toString(), b.multiaddr.toString())',
        1,
      ],
    ],
  },
  {
    file: /[\\/]@libp2p[\\/]peer-store[\\/]dist[\\/]src[\\/]utils[\\/]to-peer-pb\.js$/,
    rewrites: [['a.localeCompare(b)', 'compareCodeUnits(a, b)', 2]],
  },
]

const peerStoreCodeUnitOrder = {
  name: 'peer-store-code-unit-order',
  setup(b) {
    b.onLoad({ filter: /[\\/]@libp2p[\\/]peer-(store|record)[\\/].*\.js$/ }, (args) => {
      const entry = CODE_UNIT_ORDER.find((e) => e.file.test(args.path))
      if (entry === undefined) return undefined
      let text = readFileSync(args.path, 'utf8')
      for (const [from, to, times] of entry.rewrites) {
        const found = text.split(from).length - 1
        if (found !== times)
          throw new Error(
            `${args.path}: expected ${times} of "${from}", found ${found}: review CODE_UNIT_ORDER`,
          )
        text = text.replaceAll(from, to)
      }
      return {
        contents: `${text}\nfunction compareCodeUnits(a, b) { return a < b ? -1 : a > b ? 1 : 0 }\n`,
        loader: 'js',
        resolveDir: dirname(args.path),
      }
    })
  },
}

/**
 * `text` with every character outside ASCII written as a `\\uXXXX` escape (UTF-16 code units),
 * and by line number (from 0) the columns in `text` of the characters escaped.
 */
function asciiOnly(text) {
  const escaped = new Map()
  const lines = text.split('\n').map((line, i) => {
    if (!/[\u0080-\uffff]/.test(line)) return line
    const columns = []
    const ascii = line.replace(/[\u0080-\uffff]/g, (c, at) => {
      columns.push(at)
      return `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`
    })
    escaped.set(i, columns)
    return ascii
  })
  return { text: lines.join('\n'), escaped }
}

const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'

/** The source map's segments as absolute `[column, source, line, sourceColumn]`, per line. */
function decodeMappings(mappings) {
  const lines = []
  const state = [0, 0, 0, 0, 0] // source, line, column and name carry over from line to line
  for (const text of mappings.split(';')) {
    const segments = []
    state[0] = 0 // the generated column restarts on each line
    for (const seg of text === '' ? [] : text.split(',')) {
      const fields = []
      let value = 0
      let shift = 0
      for (const ch of seg) {
        const digit = B64.indexOf(ch)
        value += (digit & 31) << shift
        if (digit & 32) shift += 5
        else {
          fields.push(value & 1 ? -(value >>> 1) : value >>> 1)
          value = 0
          shift = 0
        }
      }
      for (let i = 0; i < fields.length; i++) state[i] += fields[i]
      if (fields.length >= 4) segments.push([state[0], state[1], state[2], state[3]])
    }
    lines.push(segments)
  }
  return lines
}

function vlq(n) {
  let v = n < 0 ? (-n << 1) | 1 : n << 1
  let out = ''
  do {
    let digit = v & 31
    v >>>= 5
    if (v > 0) digit |= 32
    out += B64[digit]
  } while (v > 0)
  return out
}

function encodeMappings(lines) {
  const prev = [0, 0, 0]
  return lines
    .map((segments) => {
      let column = 0
      return segments
        .map(([col, source, line, sourceCol]) => {
          const text =
            vlq(col - column) + vlq(source - prev[0]) + vlq(line - prev[1]) + vlq(sourceCol - prev[2])
          column = col
          prev[0] = source
          prev[1] = line
          prev[2] = sourceCol
          return text
        })
        .join(',')
    })
    .join(';')
}

/**
 * The map with only what points into our own sources: no segment into node_modules (stack frames
 * in dependencies name their dist/ line) and no names (Node takes function names from V8). Node
 * reads and keeps the map of every module an agent loads (the maps are on for long-running
 * commands); the dependencies' segments were most of it.
 */
function ownSourcesOnly(map, escaped) {
  // Foreign: anything outside src/, a dependency's file or a module a plugin made (`require-external:pino`).
  const foreign = map.sources.map((s) => !resolve(out, s).startsWith(join(root, 'src', '/')))
  const lines = decodeMappings(map.mappings).map((segments, line) => {
    const columns = escaped.get(line)
    return segments
      .filter((s) => !foreign[s[1]])
      .map((s) =>
        // Each escape is 5 characters longer than the one it replaced: what follows it moves right.
        columns === undefined ? s : [s[0] + 5 * columns.filter((c) => c < s[0]).length, s[1], s[2], s[3]],
      )
  })
  return { version: map.version, sources: map.sources, names: [], mappings: encodeMappings(lines) }
}

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
// `--outdir DIR` builds elsewhere than dist/, and `--metafile` writes esbuild's description of the
// build (inputs and imports of every output file) to meta.json there (test/scripts/build.test.ts).
const outdirFlag = process.argv.indexOf('--outdir')
const out = outdirFlag > 0 ? resolve(process.argv[outdirFlag + 1]) : join(root, 'dist')
const started = Date.now()
rmSync(out, { recursive: true, force: true })
const result = await build({
  absWorkingDir: root,
  metafile: process.argv.includes('--metafile'),
  entryPoints: {
    peermesh: 'src/node/cli/main.ts',
    // bin/peermesh.js loads it first for `agent`, before the CLI itself (young-generation.ts).
    'young-generation': 'src/node/agent/young-generation.ts',
  },
  outdir: out,
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  external: KEEP_EXTERNAL.filter((name) => !REQUIRE_EXTERNAL.includes(name)),
  plugins: [requireExternals, zodEnglishOnly, noiseNodeCrypto, promClientWithoutOtel, peerStoreCodeUnitOrder],
  // Bundled CommonJS dependencies (prom-client, @peculiar/x509, dns-packet...) call require() for
  // Node's built-in modules: give the ES module bundle a real one.
  banner: {
    js: "import { createRequire as __peermeshCreateRequire } from 'node:module'; const require = __peermeshCreateRequire(import.meta.url);",
  },
  // Maps for stack traces only: without the sources' text. With source maps on, Node reads and
  // keeps every map of every module it loads; the sources' text was most of their size (and of an
  // idle agent's heap).
  sourcemap: true,
  sourcesContent: false,
  // V8 keeps the source text of every module it loads for as long as the module lives (for lazy
  // compilation and Function.prototype.toString), and parsing a large module takes memory that
  // the allocator keeps after it is freed: comments, indentation and long local names were half
  // of the text. keepNames sets every function's and class's `name` to the one in the sources,
  // so class names in logs, error names, stack frames and code that reads a constructor's name
  // are as written.
  minifyWhitespace: true,
  minifySyntax: true,
  minifyIdentifiers: true,
  keepNames: true,
  // Licence comments to a .LEGAL.txt file beside each output file, out of the loaded text.
  legalComments: 'linked',
  logLevel: 'warning',
})
// V8 keeps the text of every module it loads, in one byte a character when it is all Latin-1 and
// in two otherwise: a single non-ASCII character esbuild leaves as written (one in a regular
// expression) would double a chunk's size in the heap. Escaped here: in a regular expression or a
// string an escape stands for the same character; the map's columns after it on its line move.
for (const name of readdirSync(out)) {
  if (!name.endsWith('.js')) continue
  const path = join(out, name)
  const original = readFileSync(path, 'utf8')
  const { text, escaped } = asciiOnly(original)
  if (text !== original) writeFileSync(path, text)
  const mapPath = `${path}.map`
  if (existsSync(mapPath))
    writeFileSync(mapPath, JSON.stringify(ownSourcesOnly(JSON.parse(readFileSync(mapPath, 'utf8')), escaped)))
}
if (result.metafile !== undefined) writeFileSync(join(out, 'meta.json'), JSON.stringify(result.metafile))
// Written last: its presence says the build completed (bin/peermesh.js checks it).
writeFileSync(join(out, 'BUILD'), `${new Date().toISOString()}\n`)
console.log(`peermesh: built dist/ in ${Date.now() - started} ms`)
