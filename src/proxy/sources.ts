/**
 * In-memory implementations of the data plane's inputs. The agent can feed them from the
 * catalog, the leaf rotator and the Raft-held intentions (`set(...)` on every change); tests use
 * them directly.
 */
import { type IntentionAction, IntentionIndex } from './intentions.ts'
import type {
  AuthorizationDecision,
  Authorizer,
  CertificateSource,
  Endpoint,
  EndpointSource,
  ServiceCertificate,
  Unsubscribe,
} from './types.ts'

class Listeners<T> {
  private readonly set = new Set<(value: T) => void>()
  add(listener: (value: T) => void): Unsubscribe {
    this.set.add(listener)
    return () => {
      this.set.delete(listener)
    }
  }
  emit(value: T): void {
    for (const l of [...this.set]) l(value)
  }
}

/** A certificate held in memory; `set` replaces it and emits `cert:rotated`. */
export class StaticCertificateSource implements CertificateSource {
  private cert: ServiceCertificate | undefined
  private readonly listeners = new Listeners<ServiceCertificate>()

  constructor(initial?: ServiceCertificate) {
    this.cert = initial
  }

  current(): ServiceCertificate | undefined {
    return this.cert
  }

  set(cert: ServiceCertificate): void {
    this.cert = cert
    this.listeners.emit(cert)
  }

  on(_type: 'cert:rotated', listener: (cert: ServiceCertificate) => void): Unsubscribe {
    return this.listeners.add(listener)
  }
}

/** A healthy set held in memory; `set` replaces it and emits `endpoints:change`. */
export class StaticEndpointSource implements EndpointSource {
  private endpoints: readonly Endpoint[]
  private readonly listeners = new Listeners<readonly Endpoint[]>()

  constructor(initial: readonly Endpoint[] = []) {
    this.endpoints = initial
  }

  current(): readonly Endpoint[] {
    return this.endpoints
  }

  set(endpoints: readonly Endpoint[]): void {
    this.endpoints = [...endpoints]
    this.listeners.emit(this.endpoints)
  }

  on(_type: 'endpoints:change', listener: (endpoints: readonly Endpoint[]) => void): Unsubscribe {
    return this.listeners.add(listener)
  }
}

/**
 * An `Authorizer` over an `IntentionIndex` (built once per committed policy). `update` swaps
 * the index and emits `authz:change`, so inbound listeners close connections now denied.
 */
export class IntentionAuthorizer implements Authorizer {
  private index: IntentionIndex
  private readonly listeners = new Listeners<void>()

  constructor(index: IntentionIndex = new IntentionIndex([])) {
    this.index = index
  }

  /** From raw intentions (validated; throws the intention errors on bad input). */
  static from(intentions: readonly unknown[], defaultAction: IntentionAction = 'deny'): IntentionAuthorizer {
    return new IntentionAuthorizer(new IntentionIndex(intentions, defaultAction))
  }

  decide(source: string, destination: string): AuthorizationDecision {
    return this.index.decide(source, destination).action
  }

  update(index: IntentionIndex): void {
    this.index = index
    this.listeners.emit()
  }

  on(_type: 'authz:change', listener: () => void): Unsubscribe {
    return this.listeners.add(listener)
  }
}
