/**
 * A chaos cluster: the namespaces, one agent per host, and an observer that polls every agent's
 * view of the Raft leader and term all the time (`terms_with_two_leaders`).
 */
import { execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { BIN, Host, type RaftStatus, sleep, waitFor } from './host.ts'
import { ChaosNet, killAll } from './net.ts'

export const log = (...parts: unknown[]): void => {
  const t = new Date().toISOString().slice(11, 23)
  process.stderr.write(`[${t}] ${parts.map(String).join(' ')}\n`)
}

export interface StartOptions {
  hosts: number
  /** Hosts (1-based) given `--bootstrap-expect N`; they start first, the others once there is a leader. */
  founders: number[]
  bootstrapExpect: number
  /** Delay between starting founders (staggered starts); 0: all at once. */
  staggerMs?: number
  /** Wait for a leader before starting non-founders (default true). */
  waitLeaderBeforeOthers?: boolean
}

/** How the agents of a cluster run, beyond the suite's fixed flags (host.ts). */
export interface ClusterOptions {
  /**
   * ACLs, always given explicitly (`--config`), so the suite does not depend on the default:
   * `off` (the default here: the scenario is about Raft, gossip or the network, not access), or
   * on with a shared initial management token that the suite then sends with every request.
   */
  acl?: { enabled: false } | { enabled: true; managementToken: string }
  /** Listen address of host h's agent (default: its own address, `Host.seedAddr`). */
  listen?: (h: Host) => string
  /** More flags for host h's agent, at every start (e.g. `--advertise`, `--dns`). */
  agentArgs?: (h: Host) => string[]
}

/** Clusters not stopped yet, so that an interrupted run (Ctrl-C) also removes their data dirs. */
const live = new Set<Cluster>()

export function stopAllSync(): void {
  for (const c of live) c.stopSync(false)
}

export class Cluster {
  readonly net: ChaosNet
  readonly hosts: Host[]
  readonly dir: string
  readonly clusterKey: string
  /** term -> leader ids seen for it (by any agent, as leader or follower). */
  readonly leadersByTerm = new Map<number, Set<string>>()
  /** term -> who saw which leader (for the report of a violation). */
  readonly sightings = new Map<number, string[]>()
  /** Latest status per host (undefined: did not answer the last poll). */
  readonly latest = new Map<Host, RaftStatus | undefined>()
  private observing = false
  private observer?: Promise<void>
  private stopped = false

  private readonly aclConfig: string

  constructor(
    readonly n: number,
    private readonly options: ClusterOptions = {},
  ) {
    this.dir = mkdtempSync(join(tmpdir(), 'pmc-chaos-'))
    this.net = new ChaosNet(n)
    this.hosts = Array.from({ length: n }, (_, k) => new Host(k + 1, this.dir))
    this.clusterKey = join(this.dir, 'cluster.key')
    const acl = options.acl ?? { enabled: false }
    this.aclConfig = join(this.dir, 'acl.json')
    writeFileSync(
      this.aclConfig,
      JSON.stringify({
        acl: acl.enabled
          ? { enabled: true, initialManagementToken: acl.managementToken }
          : { enabled: false },
      }),
      { mode: 0o600 },
    )
    if (acl.enabled) for (const h of this.hosts) h.token = acl.managementToken
    live.add(this)
  }

  /** Starts host h's agent with the cluster's settings and `extraArgs`. */
  private spawn(h: Host, seeds: string[], extraArgs: string[] = []): void {
    h.spawnAgent({
      clusterKey: this.clusterKey,
      seeds,
      ...(this.options.listen !== undefined ? { listen: this.options.listen(h) } : {}),
      extraArgs: ['--config', this.aclConfig, ...(this.options.agentArgs?.(h) ?? []), ...extraArgs],
    })
  }

  host(i: number): Host {
    return this.hosts[i - 1]!
  }

  byId(id: string): Host | undefined {
    return this.hosts.find((h) => h.id === id)
  }

  async start(o: StartOptions): Promise<void> {
    this.net.up()
    const key = execFileSync(process.execPath, [BIN, 'keygen'], { encoding: 'utf8' })
    writeFileSync(this.clusterKey, key, { mode: 0o600 })
    await Promise.all(this.hosts.map((h) => h.startForwarder()))
    // Watch leaders and terms from the first moment (a host not up yet just does not answer).
    this.startObserver()
    const seeds = [this.host(o.founders[0]!).seedAddr]
    const founders = o.founders.map((i) => this.host(i))
    const others = this.hosts.filter((h) => !founders.includes(h))
    const t0 = Date.now()
    for (const h of founders) {
      this.spawn(h, seeds, ['--bootstrap-expect', String(o.bootstrapExpect)])
      if (o.staggerMs) await sleep(o.staggerMs)
    }
    await Promise.all(founders.map((h) => h.ready()))
    log(`founders ${founders.map((h) => h.name).join(',')} answer HTTP after ${Date.now() - t0} ms`)
    if (o.waitLeaderBeforeOthers !== false) {
      await this.waitLeader(founders, 60_000)
      log(`leader elected among founders after ${Date.now() - t0} ms`)
    }
    for (const h of others) this.spawn(h, seeds)
    await Promise.all(others.map((h) => h.ready()))
  }

  /** Restarts a stopped host's agent with the seeds of the cluster (no bootstrap flag). */
  async restart(h: Host, extraArgs: string[] = []): Promise<void> {
    const seeds = this.hosts.filter((x) => x !== h).map((x) => x.seedAddr)
    this.spawn(h, seeds, extraArgs)
    await h.ready()
  }

  startObserver(everyMs = 100): void {
    if (this.observing) return
    this.observing = true
    this.observer = (async () => {
      while (this.observing) {
        const t = Date.now()
        await Promise.all(this.hosts.map((h) => this.pollOne(h)))
        await sleep(Math.max(10, everyMs - (Date.now() - t)))
      }
    })()
  }

  private async pollOne(h: Host): Promise<void> {
    if (!h.running) {
      this.latest.set(h, undefined)
      return
    }
    try {
      const st = await h.raftStatus(1_000)
      if (st.id) h.id = st.id
      this.latest.set(h, st)
      if (st.leader) {
        let s = this.leadersByTerm.get(st.term)
        if (s === undefined) {
          s = new Set()
          this.leadersByTerm.set(st.term, s)
          this.sightings.set(st.term, [])
        }
        if (!s.has(st.leader)) {
          s.add(st.leader)
          this.sightings
            .get(st.term)!
            .push(
              `${h.name} saw ${this.byId(st.leader)?.name ?? st.leader} at ${new Date().toISOString().slice(11, 23)}`,
            )
        }
      }
    } catch {
      this.latest.set(h, undefined)
    }
  }

  async stopObserver(): Promise<void> {
    this.observing = false
    await this.observer
  }

  termsWithTwoLeaders(): { count: number; details: string[] } {
    const details: string[] = []
    for (const [term, s] of this.leadersByTerm) {
      if (s.size > 1) details.push(`term ${term}: ${this.sightings.get(term)!.join('; ')}`)
    }
    return { count: details.length, details }
  }

  /** Waits until every given host names the same leader, one of `among` (default: them); returns it. */
  async waitLeader(
    hosts: Host[],
    timeoutMs: number,
    opts: { among?: Host[]; not?: Host } = {},
  ): Promise<Host> {
    const among = opts.among ?? hosts
    return waitFor(
      'one leader agreed by all',
      async () => {
        const sts = await Promise.all(hosts.map((h) => h.raftStatus(1_000).catch(() => undefined)))
        for (let k = 0; k < hosts.length; k++) if (sts[k]?.id) hosts[k]!.id = sts[k]!.id
        const leader = sts[0]?.leader
        if (!leader || !sts.every((s) => s?.leader === leader && s.term === sts[0]!.term)) return undefined
        const h = among.find((x) => x.id === leader)
        if (h === undefined || h === opts.not) return undefined
        return h
      },
      timeoutMs,
      50,
    )
  }

  /** Releases everything: agents, forwarders, delay processes, namespaces. Idempotent. */
  async stop(keepDir: boolean): Promise<void> {
    if (this.stopped) return
    this.stopped = true
    await this.stopObserver()
    await Promise.all(this.hosts.map((h) => h.kill('SIGKILL')))
    for (const h of this.hosts) h.close()
    this.stopSync(keepDir)
  }

  stopSync(keepDir: boolean): void {
    live.delete(this)
    this.observing = false
    killAll()
    this.net.down()
    if (!keepDir) rmSync(this.dir, { recursive: true, force: true })
  }
}
