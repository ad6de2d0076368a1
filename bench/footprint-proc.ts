/**
 * What a process costs, read from Linux /proc (bench:footprint): resident memory from
 * `/proc/PID/status` (VmRSS), its proportional and anonymous parts from `/proc/PID/smaps_rollup`
 * (Pss, Anonymous), and CPU time from `/proc/PID/stat` (utime + stime, every thread included),
 * and wake-ups from `/proc/PID/task/TID/status` (voluntary context switches: each time a thread
 * slept and was woken, by a timer or by I/O), each summed over the process and its descendants, so
 * a helper process an agent spawns is counted too. On this machine an idle Node process pays
 * about 0.14 ms of CPU per wake-up of its event loop (a bare `setInterval`), so at rest wake-ups
 * are a large part of an agent's CPU figure, and unlike it their count does not vary with the
 * machine's load. (A Go program such as Serf wakes its threads more often, for far less each.)
 *
 * RSS counts every page of the runtime's binary the process touched (for ours, tens of MiB of
 * /usr/bin/node shared with every other Node process); Pss divides each shared page among the
 * processes that map it, and Anonymous (heap, stacks, malloc) is what the process alone holds.
 */
import { spawnSync } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { median } from './lib.ts'

/** Clock ticks per second of the utime/stime fields (`getconf CLK_TCK`; 100 on Linux). */
export const CLK_TCK: number = (() => {
  const out = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' })
  const n = Number(out.stdout?.trim())
  return Number.isInteger(n) && n > 0 ? n : 100
})()

/** utime + stime of one process in clock ticks, undefined once it has gone. */
export function cpuTicks(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    // Fields 14 and 15 of stat(5); fields[0] is field 3 (state).
    return Number(fields[11]) + Number(fields[12])
  } catch {
    return undefined
  }
}

/** Voluntary context switches of every thread of one process, undefined once it has gone. */
export function wakeUps(pid: number): number | undefined {
  let tids: string[]
  try {
    tids = readdirSync(`/proc/${pid}/task`)
  } catch {
    return undefined
  }
  let sum = 0
  for (const tid of tids) {
    try {
      const m = /^voluntary_ctxt_switches:\s+(\d+)$/m.exec(
        readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8'),
      )
      sum += m ? Number(m[1]) : 0
    } catch {
      // the thread ended between the listing and the read
    }
  }
  return sum
}

/** VmRSS of one process in KiB, undefined once it has gone. */
export function rssKib(pid: number): number | undefined {
  try {
    const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m ? Number(m[1]) : undefined
  } catch {
    return undefined
  }
}

/** Pss and Anonymous of one process in KiB (`/proc/PID/smaps_rollup`), undefined once it has gone. */
export function smapsRollupKib(pid: number): { pss: number; anon: number } | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8')
    const pss = /^Pss:\s+(\d+) kB$/m.exec(text)
    const anon = /^Anonymous:\s+(\d+) kB$/m.exec(text)
    return pss && anon ? { pss: Number(pss[1]), anon: Number(anon[1]) } : undefined
  } catch {
    return undefined
  }
}

/** `pid` and every live descendant (from /proc/PID/task/TID/children). */
export function processTree(pid: number): number[] {
  const out: number[] = []
  const visit = (p: number): void => {
    out.push(p)
    let tasks: string[]
    try {
      tasks = readdirSync(`/proc/${p}/task`)
    } catch {
      return
    }
    for (const tid of tasks) {
      try {
        for (const c of readFileSync(`/proc/${p}/task/${tid}/children`, 'utf8').split(' ')) {
          if (c.trim() !== '') visit(Number(c))
        }
      } catch {
        // the thread ended between the listing and the read
      }
    }
  }
  visit(pid)
  return out
}

/** One process tree's figures over a sampling window. */
export interface Usage {
  /** RSS of the tree at each sample, MiB. */
  rssMib: number[]
  /** PSS of the tree at each sample (its share of shared pages), MiB. */
  pssMib: number[]
  /** Anonymous memory of the tree at each sample (what no other process shares), MiB. */
  anonMib: number[]
  /** CPU of the tree over each interval between samples, percent of one core. */
  cpuPct: number[]
  /** CPU over the whole window (total ticks / elapsed time), percent of one core. */
  cpuPctMean: number
  /** Wake-ups of the tree's threads a second over the whole window (see `wakeUps`). */
  wakeUpsPerS: number
  /** Largest number of processes seen in the tree (1: the process alone). */
  processes: number
}

export interface UsageSummary {
  rssMedianMib: number
  pssMedianMib: number
  anonMedianMib: number
  rssMeanMib: number
  cpuMeanPct: number
  cpuMedianPct: number
  /** Wake-ups a second, the average of each process's. */
  wakeUpsPerS: number
}

const mean = (xs: number[]): number =>
  xs.length === 0 ? Number.NaN : xs.reduce((a, b) => a + b, 0) / xs.length

/**
 * The figures of several processes (each with its tree) pooled: RSS median and mean over every
 * sample of every process, CPU mean as the average of each process's window mean, CPU median over
 * every interval of every process. At 1 s intervals and 100 ticks a second one interval's CPU is
 * a multiple of 1 %, so the mean is the figure to read for an idle process; the median is shown
 * beside it.
 */
export function summarize(usages: Usage[]): UsageSummary {
  return {
    rssMedianMib: median(usages.flatMap((u) => u.rssMib)),
    pssMedianMib: median(usages.flatMap((u) => u.pssMib)),
    anonMedianMib: median(usages.flatMap((u) => u.anonMib)),
    rssMeanMib: mean(usages.flatMap((u) => u.rssMib)),
    cpuMeanPct: mean(usages.map((u) => u.cpuPctMean)),
    cpuMedianPct: median(usages.flatMap((u) => u.cpuPct)),
    wakeUpsPerS: mean(usages.map((u) => u.wakeUpsPerS)),
  }
}

/**
 * Samples process trees every `everyMs` (default 1 s) from `start()` until `stop()`. A tree whose
 * root has exited stops being sampled; its figures so far are kept.
 */
export class UsageSampler {
  private timer: NodeJS.Timeout | undefined
  private readonly state = new Map<
    string,
    {
      pid: number
      lastTicks: number
      lastAt: number
      totalTicks: number
      firstAt: number
      firstWakeUps: number
      lastWakeUps: number
      usage: Usage
    }
  >()

  constructor(
    private readonly pids: Record<string, number>,
    private readonly everyMs = 1_000,
  ) {}

  start(): void {
    const now = performance.now()
    for (const [name, pid] of Object.entries(this.pids)) {
      const ticks = this.treeTicks(pid)
      if (ticks === undefined) throw new Error(`${name} (pid ${pid}) is not running`)
      const wakes = this.treeWakeUps(pid)
      this.state.set(name, {
        pid,
        lastTicks: ticks,
        lastAt: now,
        totalTicks: 0,
        firstAt: now,
        firstWakeUps: wakes,
        lastWakeUps: wakes,
        usage: {
          rssMib: [],
          pssMib: [],
          anonMib: [],
          cpuPct: [],
          cpuPctMean: Number.NaN,
          wakeUpsPerS: Number.NaN,
          processes: 1,
        },
      })
    }
    this.timer = setInterval(() => this.sample(), this.everyMs)
  }

  /** Stops sampling; the figures of each process tree by name. */
  stop(): Map<string, Usage> {
    clearInterval(this.timer)
    this.timer = undefined
    const out = new Map<string, Usage>()
    for (const [name, s] of this.state) {
      const seconds = (s.lastAt - s.firstAt) / 1000
      const cpuPctMean = seconds > 0 ? (s.totalTicks / CLK_TCK / seconds) * 100 : Number.NaN
      const wakeUpsPerS = seconds > 0 ? (s.lastWakeUps - s.firstWakeUps) / seconds : Number.NaN
      out.set(name, { ...s.usage, cpuPctMean, wakeUpsPerS })
    }
    return out
  }

  private sample(): void {
    const now = performance.now()
    for (const s of this.state.values()) {
      const tree = processTree(s.pid)
      const ticks = this.treeTicks(s.pid, tree)
      if (ticks === undefined) continue
      let rss = 0
      let pss = 0
      let anon = 0
      for (const p of tree) {
        rss += rssKib(p) ?? 0
        const rollup = smapsRollupKib(p)
        pss += rollup?.pss ?? 0
        anon += rollup?.anon ?? 0
      }
      s.usage.rssMib.push(rss / 1024)
      s.usage.pssMib.push(pss / 1024)
      s.usage.anonMib.push(anon / 1024)
      // A descendant that exited takes its ticks with it: never count a negative interval.
      const delta = Math.max(0, ticks - s.lastTicks)
      s.usage.cpuPct.push((delta / CLK_TCK / ((now - s.lastAt) / 1000)) * 100)
      s.usage.processes = Math.max(s.usage.processes, tree.length)
      s.totalTicks += delta
      s.lastTicks = ticks
      s.lastAt = now
      // As with ticks, a descendant that exited takes its wake-ups with it.
      s.lastWakeUps = Math.max(s.lastWakeUps, this.treeWakeUps(s.pid, tree))
    }
  }

  private treeWakeUps(pid: number, tree = processTree(pid)): number {
    let sum = 0
    for (const p of tree) sum += wakeUps(p) ?? 0
    return sum
  }

  private treeTicks(pid: number, tree = processTree(pid)): number | undefined {
    const root = cpuTicks(pid)
    if (root === undefined) return undefined
    let sum = root
    for (const p of tree.slice(1)) sum += cpuTicks(p) ?? 0
    return sum
  }
}
