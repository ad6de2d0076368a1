import { describe, expect, it } from 'vitest'
import { runCli } from './harness.ts'

describe('peermesh demo (the README set-up command)', () => {
  it('runs the whole tour and exits 0: gossip failure detection, Raft, sidecar traffic with no failed request', async () => {
    const res = await runCli(['demo'], { timeoutMs: 180_000 })
    expect(res.code, res.stderr + res.stdout).toBe(0)
    expect(res.stdout).toMatch(/every survivor reports node3 dead after \d+ ms/)
    expect(res.stdout).toMatch(/node\d: leader/)
    expect(res.stdout).toMatch(/\d+ requests succeeded, 0 failed/)
    expect(res.stdout).toMatch(/intention switched to deny/)
    expect(res.stdout).toMatch(/demo done: all agents stopped/)
  }, 200_000)
})
