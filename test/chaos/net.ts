/**
 * The chaos network: one network namespace per host (`pmc-h1` … `pmc-hN`, address 10.77.0.i/24 on
 * its `eth0`), all attached to a bridge that itself lives in a hub namespace (`pmc-hub`), so the
 * root namespace gets no address, no route, no rule and no interface. Faults are iptables rules
 * inside the host namespaces, on `eth0` only (the namespace's loopback, which carries the suite's
 * control path, is never touched):
 *
 * - partitions: DROP in the chains `pmc-part-in` / `pmc-part-out`, flushed by `heal`;
 * - loss: `-m statistic --mode random` DROP in `pmc-net-in` (every packet a host receives);
 * - delay: every packet a host sends goes to an NFQUEUE (in `pmc-net-out`, with `--queue-bypass`)
 *   served by `nfq-delay.py` inside the namespace, which holds it for delay ± jitter (the kernel
 *   here has no netem).
 *
 * Everything the suite creates is named `pmc-…`; `cleanupStale()` removes what a killed run left.
 */
import { type ChildProcess, execFile, execFileSync, spawn } from 'node:child_process'
import { existsSync, mkdirSync, rmSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'

const execFileP = promisify(execFile)

export const PREFIX = 'pmc-'
export const HUB = `${PREFIX}hub`
export const SUBNET = '10.77.0'
/** Unix sockets of the control path live here. */
export const RUN_DIR = '/run/pmc-chaos'
const NFQ_DELAY = fileURLToPath(new URL('./nfq-delay.py', import.meta.url))
const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3'

export const nsName = (i: number): string => `${PREFIX}h${i}`
export const hostAddr = (i: number): string => `${SUBNET}.${i}`

/** Every process the suite started; killed (SIGKILL) by `killAll()` on any exit path. */
const children = new Set<ChildProcess>()

export function track(child: ChildProcess): ChildProcess {
  children.add(child)
  child.once('exit', () => children.delete(child))
  return child
}

export function killAll(): void {
  for (const c of children) {
    if (c.pid !== undefined && c.exitCode === null && c.signalCode === null) {
      try {
        process.kill(c.pid, 'SIGKILL')
      } catch {
        // already gone
      }
    }
  }
  children.clear()
}

function runSync(cmd: string, args: string[], allowFail = false): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
  } catch (err) {
    if (allowFail) return ''
    const e = err as { stderr?: string; message: string }
    throw new Error(`${cmd} ${args.join(' ')}: ${(e.stderr ?? e.message).trim()}`)
  }
}

async function run(cmd: string, args: string[]): Promise<void> {
  try {
    await execFileP(cmd, args)
  } catch (err) {
    const e = err as { stderr?: string; message: string }
    throw new Error(`${cmd} ${args.join(' ')}: ${(e.stderr ?? e.message).trim()}`)
  }
}

const ipt = (i: number, ...args: string[]): Promise<void> =>
  run('ip', ['netns', 'exec', nsName(i), 'iptables', '-w', ...args])
const iptSync = (i: number, ...args: string[]): string =>
  runSync('ip', ['netns', 'exec', nsName(i), 'iptables', '-w', ...args])

/** Undefined when the suite can run here; otherwise why not (for a clear skip message). */
export function whyNoNetns(): string | undefined {
  if (process.platform !== 'linux') return `network namespaces need Linux (this is ${process.platform})`
  if (typeof process.getuid === 'function' && process.getuid() !== 0)
    return 'network namespaces need root (run as root, or in a container with CAP_NET_ADMIN and CAP_SYS_ADMIN)'
  try {
    execFileSync('ip', ['-V'], { stdio: 'ignore' })
  } catch {
    return '`ip` (iproute2) is not installed'
  }
  const probe = `${PREFIX}probe`
  try {
    runSync('ip', ['netns', 'add', probe])
  } catch (err) {
    return `\`ip netns add\` is not permitted here: ${(err as Error).message}`
  }
  try {
    try {
      runSync('ip', ['netns', 'exec', probe, 'iptables', '-w', '-L', '-n'])
    } catch (err) {
      return `iptables does not work inside a namespace (apt-get install iptables): ${(err as Error).message}`
    }
    return undefined
  } finally {
    runSync('ip', ['netns', 'del', probe], true)
  }
}

/** Names of this suite's namespaces that exist now. */
function ourNamespaces(): string[] {
  return runSync('ip', ['netns', 'list'], true)
    .split('\n')
    .map((l) => l.split(' ')[0]!)
    .filter((n) => n.startsWith(PREFIX))
}

/**
 * Removes what an earlier run left: processes inside our namespaces (by pid, from `ip netns pids`),
 * the namespaces (which takes their veths and iptables rules with them), stray `pmc-` links in the
 * root namespace and the control sockets.
 */
export function cleanupStale(): void {
  for (const ns of ourNamespaces()) {
    for (const pid of runSync('ip', ['netns', 'pids', ns], true).split(/\s+/).filter(Boolean)) {
      try {
        process.kill(Number(pid), 'SIGKILL')
      } catch {
        // gone
      }
    }
  }
  for (const ns of ourNamespaces()) runSync('ip', ['netns', 'del', ns], true)
  for (const line of runSync('ip', ['-o', 'link', 'show'], true).split('\n')) {
    const m = /^\d+:\s+([^@:\s]+)/.exec(line)
    if (m && m[1]!.startsWith(PREFIX)) runSync('ip', ['link', 'del', m[1]!], true)
  }
  rmSync(RUN_DIR, { recursive: true, force: true })
}

/** The bridge network of `n` hosts. */
export class ChaosNet {
  private readonly delays = new Map<number, ChildProcess>()
  private up_ = false

  constructor(readonly n: number) {}

  up(): void {
    cleanupStale()
    mkdirSync(RUN_DIR, { recursive: true })
    this.up_ = true
    runSync('ip', ['netns', 'add', HUB])
    runSync('ip', ['-n', HUB, 'link', 'add', 'br0', 'type', 'bridge'])
    runSync('ip', ['-n', HUB, 'link', 'set', 'br0', 'up'])
    runSync('ip', ['-n', HUB, 'link', 'set', 'lo', 'up'])
    for (let i = 1; i <= this.n; i++) {
      const ns = nsName(i)
      runSync('ip', ['netns', 'add', ns])
      // Created in the hub with its peer moved straight into the host: nothing in the root namespace.
      runSync('ip', ['-n', HUB, 'link', 'add', `v${i}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns])
      runSync('ip', ['-n', HUB, 'link', 'set', `v${i}`, 'master', 'br0', 'up'])
      runSync('ip', ['-n', ns, 'addr', 'add', `${hostAddr(i)}/24`, 'dev', 'eth0'])
      runSync('ip', ['-n', ns, 'link', 'set', 'eth0', 'up'])
      runSync('ip', ['-n', ns, 'link', 'set', 'lo', 'up'])
      for (const chain of ['pmc-part-in', 'pmc-part-out', 'pmc-net-in', 'pmc-net-out'])
        iptSync(i, '-N', chain)
      iptSync(i, '-A', 'INPUT', '-i', 'eth0', '-j', 'pmc-part-in')
      iptSync(i, '-A', 'INPUT', '-i', 'eth0', '-j', 'pmc-net-in')
      iptSync(i, '-A', 'OUTPUT', '-o', 'eth0', '-j', 'pmc-part-out')
      iptSync(i, '-A', 'OUTPUT', '-o', 'eth0', '-j', 'pmc-net-out')
    }
  }

  /** Cuts host i off: 'both' ways, only what it receives ('in': it can send but not receive), or 'out'. */
  async partition(i: number, mode: 'both' | 'in' | 'out' = 'both'): Promise<void> {
    if (mode !== 'out') await ipt(i, '-A', 'pmc-part-in', '-j', 'DROP')
    if (mode !== 'in') await ipt(i, '-A', 'pmc-part-out', '-j', 'DROP')
  }

  async heal(i: number): Promise<void> {
    await ipt(i, '-F', 'pmc-part-in')
    await ipt(i, '-F', 'pmc-part-out')
  }

  /** Drops `pct` % of the packets host i receives. */
  async setLoss(i: number, pct: number): Promise<void> {
    await ipt(
      i,
      '-A',
      'pmc-net-in',
      '-m',
      'statistic',
      '--mode',
      'random',
      '--probability',
      String(pct / 100),
      '-j',
      'DROP',
    )
  }

  /** Delays every packet host i sends by `ms` ± `jitterMs` (uniform). */
  async setDelay(i: number, ms: number, jitterMs: number): Promise<void> {
    const child = track(
      spawn('ip', ['netns', 'exec', nsName(i), PYTHON, NFQ_DELAY, String(i), String(ms), String(jitterMs)], {
        stdio: ['pipe', 'pipe', 'pipe'],
      }),
    )
    let err = ''
    child.stderr?.on('data', (d: Buffer) => (err += d.toString()))
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`nfq-delay in ${nsName(i)} not ready: ${err}`)), 15_000)
      child.stdout?.once('data', () => {
        clearTimeout(timer)
        resolve()
      })
      child.once('exit', (code) => {
        clearTimeout(timer)
        reject(new Error(`nfq-delay in ${nsName(i)} exited with ${code}: ${err}`))
      })
    })
    this.delays.set(i, child)
    await ipt(i, '-A', 'pmc-net-out', '-j', 'NFQUEUE', '--queue-num', String(i), '--queue-bypass')
  }

  /** Removes loss and delay from host i. */
  async clearNet(i: number): Promise<void> {
    await ipt(i, '-F', 'pmc-net-in')
    await ipt(i, '-F', 'pmc-net-out')
    const d = this.delays.get(i)
    if (d !== undefined) {
      this.delays.delete(i)
      d.stdin?.end()
      d.kill('SIGTERM')
    }
  }

  /** Rules now in host i's fault chains (for the log). */
  rules(i: number): string {
    return iptSync(i, '-S')
      .split('\n')
      .filter((l) => l.startsWith('-A pmc-'))
      .join('; ')
  }

  /** Synchronous, idempotent: safe from an exit or signal handler. */
  down(): void {
    if (!this.up_) return
    this.up_ = false
    for (const d of this.delays.values()) d.kill('SIGKILL')
    this.delays.clear()
    cleanupStale()
  }
}
