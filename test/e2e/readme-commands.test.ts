/**
 * The README's commands work (issue #16): every shell command of its "Quick start" and "CLI
 * reference" sections runs, in order, as a user would type it in one shell, and exits 0.
 *
 * What is run, and how (keep the README's comment on these blocks in step):
 * - Commands: the lines of the ```sh blocks under those two `##` headings. A line ending in `\`
 *   continues on the next; `#` comments and blank lines are dropped.
 * - `npx peermesh` runs this checkout's `bin/peermesh.js` with node (npx would add an npm
 *   wrapper process and a registry lookup, nothing of peermesh's own).
 * - Files: a ```json block right after `<!-- readme-test: file NAME -->` (anywhere in the README)
 *   is written to NAME in the working directory, a temp dir, where every command runs.
 * - Ports and paths: every port the README's examples use is replaced by a free port, the same
 *   one everywhere (commands and files), so the test runs beside anything else on the machine;
 *   `/tmp/` becomes the temp dir. Commands without `--http` reach agent a, as in the README,
 *   through `$PEERMESH_HTTP_ADDR`.
 * - `export NAME=VALUE` sets NAME (VALUE expanded by bash) for the commands that follow.
 * - Long-running commands are the rule's exception, and explicit: `peermesh agent … &` is started
 *   in the background (with `--dns` on the README's default DNS port, mapped, when the line has
 *   none), and the next command waits until that agent answers and knows a Raft leader (a joining
 *   agent also until it is in the Raft configuration and knows the exported token), which is what
 *   a user waits for by reading the output. The agents are stopped at the end. `peermesh demo`
 *   and `npm` lines are skipped (test/e2e/demo.test.ts runs the demo); the test lists what it
 *   skipped and fails if that is anything else.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, describe, expect, it } from 'vitest'
import { makeTempDir, removeTempDir } from '../temp-dir.ts'
import { BIN, freePort, waitFor } from './harness.ts'

const README = fileURLToPath(new URL('../../README.md', import.meta.url))
/** The sections whose shell blocks are run. */
const SECTIONS = ['Quick start', 'CLI reference']
/** Every port the README's examples use (HTTP APIs, libp2p, DNS, a sidecar, an upstream). */
const README_PORTS = [7880, 7881, 7946, 7947, 8600, 8601, 21000, 9191]
const DEFAULT_HTTP_PORT = 7880
const DEFAULT_DNS_PORT = 8600

/** The text of the `## title` section, up to the next `## ` heading. */
function section(markdown: string, title: string): string {
  const lines = markdown.split('\n')
  const start = lines.indexOf(`## ${title}`)
  if (start < 0) throw new Error(`README has no "## ${title}" section`)
  const end = lines.findIndex((l, i) => i > start && l.startsWith('## '))
  return lines.slice(start + 1, end < 0 ? undefined : end).join('\n')
}

/** The commands of the ```sh blocks of `text`: continuations joined, comments and blanks dropped. */
function shellCommands(text: string): string[] {
  const commands: string[] = []
  for (const block of text.matchAll(/^```sh\n([\s\S]*?)^```$/gm)) {
    let pending = ''
    for (const raw of block[1]!.split('\n')) {
      const line = pending + raw.replace(/\s+#.*$/, '').replace(/^#.*$/, '')
      if (line.trimEnd().endsWith('\\')) {
        pending = `${line.trimEnd().slice(0, -1).trimEnd()} `
        continue
      }
      pending = ''
      if (line.trim() !== '') commands.push(line.trim().replace(/\s+/g, ' '))
    }
  }
  return commands
}

/** The files the README names with `<!-- readme-test: file NAME -->` before a ```json block. */
function readmeFiles(markdown: string): Map<string, string> {
  const files = new Map<string, string>()
  for (const m of markdown.matchAll(/^<!-- readme-test: file (\S+) -->\n```json\n([\s\S]*?)^```$/gm))
    files.set(m[1]!, m[2]!)
  return files
}

interface Result {
  code: number
  stdout: string
  stderr: string
}

function bash(command: string, cwd: string, env: NodeJS.ProcessEnv, timeoutMs = 60_000): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', ['-c', command], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    child.once('error', reject)
    child.once('exit', (code) => {
      clearTimeout(timer)
      resolve({ code: code ?? -1, stdout, stderr })
    })
  })
}

async function get(http: string, path: string, token?: string): Promise<{ status: number; json: unknown }> {
  const res = await fetch(`http://${http}${path}`, {
    headers: token !== undefined ? { 'x-consul-token': token } : {},
    signal: AbortSignal.timeout(5_000),
  })
  const text = await res.text()
  let json: unknown = text
  try {
    json = JSON.parse(text)
  } catch {
    // not JSON
  }
  return { status: res.status, json }
}

describe('the README commands (Quick start and CLI reference)', () => {
  const markdown = readFileSync(README, 'utf8')
  const commands = SECTIONS.flatMap((s) => shellCommands(section(markdown, s)))
  const dir = makeTempDir('readme')
  const agents: { name: string; child: ChildProcess; log: () => string }[] = []

  afterAll(async () => {
    await Promise.all(
      agents.map(
        ({ child }) =>
          new Promise<void>((resolve) => {
            if (child.exitCode !== null || child.signalCode !== null) return resolve()
            const kill = setTimeout(() => child.kill('SIGKILL'), 5_000)
            child.once('exit', () => {
              clearTimeout(kill)
              resolve()
            })
            child.kill('SIGTERM')
          }),
      ),
    )
    removeTempDir(dir)
  })

  it('cover every command of the CLI (but agent and demo, run by other tests) with a runnable example', () => {
    const used = new Set(commands.map((c) => /^npx peermesh ([a-z-]+)/.exec(c)?.[1]).filter(Boolean))
    const help = readFileSync(fileURLToPath(new URL('../../src/node/cli/cli.ts', import.meta.url)), 'utf8')
    expect(help).toContain('registerConfigCommands(program)') // the CLI this test reads is the one run
    for (const cmd of [
      'keygen',
      'info',
      'members',
      'register',
      'deregister',
      'services',
      'health',
      'leader',
      'raft',
      'enroll',
      'ca',
      'cert',
      'intention',
      'acl',
      'config',
    ])
      expect(used, `no README example runs "peermesh ${cmd}"`).toContain(cmd)
  })

  it('all run and exit 0, in order, against the agents the Quick start starts', async () => {
    const ports = new Map<number, number>()
    for (const p of README_PORTS) ports.set(p, await freePort())
    const mapPorts = (s: string): string =>
      s.replace(new RegExp(`\\b(${README_PORTS.join('|')})\\b`, 'g'), (p) => String(ports.get(Number(p))))
    for (const [name, text] of readmeFiles(markdown)) writeFileSync(join(dir, name), mapPorts(text))

    const env: NodeJS.ProcessEnv = {
      ...process.env,
      PEERMESH_HTTP_ADDR: `127.0.0.1:${ports.get(DEFAULT_HTTP_PORT)}`,
    }
    delete env['PEERMESH_HTTP_TOKEN']
    delete env['CONSUL_HTTP_TOKEN']
    const skipped: string[] = []
    let waitForAgent: (() => Promise<void>) | undefined

    for (const original of commands) {
      if (/^npm |\bpeermesh demo\b/.test(original)) {
        skipped.push(original)
        continue
      }
      const command = mapPorts(original)
        .replace(/^npx peermesh /, `node '${BIN}' `)
        .replace(/(^|\s)\/tmp\//g, `$1${dir}/`)
      // Before anything else runs, the agent started last is up (what a user waits for).
      if (waitForAgent !== undefined) {
        await waitForAgent()
        waitForAgent = undefined
      }

      const exported = /^export ([A-Z_][A-Z0-9_]*)=(.*)$/.exec(command)
      if (exported !== null) {
        const [, name, value] = exported
        const r = await bash(`printf %s ${value}`, dir, env)
        expect(r.code, `${original}\n${r.stderr}`).toBe(0)
        env[name!] = r.stdout
        continue
      }

      if (/ agent .*&$/.test(command)) {
        let line = command.replace(/\s*&$/, '')
        if (!/ --dns /.test(line)) line += ` --dns 127.0.0.1:${ports.get(DEFAULT_DNS_PORT)}`
        const http = /--http (\S+)/.exec(line)?.[1] ?? env['PEERMESH_HTTP_ADDR']!
        const name = /--name (\S+)/.exec(line)?.[1] ?? '?'
        const seeded = / --seed /.test(line)
        const child = spawn('bash', ['-c', `exec ${line}`], {
          cwd: dir,
          env: { ...env },
          stdio: ['ignore', 'pipe', 'pipe'],
        })
        let log = ''
        child.stdout?.on('data', (d: Buffer) => (log += d.toString()))
        child.stderr?.on('data', (d: Buffer) => (log += d.toString()))
        agents.push({ name, child, log: () => log })
        const token = env['PEERMESH_HTTP_TOKEN']
        waitForAgent = async () => {
          const ready = async (): Promise<true | undefined> => {
            if (child.exitCode !== null)
              throw new Error(`agent ${name} exited with ${child.exitCode}:\n${log}`)
            const leader = await get(http, '/v1/status/leader')
            if (leader.status !== 200 || leader.json === '') return undefined
            if (!seeded || token === undefined) return true
            const self = await get(http, '/v1/acl/token/self', token)
            if (self.status !== 200) return undefined
            const conf = await get(http, '/v1/operator/raft/configuration', token)
            const servers = (conf.json as { servers?: { node: string }[] }).servers ?? []
            return servers.some((s) => s.node === name) ? true : undefined
          }
          await waitFor(`agent ${name} from the README up`, ready, 60_000)
        }
        continue
      }

      const r = await bash(command, dir, env)
      expect(
        r.code,
        `README command failed: ${original}\n(ran: ${command})\nstdout: ${r.stdout}\nstderr: ${r.stderr}\n` +
          agents.map((a) => `--- agent ${a.name} log (tail):\n${a.log().slice(-3000)}`).join('\n'),
      ).toBe(0)
    }
    expect(agents.map((a) => a.name)).toEqual(['a', 'b'])
    expect(skipped).toEqual([])
  }, 300_000)
})
