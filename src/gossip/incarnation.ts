/**
 * Incarnation rules that an accuser cannot weaponize (SWIM §4.2 refutation, hardened).
 *
 * An incarnation only ever grows, and only its owner can prove one: it signs its alive record
 * together with its incarnation. An accuser (suspect/dead) signs nothing, so what it claims must
 * stay within what the accused has signed: a legitimate accuser holds the accused's signed record
 * at incarnation `ri` and accuses at `ri` (or `ri + 1`, the incarnation a suspicion may carry
 * once the owner has signed `ri + 1` and the alive is still on its way). Anything above that is
 * an attempt to push the owner's refutation out of the safe-integer range (2^53 − 1 → 2^53: every
 * decoder then drops the owner's alive messages, and it stays dead everywhere).
 */

/** Largest incarnation the codec accepts (`Number.MAX_SAFE_INTEGER`); refutations never go past it. */
export const MAX_INCARNATION = Number.MAX_SAFE_INTEGER

/**
 * Largest incarnation believed from a node's own persisted state: 2^40 ≈ 1.1·10^12, more than a
 * node refuting 1,000 times a second for 30 years reaches. A value past it (or not a non-negative
 * safe integer) was written by a bug or an attack and is repaired at start.
 */
export const MAX_PLAUSIBLE_INCARNATION = 2 ** 40

/**
 * True if an accusation at `accusedInc` is within what the accused itself has signed
 * (`signedInc`, the highest incarnation of its signed alive record held) or one above it.
 */
export function accusationWithinSigned(accusedInc: number, signedInc: number): boolean {
  return accusedInc <= signedInc + 1
}

/**
 * The incarnation to refute an accusation at `accusedInc` with: one above both our own and the
 * accused one (the accusation was checked with `accusationWithinSigned`, so this is at most
 * `own + 2`), clamped to `MAX_INCARNATION`.
 */
export function refutationIncarnation(own: number, accusedInc: number): number {
  return Math.min(MAX_INCARNATION, Math.max(own, accusedInc) + 1)
}

/**
 * A persisted incarnation checked before a restart starts above it: a non-negative safe integer
 * up to `MAX_PLAUSIBLE_INCARNATION` is kept; anything else is repaired to 0 (the node then starts
 * at 1, and jumps above any record of itself it still finds signed by its own key in the cluster).
 */
export function repairedIncarnation(persisted: unknown): { incarnation: number; repaired: boolean } {
  const ok =
    typeof persisted === 'number' &&
    Number.isSafeInteger(persisted) &&
    persisted >= 0 &&
    persisted <= MAX_PLAUSIBLE_INCARNATION
  return ok ? { incarnation: persisted, repaired: false } : { incarnation: 0, repaired: true }
}
