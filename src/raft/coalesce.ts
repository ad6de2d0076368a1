import type { Message } from './types.ts'

/** Limits of a merged append: the core's per-message defaults (see RaftConfig). */
export interface CoalesceLimits {
  maxEntries: number
  maxBytes: number
}

/**
 * Merges the messages of one Ready that go to the same peer into fewer messages, without changing
 * what they say (each peer receives its messages in the same order; only adjacent ones for that peer
 * merge):
 * - `app` B directly continuing `app` A (B's previous entry is A's last) becomes one `app` with both
 *   entry lists and B's commit. Under concurrent writes every proposal otherwise makes its own
 *   one-entry append per follower, and the follower answers each: per-message framing, encryption
 *   and a socket write dominate the leader's CPU (etcd coalesces at the I/O layer instead);
 * - a successful `appResp` followed by another successful one of the same term keeps only the
 *   higher acknowledgement (it covers the lower: the leader frees every inflight <= it).
 * Messages are not modified; merged ones are new objects.
 */
export function coalesceMessages(msgs: readonly Message[], limits: CoalesceLimits): Message[] {
  if (msgs.length < 2) return msgs as Message[]
  const out: Message[] = []
  /** Position in `out` of the last message to each peer. */
  const lastTo = new Map<string, number>()
  for (const m of msgs) {
    const at = lastTo.get(m.to)
    const prev = at === undefined ? undefined : out[at]
    const merged = prev === undefined ? undefined : merge(prev, m, limits)
    if (merged !== undefined && at !== undefined) {
      out[at] = merged
      continue
    }
    lastTo.set(m.to, out.length)
    out.push(m)
  }
  return out
}

function merge(a: Message, b: Message, limits: CoalesceLimits): Message | undefined {
  if (a.type !== b.type || a.term !== b.term || a.from !== b.from) return undefined
  if (a.type === 'app') {
    const last = a.entries.at(-1)
    const aEnd = last?.index ?? a.index
    const aEndTerm = last?.term ?? a.logTerm
    if (b.index !== aEnd || b.logTerm !== aEndTerm || a.context !== b.context) return undefined
    if (a.entries.length + b.entries.length > limits.maxEntries) return undefined
    if (b.entries.length > 0 && bytes(a) + bytes(b) > limits.maxBytes) return undefined
    return {
      ...a,
      entries: b.entries.length === 0 ? a.entries : [...a.entries, ...b.entries],
      commit: Math.max(a.commit, b.commit),
    }
  }
  if (a.type === 'appResp') {
    if (a.reject || b.reject || b.index < a.index) return undefined
    return b
  }
  return undefined
}

function bytes(m: Message): number {
  let n = 0
  for (const e of m.entries) n += e.data.length + 32
  return n
}
