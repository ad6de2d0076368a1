import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { multiaddr } from '@multiformats/multiaddr'
import { MAX_USER_EVENT_LTIME, type MemberView, repairedIncarnation } from '../../gossip/index.ts'
import type { Cancel, Clock } from '../../common/clock.ts'
import { LatestFileWriter } from '../../common/fs-atomic.ts'
import { GOSSIP_WIRING_DEFAULTS } from '../agent/defaults.ts'

/**
 * Persisted incarnation and record version, so a restarted node starts above both, and the user
 * event Lamport time, so its next events are ordered after those it fired or saw (Serf persists
 * its event clock too).
 */
export const GOSSIP_STATE_FILE = 'gossip.json'
/**
 * Members remembered across restarts (like Serf's snapshot): an agent restarted without seeds,
 * or whose seeds are gone, rejoins through any member it knew.
 */
export const KNOWN_PEERS_FILE = 'peers.json'
const { knownPeersMax: KNOWN_PEERS_MAX, knownPeersWriteMs: KNOWN_PEERS_WRITE_MS } = GOSSIP_WIRING_DEFAULTS

/** What a node persists of its own record (`gossip.json`). */
export interface LocalGossipState {
  incarnation: number
  version: number
  /** User event Lamport time; absent until this node fired or saw an event. */
  eventTime?: number
}

/** Where persistence problems are reported (a pino logger fits). */
export interface StateLog {
  warn(fields: object, message: string): void
  error(fields: object, message: string): void
}

/**
 * Reads `gossip.json`; undefined when absent or unreadable. An incarnation or version that is not
 * a non-negative safe integer up to `MAX_PLAUSIBLE_INCARNATION` (written by an older agent that a
 * forged accusation pushed to 2^53, or damaged) is repaired to 0, with a warning: the node then
 * starts at 1 and jumps above any record of itself, signed by its key, that the cluster still holds.
 */
export function loadGossipState(dataDir: string, log: StateLog): LocalGossipState | undefined {
  const path = join(dataDir, GOSSIP_STATE_FILE)
  if (!existsSync(path)) return undefined
  try {
    const s = JSON.parse(readFileSync(path, 'utf8')) as {
      incarnation?: unknown
      version?: unknown
      eventTime?: unknown
    }
    if (typeof s.incarnation === 'number' && typeof s.version === 'number') {
      const inc = repairedIncarnation(s.incarnation)
      const version = repairedIncarnation(s.version)
      if (inc.repaired || version.repaired)
        log.warn(
          { path, incarnation: s.incarnation, version: s.version },
          'gossip state out of range; repaired (starting from 0, the cluster lifts it to our last signed record)',
        )
      // An event time out of range is left out (the clock starts at 0 and catches up on the wire).
      const eventTime =
        typeof s.eventTime === 'number' &&
        Number.isSafeInteger(s.eventTime) &&
        s.eventTime > 0 &&
        s.eventTime <= MAX_USER_EVENT_LTIME
          ? { eventTime: s.eventTime }
          : {}
      return { incarnation: inc.incarnation, version: version.incarnation, ...eventTime }
    }
  } catch {
    // A damaged file only costs us a jump in incarnation: refutation fixes it on the wire.
  }
  log.warn({ path }, 'ignoring unreadable gossip state file')
  return undefined
}

/** Writes `gossip.json` whenever the local incarnation or record version changed. */
export class GossipStateWriter {
  private persisted: LocalGossipState = { incarnation: -1, version: -1, eventTime: -1 }
  private writer?: LatestFileWriter

  constructor(
    private readonly dataDir: string,
    private readonly log: StateLog,
  ) {}

  save(incarnation: number, version: number, eventTime = 0): void {
    const p = this.persisted
    if (incarnation === p.incarnation && version === p.version && eventTime === (p.eventTime ?? 0)) return
    if (repairedIncarnation(incarnation).repaired || repairedIncarnation(version).repaired) {
      // The core never produces one; never write what the next start would have to repair.
      this.log.error({ incarnation, version }, 'not persisting an out-of-range gossip state')
      return
    }
    this.persisted = { incarnation, version, ...(eventTime > 0 ? { eventTime } : {}) }
    // Off the event loop: a blocking fsync per change stalls the agent under churn. The messages
    // carrying the new incarnation are sent either way; a restart starts above what reached disk.
    this.writer ??= new LatestFileWriter(join(this.dataDir, GOSSIP_STATE_FILE), (err) =>
      this.log.error({ err }, 'cannot persist gossip state'),
    )
    this.writer.write(JSON.stringify(this.persisted))
  }

  async flush(): Promise<void> {
    await this.writer?.flush()
  }
}

/** Saves a few live members' addresses to `peers.json` (throttled), for rejoining after a restart. */
export class KnownPeersWriter {
  private writtenAt = Number.NEGATIVE_INFINITY
  /** The list as last written, so an unchanged list is not written again. */
  private written = ''
  private cancelTimer?: Cancel
  private writer?: LatestFileWriter
  private stopped = false

  constructor(
    private readonly init: {
      dataDir: string
      selfId: string
      clock: Clock
      members: () => MemberView[]
      log: StateLog
    },
  ) {}

  /** Membership changed: write the list within KNOWN_PEERS_WRITE_MS of the last write. */
  schedule(): void {
    if (this.cancelTimer !== undefined || this.stopped) return
    const { clock } = this.init
    const delay = Math.max(0, this.writtenAt + KNOWN_PEERS_WRITE_MS - clock.now())
    this.cancelTimer = clock.setTimeout(() => {
      this.cancelTimer = undefined
      this.writtenAt = clock.now()
      this.write()
    }, delay)
  }

  async stop(): Promise<void> {
    this.stopped = true
    this.cancelTimer?.()
    await this.writer?.flush()
  }

  private write(): void {
    const { selfId, dataDir, log } = this.init
    const addresses = this.init
      .members()
      .filter((m) => m.id !== selfId && m.status === 'alive' && m.address !== '')
      .slice(0, KNOWN_PEERS_MAX)
      .map((m) => (m.address.includes('/p2p/') ? m.address : `${m.address}/p2p/${m.id}`))
    const text = JSON.stringify(addresses)
    // Churn that ends where it began (a member flapping) rewrites nothing: each write is an fsync.
    if (text === this.written) return
    this.written = text
    this.writer ??= new LatestFileWriter(join(dataDir, KNOWN_PEERS_FILE), (err) =>
      log.warn({ err }, 'cannot save known peers'),
    )
    this.writer.write(text)
  }
}

/** Addresses of members known before a restart (never our own); an unreadable file is ignored. */
export function loadKnownPeers(dataDir: string, selfId: string): string[] {
  const path = join(dataDir, KNOWN_PEERS_FILE)
  if (!existsSync(path)) return []
  try {
    const list = JSON.parse(readFileSync(path, 'utf8')) as unknown
    if (!Array.isArray(list)) return []
    return list
      .filter((a): a is string => typeof a === 'string' && a.length < 512 && !a.endsWith(`/p2p/${selfId}`))
      .filter((a) => {
        try {
          multiaddr(a)
          return true
        } catch {
          return false
        }
      })
      .slice(0, KNOWN_PEERS_MAX)
  } catch {
    return []
  }
}
