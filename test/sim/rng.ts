import { seededRng } from '../../src/common/rng.ts'

/**
 * A seeded pseudo-random source for deterministic simulations, on the project's one generator
 * (`seededRng`, mulberry32). Protocol cores take `() => number` (uniform in [0, 1)): pass `rng.next`.
 */
export class SeededRng {
  /** Uniform float in [0, 1). */
  readonly next: () => number

  constructor(seed: number) {
    this.next = seededRng(seed)
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n)
  }

  /** True with probability p. */
  chance(p: number): boolean {
    return this.next() < p
  }
}
