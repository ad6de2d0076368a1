import { EventEmitter } from 'node:events'
import type { Events } from '../../common/events.ts'
import type { AgentEvents } from '../agent/events.ts'
import {
  type CertificateSource,
  IntentionAuthorizer,
  type ServiceCertificate,
  type SplitConfig,
  type Unsubscribe,
} from '../../proxy/index.ts'
import type { ConnectModule } from './connect-module.ts'
import type { RaftModule } from '../raft/raft-module.ts'
import type { MeshSecurity } from '../sidecars/sidecar-module.ts'

type Bus = Events<AgentEvents>

/** A local service's leaf, kept fresh by the connect module's rotator, with every trusted root. */
class ConnectCertificateSource implements CertificateSource {
  private readonly events = new EventEmitter()

  constructor(
    private readonly connect: ConnectModule,
    private readonly service: string,
    bus: Bus,
  ) {
    const fire = (): void => {
      const c = this.current()
      if (c !== undefined) this.events.emit('cert:rotated', c)
    }
    bus.on('cert:rotated', (e: { service: string }) => {
      if (e.service === service) fire()
    })
    // New or dropped roots change what the listeners must trust, even with the same leaf.
    bus.on('ca:change', fire)
  }

  current(): ServiceCertificate | undefined {
    const leaf = this.connect.currentLeaf(this.service)
    if (leaf === undefined) return undefined
    return {
      certPem: leaf.certPem,
      keyPem: leaf.keyPem,
      intermediatesPem: leaf.intermediatesPem,
      rootsPem: this.connect.trustedRootsPem(),
    }
  }

  on(type: 'cert:rotated', listener: (cert: ServiceCertificate) => void): Unsubscribe {
    this.events.on(type, listener)
    return () => this.events.off(type, listener)
  }
}

/**
 * The sidecars' view of the mesh's security state, from the connect module (CA, leaves,
 * intentions) and the Raft policy store (service-splitter config entries).
 */
export class ConnectMeshSecurity implements MeshSecurity {
  private readonly authz: IntentionAuthorizer
  private readonly sources = new Map<string, ConnectCertificateSource>()
  private readonly splitListeners = new Set<(destination: string) => void>()
  private splitKeys = new Map<string, string>()

  constructor(
    private readonly connect: ConnectModule,
    private readonly raft: RaftModule,
    private readonly bus: Bus,
  ) {
    this.authz = new IntentionAuthorizer(connect.intentionIndex())
    bus.on('intention:change', () => this.authz.update(connect.intentionIndex()))
    raft.store.onChange(() => this.checkSplits())
  }

  trustDomain(): string {
    const td = this.connect.activeTrustDomain()
    if (td === undefined) throw new Error('the mesh CA is not ready')
    return td
  }

  /** Resolves once the CA exists and the service has its first leaf (or the signal fires). */
  async ready(service: string, signal: AbortSignal): Promise<boolean> {
    return (await this.connect.leaf(service, { signal })) !== undefined
  }

  certificates(service: string): CertificateSource {
    let s = this.sources.get(service)
    if (s === undefined) {
      s = new ConnectCertificateSource(this.connect, service, this.bus)
      this.sources.set(service, s)
    }
    return s
  }

  authorizer(): IntentionAuthorizer {
    return this.authz
  }

  /**
   * The Consul-shaped `service-splitter` entry for a destination (`{ splits: [{ weight,
   * serviceSubset }] }`) as the proxy's split: each subset is the instances with that tag.
   */
  split(destination: string): SplitConfig | undefined {
    const entry = this.raft.store.getConfigEntry('service-splitter', destination)
    const splits = (
      entry?.value as { splits?: { weight: number; service?: string; serviceSubset?: string }[] }
    )?.splits
    if (splits === undefined) return undefined
    const out = splits
      .filter((s) => (s.service === undefined || s.service === destination) && s.serviceSubset !== undefined)
      .map((s) => ({ weight: s.weight, subset: s.serviceSubset! }))
    return out.length > 0 ? out : undefined
  }

  onSplitChange(listener: (destination: string) => void): Unsubscribe {
    this.splitListeners.add(listener)
    return () => this.splitListeners.delete(listener)
  }

  private checkSplits(): void {
    const next = new Map<string, string>()
    for (const e of this.raft.store.listConfigEntries('service-splitter'))
      next.set(e.name, String(e.modifyIndex))
    const changed = new Set<string>()
    for (const [name, key] of next) if (this.splitKeys.get(name) !== key) changed.add(name)
    for (const name of this.splitKeys.keys()) if (!next.has(name)) changed.add(name)
    this.splitKeys = next
    for (const name of changed) for (const l of this.splitListeners) l(name)
  }
}
