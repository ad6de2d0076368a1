import { randomUUID } from 'node:crypto'
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { generateKeyPair, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { NODE_KEY_FILE } from '../../src/identity/keys/node-key.ts'
import { type AgentProcess, freePort, TestCluster, waitFor } from './harness.ts'
import type { RaftConfiguration } from './raft-helpers.ts'

/**
 * Issue #12, must show: `--bootstrap-expect 3` with 3 eligible agents (ACLs on, sharing the initial
 * management token) and 1 plain joiner (ACLs on, no token) whose peer id sorts first, all started
 * at once: one configuration on every agent, the 3 eligible as its voters, the joiner never one.
 * One run of it, with real agent processes on 127.0.0.1; used by test/e2e/raft-founding-acl.test.ts
 * (a few runs) and bench/founding-acl.ts (20 runs).
 *
 * The node keys are made here and placed in the data dirs, so the joiner can be given the lowest
 * peer id (under the old rule it would be the first founder) and every agent can be given the
 * others' addresses as seeds before any starts: all four start together, none waits for another.
 */

export interface FoundingAclRun {
  /** From starting the four processes to one configuration seen on every agent. */
  ms: number
  /** From starting the four processes to all four HTTP APIs up (process start, mostly). */
  startMs: number
  /** The configuration, as `id:voter|learner` sorted (the joiner may be a learner or absent). */
  configuration: string
  /** The eligible agents' peer ids, sorted. */
  eligible: string[]
  joiner: string
  /** Founder sets written, from every agent's log ("bootstrapped raft cluster"). */
  written: string[]
}

/** The configuration as a comparable string: servers (id, voter), sorted; no leader flag. */
export function shape(c: RaftConfiguration | undefined): string | undefined {
  if (c === undefined || c.servers.length === 0) return undefined
  return c.servers
    .map((s) => `${s.id}:${s.voter ? 'voter' : 'learner'}`)
    .sort()
    .join(',')
}

/** The founder sets this agent's log says it wrote. */
export function foundings(a: AgentProcess): string[] {
  const out: string[] = []
  for (const line of a.log.split('\n')) {
    if (!line.includes('bootstrapped raft cluster')) continue
    try {
      out.push((JSON.parse(line) as { founders: string[] }).founders.join(','))
    } catch {
      out.push(line)
    }
  }
  return out
}

/** Four Ed25519 node keys with their peer ids, sorted by peer id. */
async function sortedNodeKeys(): Promise<{ id: string; key: Uint8Array }[]> {
  const keys = await Promise.all(
    [0, 1, 2, 3].map(async () => {
      const k = await generateKeyPair('Ed25519')
      return { id: peerIdFromPrivateKey(k).toString(), key: privateKeyToProtobuf(k) }
    }),
  )
  return keys.sort((a, b) => (a.id < b.id ? -1 : 1))
}

/**
 * Starts `a` as the harness does, more patiently: four processes starting at once on a loaded
 * machine may miss the harness's start deadline (made for one), so one still running is given
 * `timeoutMs`; one whose HTTP or p2p port was taken meanwhile starts again on another (the harness
 * picks again, `portsMayMove`: the moved agent's own seeds still reach the others).
 */
async function startUnderLoad(a: AgentProcess, timeoutMs: number): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await a.start()
      return
    } catch (err) {
      const running = a.child !== undefined && a.child.exitCode === null && a.child.signalCode === null
      if (running) {
        await waitFor(
          `${a.name} HTTP API`,
          async () => ((await a.api('/v1/agent/self')) ? true : undefined),
          timeoutMs,
        )
        return
      }
      if (!/HTTP API on .*address already in use/.test(String(err)) || attempt >= 3) throw err
      a.httpPort = 0
    }
  }
}

/** Runs the scenario once; throws (with the reason) when it does not hold. */
export async function runFoundingAcl(label: string, timeoutMs = 30_000): Promise<FoundingAclRun> {
  const cluster = new TestCluster()
  try {
    const clusterKey = await cluster.writeClusterKey()
    const token = randomUUID()
    const withToken = join(cluster.dir, 'acl-founder.json')
    const withoutToken = join(cluster.dir, 'acl-joiner.json')
    writeFileSync(withToken, JSON.stringify({ acl: { enabled: true, initialManagementToken: token } }), {
      mode: 0o600,
    })
    writeFileSync(withoutToken, JSON.stringify({ acl: { enabled: true } }), { mode: 0o600 })

    const keys = await sortedNodeKeys()
    const ports = await Promise.all(keys.map(() => freePort()))
    const addr = (i: number) => `/ip4/127.0.0.1/tcp/${ports[i]}/p2p/${keys[i]!.id}`
    const agents = keys.map((k, i) => {
      const joiner = i === 0 // the lowest peer id
      const name = `${label}-${joiner ? 'joiner' : `e${i}`}`
      const dataDir = join(cluster.dir, name)
      mkdirSync(dataDir, { recursive: true, mode: 0o700 })
      writeFileSync(join(dataDir, NODE_KEY_FILE), k.key, { mode: 0o600 })
      const a = cluster.agent({
        name,
        // The token comes from the config files above only: the joiner holds none.
        initialManagementToken: false,
        clusterKeyFile: clusterKey,
        dataDir,
        seeds: keys
          .map((_, j) => j)
          .filter((j) => j !== i)
          .map(addr),
        extraArgs: joiner
          ? ['--config', withoutToken] // a plain joiner: no token, no --bootstrap-expect
          : ['--config', withToken, '--bootstrap-expect', '3'],
        // Picked ahead for the seeds; a port taken meanwhile by another test's process is picked
        // again (every agent has the others as seeds too).
        portsMayMove: true,
      })
      a.p2pPort = ports[i]!
      return a
    })
    const [joiner, ...eligible] = agents as [AgentProcess, ...AgentProcess[]]
    const eligibleIds = keys.slice(1).map((k) => k.id)
    const joinerId = keys[0]!.id

    const t0 = Date.now()
    await Promise.all(agents.map((a) => startUnderLoad(a, timeoutMs)))
    const startMs = Date.now() - t0
    const headers = { 'x-consul-token': token }
    let lastShapes: (string | undefined)[] = []
    const configuration = await waitFor(
      `${label}: one raft configuration on every agent`,
      async () => {
        const shapes = await Promise.all(
          agents.map(async (a) =>
            shape(await a.api<RaftConfiguration>('/v1/operator/raft/configuration', { headers })),
          ),
        )
        lastShapes = shapes
        const first = shapes[1]
        // The eligible agents must all answer; the joiner answers once it replicates the cluster's
        // state as a learner (if it is admitted as one), and then must agree too.
        if (first === undefined || !shapes.slice(1).every((s) => s === first)) return undefined
        if (shapes[0] !== undefined && shapes[0] !== first) return undefined
        const voters = first.split(',').filter((s) => s.endsWith(':voter'))
        return voters.length === 3 ? first : undefined
      },
      timeoutMs,
      100,
    ).catch((err: unknown) => {
      // Say what each agent last answered and what its log says about founding and enrollment.
      const seen = agents.map((a, i) => `${a.name}: ${lastShapes[i] ?? '(no configuration)'}`)
      const logs = agents.map(
        (a) =>
          `--- ${a.name} (exit ${a.child?.exitCode ?? 'running'}):\n` +
          a.log
            .split('\n')
            .filter((l) => /found|enrol|bootstrap|leader|error|warn|refus|member:|seed/i.test(l))
            .slice(-40)
            .join('\n'),
      )
      throw new Error(`${String(err)}\nlast answers:\n${seen.join('\n')}\n${logs.join('\n')}`)
    })
    const ms = Date.now() - t0
    const run: FoundingAclRun = {
      ms,
      startMs,
      configuration,
      eligible: eligibleIds,
      joiner: joinerId,
      written: agents.flatMap(foundings),
    }
    const voters = configuration
      .split(',')
      .filter((s) => s.endsWith(':voter'))
      .map((s) => s.split(':')[0])
    const problems: string[] = []
    if (voters.join(',') !== eligibleIds.join(','))
      problems.push(`voters ${voters.join(',')} are not the eligible ${eligibleIds.join(',')}`)
    if (configuration.includes(`${joinerId}:voter`)) problems.push('the joiner is a voter')
    if (new Set(run.written).size !== 1 || run.written[0] !== eligibleIds.join(','))
      problems.push(`founder sets written: ${run.written.join(' | ')}`)
    if (foundings(joiner).length > 0) problems.push('the joiner wrote founding entries')
    if (eligible.some((a) => a.child?.exitCode !== null)) problems.push('an eligible agent exited')
    if (problems.length > 0) throw new Error(`${label}: ${problems.join('; ')}`)
    return run
  } finally {
    await cluster.close()
  }
}
