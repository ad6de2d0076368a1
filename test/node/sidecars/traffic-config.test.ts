/**
 * Service-router routes from the client's side: regular expressions match in linear time however
 * the request is built, and a route whose pattern the linear engine cannot run (stored before
 * writes were checked for it) matches nothing and throws nothing.
 */
import { describe, expect, it } from 'vitest'
import {
  compileRoute,
  compileUpstreamPolicy,
  configuredProtocol,
  readTrafficEntries,
} from '../../../src/node/sidecars/traffic-config.ts'
import { matchRoute, type RequestView } from '../../../src/proxy/traffic.ts'
import type { ConfigEntry } from '../../../src/raft/policy/policy-store.ts'

const request = (
  path: string,
  headers: Record<string, string> = {},
  query: Record<string, string> = {},
): RequestView => ({
  method: 'GET',
  path,
  header: (name) => headers[name],
  query: (name) => query[name],
})

/** Entries as a sidecar reads them from the store: no write-time check on the way. */
function policyOf(list: { kind: string; name: string; value: Record<string, unknown> }[]) {
  const stored: ConfigEntry[] = list.map((e, i) => ({ ...e, createdIndex: i + 1, modifyIndex: i + 1 }))
  const entries = readTrafficEntries({
    listConfigEntries: (kind) => stored.filter((e) => e.kind === kind),
    onChange: () => () => {},
  })
  return { entries, policy: compileUpstreamPolicy(entries, 'web', 'api') }
}

const router = (...Routes: unknown[]) => ({ kind: 'service-router', name: 'api', value: { Routes } })

describe('route regexes against hostile requests (linear time)', () => {
  // Each of these held the sidecar's event loop for seconds to years on the backtracking engine.
  const { policy } = policyOf([
    router(
      { Match: { HTTP: { PathRegex: '/api/(\\w+/?)+/items' } }, Destination: { Service: 'items' } },
      {
        Match: { HTTP: { Header: [{ Name: 'x-tag', Regex: '(a|a?)+' }] } },
        Destination: { Service: 'tags' },
      },
      { Match: { HTTP: { QueryParam: [{ Name: 'q', Regex: '(x+x+)+y' }] } }, Destination: { Service: 'q' } },
    ),
  ])
  it.each([
    [request(`/api/${'a'.repeat(5000)}!`), undefined],
    [request('/api/v1/users/items'), 'items'],
    [request('/', { 'x-tag': `${'a'.repeat(5000)}b` }), undefined],
    [request('/', { 'x-tag': 'a'.repeat(5000) }), 'tags'],
    [request('/', {}, { q: 'x'.repeat(5000) }), undefined],
    [request('/', {}, { q: 'xxy' }), 'q'],
  ])('%#: routed to %s', (req, service) => {
    expect(matchRoute(policy, req).service).toBe(service)
  })
})

describe('a stored route with a pattern the linear engine cannot run', () => {
  it('matches no request; the routes after it and the entry around it still apply', () => {
    const { policy, entries } = policyOf([
      { kind: 'service-defaults', name: 'api', value: { Protocol: 'http' } },
      router(
        { Match: { HTTP: { PathRegex: '/(\\w+)/\\1' } }, Destination: { Service: 'echo' } },
        {
          Match: { HTTP: { Header: [{ Name: 'x-user', Regex: '(?!admin).*', Invert: true }] } },
          Destination: { Service: 'not-admin' },
        },
        {
          Match: { HTTP: { QueryParam: [{ Name: 'v', Regex: '(?<=v)\\d' }] } },
          Destination: { Service: 'v' },
        },
        { Match: { HTTP: { PathPrefix: '/a' } }, Destination: { Service: 'a' } },
      ),
    ])
    expect(configuredProtocol(entries, 'api')).toBe('http')
    expect(policy.routes).toHaveLength(4)
    expect(matchRoute(policy, request('/a/a')).service).toBe('a')
    expect(matchRoute(policy, request('/b', { 'x-user': 'admin' })).service).toBeUndefined()
    expect(matchRoute(policy, request('/b', {}, { v: '1' })).service).toBeUndefined()
  })

  it('compileRoute does not throw on one that is not a regular expression at all', () => {
    const route = compileRoute({ Match: { HTTP: { PathRegex: '([a-z' } } })
    expect(route.match(request('/x'))).toBe(false)
  })
})
