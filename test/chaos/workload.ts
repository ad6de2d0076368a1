/**
 * The write workload and the check that no acknowledged write is lost.
 *
 * Writes are `PUT /v1/config` of kv entries, each to a key of its own with a unique value
 * (`<scenario>-<n>`), plus puts and `?consistent` gets on a few shared registers. Every operation
 * goes into one history for the linearizability checker (`test/lin/checker.ts`): a put that got
 * a 200 is acknowledged, any other outcome (503, timeout, connection reset) is unknown (it may
 * take effect later or never, `return: Infinity`). At the end, every agent's list of kv entries
 * is added to the history as one read of every key, at the time it was taken; an acknowledged
 * put missing from (or different in) any agent's converged list is an acknowledged write lost.
 */
import { checkLinearizable, type KvInput, type KvOutput, kvModel, type Operation } from '../lin/checker.ts'
import type { Host } from './host.ts'

export interface WriteRecord {
  key: string
  value: string
  host: string
  call: number
  ret: number
  /** 'ok' acknowledged; otherwise the failure (HTTP status or error). */
  outcome: string
}

export const now = (): number => performance.now()

export class Workload {
  readonly history: Operation<KvInput, KvOutput>[] = []
  readonly writes: WriteRecord[] = []
  private seq = 0

  constructor(
    readonly tag: string,
    readonly registers = ['r0', 'r1'],
  ) {}

  /** One put of a fresh unique key through `h`; returns the record. */
  async putUnique(h: Host, timeoutMs = 2_000): Promise<WriteRecord> {
    const n = ++this.seq
    return this.put(h, `${this.tag}-u${n}`, `${this.tag}-${n}`, timeoutMs)
  }

  async putRegister(h: Host, reg: string, timeoutMs = 2_000): Promise<WriteRecord> {
    const n = ++this.seq
    return this.put(h, `${this.tag}-${reg}`, `${this.tag}-${n}`, timeoutMs)
  }

  private async put(h: Host, key: string, value: string, timeoutMs: number): Promise<WriteRecord> {
    const call = now()
    let outcome: string
    try {
      const r = await h.request<{ index?: number; error?: string }>(
        'PUT',
        `/v1/config?timeout=${timeoutMs}`,
        { kind: 'kv', name: key, value },
        timeoutMs + 1_000,
      )
      outcome = r.status === 200 ? 'ok' : `${r.status}`
    } catch (err) {
      outcome = (err as Error).message.includes('timeout')
        ? 'timeout'
        : `error ${(err as NodeJS.ErrnoException).code ?? ''}`.trim()
    }
    const ret = now()
    const rec: WriteRecord = { key, value, host: h.name, call, ret, outcome }
    this.writes.push(rec)
    this.history.push({
      clientId: `${h.name}-w${this.seq}`,
      input: { op: 'put', key, value },
      ...(outcome === 'ok'
        ? { output: 'ok' as KvOutput, return: ret }
        : { return: Number.POSITIVE_INFINITY }),
      call,
    })
    return rec
  }

  /** A linearizable read of a register through `h`; failed reads have no effect and are left out. */
  async getRegister(h: Host, reg: string, timeoutMs = 2_000): Promise<boolean> {
    const key = `${this.tag}-${reg}`
    const call = now()
    try {
      const r = await h.request<{ value?: string }>(
        'GET',
        `/v1/config/kv/${key}?consistent&timeout=${timeoutMs}`,
        undefined,
        timeoutMs + 1_000,
      )
      if (r.status !== 200 && r.status !== 404) return false
      this.history.push({
        clientId: `${h.name}-r${++this.seq}`,
        input: { op: 'get', key },
        output: r.status === 404 ? null : (r.body.value ?? null),
        call,
        return: now(),
      })
      return true
    } catch {
      return false
    }
  }

  acked(): WriteRecord[] {
    return this.writes.filter((w) => w.outcome === 'ok')
  }

  /**
   * Reads every agent's kv entries (local reads, after convergence), adds them to the history,
   * counts acknowledged unique-key writes missing anywhere, and runs the checker.
   */
  async finalCheck(hosts: Host[]): Promise<{
    ackedLost: number
    lostExamples: string[]
    linearizable: boolean | 'unknown'
    explanation?: string
    ops: number
  }> {
    const ownKeys = new Set(this.writes.map((w) => w.key))
    const lost = new Set<string>()
    const examples: string[] = []
    for (const h of hosts) {
      const call = now()
      const list = await h.get<{ name: string; value: string }[]>('/v1/config/kv', 10_000)
      const ret = now()
      const have = new Map(list.filter((e) => ownKeys.has(e.name)).map((e) => [e.name, e.value]))
      for (const key of ownKeys) {
        this.history.push({
          clientId: `final-${h.name}`,
          input: { op: 'get', key },
          output: have.get(key) ?? null,
          call,
          return: ret,
        })
      }
      for (const w of this.acked()) {
        // A register may have been overwritten since; only unique keys are checked directly.
        if (w.key.includes('-u') && have.get(w.key) !== w.value) {
          if (!lost.has(w.key) && examples.length < 5)
            examples.push(`${w.key}=${w.value} (acked via ${w.host}) missing on ${h.name}`)
          lost.add(w.key)
        }
      }
    }
    const res = checkLinearizable(kvModel, this.history, { timeoutMs: 30_000 })
    return {
      ackedLost: lost.size,
      lostExamples: examples,
      linearizable: res.ok,
      ...(res.ok === false ? { explanation: res.explanation } : {}),
      ops: this.history.length,
    }
  }
}

/** Runs `body` in a loop every `everyMs` (at most one call in flight per loop) until `stop()`. */
export function loop(everyMs: number, body: () => Promise<unknown>): { stop: () => Promise<void> } {
  let running = true
  const done = (async () => {
    while (running) {
      const t = now()
      try {
        await body()
      } catch {
        // the body records its own failures
      }
      const wait = everyMs - (now() - t)
      if (wait > 0) await new Promise((r) => setTimeout(r, wait))
    }
  })()
  return {
    stop: async () => {
      running = false
      await done
    },
  }
}
