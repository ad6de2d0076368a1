/**
 * bench:gossip-failover — failure detection of our gossip vs HashiCorp Serf, same run, same machine.
 *
 * For each system and N (5, 20): N agents on 127.0.0.1 joined through one seed, settled. Then
 * rounds of: kill -9 one member (its sockets reset at once) and time until every survivor reports
 * it failed; freeze one member with SIGSTOP (silent, like a hung machine) and time the same; start
 * a new member and time until every other member lists it alive (t0 = the new agent's own API
 * answering). Membership is polled every 50 ms over persistent connections (HTTP keep-alive for
 * ours, Serf's msgpack RPC for Serf). Medians over the rounds; ratios ours/serf.
 *
 * `--soak SECONDS`: 5 of our agents for that long while one agent is frozen 300 ms of every
 * second (SIGSTOP/SIGCONT: its event loop cannot run, exactly like a blocked loop); counts members
 * that any agent ever reported dead (false failures, target 0).
 *
 * `--agent-config JSON` adds to our agents' config file (Serf runs as it is), e.g. `gossipLan`, to
 * measure an explicit trade of detection time for idle CPU; the JSON echoes it (`agent_config`).
 *
 * Flags: --rounds R (default 5), --sizes 5,20, --json, --soak S, --agent-config JSON.
 */
import { type AgentProcess, freePort, TestCluster, waitFor } from '../test/e2e/harness.ts'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { agentConfigArg, argValue, emitJson, median, progress, table } from './lib.ts'
import { SerfRpc, type SerfAgent, serfAvailable, startSerf } from './peers/serf.ts'

const POLL_MS = 50
const rounds = Number(argValue('rounds', '5'))
const sizes = (argValue('sizes', '5,20') ?? '5,20').split(',').map(Number)
const soakSeconds = argValue('soak') !== undefined ? Number(argValue('soak')) : undefined
/** More of our agents' config file (`--agent-config JSON`), e.g. `gossipLan`; Serf runs as it is. */
const AGENT_CONFIG = agentConfigArg()

/** One cluster under test, whatever the system. */
interface Cluster {
  members(): string[]
  /** Status of `victim` as seen by `observer`: 'alive' | 'failed' | other | undefined (unknown). */
  statusesOf(victim: string, observers: string[]): Promise<(string | undefined)[]>
  kill(name: string, signal: NodeJS.Signals): void
  addMember(): Promise<string>
  close(): Promise<void>
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

async function pollUntil(pred: () => Promise<boolean>, timeoutMs: number): Promise<number | undefined> {
  const t0 = performance.now()
  while (performance.now() - t0 < timeoutMs) {
    const tick = performance.now()
    if (await pred()) return performance.now() - t0
    await sleep(Math.max(0, POLL_MS - (performance.now() - tick)))
  }
  return undefined
}

// ---------------------------------------------------------------------------------------------
// ours

/** `/v1/agent/members` (Consul's shape; `State` is SWIM's alive/suspect/dead/left). */
interface MemberJson {
  Name: string
  State: string
}

class OursCluster implements Cluster {
  private readonly tc = new TestCluster()
  private readonly agents = new Map<string, AgentProcess>()
  private key = ''
  private seed = ''
  private next = 0

  private extraArgs: string[] = []

  async start(n: number): Promise<void> {
    this.key = await this.tc.writeClusterKey()
    if (Object.keys(AGENT_CONFIG).length > 0) {
      const file = join(this.tc.dir, 'agent-config.json')
      writeFileSync(file, JSON.stringify(AGENT_CONFIG), { mode: 0o600 })
      this.extraArgs = ['--config', file]
    }
    for (let i = 0; i < n; i++) await this.addMember()
    await waitFor(
      `${n} agents to converge`,
      async () => {
        const all = [...this.agents.values()]
        const views = await Promise.all(
          all.map((a) => a.api<MemberJson[]>('/v1/agent/members', undefined, { token: false })),
        )
        return views.every((v) => v?.filter((m) => m.State === 'alive').length === n) ? true : undefined
      },
      60_000,
    )
  }

  members(): string[] {
    return [...this.agents.keys()]
  }

  async statusesOf(victim: string, observers: string[]): Promise<(string | undefined)[]> {
    return Promise.all(
      observers.map(async (o) => {
        const view = await this.agents
          .get(o)!
          .api<MemberJson[]>('/v1/agent/members', undefined, { token: false })
        const s = view?.find((m) => m.Name === victim)?.State
        return s === 'dead' ? 'failed' : s
      }),
    )
  }

  kill(name: string, signal: NodeJS.Signals): void {
    this.agents.get(name)!.child!.kill(signal)
    if (signal === 'SIGKILL') this.agents.delete(name)
  }

  forget(name: string): void {
    this.agents.delete(name)
  }

  agent(name: string): AgentProcess {
    return this.agents.get(name)!
  }

  async addMember(): Promise<string> {
    const name = `o${this.next++}`
    const a = this.tc.agent({
      name,
      clusterKeyFile: this.key,
      seeds: this.seed ? [this.seed] : [],
      extraArgs: this.extraArgs,
    })
    await a.start()
    if (this.seed === '') {
      this.seed = (await a.self())!.addresses[0]!
    }
    this.agents.set(name, a)
    return name
  }

  async close(): Promise<void> {
    await this.tc.close()
  }
}

// ---------------------------------------------------------------------------------------------
// serf

class SerfCluster implements Cluster {
  private readonly agents = new Map<string, SerfAgent>()
  private next = 0
  private seedBind = ''

  async start(n: number): Promise<void> {
    for (let i = 0; i < n; i++) await this.addMember()
    await waitFor(
      `${n} serf agents to converge`,
      async () => {
        const views = await Promise.all([...this.agents.values()].map((a) => a.rpc!.members()))
        return views.every((v) => v.filter((m) => m.Status === 'alive').length === n) ? true : undefined
      },
      60_000,
    )
    await sleep(3_000) // settle, as in ANCHORS.md
  }

  members(): string[] {
    return [...this.agents.keys()]
  }

  async statusesOf(victim: string, observers: string[]): Promise<(string | undefined)[]> {
    return Promise.all(
      observers.map(
        async (o) => (await this.agents.get(o)!.rpc!.members()).find((m) => m.Name === victim)?.Status,
      ),
    )
  }

  kill(name: string, signal: NodeJS.Signals): void {
    const a = this.agents.get(name)!
    a.child.kill(signal)
    if (signal === 'SIGKILL') {
      a.rpc?.close()
      this.agents.delete(name)
    }
  }

  forget(name: string): void {
    const a = this.agents.get(name)
    a?.rpc?.close()
    a?.child.kill('SIGKILL')
    this.agents.delete(name)
  }

  async addMember(): Promise<string> {
    const name = `s${this.next++}`
    const bind = await freePort()
    const rpcPort = await freePort()
    const a = startSerf(name, bind, rpcPort, 'lan', this.seedBind || undefined)
    if (this.seedBind === '') this.seedBind = `127.0.0.1:${bind}`
    a.rpc = await waitFor(
      `serf ${name} rpc`,
      () => SerfRpc.connect(rpcPort).catch(() => undefined),
      10_000,
      20,
    )
    this.agents.set(name, a)
    return name
  }

  async close(): Promise<void> {
    for (const a of this.agents.values()) {
      a.rpc?.close()
      a.child.kill('SIGKILL')
    }
    this.agents.clear()
  }
}

// ---------------------------------------------------------------------------------------------

interface Figures {
  detect: number[]
  frozen: number[]
  join: number[]
}

async function measure(system: 'ours' | 'serf', n: number): Promise<Figures> {
  const c = system === 'ours' ? new OursCluster() : new SerfCluster()
  const f: Figures = { detect: [], frozen: [], join: [] }
  try {
    progress(`[${system} N=${n}] starting ${n} agents`)
    await c.start(n)
    for (let r = 0; r < rounds; r++) {
      for (const signal of ['SIGKILL', 'SIGSTOP'] as const) {
        const members = c.members()
        const victim = members[1 + (r % (members.length - 1))]!
        const survivors = members.filter((m) => m !== victim)
        c.kill(victim, signal)
        const ms = await pollUntil(
          async () => (await c.statusesOf(victim, survivors)).every((s) => s === 'failed'),
          60_000,
        )
        if (signal === 'SIGSTOP') c.forget(victim)
        if (ms === undefined) throw new Error(`[${system} N=${n}] ${victim} not detected within 60 s`)
        ;(signal === 'SIGKILL' ? f.detect : f.frozen).push(ms)
        progress(
          `[${system} N=${n}] round ${r + 1}: ${signal} ${victim} detected by all in ${ms.toFixed(0)} ms`,
        )
        // Replace the victim with a new member and time its join.
        const name = await c.addMember()
        const others = c.members().filter((m) => m !== name)
        const jms = await pollUntil(
          async () => (await c.statusesOf(name, others)).every((s) => s === 'alive'),
          60_000,
        )
        if (jms === undefined)
          throw new Error(`[${system} N=${n}] new member ${name} not seen by all within 60 s`)
        f.join.push(jms)
        progress(`[${system} N=${n}] new member ${name} seen by all in ${jms.toFixed(0)} ms`)
      }
    }
  } finally {
    await c.close()
  }
  return f
}

async function soak(seconds: number): Promise<void> {
  const c = new OursCluster()
  await c.start(5)
  const names = c.members()
  const victim = c.agent(names[2]!)
  const pid = victim.child!.pid!
  const falseFailures = new Set<string>()
  let polls = 0
  let stopped = false
  const freezer = (async () => {
    while (!stopped) {
      process.kill(pid, 'SIGSTOP')
      await sleep(300)
      process.kill(pid, 'SIGCONT')
      await sleep(700)
    }
  })()
  progress(`[soak] ${seconds} s, 5 agents, ${names[2]} frozen 300 ms of every second`)
  const end = Date.now() + seconds * 1000
  while (Date.now() < end) {
    for (const o of names.filter((n) => n !== names[2])) {
      const view = await c.agent(o).api<MemberJson[]>('/v1/agent/members', undefined, { token: false })
      for (const m of view ?? []) if (m.State === 'dead') falseFailures.add(`${o} saw ${m.Name} dead`)
    }
    polls++
    await sleep(POLL_MS * 4)
  }
  stopped = true
  await freezer
  process.kill(pid, 'SIGCONT')
  await c.close()
  table(['soak seconds', 'polls', 'false_failures'], [[seconds, polls, falseFailures.size]])
  for (const f of falseFailures) progress(`  false failure: ${f}`)
  emitJson({ soak_seconds: seconds, false_failures: falseFailures.size, polls })
}

async function main(): Promise<void> {
  if (soakSeconds !== undefined) return soak(soakSeconds)
  if (!serfAvailable()) {
    throw new Error(
      'serf is not installed: apt-get install serf (the peer system must run in the same invocation)',
    )
  }
  const rows: (string | number)[][] = []
  const out: Record<string, number> = {}
  for (const n of sizes) {
    let ours: Figures
    let serf: Figures
    try {
      ours = await measure('ours', n)
      serf = await measure('serf', n)
    } catch (err) {
      // One size that cannot run (an agent that did not start under load) keeps the others' figures.
      progress(`[N=${n}] failed: ${err instanceof Error ? err.message : String(err)}`)
      out[`failed_n${n}`] = 1
      continue
    }
    const m = {
      detect_ms_ours: median(ours.detect),
      detect_ms_serf: median(serf.detect),
      frozen_ms_ours: median(ours.frozen),
      frozen_ms_serf: median(serf.frozen),
      join_ms_ours: median(ours.join),
      join_ms_serf: median(serf.join),
    }
    rows.push([n, 'kill -9', m.detect_ms_ours, m.detect_ms_serf, m.detect_ms_ours / m.detect_ms_serf])
    rows.push([n, 'SIGSTOP', m.frozen_ms_ours, m.frozen_ms_serf, m.frozen_ms_ours / m.frozen_ms_serf])
    rows.push([n, 'join', m.join_ms_ours, m.join_ms_serf, m.join_ms_ours / m.join_ms_serf])
    for (const [k, v] of Object.entries(m)) out[`${k}_n${n}`] = Math.round(v)
    if (n === 5) {
      Object.assign(out, {
        detect_ms_ours: Math.round(m.detect_ms_ours),
        detect_ms_serf: Math.round(m.detect_ms_serf),
        detect_ratio: +(m.detect_ms_ours / m.detect_ms_serf).toFixed(3),
        detect_ratio_frozen: +(m.frozen_ms_ours / m.frozen_ms_serf).toFixed(3),
      })
    }
  }
  table(['N', 'event', 'ours ms (median)', 'serf ms (median)', 'ratio ours/serf'], rows)
  emitJson({
    rounds,
    ...(Object.keys(AGENT_CONFIG).length > 0 ? { agent_config: JSON.stringify(AGENT_CONFIG) } : {}),
    ...out,
  })
}

main().catch((err: unknown) => {
  process.stderr.write(`bench:gossip-failover: ${err instanceof Error ? err.message : String(err)}\n`)
  process.exit(1)
})
