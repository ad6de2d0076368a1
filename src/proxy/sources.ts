/**
 * In-memory implementations of the data plane's inputs. The agent can feed them from the
 * catalog, the leaf rotator and the Raft-held intentions (`set(...)` on every change); tests use
 * them directly.
 */
import { TypedEmitter } from '../common/events.ts'
import { type IntentionAction, IntentionIndex } from './intentions.ts'
import type {
  AuthorizationDecision,
  Authorizer,
  CertificateSource,
  CertificateSourceEvents,
  Endpoint,
  EndpointSource,
  EndpointSourceEvents,
  Unsubscribe,
  ServiceCertificate,
} from './types.ts'

/** A certificate held in memory; `set` replaces it and emits `cert:rotated`. */
export class StaticCertificateSource implements CertificateSource {
  private cert: ServiceCertificate | undefined
  private readonly events = new TypedEmitter<CertificateSourceEvents>()

  constructor(initial?: ServiceCertificate) {
    this.cert = initial
  }

  current(): ServiceCertificate | undefined {
    return this.cert
  }

  set(cert: ServiceCertificate): void {
    this.cert = cert
    this.events.emit('cert:rotated', cert)
  }

  on(type: 'cert:rotated', listener: (cert: ServiceCertificate) => void): Unsubscribe {
    return this.events.on(type, listener)
  }
}

/** A healthy set held in memory; `set` replaces it and emits `endpoints:change`. */
export class StaticEndpointSource implements EndpointSource {
  private endpoints: readonly Endpoint[]
  private readonly events = new TypedEmitter<EndpointSourceEvents>()

  constructor(initial: readonly Endpoint[] = []) {
    this.endpoints = initial
  }

  current(): readonly Endpoint[] {
    return this.endpoints
  }

  set(endpoints: readonly Endpoint[]): void {
    this.endpoints = [...endpoints]
    this.events.emit('endpoints:change', this.endpoints)
  }

  on(type: 'endpoints:change', listener: (endpoints: readonly Endpoint[]) => void): Unsubscribe {
    return this.events.on(type, listener)
  }
}

/**
 * An `Authorizer` over an `IntentionIndex` (built once per committed policy). `update` swaps
 * the index and emits `authz:change`, so inbound listeners close connections now denied.
 */
export class IntentionAuthorizer implements Authorizer {
  private index: IntentionIndex
  private readonly events = new TypedEmitter<{ 'authz:change': undefined }>()

  constructor(index: IntentionIndex = new IntentionIndex([])) {
    this.index = index
  }

  /** From raw intentions (validated; throws the intention errors on bad input). */
  static from(intentions: readonly unknown[], defaultAction: IntentionAction = 'deny'): IntentionAuthorizer {
    return new IntentionAuthorizer(new IntentionIndex(intentions, defaultAction))
  }

  decide(source: string, destination: string): AuthorizationDecision {
    const d = this.index.decide(source, destination)
    return d.permissions !== undefined ? 'l7' : d.action
  }

  /** The index in force now (request gates read it per request). */
  current(): IntentionIndex {
    return this.index
  }

  update(index: IntentionIndex): void {
    this.index = index
    this.events.emit('authz:change', undefined)
  }

  on(type: 'authz:change', listener: () => void): Unsubscribe {
    return this.events.on(type, listener)
  }
}
