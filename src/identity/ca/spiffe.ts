/**
 * SPIFFE ids for mesh services: `spiffe://<trust-domain>/svc/<service>`.
 *
 * A service name is one DNS label (RFC 1123, lowercase only): a-z, 0-9 and '-', 1–63 characters,
 * no leading or trailing '-'. A trust domain is one or more such labels joined by '.', at most 253
 * characters. Upper case is rejected rather than folded, so that one service has exactly one
 * spelling and string comparison of ids is identity comparison.
 */
import { InvalidServiceNameError, InvalidSpiffeIdError, InvalidTrustDomainError } from './errors.ts'

export const SPIFFE_SCHEME = 'spiffe://'
/** Path segment that marks a service identity (Consul uses `/ns/<ns>/dc/<dc>/svc/<name>`). */
export const SERVICE_PATH_PREFIX = '/svc/'
/** Longest trust domain we accept: a DNS name's limit (RFC 1035 §2.3.4). */
export const MAX_TRUST_DOMAIN_LENGTH = 253
/** Longest SPIFFE id we parse (the SPIFFE ID spec's limit for URIs in SVIDs). */
export const MAX_SPIFFE_ID_LENGTH = 2048

const DNS_LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/

export interface ServiceSpiffeId {
  trustDomain: string
  service: string
}

/** True when `value` is a lowercase DNS label (a-z0-9 and '-', 1–63, no '-' at either end). */
export function isDnsLabel(value: unknown): value is string {
  return typeof value === 'string' && DNS_LABEL.test(value)
}

/** True when `value` is a valid trust domain (dot-separated DNS labels, ≤ 253 chars). */
export function isTrustDomain(value: unknown): value is string {
  if (typeof value !== 'string' || value.length === 0 || value.length > MAX_TRUST_DOMAIN_LENGTH) return false
  return value.split('.').every((label) => DNS_LABEL.test(label))
}

/** Returns `name` if it is a valid service name, else throws `InvalidServiceNameError`. */
export function validateServiceName(name: unknown): string {
  if (!isDnsLabel(name)) {
    throw new InvalidServiceNameError(
      `service name must be a lowercase DNS label (a-z, 0-9, '-', 1-63 chars, no '-' at either end): ${describe(name)}`,
    )
  }
  return name
}

/** Returns `trustDomain` if it is valid, else throws `InvalidTrustDomainError`. */
export function validateTrustDomain(trustDomain: unknown): string {
  if (!isTrustDomain(trustDomain)) {
    throw new InvalidTrustDomainError(
      `trust domain must be lowercase DNS labels joined by '.', at most ${MAX_TRUST_DOMAIN_LENGTH} chars: ${describe(trustDomain)}`,
    )
  }
  return trustDomain
}

/** `spiffe://<trust-domain>/svc/<service>`, after validating both parts. */
export function serviceSpiffeId(trustDomain: string, service: string): string {
  return `${SPIFFE_SCHEME}${validateTrustDomain(trustDomain)}${SERVICE_PATH_PREFIX}${validateServiceName(service)}`
}

/** `spiffe://<trust-domain>`: the id a CA certificate carries for its trust domain. */
export function trustDomainSpiffeId(trustDomain: string): string {
  return `${SPIFFE_SCHEME}${validateTrustDomain(trustDomain)}`
}

/**
 * Parses a service SPIFFE id. Anything else — another scheme, a different path, a query,
 * fragment, port, user info, percent-encoding or trailing slash — throws `InvalidSpiffeIdError`.
 */
export function parseServiceSpiffeId(uri: unknown): ServiceSpiffeId {
  if (typeof uri !== 'string' || uri.length > MAX_SPIFFE_ID_LENGTH || !uri.startsWith(SPIFFE_SCHEME)) {
    throw new InvalidSpiffeIdError(`not a spiffe:// URI: ${describe(uri)}`)
  }
  const rest = uri.slice(SPIFFE_SCHEME.length)
  const slash = rest.indexOf('/')
  if (slash < 0) throw new InvalidSpiffeIdError(`SPIFFE id names no service: ${describe(uri)}`)
  const trustDomain = rest.slice(0, slash)
  const path = rest.slice(slash)
  if (!isTrustDomain(trustDomain)) {
    throw new InvalidSpiffeIdError(`SPIFFE id has an invalid trust domain: ${describe(uri)}`)
  }
  if (!path.startsWith(SERVICE_PATH_PREFIX)) {
    throw new InvalidSpiffeIdError(`SPIFFE id path is not ${SERVICE_PATH_PREFIX}<service>: ${describe(uri)}`)
  }
  const service = path.slice(SERVICE_PATH_PREFIX.length)
  if (!isDnsLabel(service)) {
    throw new InvalidSpiffeIdError(`SPIFFE id has an invalid service name: ${describe(uri)}`)
  }
  return { trustDomain, service }
}

/** Parses `spiffe://<trust-domain>` (no path), as carried by CA certificates. */
export function parseTrustDomainSpiffeId(uri: unknown): string {
  if (typeof uri !== 'string' || !uri.startsWith(SPIFFE_SCHEME)) {
    throw new InvalidSpiffeIdError(`not a spiffe:// URI: ${describe(uri)}`)
  }
  const trustDomain = uri.slice(SPIFFE_SCHEME.length)
  if (!isTrustDomain(trustDomain)) {
    throw new InvalidSpiffeIdError(`not a trust-domain SPIFFE id: ${describe(uri)}`)
  }
  return trustDomain
}

/** A short, safe rendering of untrusted input for error messages. */
function describe(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}…` : value)
  return typeof value
}
