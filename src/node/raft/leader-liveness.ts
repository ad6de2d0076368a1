import { peerIdFromString } from '@libp2p/peer-id'
import type { Logger } from 'pino'
import type { Cancel, Clock } from '../../common/clock.ts'
import type { Unsubscribe } from '../../common/events.ts'
import type { NodeId, Role } from '../../raft/index.ts'
import type { Host } from '../transport/host.ts'
import type { RaftMembers } from './components.ts'

/** What fast failover needs of the Raft node. */
export interface LivenessNode {
  readonly id: NodeId
  term(): number
  role(): Role
  leader(): NodeId | undefined
  isLeader(): boolean
  voters(): NodeId[]
  forgetLeader(): void
  campaign(): void
  /** Ticks since this follower last heard from its leader. */
  ticksSinceLeaderContact(): number
}

/** This agent's libp2p connections, as failover uses them. */
export interface PeerConnections {
  /** Subscribes to "the last connection to `peer` closed"; returns the unsubscribe. */
  onDisconnect(listener: (peer: string) => void): Unsubscribe
  isConnected(peer: string): boolean
  /** Opens a connection (errors are the caller's to ignore). */
  dial(peer: string, signal: AbortSignal): Promise<void>
}

/** The libp2p host as PeerConnections. */
export function hostConnections(host: Host): PeerConnections {
  return {
    onDisconnect(listener) {
      const handler = (evt: CustomEvent<{ toString(): string }>): void => listener(evt.detail.toString())
      host.addEventListener('peer:disconnect', handler)
      return () => host.removeEventListener('peer:disconnect', handler)
    },
    // Compared as strings (a PeerId caches its own): parsing `peer` into a PeerId decodes its key,
    // for every voter every keep-alive round.
    isConnected: (peer) => host.getConnections().some((c) => c.remotePeer.toString() === peer),
    dial: async (peer, signal) => {
      await host.dial(peerIdFromString(peer), { signal })
    },
  }
}

export interface LeaderLivenessComponents {
  node: LivenessNode
  members: RaftMembers
  connections: PeerConnections
  clock: Clock
  log: Logger
}

export interface LeaderLivenessSettings {
  tickMs: number
  /** Pre-votes are repeated every tick for at most this many ticks (one election timeout). */
  electionTick: number
  /** Voters campaign this many ms apart, in peer id order; 0 turns fast failover off. */
  failoverStaggerMs: number
  /** How often a voter checks its connections to the other voters. */
  keepConnectedMs: number
  voterDialTimeoutMs: number
  /**
   * Gossip's suspicion or death verdict about the leader is acted on only once this follower has
   * not heard from the leader for this many ticks (two of the leader's idle heartbeat intervals):
   * a leader that spoke to it just now is alive whatever gossip relays. 0: always acted on.
   */
  gossipVerdictQuietTicks: number
}

/**
 * Leader failure detection outside Raft, so that a dead leader is replaced in about two round
 * trips instead of one or two randomized election timeouts (with check-quorum, the first
 * candidate often finds the other followers still inside their leader lease, thesis §6.2):
 * - the libp2p connection to the leader closed (a crash closes its sockets at once), or gossip
 *   declared it dead or it left: forget the leader and campaign in turn;
 * - gossip suspects it: only forget it. Every member hears the suspicion, so campaigning on it
 *   would let one member's failed probe depose a healthy leader; forgetting only lets a pre-vote
 *   succeed if some voter already stopped hearing from the leader.
 * Gossip's verdicts (suspect, dead) are taken only from a follower that has not heard from the
 * leader for `gossipVerdictQuietTicks`. A verdict reaches every member at once, and may be stale: a
 * member cut off by a partition declares the others dead, and its claims arrive when the
 * partition heals. Had every follower forgotten a leader that was heartbeating them, the first
 * election timer to expire (as short as one idle heartbeat interval once the leader is forgotten)
 * would have deposed it (chaos `partition-leader` failed so: the new leader had been promoted
 * while the old one was cut off, and the old one's stale configuration refused it). A closed
 * connection and a graceful leave are this agent's own evidence and are acted on at once.
 * Forgetting the leader (etcd's ForgetLeader) never makes a healthy leader lose: a candidate
 * still needs a quorum of pre-votes, and followers still connected to the leader are in lease.
 */
export class LeaderLiveness {
  private readonly subscriptions: Unsubscribe[] = []
  private cancelFailover?: Cancel
  private cancelKeep?: Cancel
  private stopped = false

  constructor(
    private readonly components: LeaderLivenessComponents,
    private readonly settings: LeaderLivenessSettings,
  ) {}

  start(): void {
    const { members, connections, clock } = this.components
    this.subscriptions.push(
      connections.onDisconnect((peer) => this.leaderLost(peer, 'disconnected', true)),
      members.on('member:fail', (m) => this.gossipVerdict(m.id, 'member:fail', true)),
      members.on('member:leave', (m) => this.leaderLost(m.id, 'member:leave', true)),
      members.on('member:suspect', (m) => this.gossipVerdict(m.id, 'member:suspect', false)),
    )
    this.cancelKeep = clock.setInterval(() => this.keepVotersConnected(), this.settings.keepConnectedMs)
  }

  stop(): void {
    this.stopped = true
    for (const off of this.subscriptions.splice(0)) off()
    this.cancelFailover?.()
    this.cancelKeep?.()
  }

  /** A gossip verdict about `peer`: acted on unless the leader `peer` spoke to this node just now. */
  private gossipVerdict(peer: string, reason: string, campaign: boolean): void {
    const { node, log } = this.components
    if (this.stopped || node.isLeader() || node.leader() !== peer) return
    const quiet = node.ticksSinceLeaderContact()
    if (quiet < this.settings.gossipVerdictQuietTicks) {
      log.info(
        { leader: peer, reason, heardMsAgo: quiet * this.settings.tickMs },
        'leader kept: gossip says it failed, but it was heard from just now',
      )
      return
    }
    this.leaderLost(peer, reason, campaign)
  }

  /** Forgets `peer` if it is the leader; with `campaign`, campaigns in this voter's turn. */
  leaderLost(peer: string, reason: string, campaign: boolean): void {
    const { node, clock, log } = this.components
    if (this.stopped || node.isLeader() || node.leader() !== peer) return
    const term = node.term()
    node.forgetLeader()
    const stagger = this.settings.failoverStaggerMs
    const rank = node
      .voters()
      .filter((v) => v !== peer)
      .sort()
      .indexOf(node.id)
    log.info({ leader: peer, term, reason, rank }, 'leader lost: forgot it')
    if (!campaign || stagger <= 0 || rank < 0) return
    // Each voter starts only if no election reached it: a vote request moves its term, a new
    // leader's append sets the leader. A pre-vote that got no quorum because the others were still
    // in their lease is repeated every tick, for one election timeout at most (pre-votes change no
    // state); one that was refused (our log is behind) is not: the next survivor's turn comes.
    this.cancelFailover?.()
    let attempts = 0
    const attempt = (): void => {
      this.cancelFailover = undefined
      if (this.stopped || node.term() !== term || node.leader() !== undefined || node.isLeader()) return
      if (attempts > 0 && node.role() !== 'preCandidate') return
      if (attempts === 0) log.info({ term, rank }, 'leader lost: campaigning')
      node.campaign()
      if (++attempts < this.settings.electionTick)
        this.cancelFailover = clock.setTimeout(attempt, this.settings.tickMs)
    }
    this.cancelFailover = clock.setTimeout(attempt, rank * stagger)
  }

  /**
   * Keeps a connection open to every other voter that gossip does not report dead, so that a
   * failover's vote messages ride an existing connection instead of paying a dial (TCP, private
   * network, noise, yamux) in the middle of the election. Only voters do it: learners (most
   * agents of a large cluster) skip the scan of every member.
   */
  private keepVotersConnected(): void {
    const { node, members, connections } = this.components
    const voters = node.voters()
    if (this.stopped || !voters.includes(node.id)) return
    // Gossip's view is read only when a voter is not connected (at rest, every voter is).
    const unconnected = voters.filter((v) => v !== node.id && !connections.isConnected(v))
    if (unconnected.length === 0) return
    const dead = new Set(
      members
        .members()
        .filter((m) => m.status === 'dead' || m.status === 'left')
        .map((m) => m.id),
    )
    for (const v of unconnected) {
      if (dead.has(v)) continue
      try {
        connections.dial(v, AbortSignal.timeout(this.settings.voterDialTimeoutMs)).catch(() => {})
      } catch {
        // not a peer id: nothing to keep open
      }
    }
  }
}
