import type { Events, Unsubscribe } from '../../common/events.ts'
import type { LeafCredentials } from '../../identity/connect/leaf-rotator.ts'
import type { CertificateSource, IntentionIndex, ServiceCertificate, SplitConfig } from '../../proxy/index.ts'
// From its own module: the proxy's index would load the whole data plane with the agent.
import { IntentionAuthorizer } from '../../proxy/sources.ts'
import type { ConfigEntry } from '../../raft/policy/policy-store.ts'
import type { MeshSecurity } from '../sidecars/sidecar-module.ts'
import type { ConnectEvents } from './events.ts'

/** What the sidecars' view reads of the connect module. */
export interface MeshConnectView {
  readonly events: Events<ConnectEvents>
  currentLeaf(service: string): LeafCredentials | undefined
  trustedRootsPem(): string[]
  activeTrustDomain(): string | undefined
  leaf(service: string, options: { signal: AbortSignal }): Promise<LeafCredentials | undefined>
  intentionIndex(): IntentionIndex
  /** Whether this agent may publish `service` (issue #12); absent: yes. */
  mayPublishHere?(service: string): boolean
}

/** The policy store's config entries, for service-splitter. */
export interface SplitEntrySource {
  getConfigEntry(kind: string, name: string): ConfigEntry | undefined
  listConfigEntries(kind?: string): ConfigEntry[]
  onChange(listener: (index: number) => void): () => void
  /** Raft index of the last change to an entry of `kind`; absent: every change re-lists. */
  configModifyIndex?(kind: string): number
}

/** A local service's leaf, kept fresh by the connect module's rotator, with every trusted root. */
class ConnectCertificateSource implements CertificateSource {
  constructor(
    private readonly connect: MeshConnectView,
    private readonly service: string,
    private readonly track: (off: Unsubscribe) => Unsubscribe,
  ) {}

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

  on(_type: 'cert:rotated', listener: (cert: ServiceCertificate) => void): Unsubscribe {
    const fire = (): void => {
      const c = this.current()
      if (c !== undefined) listener(c)
    }
    const offs = [
      this.connect.events.on('cert:rotated', (e) => {
        if (e.service === this.service) fire()
      }),
      // New or dropped roots change what the listeners must trust, even with the same leaf.
      this.connect.events.on('ca:change', fire),
    ]
    return this.track(() => {
      for (const off of offs) off()
    })
  }
}

/**
 * The sidecars' view of the mesh's security state, from the connect module (CA, leaves,
 * intentions) and the Raft policy store (service-splitter config entries). `stop()` releases every
 * subscription it and its certificate sources hold.
 */
export class ConnectMeshSecurity implements MeshSecurity {
  private readonly authz: IntentionAuthorizer
  private readonly sources = new Map<string, ConnectCertificateSource>()
  private readonly splitListeners = new Set<(destination: string) => void>()
  private splitKeys = new Map<string, string>()
  private splitStamp: number | undefined
  private readonly subscriptions = new Set<Unsubscribe>()

  constructor(
    private readonly connect: MeshConnectView,
    private readonly splits: SplitEntrySource,
  ) {
    this.authz = new IntentionAuthorizer(connect.intentionIndex())
    this.track(connect.events.on('intention:change', () => this.authz.update(connect.intentionIndex())))
    this.track(splits.onChange(() => this.checkSplits()))
  }

  stop(): void {
    for (const off of [...this.subscriptions]) off()
  }

  /** Keeps `off` until it is called or `stop()` calls it; returns it, made idempotent. */
  private readonly track = (off: Unsubscribe): Unsubscribe => {
    const once = (): void => {
      if (this.subscriptions.delete(once)) off()
    }
    this.subscriptions.add(once)
    return once
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

  entitled(service: string): boolean {
    return this.connect.mayPublishHere?.(service) ?? true
  }

  certificates(service: string): CertificateSource {
    let s = this.sources.get(service)
    if (s === undefined) {
      s = new ConnectCertificateSource(this.connect, service, this.track)
      this.sources.set(service, s)
    }
    return s
  }

  authorizer(): IntentionAuthorizer {
    return this.authz
  }

  intentionIndex(): IntentionIndex {
    return this.authz.current()
  }

  /**
   * The Consul-shaped `service-splitter` entry for a destination (`{ splits: [{ weight,
   * serviceSubset }] }`) as the proxy's split: each subset is the instances with that tag.
   */
  split(destination: string): SplitConfig | undefined {
    const entry = this.splits.getConfigEntry('service-splitter', destination)
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
    return () => {
      this.splitListeners.delete(listener)
    }
  }

  private checkSplits(): void {
    // Called after every applied batch: the splitters are listed only when one may have changed.
    const stamp = this.splits.configModifyIndex?.('service-splitter')
    if (stamp !== undefined && stamp === this.splitStamp) return
    this.splitStamp = stamp
    const next = new Map<string, string>()
    for (const e of this.splits.listConfigEntries('service-splitter')) next.set(e.name, String(e.modifyIndex))
    const changed = new Set<string>()
    for (const [name, key] of next) if (this.splitKeys.get(name) !== key) changed.add(name)
    for (const name of this.splitKeys.keys()) if (!next.has(name)) changed.add(name)
    this.splitKeys = next
    for (const name of changed) for (const l of this.splitListeners) l(name)
  }
}
