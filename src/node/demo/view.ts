/**
 * What the demo shows while it runs: the story's lines, and the cluster's state. On a terminal a
 * live block under the story is redrawn about once a second (members and status, Raft leader and
 * voters, requests/s, errors, split ratio); elsewhere (a pipe, a file, `--json`) a plain progress
 * line now and then.
 */
import type { DemoMember, RaftServer } from './agent-api.ts'
import { PLAIN_PROGRESS_MS } from './constants.ts'
import { ratePerSecond, type Traffic } from './traffic.ts'

/** The cluster as one agent (the observer) last saw it. */
export interface ClusterSnapshot {
  observer: string
  members: DemoMember[]
  servers: RaftServer[]
}

export interface StatusSource {
  snapshot(): ClusterSnapshot | undefined
  traffic(): Traffic | undefined
  /** Seconds since the traffic started, and the planned length. */
  clock(): { elapsedS: number; durationS: number } | undefined
}

export interface View {
  /** A line of the story. */
  line(text: string): void
  /** Called about once a second. */
  refresh(): void
  /** Removes the live block (the story lines stay). */
  close(): void
}

const pct = (x: number): string => `${Math.round(x * 100)}%`

/** The state in words, one line per part (the live block; joined, the plain progress line). */
export interface StatusText {
  clock?: string
  members?: string
  raft?: string
  traffic?: string
}

export function statusText(src: StatusSource): StatusText {
  const out: StatusText = {}
  const clock = src.clock()
  if (clock !== undefined) out.clock = `${clock.elapsedS.toFixed(0)} s of ${clock.durationS} s`
  const s = src.snapshot()
  if (s !== undefined) {
    const members = [...s.members].sort((a, b) => a.name.localeCompare(b.name))
    out.members = `members (as ${s.observer} sees them): ${members.map((m) => `${m.name} ${m.status}`).join(' · ')}`
    const leader = s.servers.find((x) => x.leader)?.node ?? 'none'
    const servers = [...s.servers].sort((a, b) => a.node.localeCompare(b.node))
    const voters = servers.filter((x) => x.voter).map((x) => x.node)
    const learners = servers.filter((x) => !x.voter).map((x) => x.node)
    out.raft = `raft: leader ${leader} · voters ${voters.join(' ') || 'none'}${learners.length > 0 ? ` · learners ${learners.join(' ')}` : ''}`
  }
  const t = src.traffic()
  if (t !== undefined) {
    const all = t.window(0)
    const split = [...t.versionShare(10_000)].sort(([a], [b]) => a.localeCompare(b))
    // Requests/s over the last 3 s (less at the start, so the first reading is not diluted).
    const span = Math.min(3_000, Math.max(1_000, (clock?.elapsedS ?? 3) * 1_000))
    out.traffic = `traffic: ${ratePerSecond(t, span).toFixed(1)} req/s · ${all.ok} ok · ${all.failed} failed · ${all.denied} denied · split ${split.map(([v, x]) => `${v} ${pct(x)}`).join(' / ') || '-'} (last 10 s)`
  }
  return out
}

/** A terminal: the live block is erased and drawn again under each new story line. */
export class TtyView implements View {
  private drawn = 0
  private closed = false

  constructor(
    private readonly src: StatusSource,
    private readonly out: NodeJS.WriteStream,
  ) {}

  line(text: string): void {
    this.erase()
    this.out.write(`${text}\n`)
    this.draw()
  }

  refresh(): void {
    this.erase()
    this.draw()
  }

  close(): void {
    this.erase()
    this.closed = true
  }

  private erase(): void {
    if (this.drawn > 0) this.out.write(`\x1b[${this.drawn}A\x1b[0J`)
    this.drawn = 0
  }

  private draw(): void {
    if (this.closed) return
    const width = Math.max(20, (this.out.columns ?? 100) - 1)
    const st = statusText(this.src)
    const parts = [
      st.clock !== undefined ? `── live ── ${st.clock} ──` : undefined,
      st.members,
      st.raft,
      st.traffic,
    ]
    const lines = parts
      .filter((l) => l !== undefined)
      .map((l) => `  \x1b[2m${l.length > width ? `${l.slice(0, width - 1)}…` : l}\x1b[0m`)
    if (lines.length === 0) return
    this.out.write(`${lines.join('\n')}\n`)
    this.drawn = lines.length
  }
}

/** Not a terminal: story lines as they come, and a one-line progress report every few seconds. */
export class PlainView implements View {
  /** When the last progress line was written (the traffic's start for the first). */
  private lastProgress: number | undefined
  private closed = false

  constructor(
    private readonly src: StatusSource,
    private readonly write: (line: string) => void,
  ) {}

  line(text: string): void {
    this.write(text)
  }

  refresh(): void {
    if (this.closed || this.src.traffic() === undefined) return
    this.lastProgress ??= Date.now()
    if (Date.now() - this.lastProgress < PLAIN_PROGRESS_MS) return
    this.lastProgress = Date.now()
    const st = statusText(this.src)
    const parts = [st.traffic, st.raft, st.members].filter((l) => l !== undefined)
    this.write(`  [${st.clock ?? ''}] ${parts.join('; ')}`)
  }

  close(): void {
    this.closed = true
  }
}
