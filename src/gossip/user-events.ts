/**
 * User events (Serf's user events, Consul's `event/fire`): small, signed, fire-and-forget
 * messages spread by piggyback gossip to every member. The core orders them with a Lamport clock
 * (Lamport 1978, as Serf's `eventClock`; the agent persists it across restarts) and delivers each
 * event id once. Unlike Serf it does not drop events far behind its clock: a member back from a
 * long downtime (or with a new data dir) fires behind the others until it sees an event, and a
 * window would drop its events everywhere. Late
 * copies are bounded anyway: a member relays an event only when it is new to it, a limited number
 * of times (SWIM §4.1), and remembers the last `USER_EVENT_REMEMBERED_IDS` ids, far more than are
 * relayed at once. The event body is opaque here (name, payload and filters are the agent's
 * business, `src/node/events/`).
 */

/** Largest event body the core carries (the agent bounds the payload itself at 512 bytes). */
export const MAX_USER_EVENT_BODY_BYTES = 1024
/** Longest event id (a UUID is 36). */
export const MAX_USER_EVENT_ID_LENGTH = 64
/**
 * Highest Lamport time accepted (and restored after a restart): a member firing 1,000 events a
 * second for 30 years stays below it. An event above it is refused at decoding, so no member can
 * push every clock to where it could no longer count up in safe integers.
 */
export const MAX_USER_EVENT_LTIME = 2 ** 40
/** Event ids remembered to deliver each once (the last ones; Serf remembers 512 Lamport ticks). */
export const USER_EVENT_REMEMBERED_IDS = 4096

/** An event as the core delivers it (`Output.userEvents`). */
export interface UserEvent {
  /** Member id of the node that fired it (whose key signed it). */
  origin: string
  /** Lamport time the origin gave it. */
  ltime: number
  /** Unique id (a UUID), the key of deduplication. */
  id: string
  /** Opaque to the core. */
  body: Uint8Array
}

/** A Lamport clock: `increment` for a local event, `witness` for a time seen in a message. */
export class LamportClock {
  private t = 0

  get time(): number {
    return this.t
  }

  /** Time for a new local event (strictly above everything seen). */
  increment(): number {
    this.t++
    return this.t
  }

  /** Moves past `time` (seen in a message), so later local events are ordered after it. */
  witness(time: number): void {
    if (time >= this.t) this.t = time + 1
  }
}

/** Decides which events are new, by id. Bounded: `USER_EVENT_REMEMBERED_IDS` ids, oldest forgotten first. */
export class UserEventDedup {
  private readonly seen = new Set<string>()

  constructor(private readonly maxIds = USER_EVENT_REMEMBERED_IDS) {}

  /** Whether `id` is remembered. */
  has(id: string): boolean {
    return this.seen.has(id)
  }

  remember(id: string): void {
    this.seen.add(id)
    if (this.seen.size > this.maxIds) {
      const oldest = this.seen.values().next().value
      if (oldest !== undefined) this.seen.delete(oldest)
    }
  }
}
