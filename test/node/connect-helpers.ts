import pino from 'pino'
import type { CatalogModule } from '../../src/node/catalog-module.ts'
import { ConnectModule } from '../../src/node/connect-module.ts'
import type { RaftModule } from '../../src/node/raft-module.ts'
import { encodePolicyCommand, type PolicyCommand, PolicyStore } from '../../src/raft/policy-store.ts'

export const silentLog = pino({ level: 'silent' })

/**
 * A stand-in for RaftModule: one in-memory PolicyStore that applies writes at once, as a
 * one-member cluster whose leader is `self` (or nobody when `leader` is set to undefined).
 */
export class FakeRaft {
  readonly store = new PolicyStore()
  readonly writes: PolicyCommand[] = []
  private nextIndex = 1
  leader: string | undefined

  constructor(readonly self: string) {
    this.leader = self
  }

  get raft(): { isLeader(): boolean; on(): () => void } {
    return { isLeader: () => this.leader === this.self, on: () => () => {} }
  }

  leaderId(): string | undefined {
    return this.leader
  }

  async write(cmd: PolicyCommand): Promise<{ index: number; result: ReturnType<PolicyStore['apply']> }> {
    this.writes.push(cmd)
    const index = this.nextIndex++
    const result = this.store.apply({ term: 1, index, type: 'normal', data: encodePolicyCommand(cmd) })
    return { index, result }
  }

  async linearizableRead(): Promise<{ index: number }> {
    return { index: this.store.index }
  }
}

/** A stand-in for the catalog: `services[peerId]` lists the service names that node registers. */
export class FakeCatalog {
  constructor(readonly services: Record<string, string[]>) {}

  get catalog(): unknown {
    const services = this.services
    return {
      services: () =>
        Object.fromEntries(Object.values(services).flatMap((names) => names.map((n) => [n, []]))),
      health: (name: string) =>
        Object.entries(services)
          .filter(([, names]) => names.includes(name))
          .map(([peerId]) => ({ node: { peerId, name: peerId, address: '127.0.0.1' } })),
      members: () => Object.keys(services).map((peerId) => ({ peerId, status: 'alive' })),
      on: () => {},
      off: () => {},
    }
  }
}

export function connectWithFakes(
  self: string,
  services: Record<string, string[]>,
  options: { signingRatePerSecond?: number; leafTtlMs?: number } = {},
): { connect: ConnectModule; raft: FakeRaft } {
  const raft = new FakeRaft(self)
  const connect = new ConnectModule(
    raft as unknown as RaftModule,
    new FakeCatalog(services) as unknown as CatalogModule,
    { selfId: self, trustDomain: 'test.peermesh', ...options },
  )
  raft.store.onChange(() => connect.refreshState())
  return { connect, raft }
}
