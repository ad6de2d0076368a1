/**
 * Traffic splits, as Consul's service-splitter: each request (HTTP mode) or connection (L4 mode)
 * goes to a subset chosen at random by weight, e.g. `[{ weight: 90, subset: 'v1' }, { weight: 10,
 * subset: 'v2' }]`. A subset is the instances that carry its name as a tag.
 *
 * When the chosen subset has no usable instance the pick falls back to every healthy instance:
 * a split shapes traffic, it should not fail requests that another version could serve.
 */
import { InvalidSplitConfigError } from './errors.ts'

export interface SplitEntry {
  /** Share of traffic, ≥ 0; entries are weighed against their sum (Consul's sum to 100). */
  weight: number
  /** Instances with this tag form the subset. */
  subset: string
}

export type SplitConfig = readonly SplitEntry[]

const MAX_SPLITS = 64

/** Validates untrusted input (a Raft config entry) as a split; returns a normalised copy. */
export function validateSplitConfig(input: unknown): SplitEntry[] {
  if (!Array.isArray(input)) throw new InvalidSplitConfigError('split must be an array of { weight, subset }')
  if (input.length === 0 || input.length > MAX_SPLITS) {
    throw new InvalidSplitConfigError(`split must have 1 to ${MAX_SPLITS} entries`)
  }
  const seen = new Set<string>()
  let total = 0
  const out = input.map((entry: unknown, i) => {
    if (typeof entry !== 'object' || entry === null)
      throw new InvalidSplitConfigError(`split #${i} is not an object`)
    const { weight, subset } = entry as Record<string, unknown>
    if (typeof weight !== 'number' || !Number.isFinite(weight) || weight < 0) {
      throw new InvalidSplitConfigError(`split #${i}: weight must be a finite number ≥ 0`)
    }
    if (typeof subset !== 'string' || subset.length === 0 || subset.length > 255) {
      throw new InvalidSplitConfigError(`split #${i}: subset must be a tag (1-255 characters)`)
    }
    if (seen.has(subset)) throw new InvalidSplitConfigError(`split #${i}: subset ${subset} appears twice`)
    seen.add(subset)
    total += weight
    return { weight, subset }
  })
  if (!(total > 0)) throw new InvalidSplitConfigError('split weights must not all be 0')
  return out
}

/** Index of the entry chosen by `r` in [0, 1): entries laid end to end, each over its weight. */
export function pickSplit(split: SplitConfig, r: number): number {
  let total = 0
  for (const e of split) total += e.weight
  let target = Math.min(Math.max(r, 0), 1 - Number.EPSILON) * total
  let last = -1
  for (let i = 0; i < split.length; i++) {
    const w = split[i]!.weight
    if (!(w > 0)) continue
    last = i
    if (target < w) return i
    target -= w
  }
  return last
}
