import { describe, expect, it } from 'vitest'
import {
  isDnsLabel,
  isTrustDomain,
  parseServiceSpiffeId,
  parseTrustDomainSpiffeId,
  serviceSpiffeId,
  validateServiceName,
  validateTrustDomain,
} from '../../src/identity/ca/spiffe.ts'

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn()
  } catch (e) {
    return (e as { code?: string }).code
  }
  return undefined
}

describe('SPIFFE ids', () => {
  it('builds and parses spiffe://<td>/svc/<service>', () => {
    const id = serviceSpiffeId('example.mesh', 'web-1')
    expect(id).toBe('spiffe://example.mesh/svc/web-1')
    expect(parseServiceSpiffeId(id)).toEqual({ trustDomain: 'example.mesh', service: 'web-1' })
    expect(parseTrustDomainSpiffeId('spiffe://example.mesh')).toBe('example.mesh')
  })

  it.each([
    ['a', true],
    ['web', true],
    ['web-api-2', true],
    ['0', true],
    ['a'.repeat(63), true],
    ['a'.repeat(64), false],
    ['', false],
    ['-web', false],
    ['web-', false],
    ['Web', false],
    ['web_api', false],
    ['web.api', false],
    ['*', false],
    ['wéb', false],
  ])('DNS label %j -> %s', (name, ok) => {
    expect(isDnsLabel(name)).toBe(ok)
    expect(codeOf(() => validateServiceName(name))).toBe(ok ? undefined : 'PEERMESH_ERR_INVALID_SERVICE_NAME')
  })

  it.each([
    ['example.mesh', true],
    ['consul', true],
    ['a-b.c-d.e', true],
    ['', false],
    ['.mesh', false],
    ['mesh.', false],
    ['a..b', false],
    ['Example.mesh', false],
    ['exa_mple.mesh', false],
    [`${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(61)}`, true],
    [`${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(62)}`, false],
  ])('trust domain %j -> %s', (td, ok) => {
    expect(isTrustDomain(td)).toBe(ok)
    expect(codeOf(() => validateTrustDomain(td))).toBe(ok ? undefined : 'PEERMESH_ERR_INVALID_TRUST_DOMAIN')
  })

  it.each([
    'http://example.mesh/svc/web',
    'spiffe://example.mesh',
    'spiffe://example.mesh/',
    'spiffe://example.mesh/svc/',
    'spiffe://example.mesh/svc/web/',
    'spiffe://example.mesh/svc/web?x=1',
    'spiffe://example.mesh/svc/web#f',
    'spiffe://example.mesh:443/svc/web',
    'spiffe://user@example.mesh/svc/web',
    'spiffe://example.mesh/ns/default/svc/web',
    'spiffe://example.mesh/svc/we%62',
    'SPIFFE://example.mesh/svc/web',
    'spiffe://EXAMPLE.mesh/svc/web',
  ])('rejects %j', (uri) => {
    expect(codeOf(() => parseServiceSpiffeId(uri))).toBe('PEERMESH_ERR_INVALID_SPIFFE_ID')
  })

  it('rejects non-strings and over-long input with a code', () => {
    expect(codeOf(() => parseServiceSpiffeId(42))).toBe('PEERMESH_ERR_INVALID_SPIFFE_ID')
    expect(codeOf(() => parseServiceSpiffeId(`spiffe://a/svc/${'a'.repeat(3000)}`))).toBe(
      'PEERMESH_ERR_INVALID_SPIFFE_ID',
    )
    expect(codeOf(() => serviceSpiffeId('example.mesh', 'Bad'))).toBe('PEERMESH_ERR_INVALID_SERVICE_NAME')
    expect(codeOf(() => serviceSpiffeId('bad_td', 'web'))).toBe('PEERMESH_ERR_INVALID_TRUST_DOMAIN')
  })
})
