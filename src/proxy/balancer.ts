/**
 * Endpoint choice as pure functions: weighted random pick and power of two choices (P2C).
 *
 * P2C (Mitzenmacher, "The Power of Two Choices in Randomized Load Balancing", 2001): draw two
 * distinct candidates at random — here in proportion to their weights — and take the less loaded.
 * It avoids the herd behaviour of "least loaded" over stale counts and the imbalance of plain
 * random choice, for O(n) work and no allocation. Load is compared per unit of weight,
 * `(outstanding + 1) / weight`, so a heavier endpoint is meant to carry more (Envoy's weighted
 * least-request with active_request_bias = 1).
 *
 * Randomness is a parameter (`r` in [0, 1), or an `rng`), so tests are deterministic.
 */

export interface Weighted {
  readonly weight: number
}

export interface Loaded extends Weighted {
  /** Connections or requests in flight. */
  readonly outstanding: number
}

/**
 * Picks one of the `eligible` items (other than `skip`) with probability proportional to its
 * weight, using `r` in [0, 1). Items with weight ≤ 0 are never picked. Undefined when none qualify.
 * The mapping is monotone: items are laid end to end in order, each over a span equal to its weight.
 */
export function weightedPick<T extends Weighted>(
  items: readonly T[],
  r: number,
  eligible?: (item: T) => boolean,
  skip?: T,
): T | undefined {
  let total = 0
  for (const item of items) {
    if (item === skip || !(item.weight > 0) || (eligible !== undefined && !eligible(item))) continue
    total += item.weight
  }
  if (total === 0) return undefined
  let target = clampUnit(r) * total
  let last: T | undefined
  for (const item of items) {
    if (item === skip || !(item.weight > 0) || (eligible !== undefined && !eligible(item))) continue
    last = item
    if (target < item.weight) return item
    target -= item.weight
  }
  return last // floating-point leftovers land on the last eligible item
}

/** Load per unit of weight: lower is better. */
export function loadScore(item: Loaded): number {
  return (item.outstanding + 1) / item.weight
}

/**
 * Power of two choices: two distinct weighted-random candidates (`r1`, `r2` in [0, 1)), the one
 * with the lower load score wins; on a tie, the first. With one eligible item, that item.
 */
export function p2cPick<T extends Loaded>(
  items: readonly T[],
  r1: number,
  r2: number,
  eligible?: (item: T) => boolean,
): T | undefined {
  const a = weightedPick(items, r1, eligible)
  if (a === undefined) return undefined
  const b = weightedPick(items, r2, eligible, a)
  if (b === undefined) return a
  return loadScore(b) < loadScore(a) ? b : a
}

function clampUnit(r: number): number {
  if (!(r > 0)) return 0 // also NaN
  return r >= 1 ? 1 - Number.EPSILON : r
}
