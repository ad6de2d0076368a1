import { generateKeyPairSync, type KeyObject } from 'node:crypto'
import { publicKeyFromRaw } from '@libp2p/crypto/keys'
import { peerIdFromPublicKey } from '@libp2p/peer-id'
import type { CaState } from '../../../src/identity/connect/ca-state.ts'
import type {
  CaStateSource,
  ConnectLog,
  LeaderView,
  ServiceDirectory,
} from '../../../src/identity/connect/components.ts'

/** A real Ed25519 node identity (peer id and node key), made synchronously. */
export function nodeIdentity(): { id: string; signingKey: KeyObject } {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519')
  const raw = publicKey.export({ format: 'der', type: 'spki' }).subarray(12)
  return { id: peerIdFromPublicKey(publicKeyFromRaw(raw)).toString(), signingKey: privateKey }
}

/** A CA state the test sets directly. */
export class FakeCa implements CaStateSource {
  state: CaState = { roots: [], active: undefined, modifyIndex: 0 }
  caState(): CaState {
    return this.state
  }
}

/** Leadership the test sets directly; `catchUp` succeeds unless `caughtUp` is false. */
export class FakeLeader implements LeaderView {
  leading = true
  caughtUp = true
  currentTerm = 1
  constructor(readonly self: string) {}
  selfId = (): string => this.self
  isLeader = (): boolean => this.leading
  leaderId = (): string | undefined => (this.leading ? this.self : undefined)
  term = (): number => this.currentTerm
  voters = (): string[] => [this.self]
  catchUp = async (): Promise<void> => {
    if (!this.caughtUp) throw new Error('no quorum')
  }
  transferLeadership = (): void => {}
}

/** `services[peerId]`: the services each agent registers. */
export class FakeDirectory implements ServiceDirectory {
  constructor(readonly services: Record<string, string[]>) {}
  servicesOf = (peerId: string): string[] => this.services[peerId] ?? []
  isRegisteredOn = (peerId: string, service: string): boolean => this.servicesOf(peerId).includes(service)
  aliveMembers = (): string[] => Object.keys(this.services)
}

export const quietLog: ConnectLog = { debug() {}, info() {}, warn() {}, error() {} }
