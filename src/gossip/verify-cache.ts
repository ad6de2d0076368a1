/**
 * Signature checks remembered per (member, incarnation, digest of what was signed and the
 * signature). Gossip delivers the same signed alive or leave many times (every relay, every
 * push/pull); an Ed25519 verify costs tens of microseconds, a SHA-256 of a record about one. A
 * failed check is remembered too, so a forgery replayed in a loop costs one verify. Bounded: the
 * oldest answers are forgotten first.
 */
import { createHash } from 'node:crypto'
import type { Verifier } from './signing.ts'

export class VerifyCache {
  private readonly answers = new Map<string, boolean>()
  /** Verifications run and answered from the cache. */
  checks = 0
  hits = 0

  constructor(
    private readonly verifier: Verifier,
    private readonly maxEntries: number,
  ) {}

  /**
   * True if `sig` is `id`'s signature over `signed` (the signing bytes of `kind` at `inc`). The
   * answer is cached under (`kind`, `id`, `inc`, SHA-256(signed ‖ sig)).
   */
  verify(
    kind: 'alive' | 'leave' | 'user',
    id: string,
    inc: number,
    signed: Uint8Array,
    sig: Uint8Array,
  ): boolean {
    const digest = createHash('sha256').update(signed).update(sig).digest('base64')
    const key = `${kind}\u0000${id}\u0000${inc}\u0000${digest}`
    const known = this.answers.get(key)
    if (known !== undefined) {
      this.hits++
      return known
    }
    this.checks++
    const ok = this.verifier(id, signed, sig)
    this.answers.set(key, ok)
    if (this.answers.size > this.maxEntries) {
      const oldest = this.answers.keys().next().value
      if (oldest !== undefined) this.answers.delete(oldest)
    }
    return ok
  }
}
