import { randomBytes, randomUUID } from 'node:crypto'
import { statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { RAFT_DEFAULTS } from '../../src/node/agent/defaults.ts'
import { RAFT_DIR } from '../../src/node/raft/raft-module.ts'
import { type AgentProcess, TestCluster, waitFor } from './harness.ts'
import type { RaftConfiguration, RaftStatus } from './raft-helpers.ts'

/**
 * Regression test of #13's "oversized state stranded new agents": a new agent must catch up from a
 * snapshot that does not fit in one Raft frame. Agent processes run the production Raft settings
 * (`RAFT_DEFAULTS`; only an in-process `RaftModule` takes overrides), so the test builds the state
 * those settings need: 20 config entries of 60 KiB (1.2 MiB, over `maxFrameBytes`, 1 MiB: the
 * snapshot travels as chunks), then small writes until every agent has taken a snapshot
 * (`snapshotThreshold` entries) and compacted its log, so a newcomer can only catch up from it.
 * ACLs on, given explicitly (a management token shared by the founders, sent with every request):
 * the test does not depend on the default.
 */

const BIG_ENTRIES = 20
const BIG_VALUE_BYTES = 60 * 1024
/** Writes in flight at once during the filler phase. */
const CONCURRENCY = 32
/** Give up filling past this many small writes (the threshold plus a margin for the founding entries). */
const MAX_SMALL_WRITES = RAFT_DEFAULTS.snapshotThreshold + 4_000

/** One API call with the management token; status and parsed body. */
async function call<T = unknown>(
  a: AgentProcess,
  method: string,
  path: string,
  token: string,
  body?: unknown,
): Promise<{ status: number; json: T }> {
  const res = await fetch(`http://${a.http}${path}`, {
    method,
    headers: {
      'x-consul-token': token,
      ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
    },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    signal: AbortSignal.timeout(15_000),
  })
  const text = await res.text()
  let json: unknown = text
  try {
    json = JSON.parse(text)
  } catch {
    // not JSON
  }
  return { status: res.status, json: json as T }
}

/** Size of the agent's Raft snapshot file, 0 while it has none. */
function snapshotBytes(a: AgentProcess): number {
  try {
    return statSync(join(a.dataDir, RAFT_DIR, 'snapshot')).size
  } catch {
    return 0
  }
}

describe('a new agent catches up from a snapshot larger than one Raft frame (#13)', () => {
  const cluster = new TestCluster()
  afterAll(() => cluster.close())

  it('20 × 60 KiB config entries and a compacted log: a fresh agent joins, applies everything and answers every GET with 200', async () => {
    const token = randomUUID()
    const config = join(cluster.dir, 'acl.json')
    writeFileSync(config, JSON.stringify({ acl: { enabled: true, initialManagementToken: token } }), {
      mode: 0o600,
    })
    const key = await cluster.writeClusterKey()
    const founder = (name: string, seeds: string[] = []): AgentProcess =>
      cluster.agent({
        name,
        clusterKeyFile: key,
        seeds,
        extraArgs: ['--config', config, '--bootstrap-expect', '3'],
      })
    const s1 = founder('s1')
    await s1.start()
    const seed = `/ip4/127.0.0.1/tcp/${s1.p2pPort}`
    const others = [founder('s2', [seed]), founder('s3', [seed])]
    await Promise.all(others.map((a) => a.start()))
    const founders = [s1, ...others]
    const status = async (a: AgentProcess): Promise<RaftStatus | undefined> => {
      const r = await call<RaftStatus>(a, 'GET', '/v1/operator/raft/status', token)
      return r.status === 200 ? r.json : undefined
    }
    await waitFor(
      'a leader named by all three, the management token accepted',
      async () => {
        const sts = await Promise.all(founders.map(status))
        const leader = sts[0]?.leader
        return leader && sts.every((s) => s?.leader === leader) ? true : undefined
      },
      60_000,
    )

    const big = Array.from({ length: BIG_ENTRIES }, (_, i) => ({
      name: `big-${i}`,
      value: randomBytes(BIG_VALUE_BYTES * 0.75).toString('base64'),
    }))
    for (const e of big) {
      const r = await call(s1, 'PUT', '/v1/config', token, { kind: 'kv', ...e })
      expect(r.status, JSON.stringify(r.json)).toBe(200)
    }

    // Small writes until every founder has snapshotted (and so compacted its log).
    let written = 0
    const failures: string[] = []
    const allSnapshotted = (): boolean => founders.every((a) => snapshotBytes(a) > 0)
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (!allSnapshotted() && written < MAX_SMALL_WRITES) {
          const n = ++written
          const r = await call(s1, 'PUT', '/v1/config', token, { kind: 'kv', name: 'tick', value: String(n) })
          if (r.status !== 200) failures.push(`${r.status} ${JSON.stringify(r.json)}`)
        }
      }),
    )
    expect(failures.length, failures.slice(0, 5).join('; ')).toBe(0)
    await waitFor('a snapshot on every founder', async () => (allSnapshotted() ? true : undefined), 30_000)
    // The snapshot holds the 1.2 MiB of entries: over one frame, so it crosses as several.
    for (const a of founders) expect(snapshotBytes(a)).toBeGreaterThan(RAFT_DEFAULTS.maxFrameBytes)
    const last = await call<{ value: string }>(s1, 'GET', '/v1/config/kv/tick?consistent', token)
    expect(last.status).toBe(200)
    const target = (await status(s1))!.commitIndex

    // A fresh agent joins; autopilot adds it as a learner and the leader sends it the snapshot.
    const fresh = cluster.agent({
      name: 's4',
      clusterKeyFile: key,
      seeds: [seed],
      extraArgs: ['--config', config],
    })
    await fresh.start()
    await waitFor(
      `s4 applied up to index ${target}`,
      async () => {
        const st = await status(fresh)
        return st !== undefined && st.appliedIndex >= target ? true : undefined
      },
      120_000,
      200,
    )
    const restored = /"msg":"snapshot:restore"/.test(fresh.log)
    expect(restored, 's4 installed a snapshot (its log says snapshot:restore)').toBe(true)
    const conf = await call<RaftConfiguration>(fresh, 'GET', '/v1/operator/raft/configuration', token)
    expect(conf.status).toBe(200)
    expect(conf.json.servers.map((s) => s.node)).toContain('s4')

    // Everything applied on the newcomer, and every agent answers every GET with 200.
    for (const a of [...founders, fresh]) {
      for (const e of big) {
        const r = await call<{ value: string }>(a, 'GET', `/v1/config/kv/${e.name}`, token)
        expect(r.status, `${a.name} GET ${e.name}`).toBe(200)
        expect(r.json.value === e.value, `${a.name} ${e.name} intact`).toBe(true)
      }
      const t = await call<{ value: string }>(a, 'GET', '/v1/config/kv/tick', token)
      expect(t.status).toBe(200)
      expect(t.json.value).toBe(last.json.value)
      for (const path of ['/v1/agent/self', '/v1/agent/members', '/v1/config/kv', '/v1/operator/raft/status'])
        expect((await call(a, 'GET', path, token)).status, `${a.name} GET ${path}`).toBe(200)
    }
  }, 600_000)
})
