/**
 * The sidecar's own health check of a local service instance (Consul's "Connect Sidecar
 * Listening"): when a sidecar cannot bind its inbound port or an upstream's local port, the
 * instance carries an extra critical check, named with the reason ("port 21000 (inbound) is in
 * use"), in this node's catalog payload — so no other node sends it traffic — until its
 * definition changes and the sidecar starts, or it is deregistered. A healthy sidecar adds no
 * check: the payload of every working service stays as it was.
 */
import { TypedEmitter, type Unsubscribe } from '../../common/events.ts'
import type { TtlCheckDefinition } from '../catalog/service-definition.ts'
import type { SidecarHealth } from './sidecar-module.ts'

/** The check's id is `sidecar:<serviceId>`. */
export const SIDECAR_CHECK_PREFIX = 'sidecar:'
/** Consul's name for the sidecar check; the reason follows. */
const CHECK_NAME = 'Connect Sidecar Listening'
/** A TTL the check never sees renewed: it is critical from the start and stays so. */
const TTL_MS = 86_400_000

export class SidecarChecks implements SidecarHealth {
  private readonly failures = new Map<string, string>()
  private readonly events = new TypedEmitter<{ 'sidecar-checks:change': undefined }>()

  setSidecarStatus(serviceId: string, status: 'passing' | 'critical' | undefined, output: string): void {
    const before = this.failures.get(serviceId)
    if (status === 'critical') this.failures.set(serviceId, output.slice(0, 200))
    else this.failures.delete(serviceId)
    if (before !== this.failures.get(serviceId)) this.events.emit('sidecar-checks:change', undefined)
  }

  /** The extra checks of a local service instance (none while its sidecar is fine). */
  checksFor(serviceId: string): TtlCheckDefinition[] {
    const failure = this.failures.get(serviceId)
    if (failure === undefined) return []
    return [
      {
        id: `${SIDECAR_CHECK_PREFIX}${serviceId}`,
        name: `${CHECK_NAME}: ${failure}`,
        kind: 'ttl',
        ttlMs: TTL_MS,
        status: 'critical',
        notes: failure,
      },
    ]
  }

  on(type: 'sidecar-checks:change', listener: () => void): Unsubscribe {
    return this.events.on(type, listener)
  }
}
