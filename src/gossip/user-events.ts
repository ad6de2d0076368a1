/**
 * User events (Serf's user events, Consul's `event/fire`): small, signed, fire-and-forget
 * messages spread by piggyback gossip to every member. The core orders them with a Lamport clock
 * (Lamport 1978, as Serf's `eventClock`), delivers each event id once, and forgets events that
 * fall too far behind the clock (Serf's event buffer window), so a copy still circulating in some
 * member's queue is not delivered again after its id was forgotten. The event body is opaque here
 * (name, payload and filters are the agent's business, `src/node/events/`).
 */

/** Largest event body the core carries (the agent bounds the payload itself at 512 bytes). */
export const MAX_USER_EVENT_BODY_BYTES = 1024
/** Longest event id (a UUID is 36). */
export const MAX_USER_EVENT_ID_LENGTH = 64
/**
 * Events older than the clock by more than this many Lamport ticks are dropped unseen (Serf's
 * `EventBuffer`, 512): a late copy of an event this node no longer remembers.
 */
export const USER_EVENT_WINDOW = 512
/** Event ids remembered to deliver each once: ample for the window (one id per tick at least). */
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

/** What to do with an incoming event: deliver it, or why not. */
export type UserEventVerdict = 'new' | 'duplicate' | 'old'

/**
 * Decides which events are new, by id, within the window behind the clock. Pure and bounded:
 * `USER_EVENT_REMEMBERED_IDS` ids, oldest forgotten first.
 */
export class UserEventDedup {
  private readonly seen = new Set<string>()

  constructor(private readonly maxIds = USER_EVENT_REMEMBERED_IDS) {}

  /** `new` if `id` was not seen and `ltime` is within `window` ticks of `clock`. */
  check(id: string, ltime: number, clock: number, window = USER_EVENT_WINDOW): UserEventVerdict {
    if (this.seen.has(id)) return 'duplicate'
    if (ltime + window < clock) return 'old'
    return 'new'
  }

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
