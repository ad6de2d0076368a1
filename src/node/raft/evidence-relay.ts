import type { Message, RelayedContact } from '../../raft/types.ts'

/**
 * Raft traffic as gossip's evidence of life, passed on. Each Raft message from a peer, over the
 * mutually authenticated direct transport, already tells this agent's gossip that the peer is
 * alive (`Swim.heardFrom`). An idle leader hears from every voter at each heartbeat round, and
 * each follower from the leader, so neither probes the other by UDP; but followers hear only from
 * their leader, and went on probing each other: in an idle 3-voter cluster that was all of a
 * follower's gossip traffic (13 datagrams a second each way).
 *
 * So the leader passes on what it heard: each heartbeat to a voter lists the other voters whose
 * messages reached it within `windowMs`, and how long ago (`Message.alive`). A follower listens
 * only to the leader it follows (the Raft core has accepted the heartbeat as that leader's; the
 * transport authenticated the sender), and hands the list to gossip, which skips its probes of the
 * listed voters for a while (`Swim.setRelayed`). Each heartbeat's list replaces the last: a voter
 * the leader stopped hearing from is left off the next one, and the followers probe it again.
 *
 * Learners get no list (their gossip probes as it always did), and lists name voters only, so a
 * heartbeat carries at most the configuration's few voters. What a follower gains is bounded too:
 * it believes only the leader, which could already do far worse than hide a dead voter.
 */
export class EvidenceRelay {
  /** When each peer's last authenticated Raft message arrived (leader side). */
  private readonly lastHeard = new Map<string, number>()

  /**
   * @param windowMs how recent a contact the leader passes on: more than one heartbeat interval
   *   (the answers to its last round are an interval old when it sends the next), less than two
   *   (a voter that missed a round is left off at once). Read at each heartbeat: the interval
   *   follows `performance.raftMultiplier`.
   */
  constructor(private readonly windowMs: () => number) {}

  /** A Raft message from `peer` passed the transport's and the module's checks at `nowMs`. */
  heard(peer: string, nowMs: number): void {
    this.lastHeard.set(peer, nowMs)
  }

  /** Every connection to `peer` closed: nothing heard from it before counts. */
  lost(peer: string): void {
    this.lastHeard.delete(peer)
  }

  /**
   * What a heartbeat from `self` (the leader) to `to` carries: the other voters heard from within
   * the window, or undefined when `to` is not a voter.
   */
  aliveFor(to: string, voters: readonly string[], self: string, nowMs: number): RelayedContact[] | undefined {
    if (!voters.includes(to)) return undefined
    const window = this.windowMs()
    const out: RelayedContact[] = []
    for (const v of voters) {
      if (v === to || v === self) continue
      const at = this.lastHeard.get(v)
      if (at === undefined) continue
      const ageMs = Math.max(0, Math.round(nowMs - at))
      if (ageMs <= window) out.push({ id: v, ageMs })
    }
    return out
  }

  /**
   * What a message, already accepted by the Raft core, tells gossip: the list on a heartbeat from
   * the leader this node follows (an empty list when that leader sent none), without this node
   * itself. Anything else (another type, another sender) tells nothing: undefined.
   */
  accept(m: Message, leader: string | undefined, self: string): RelayedContact[] | undefined {
    if (m.type !== 'heartbeat' || leader === undefined || m.from !== leader || m.to !== self) return undefined
    return (m.alive ?? []).filter((e) => e.id !== self && e.id !== m.from)
  }
}
