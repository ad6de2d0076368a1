import type { PermissionCheck, PermissionNeed } from '../../acl/index.ts'
/**
 * The Raft module and the catalog, as the narrow views the identity layer's CA and leaf pieces
 * take (src/identity/connect/components.ts).
 */
import type { CaStateWriter, LeaderView, ServiceDirectory } from '../../identity/connect/components.ts'
import { isDnsLabel } from '../../identity/ca/spiffe.ts'
import type { PolicyCommand, PolicyResult } from '../../raft/policy/policy-commands.ts'
import type { PolicyStore } from '../../raft/policy/policy-store.ts'

/** The Raft node calls connect uses. */
export interface ConnectRaftNode {
  isLeader(): boolean
  status(): { term: number; conf: { voters: string[] } }
  transferLeadership(to: string): void
  on(type: 'leader:change', listener: () => void): () => void
}

/** What connect uses of the Raft module (RaftModule fits). */
export interface ConnectRaft {
  readonly store: PolicyStore
  readonly raft: ConnectRaftNode | undefined
  leaderId(): string | undefined
  write(
    cmd: PolicyCommand,
    options: { signal: AbortSignal },
  ): Promise<{ index: number; result: PolicyResult }>
  linearizableRead(options: { signal: AbortSignal }): Promise<{ index: number }>
  /**
   * Whether a token another agent forwarded (none: anonymous) grants `needed` on the committed ACL
   * state; a refusal otherwise (RaftModule.authorizeRequest). Absent (tests): granted.
   */
  authorizeRequest?(
    token: string | undefined,
    needed: readonly [PermissionCheck, PermissionNeed],
  ): { code: string; message: string } | undefined
}

/** What connect uses of the catalog (the gossip-fed service catalog). */
export interface ConnectCatalog {
  services(): Record<string, unknown>
  health(service: string): readonly { node: { peerId: string } }[]
  members(): readonly { peerId: string; status: string }[]
  /** Returns the unsubscribe. */
  on(type: 'catalog:change', listener: () => void): () => void
}

export function raftLeaderView(raft: ConnectRaft, selfId: () => string): LeaderView {
  return {
    selfId,
    isLeader: () => raft.raft?.isLeader() === true,
    leaderId: () => raft.leaderId(),
    term: () => raft.raft?.status().term ?? 0,
    voters: () => raft.raft?.status().conf.voters ?? [selfId()],
    catchUp: async (signal) => {
      await raft.linearizableRead({ signal })
    },
    transferLeadership: (to) => raft.raft?.transferLeadership(to),
  }
}

export function raftCaWriter(raft: ConnectRaft): CaStateWriter {
  return {
    async setRoots(change, options) {
      const { result } = await raft.write({ op: 'ca.setRoots', ...change }, options)
      return result.ok ? { ok: true } : result
    },
  }
}

export function catalogDirectory(catalog: () => ConnectCatalog): ServiceDirectory {
  const isRegisteredOn = (peerId: string, service: string): boolean =>
    catalog()
      .health(service)
      .some((e) => e.node.peerId === peerId)
  return {
    isRegisteredOn,
    servicesOf: (peerId) =>
      Object.keys(catalog().services()).filter((name) => isDnsLabel(name) && isRegisteredOn(peerId, name)),
    aliveMembers: () =>
      catalog()
        .members()
        .filter((m) => m.status === 'alive')
        .map((m) => m.peerId),
  }
}

/**
 * The directory without the instances their agents may not publish (issue #12). The catalog
 * already leaves out other agents' ones; this also leaves out this agent's own, which its catalog
 * keeps (it asks for their leaves, and is refused).
 */
export function entitledDirectory(
  directory: ServiceDirectory,
  entitlement: { mayPublish(peerId: string, service: string): boolean },
): ServiceDirectory {
  return {
    isRegisteredOn: (peerId, service) =>
      directory.isRegisteredOn(peerId, service) && entitlement.mayPublish(peerId, service),
    servicesOf: (peerId) => directory.servicesOf(peerId).filter((s) => entitlement.mayPublish(peerId, s)),
    aliveMembers: () => directory.aliveMembers(),
  }
}
