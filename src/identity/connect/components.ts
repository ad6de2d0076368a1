/**
 * The narrow views of the rest of the agent that the CA and leaf pieces take in their
 * constructors. The node layer adapts the Raft module and the catalog to them; tests give fakes.
 */
import type { CaRootRecord, CaState } from './ca-state.ts'

/** The CA as committed on this agent (the Raft policy store). */
export interface CaStateSource {
  caState(): CaState
}

export type CaWriteResult = { ok: true } | { ok: false; code: string; message: string }

/** Replaces the CA state through Raft, compare-and-set on its modifyIndex (`ca.setRoots`). */
export interface CaStateWriter {
  setRoots(
    change: { roots: CaRootRecord[]; activeRootId: string; casIndex: number },
    options: { signal: AbortSignal },
  ): Promise<CaWriteResult>
}

/** Raft leadership as seen from this agent. */
export interface LeaderView {
  /** This agent's peer id. */
  selfId(): string
  isLeader(): boolean
  leaderId(): string | undefined
  term(): number
  /** The current voters (this agent alone when Raft is not running). */
  voters(): string[]
  /** Resolves once this agent, as leader, has applied everything committed before (ReadIndex). */
  catchUp(signal: AbortSignal): Promise<void>
  transferLeadership(to: string): void
}

/** Which agent registers which service (the catalog, from gossip). */
export interface ServiceDirectory {
  /** Service names (DNS labels) registered on agent `peerId`. */
  servicesOf(peerId: string): string[]
  isRegisteredOn(peerId: string, service: string): boolean
  /** Peer ids of the agents gossip sees alive. */
  aliveMembers(): string[]
}

/** The log calls used (a pino Logger fits). */
export interface ConnectLog {
  debug(obj: object, msg: string): void
  info(obj: object, msg: string): void
  warn(obj: object, msg: string): void
  error(obj: object, msg: string): void
}
