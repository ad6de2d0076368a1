import { generateKeyPairSync, type KeyObject } from 'node:crypto'
import { publicKeyFromRaw } from '@libp2p/crypto/keys'
import { peerIdFromPublicKey } from '@libp2p/peer-id'
import pino from 'pino'
import type { ConnectCatalog, ConnectRaft, ConnectRaftNode } from '../../../src/node/connect/adapters.ts'
import type { PolicySigner, VoterKeyGrant } from '../../../src/node/raft/components.ts'
import { ConnectModule } from '../../../src/node/connect/connect-module.ts'
import {
  encodePolicyCommand,
  type PolicyCommand,
  type PolicyResult,
  PolicyStore,
} from '../../../src/raft/policy/policy-store.ts'

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
export class FakeRaft implements ConnectRaft {
  readonly store = new PolicyStore(undefined, { verifySignatures: true })
  readonly writes: PolicyCommand[] = []
  private nextIndex = 1
  leader: string | undefined
  readonly raft: ConnectRaftNode

  constructor(readonly self: string) {
    this.leader = self
    this.raft = {
      isLeader: () => this.leader === this.self,
      on: () => () => {},
      status: () => ({ term: 1, conf: { voters: [this.self] } }),
      transferLeadership: () => {},
    }
  }

  /** Signs what this fake appends, as the Raft module's PolicySigner does (connect's custody). */
  signer: PolicySigner | undefined
  /** What autopilot awaits before a member becomes a voter (connect's CA manager). */
  keyGrant: VoterKeyGrant | undefined

  leaderId(): string | undefined {
    return this.leader
  }

  async write(cmd: PolicyCommand): Promise<{ index: number; result: PolicyResult }> {
    this.writes.push(cmd)
    const index = this.nextIndex++
    const cmdBytes = encodePolicyCommand(cmd)
    const data = this.signer?.sealEntry(index, undefined, cmdBytes) ?? cmdBytes
    const result = this.store.apply({ term: 1, index, type: 'normal', data })
    return { index, result }
  }

  async linearizableRead(): Promise<{ index: number }> {
    return { index: this.store.index }
  }
}

/** A stand-in for the catalog: `services[peerId]` lists the service names that node registers. */
export class FakeCatalog implements ConnectCatalog {
  constructor(readonly services_: Record<string, string[]>) {}

  services(): Record<string, unknown> {
    return Object.fromEntries(Object.values(this.services_).flatMap((names) => names.map((n) => [n, []])))
  }

  health(name: string): { node: { peerId: string } }[] {
    return Object.entries(this.services_)
      .filter(([, names]) => names.includes(name))
      .map(([peerId]) => ({ node: { peerId } }))
  }

  members(): { peerId: string; status: string }[] {
    return Object.keys(this.services_).map((peerId) => ({ peerId, status: 'alive' }))
  }

  on(): () => void {
    return () => {}
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
    raft,
    { catalog: new FakeCatalog(services) },
    { selfId: self.id, nodeKey: self.signingKey, trustDomain: 'test.peermesh', ...options },
  )
  raft.store.onChange(() => connect.refreshState())
  // As create-agent wires them: custody signs for Raft, the CA manager grants keys to new voters.
  raft.signer = connect.custody
  raft.keyGrant = connect.caManager
  return { connect, raft, self }
}
