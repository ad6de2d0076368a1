import { beforeAll, describe, expect, it } from 'vitest'
import { createRootCa, crossSign, type RootCa, type SignedLeaf, signLeaf } from '../../src/identity/ca/ca.ts'
import { createLeafKeyAndCsr, LeafVerifier, verifyLeaf } from '../../src/identity/ca/leaf.ts'
import { LeafSigningRateLimiter } from '../../src/identity/connect/leaf-signing-rate-limiter.ts'
import { type CryptoKeyPair, generateKeyPair, signingAlgorithm } from '../../src/identity/keys/keys.ts'
import { x509 } from '../../src/identity/ca/x509-setup.ts'
import { codeOf, DAY, HOUR, T0, TD } from './helpers.ts'

async function issue(
  ca: RootCa,
  service: string,
  opts: { keyType?: 'ed25519' | 'ecdsa-p256'; nowMs?: number; ttlMs?: number } = {},
) {
  const { csrPem, keyPem } = await createLeafKeyAndCsr({
    service,
    trustDomain: ca.trustDomain,
    keyType: opts.keyType,
  })
  const leaf = await signLeaf(ca, csrPem, {
    service,
    trustDomain: ca.trustDomain,
    ttlMs: opts.ttlMs ?? HOUR,
    nowMs: opts.nowMs ?? T0,
  })
  return { leaf, keyPem }
}

describe.each(['ed25519', 'ecdsa-p256'] as const)('mesh CA with %s keys', (keyType) => {
  let root: RootCa
  let foreign: RootCa
  let web: SignedLeaf

  beforeAll(async () => {
    root = await createRootCa({ trustDomain: TD, keyType, validityDays: 3650, nowMs: T0 })
    foreign = await createRootCa({ trustDomain: TD, keyType, validityDays: 3650, nowMs: T0 })
    web = (await issue(root, 'web', { keyType })).leaf
  })

  it('creates a self-signed CA root carrying the trust domain', () => {
    const cert = new x509.X509Certificate(root.certPem)
    expect(root.keyPem).toMatch(/^-----BEGIN PRIVATE KEY-----/)
    expect(root.notBefore).toBeLessThanOrEqual(T0)
    expect(root.notAfter).toBe(T0 + 3650 * DAY)
    expect(cert.getExtension(x509.BasicConstraintsExtension)?.ca).toBe(true)
    const ku = cert.getExtension(x509.KeyUsagesExtension)!.usages
    expect(ku & x509.KeyUsageFlags.keyCertSign).toBeTruthy()
    expect(ku & x509.KeyUsageFlags.cRLSign).toBeTruthy()
    expect(cert.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId.toLowerCase()).toBe(root.id)
    const san = cert.getExtension(x509.SubjectAlternativeNameExtension)!.names.toJSON()
    expect(san).toEqual([{ type: 'url', value: `spiffe://${TD}` }])
  })

  it('issues a leaf that verifies against the root and carries the SPIFFE id', async () => {
    expect(web.spiffeId).toBe(`spiffe://${TD}/svc/web`)
    expect(web.notAfter).toBe(T0 + HOUR)
    const result = await verifyLeaf(web.certPem, {
      roots: [root.certPem],
      trustDomain: TD,
      expectedService: 'web',
      nowMs: T0,
    })
    expect(result).toMatchObject({ ok: true, spiffeId: `spiffe://${TD}/svc/web`, service: 'web' })

    const cert = new x509.X509Certificate(web.certPem)
    expect(cert.getExtension(x509.BasicConstraintsExtension)?.ca).toBe(false)
    const ku = cert.getExtension(x509.KeyUsagesExtension)!.usages
    expect(ku & x509.KeyUsageFlags.digitalSignature).toBeTruthy()
    expect(Boolean(ku & x509.KeyUsageFlags.keyEncipherment)).toBe(keyType === 'ecdsa-p256')
    expect(cert.getExtension(x509.ExtendedKeyUsageExtension)?.usages).toEqual([
      x509.ExtendedKeyUsage.serverAuth,
      x509.ExtendedKeyUsage.clientAuth,
    ])
    expect(cert.getExtension(x509.AuthorityKeyIdentifierExtension)?.keyId?.toLowerCase()).toBe(root.id)
  })

  it('a LeafVerifier built once gives the same answers as verifyLeaf', async () => {
    const verifier = new LeafVerifier({ roots: [root.certPem], trustDomain: TD })
    expect(await verifier.verify(web.certPem, { expectedService: 'web', nowMs: T0 })).toMatchObject({
      ok: true,
    })
    expect(await verifier.verify(web.certPem, { expectedService: 'db', nowMs: T0 })).toMatchObject({
      ok: false,
      code: 'PEERMESH_ERR_LEAF_WRONG_SERVICE',
    })
  })

  it('gives every leaf a fresh random serial', async () => {
    const again = (await issue(root, 'web', { keyType })).leaf
    expect(again.serialNumber).not.toBe(web.serialNumber)
    expect(again.serialNumber).toMatch(/^[0-9a-f]{32}$/)
  })

  it('refuses a leaf from a foreign CA', async () => {
    const alien = (await issue(foreign, 'web', { keyType })).leaf
    const result = await verifyLeaf(alien.certPem, { roots: [root.certPem], trustDomain: TD, nowMs: T0 })
    expect(result).toMatchObject({ ok: false, code: 'PEERMESH_ERR_LEAF_UNTRUSTED' })
  })

  it('refuses a leaf whose signature was tampered with', async () => {
    const der = Buffer.from(x509.PemConverter.decodeFirst(web.certPem))
    der[der.length - 1] = der[der.length - 1]! ^ 0x01
    const tampered = x509.PemConverter.encode(der, 'CERTIFICATE')
    const result = await verifyLeaf(tampered, { roots: [root.certPem], trustDomain: TD, nowMs: T0 })
    expect(result).toMatchObject({ ok: false, code: 'PEERMESH_ERR_LEAF_UNTRUSTED' })
  })

  it('refuses an expired leaf and one not yet valid', async () => {
    const late = await verifyLeaf(web.certPem, {
      roots: [root.certPem],
      trustDomain: TD,
      nowMs: web.notAfter,
    })
    expect(late).toMatchObject({ ok: false, code: 'PEERMESH_ERR_LEAF_EXPIRED' })
    const early = await verifyLeaf(web.certPem, {
      roots: [root.certPem],
      trustDomain: TD,
      nowMs: web.notBefore - 1,
    })
    expect(early).toMatchObject({ ok: false, code: 'PEERMESH_ERR_LEAF_NOT_YET_VALID' })
  })

  it('refuses a leaf for another service or trust domain', async () => {
    const wrongService = await verifyLeaf(web.certPem, {
      roots: [root.certPem],
      trustDomain: TD,
      expectedService: 'db',
      nowMs: T0,
    })
    expect(wrongService).toMatchObject({ ok: false, code: 'PEERMESH_ERR_LEAF_WRONG_SERVICE' })
    const wrongTd = await verifyLeaf(web.certPem, {
      roots: [root.certPem],
      trustDomain: 'other.mesh',
      nowMs: T0,
    })
    expect(wrongTd).toMatchObject({ ok: false, code: 'PEERMESH_ERR_LEAF_WRONG_TRUST_DOMAIN' })
  })

  it('refuses a CA certificate presented as a leaf, and garbage', async () => {
    const asLeaf = await verifyLeaf(root.certPem, { roots: [root.certPem], trustDomain: TD, nowMs: T0 })
    expect(asLeaf).toMatchObject({ ok: false, code: 'PEERMESH_ERR_LEAF_IS_CA' })
    for (const junk of [
      '',
      'hello',
      '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n',
      web.certPem + web.certPem,
    ]) {
      expect(await verifyLeaf(junk, { roots: [root.certPem], trustDomain: TD, nowMs: T0 })).toMatchObject({
        ok: false,
        code: 'PEERMESH_ERR_LEAF_MALFORMED',
      })
    }
  })

  it('refuses a CSR that asks for another SPIFFE id', async () => {
    const { csrPem } = await createLeafKeyAndCsr({ service: 'db', trustDomain: TD, keyType })
    const code = await codeOf(() =>
      signLeaf(root, csrPem, { service: 'web', trustDomain: TD, ttlMs: HOUR, nowMs: T0 }),
    )
    expect(code).toBe('PEERMESH_ERR_CSR_IDENTITY_MISMATCH')
  })

  it('refuses a CSR asking for extra names or none', async () => {
    const keys = await generateKeyPair(keyType)
    const make = (names: x509.JsonGeneralNames | undefined) =>
      x509.Pkcs10CertificateRequestGenerator.create({
        name: 'CN=web',
        keys,
        signingAlgorithm: signingAlgorithm(keyType),
        extensions: names ? [new x509.SubjectAlternativeNameExtension(names)] : [],
      })
    const cases = [
      undefined,
      [],
      [
        { type: 'url', value: `spiffe://${TD}/svc/web` },
        { type: 'url', value: `spiffe://${TD}/svc/db` },
      ],
      [
        { type: 'url', value: `spiffe://${TD}/svc/web` },
        { type: 'dns', value: 'web.example.com' },
      ],
      [{ type: 'dns', value: `spiffe://${TD}/svc/web` }],
    ] as const
    for (const names of cases) {
      const csr = await make(names as x509.JsonGeneralNames | undefined)
      const code = await codeOf(() =>
        signLeaf(root, csr.toString('pem'), { service: 'web', trustDomain: TD, ttlMs: HOUR, nowMs: T0 }),
      )
      expect(code, JSON.stringify(names)).toBe('PEERMESH_ERR_CSR_IDENTITY_MISMATCH')
    }
  })

  it('refuses a CSR with a bad signature', async () => {
    const { csrPem } = await createLeafKeyAndCsr({ service: 'web', trustDomain: TD, keyType })
    const der = Buffer.from(x509.PemConverter.decodeFirst(csrPem))
    // The signature is the last field of the DER: flip a bit in its last byte.
    der[der.length - 1] = der[der.length - 1]! ^ 0x01
    const tampered = x509.PemConverter.encode(der, 'CERTIFICATE REQUEST')
    const code = await codeOf(() =>
      signLeaf(root, tampered, { service: 'web', trustDomain: TD, ttlMs: HOUR, nowMs: T0 }),
    )
    expect(code).toBe('PEERMESH_ERR_CSR_BAD_SIGNATURE')
  })

  it('refuses a CSR whose key was swapped after signing', async () => {
    const a = await createLeafKeyAndCsr({ service: 'web', trustDomain: TD, keyType })
    const b = await createLeafKeyAndCsr({ service: 'web', trustDomain: TD, keyType })
    const csrA = new x509.Pkcs10CertificateRequest(a.csrPem)
    const csrB = new x509.Pkcs10CertificateRequest(b.csrPem)
    // Put B's public key into A's signed request: the signature no longer matches the key.
    const derA = Buffer.from(csrA.rawData)
    const spkiA = Buffer.from(csrA.publicKey.rawData)
    const spkiB = Buffer.from(csrB.publicKey.rawData)
    const at = derA.indexOf(spkiA)
    expect(at).toBeGreaterThan(0)
    spkiB.copy(derA, at)
    const code = await codeOf(() =>
      signLeaf(root, x509.PemConverter.encode(derA, 'CERTIFICATE REQUEST'), {
        service: 'web',
        trustDomain: TD,
        ttlMs: HOUR,
        nowMs: T0,
      }),
    )
    expect(code).toBe('PEERMESH_ERR_CSR_BAD_SIGNATURE')
  })
})

describe('CA input checks', () => {
  let root: RootCa
  beforeAll(async () => {
    root = await createRootCa({ trustDomain: TD, keyType: 'ed25519', validityDays: 30, nowMs: T0 })
  })

  it('rejects bad root options with codes', async () => {
    expect(await codeOf(() => createRootCa({ trustDomain: 'Bad_TD', nowMs: T0 }))).toBe(
      'PEERMESH_ERR_INVALID_TRUST_DOMAIN',
    )
    expect(await codeOf(() => createRootCa({ trustDomain: TD, keyType: 'rsa' as never, nowMs: T0 }))).toBe(
      'PEERMESH_ERR_INVALID_CA_OPTION',
    )
    expect(await codeOf(() => createRootCa({ trustDomain: TD, validityDays: 0, nowMs: T0 }))).toBe(
      'PEERMESH_ERR_INVALID_CA_OPTION',
    )
    expect(await codeOf(() => createRootCa({ trustDomain: TD, nowMs: Number.NaN }))).toBe(
      'PEERMESH_ERR_INVALID_CA_OPTION',
    )
  })

  it('rejects malformed CSRs, bad TTLs, wrong trust domain, expired CA, and a key not matching the CA', async () => {
    const { csrPem } = await createLeafKeyAndCsr({ service: 'web', trustDomain: TD })
    const opts = { service: 'web', trustDomain: TD, ttlMs: HOUR, nowMs: T0 }
    for (const junk of ['', 'nope', `${csrPem}${csrPem}`, 'x'.repeat(100_000), root.certPem]) {
      expect(await codeOf(() => signLeaf(root, junk, opts))).toBe('PEERMESH_ERR_CSR_MALFORMED')
    }
    expect(await codeOf(() => signLeaf(root, csrPem, { ...opts, ttlMs: 10 }))).toBe(
      'PEERMESH_ERR_INVALID_CA_OPTION',
    )
    expect(await codeOf(() => signLeaf(root, csrPem, { ...opts, service: 'Web' }))).toBe(
      'PEERMESH_ERR_INVALID_SERVICE_NAME',
    )
    expect(await codeOf(() => signLeaf(root, csrPem, { ...opts, trustDomain: 'other.mesh' }))).toBe(
      'PEERMESH_ERR_TRUST_DOMAIN_MISMATCH',
    )
    expect(await codeOf(() => signLeaf(root, csrPem, { ...opts, nowMs: root.notAfter }))).toBe(
      'PEERMESH_ERR_CA_NOT_VALID_NOW',
    )
    const other = await createRootCa({ trustDomain: TD, nowMs: T0 })
    expect(await codeOf(() => signLeaf({ certPem: root.certPem, keyPem: other.keyPem }, csrPem, opts))).toBe(
      'PEERMESH_ERR_CA_MALFORMED',
    )
    const web = await signLeaf(root, csrPem, opts)
    expect(await codeOf(() => signLeaf({ certPem: web.certPem, keyPem: root.keyPem }, csrPem, opts))).toBe(
      'PEERMESH_ERR_CA_MALFORMED',
    )
  })

  it('refuses a CSR with an unsupported key type (ECDSA P-384)', async () => {
    const keys = await x509.cryptoProvider
      .get()
      .subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-384' }, true, ['sign', 'verify'])
    const csr = await x509.Pkcs10CertificateRequestGenerator.create({
      name: 'CN=web',
      keys: keys as CryptoKeyPair,
      signingAlgorithm: { name: 'ECDSA', hash: 'SHA-384' },
      extensions: [
        new x509.SubjectAlternativeNameExtension([{ type: 'url', value: `spiffe://${TD}/svc/web` }]),
      ],
    })
    const code = await codeOf(() =>
      signLeaf(root, csr.toString('pem'), { service: 'web', trustDomain: TD, ttlMs: HOUR, nowMs: T0 }),
    )
    expect(code).toBe('PEERMESH_ERR_UNSUPPORTED_KEY_TYPE')
  })

  it('clamps a leaf to the CA lifetime', async () => {
    const { csrPem } = await createLeafKeyAndCsr({ service: 'web', trustDomain: TD })
    const nowMs = root.notAfter - HOUR
    const leaf = await signLeaf(root, csrPem, { service: 'web', trustDomain: TD, ttlMs: 72 * HOUR, nowMs })
    expect(leaf.notAfter).toBe(root.notAfter)
  })

  it('throws for malformed trusted roots (configuration error)', async () => {
    expect(await codeOf(() => verifyLeaf('x', { roots: ['junk'], trustDomain: TD, nowMs: T0 }))).toBe(
      'PEERMESH_ERR_CA_MALFORMED',
    )
  })
})

describe('root rotation with a cross-signed intermediate', () => {
  it('accepts old- and new-root leaves during the transition, and only new-root leaves after', async () => {
    const oldRoot = await createRootCa({ trustDomain: TD, keyType: 'ed25519', nowMs: T0 })
    // The new root may even change key type; cross-signing does not care.
    const newRoot = await createRootCa({ trustDomain: TD, keyType: 'ecdsa-p256', nowMs: T0 + DAY })
    const cross = await crossSign(oldRoot, newRoot)
    expect(cross.subjectId).toBe(newRoot.id)
    expect(cross.issuerId).toBe(oldRoot.id)

    const now = T0 + DAY + HOUR
    const oldLeaf = (await issue(oldRoot, 'web', { nowMs: now })).leaf
    const newLeaf = (await issue(newRoot, 'api', { nowMs: now })).leaf
    const transition = {
      roots: [oldRoot.certPem, newRoot.certPem],
      intermediates: [cross.certPem],
      trustDomain: TD,
      nowMs: now,
    }
    expect(await verifyLeaf(oldLeaf.certPem, transition)).toMatchObject({ ok: true, service: 'web' })
    expect(await verifyLeaf(newLeaf.certPem, transition)).toMatchObject({ ok: true, service: 'api' })

    // A peer that has not yet learnt the new root accepts a new leaf through the cross-signed cert...
    const notYetUpdated = { roots: [oldRoot.certPem], trustDomain: TD, nowMs: now }
    expect(
      await verifyLeaf(newLeaf.certPem, { ...notYetUpdated, intermediates: [cross.certPem] }),
    ).toMatchObject({
      ok: true,
      chainIds: [newRoot.id, oldRoot.id],
    })
    // ...and not without it.
    expect(await verifyLeaf(newLeaf.certPem, notYetUpdated)).toMatchObject({
      ok: false,
      code: 'PEERMESH_ERR_LEAF_UNTRUSTED',
    })

    // After the rotation the old root is dropped: old leaves stop verifying.
    const after = { roots: [newRoot.certPem], trustDomain: TD, nowMs: now }
    expect(await verifyLeaf(oldLeaf.certPem, after)).toMatchObject({
      ok: false,
      code: 'PEERMESH_ERR_LEAF_UNTRUSTED',
    })
    expect(await verifyLeaf(newLeaf.certPem, after)).toMatchObject({ ok: true })
  })

  it('does not let the cross-signed certificate sign through another CA (pathLength 0) and honours its validity', async () => {
    const oldRoot = await createRootCa({ trustDomain: TD, validityDays: 2, nowMs: T0 })
    const newRoot = await createRootCa({ trustDomain: TD, validityDays: 365, nowMs: T0 })
    const cross = await crossSign(oldRoot, newRoot)
    expect(cross.notAfter).toBe(oldRoot.notAfter)
    const newLeaf = (await issue(newRoot, 'api', { nowMs: T0 + 3 * DAY })).leaf
    // Past the old root's (and so the cross-signed cert's) expiry, the only path to [old] is invalid.
    const result = await verifyLeaf(newLeaf.certPem, {
      roots: [oldRoot.certPem],
      intermediates: [cross.certPem],
      trustDomain: TD,
      nowMs: T0 + 3 * DAY,
    })
    expect(result).toMatchObject({ ok: false, code: 'PEERMESH_ERR_LEAF_CHAIN_NOT_VALID_NOW' })

    // A CA below the cross-signed intermediate would exceed pathLength 0.
    const grandchild = await createRootCa({ trustDomain: TD, nowMs: T0 })
    const viaCross = await crossSign(newRoot, grandchild)
    const deepLeaf = (await issue(grandchild, 'db', { nowMs: T0 + HOUR })).leaf
    const deep = await verifyLeaf(deepLeaf.certPem, {
      roots: [oldRoot.certPem],
      intermediates: [viaCross.certPem, cross.certPem],
      trustDomain: TD,
      nowMs: T0 + HOUR,
    })
    expect(deep).toMatchObject({ ok: false, code: 'PEERMESH_ERR_LEAF_UNTRUSTED' })
    // The same leaf is fine one level shorter, so it was the path length that failed above.
    const shallow = await verifyLeaf(deepLeaf.certPem, {
      roots: [newRoot.certPem],
      intermediates: [viaCross.certPem],
      trustDomain: TD,
      nowMs: T0 + HOUR,
    })
    expect(shallow).toMatchObject({ ok: true, chainIds: [grandchild.id, newRoot.id] })
  })
})

describe('LeafSigningRateLimiter', () => {
  it('allows a burst of 50, then 50 per second (Consul default)', () => {
    const limiter = new LeafSigningRateLimiter({ nowMs: 0 })
    for (let i = 0; i < 50; i++) expect(limiter.tryAcquire(0)).toEqual({ ok: true })
    expect(limiter.tryAcquire(0)).toEqual({ ok: false, retryAfterMs: 20 })
    expect(limiter.tryAcquire(10)).toEqual({ ok: false, retryAfterMs: 10 })
    expect(limiter.tryAcquire(20)).toEqual({ ok: true })
    expect(limiter.tryAcquire(20).ok).toBe(false)
    // A long pause refills to the burst size, not beyond.
    expect(limiter.available(60_000)).toBe(50)
  })

  it('throws a coded error from acquire() and ignores clocks that step back', async () => {
    const limiter = new LeafSigningRateLimiter({ ratePerSecond: 2, burst: 1, nowMs: 1000 })
    limiter.acquire(1000)
    const err = await codeOf(() => limiter.acquire(1000))
    expect(err).toBe('PEERMESH_ERR_LEAF_SIGNING_RATE_LIMITED')
    expect(limiter.tryAcquire(0)).toEqual({ ok: false, retryAfterMs: 500 })
    expect(limiter.tryAcquire(1500)).toEqual({ ok: true })
    expect(await codeOf(() => new LeafSigningRateLimiter({ ratePerSecond: 0, nowMs: 0 }))).toBe(
      'PEERMESH_ERR_INVALID_CA_OPTION',
    )
  })
})
