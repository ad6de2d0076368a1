import type { Cancel, Clock } from '../common/clock.ts'
import {
  NotLeaderError,
  ProposalDroppedError,
  ProposalOutcomeUnknownError,
  RaftAbortedError,
} from './errors.ts'
import type { Entry, NodeId, ReadState } from './types.ts'

export interface RequestOptions {
  signal?: AbortSignal
}

interface Waiter<T> {
  resolve: (v: T) => void
  reject: (err: Error) => void
}

interface PendingProposal extends Waiter<{ index: number; result: unknown }> {
  term: number
}

interface PendingRead extends Waiter<{ index: number }> {
  /** The confirmed read point; undefined until the leader confirmed it (thesis §6.4). */
  index: number | undefined
}

/**
 * The driver's local requests waiting on Raft: proposals by log index (resolved when their entry is
 * applied) and reads by context (resolved once applied reaches their read point). Each has a
 * deadline: the caller's signal, else `timeoutMs` on the clock.
 */
export class PendingRequests {
  private readonly proposals = new Map<number, PendingProposal>()
  private readonly reads = new Map<string, PendingRead>()

  constructor(private readonly deps: { clock: Clock; timeoutMs: number }) {}

  /** Waits for the entry proposed at `index` in `term` to be applied. */
  addProposal(
    pos: { index: number; term: number },
    options: RequestOptions,
  ): Promise<{ index: number; result: unknown }> {
    return new Promise((resolve, reject) => {
      const done = this.withDeadline(options, reject, () => this.proposals.delete(pos.index))
      this.proposals.set(pos.index, { term: pos.term, ...settleOnce(done, resolve, reject) })
    })
  }

  /** Waits for the read registered under `context` to be confirmed and applied. */
  addRead(context: string, options: RequestOptions): Promise<{ index: number }> {
    return new Promise((resolve, reject) => {
      const done = this.withDeadline(options, reject, () => this.reads.delete(context))
      this.reads.set(context, { index: undefined, ...settleOnce(done, resolve, reject) })
    })
  }

  /** An entry was applied with this result: settles the proposal made at its index, if any. */
  applied(e: Entry, result: unknown): void {
    const p = this.proposals.get(e.index)
    if (p === undefined) return
    this.proposals.delete(e.index)
    if (p.term === e.term) p.resolve({ index: e.index, result })
    else p.reject(new ProposalDroppedError(`entry ${e.index} was overwritten by a new leader`))
  }

  /** A snapshot up to `index` replaced the state machine: whether earlier proposals applied is unknown. */
  restored(index: number): void {
    for (const [i, p] of this.proposals) {
      if (i > index) continue
      this.proposals.delete(i)
      p.reject(new ProposalOutcomeUnknownError(`entry ${i} was replaced by a snapshot at ${index}`))
    }
  }

  /** Records confirmed read points. */
  confirmed(readStates: readonly ReadState[]): void {
    for (const rs of readStates) {
      const r = this.reads.get(rs.context)
      if (r !== undefined) r.index = rs.index
    }
  }

  /** Resolves the reads whose read point is applied. */
  resolveReads(appliedIndex: number): void {
    for (const [ctx, r] of this.reads) {
      if (r.index !== undefined && r.index <= appliedIndex) {
        this.reads.delete(ctx)
        r.resolve({ index: r.index })
      }
    }
  }

  /** Leadership changed: reads not yet confirmed were tied to the old one and may never be answered. */
  leaderChanged(leader: NodeId | undefined): void {
    for (const [ctx, r] of this.reads) {
      if (r.index !== undefined) continue
      this.reads.delete(ctx)
      r.reject(new NotLeaderError(leader))
    }
  }

  /** Rejects everything pending with `err`. */
  rejectAll(err: Error): void {
    for (const p of this.proposals.values()) p.reject(err)
    for (const r of this.reads.values()) r.reject(err)
    this.proposals.clear()
    this.reads.clear()
  }

  private withDeadline(options: RequestOptions, reject: (e: Error) => void, remove: () => void): Cancel {
    const signal = options.signal
    const abort = () => {
      remove()
      reject(new RaftAbortedError('request aborted', { cause: signal?.reason }))
    }
    if (signal?.aborted) {
      queueMicrotask(abort)
      return () => {}
    }
    signal?.addEventListener('abort', abort, { once: true })
    const cancelTimer =
      signal === undefined
        ? this.deps.clock.setTimeout(() => {
            remove()
            reject(new RaftAbortedError(`request timed out after ${this.deps.timeoutMs} ms`))
          }, this.deps.timeoutMs)
        : () => {}
    return () => {
      signal?.removeEventListener('abort', abort)
      cancelTimer()
    }
  }
}

function settleOnce<T>(done: Cancel, resolve: (v: T) => void, reject: (e: Error) => void): Waiter<T> {
  return {
    resolve: (v) => {
      done()
      resolve(v)
    },
    reject: (e) => {
      done()
      reject(e)
    },
  }
}
