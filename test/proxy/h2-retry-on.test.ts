/**
 * Consul's service-router `RetryOn`: the schema accepts its values and refuses others, the
 * compiled route carries it, and the pure decisions read it as Envoy's retry conditions.
 */
import { describe, expect, it } from 'vitest'
import { compileRoute } from '../../src/node/sidecars/traffic-config.ts'
import { configEntryProblem, parseConfigEntry } from '../../src/raft/policy/config-entries.ts'
import { compileRetryOn, retryOnHttpStatus } from '../../src/proxy/traffic.ts'

describe('RetryOn', () => {
  it('the service-router schema accepts every value Consul lists, and refuses an unknown one', () => {
    const all = [
      '5xx',
      'gateway-error',
      'reset',
      'connect-failure',
      'envoy-ratelimited',
      'retriable-4xx',
      'refused-stream',
      'cancelled',
      'deadline-exceeded',
      'internal',
      'resource-exhausted',
      'unavailable',
    ]
    const ok = { Routes: [{ Destination: { NumRetries: 2, RetryOn: all, RetryOnStatusCodes: [503] } }] }
    expect(configEntryProblem('service-router', 'api', ok)).toBeUndefined()
    const bad = { Routes: [{ Destination: { RetryOn: ['unavailable', 'sometimes'] } }] }
    expect(configEntryProblem('service-router', 'api', bad)).toMatch(/^Routes\.0\.Destination\.RetryOn\.1:/)
    expect(
      configEntryProblem('service-router', 'api', { Routes: [{ Destination: { RetryOn: 'reset' } }] }),
    ).toMatch(/^Routes\.0\.Destination\.RetryOn:/)
  })

  it('a compiled route carries the conditions', () => {
    const entry = parseConfigEntry('service-router', {
      Routes: [{ Destination: { RetryOn: ['unavailable', 'cancelled', 'reset'] } }],
    })!
    const dest = compileRoute(entry.Routes![0]!).destination
    expect(dest.retryOn?.grpcStatuses).toEqual(new Set([14, 1]))
    expect(dest.retryOn?.reset).toBe(true)
    expect(dest.retryOn?.connectFailure).toBe(false)
    expect(compileRoute({ Destination: { NumRetries: 1 } }).destination.retryOn).toBeUndefined()
  })

  it.each([
    [['5xx'], 500, true],
    [['5xx'], 503, true],
    [['5xx'], 409, false],
    [['gateway-error'], 502, true],
    [['gateway-error'], 504, true],
    [['gateway-error'], 500, false],
    [['retriable-4xx'], 409, true],
    [['retriable-4xx'], 404, false],
    [['unavailable'], 503, false],
    [[], 503, false],
  ])('RetryOn %j on HTTP status %i: %s', (conditions, status, retried) => {
    expect(retryOnHttpStatus(compileRetryOn(conditions), status)).toBe(retried)
  })

  it('5xx and gateway-error also cover connect failures and resets, as in Envoy', () => {
    for (const c of ['5xx', 'gateway-error']) {
      const r = compileRetryOn([c])
      expect([r.connectFailure, r.reset]).toEqual([true, true])
    }
    const none = compileRetryOn(['unavailable'])
    expect([none.connectFailure, none.reset, none.refusedStream]).toEqual([false, false, false])
    expect(compileRetryOn(['deadline-exceeded', 'internal', 'resource-exhausted']).grpcStatuses).toEqual(
      new Set([4, 13, 8]),
    )
  })
})
