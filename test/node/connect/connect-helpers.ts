import { generateKeyPairSync, type KeyObject } from 'node:crypto'
import { publicKeyFromRaw } from '@libp2p/crypto/keys'
import { peerIdFromPublicKey } from '@libp2p/peer-id'
import pino from 'pino'
import type { CatalogModule } from '../../../src/node/catalog/catalog-module.ts'
import { ConnectModule } from '../../../src/node/connect/connect-module.ts'
import type { RaftModule } from '../../../src/node/raft/raft-module.ts'
import {
  encodePolicyCommand,
  type PolicyCommand,
  PolicyStore,
} from '../../../src/raft/policy/policy-store.ts'
import type { EntrySealer } from '../../../src/raft/types.ts'

export const silentLog = pino({ level: 'silent' })

/** A real Ed25519 node identity (peer id and node key), made synchronously. */
export function testIdentity(): { id: string; signingKey: KeyObject } {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519')
  const raw = publicKey.export({ format: 'der', type: 'spki' }).subarray(12)
  return { id: peerIdFromPublicKey(publicKeyFromRaw(raw)).toString(), signingKey: privateKey }
}

/**
 * A stand-in for RaftModule: one in-memory PolicyStore (verifying signatures, as the agent's
 * does) that applies writes at once, as a one-voter cluster whose leader is `self` (or nobody
 * when `leader` is set to undefined). Entries go through the sealer the connect module attaches.
 */
export class FakeRaft {
  readonly store = new PolicyStore(undefined, { verifySignatures: true })
  readonly writes: PolicyCommand[] = []
  private nextIndex = 1
  leader: string | undefined
  private readonly node: {
    isLeader(): boolean
    on(): () => void
    status(): { term: number; conf: { voters: string[]; learners: string[] } }
    transferLeadership(to: string): void
    sealEntry?: EntrySealer
  }

  constructor(readonly self: string) {
    this.leader = self
    this.node = {
      isLeader: () => this.leader === this.self,
      on: () => () => {},
      status: () => ({ term: 1, conf: { voters: [this.self], learners: [] } }),
      transferLeadership: () => {},
    }
  }

  get raft(): FakeRaft['node'] {
    return this.node
  }

  /** What the connect module awaits before a member becomes a voter (see RaftModule). */
  voterGate?: (peerId: string, signal: AbortSignal) => Promise<void>

  setVoterGate(gate: FakeRaft['voterGate']): void {
    this.voterGate = gate
  }

  setSnapshotSigner(): void {}

  setEntrySealer(sealer: EntrySealer | undefined): void {
    this.node.sealEntry = sealer
  }

  leaderId(): string | undefined {
    return this.leader
  }

  async write(cmd: PolicyCommand): Promise<{ index: number; result: ReturnType<PolicyStore['apply']> }> {
    this.writes.push(cmd)
    const index = this.nextIndex++
    const cmdBytes = encodePolicyCommand(cmd)
    const data = this.node.sealEntry?.(index, undefined, cmdBytes) ?? cmdBytes
    const result = this.store.apply({ term: 1, index, type: 'normal', data })
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

/** A connect module on fakes, leading a one-voter cluster as a fresh identity (`self`). */
export function connectWithFakes(
  services: Record<string, string[]>,
  options: { signingRatePerSecond?: number; leafTtlMs?: number } = {},
): { connect: ConnectModule; raft: FakeRaft; self: { id: string; signingKey: KeyObject } } {
  const self = testIdentity()
  const raft = new FakeRaft(self.id)
  const connect = new ConnectModule(
    raft as unknown as RaftModule,
    new FakeCatalog(services) as unknown as CatalogModule,
    { selfId: self.id, nodeKey: self.signingKey, trustDomain: 'test.peermesh', ...options },
  )
  raft.store.onChange(() => connect.refreshState())
  connect.attachToRaft()
  return { connect, raft, self }
}
