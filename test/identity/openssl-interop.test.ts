/**
 * Interop with OpenSSL's own verifier: the certificates we make must be ones standard tools accept.
 * Skipped only when the `openssl` binary is not installed.
 */
import { spawnSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { createRootCa, crossSign, signLeaf } from '../../src/identity/ca/ca.ts'
import { createLeafKeyAndCsr } from '../../src/identity/ca/leaf.ts'
import { makeTempDir, removeTempDir } from '../temp-dir.ts'
import { HOUR, TD } from './helpers.ts'

const opensslAvailable = spawnSync('openssl', ['version'], { encoding: 'utf8' }).status === 0
const dir = makeTempDir('openssl')

function openssl(...args: string[]) {
  const r = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8' })
  return { status: r.status, out: `${r.stdout}${r.stderr}` }
}

afterAll(() => removeTempDir(dir))

// openssl verifies against the machine's clock, so these certificates are issued "now" (wall time).
describe.skipIf(!opensslAvailable)('openssl interop (skipped: openssl binary not found on PATH)', () => {
  it.each(['ed25519', 'ecdsa-p256'] as const)(
    'openssl verify accepts a %s leaf and shows the SPIFFE URI',
    async (keyType) => {
      const nowMs = Date.now()
      const root = await createRootCa({ trustDomain: TD, keyType, validityDays: 30, nowMs })
      const { csrPem } = await createLeafKeyAndCsr({ service: 'web', trustDomain: TD, keyType })
      const leaf = await signLeaf(root, csrPem, { service: 'web', trustDomain: TD, ttlMs: HOUR, nowMs })
      writeFileSync(join(dir, `root-${keyType}.pem`), root.certPem)
      writeFileSync(join(dir, `leaf-${keyType}.pem`), leaf.certPem)

      const verify = openssl(
        'verify',
        '-x509_strict',
        '-CAfile',
        `root-${keyType}.pem`,
        `leaf-${keyType}.pem`,
      )
      expect(verify.out).toContain(`leaf-${keyType}.pem: OK`)
      expect(verify.status).toBe(0)

      const text = openssl('x509', '-in', `leaf-${keyType}.pem`, '-noout', '-text')
      expect(text.status).toBe(0)
      expect(text.out).toContain(`URI:spiffe://${TD}/svc/web`)
      expect(text.out).toMatch(/CA:FALSE/)
      expect(text.out).toContain('TLS Web Server Authentication, TLS Web Client Authentication')

      const rootText = openssl('x509', '-in', `root-${keyType}.pem`, '-noout', '-text')
      expect(rootText.out).toMatch(/CA:TRUE/)
      expect(rootText.out).toContain(`URI:spiffe://${TD}`)
      expect(rootText.out).toContain('Certificate Sign, CRL Sign')
    },
  )

  it('openssl accepts a new-root leaf through the cross-signed intermediate, and refuses it without', async () => {
    const nowMs = Date.now()
    const oldRoot = await createRootCa({ trustDomain: TD, nowMs })
    const newRoot = await createRootCa({ trustDomain: TD, keyType: 'ecdsa-p256', nowMs })
    const cross = await crossSign(oldRoot, newRoot)
    const { csrPem } = await createLeafKeyAndCsr({ service: 'api', trustDomain: TD })
    const leaf = await signLeaf(newRoot, csrPem, { service: 'api', trustDomain: TD, ttlMs: HOUR, nowMs })
    writeFileSync(join(dir, 'old.pem'), oldRoot.certPem)
    writeFileSync(join(dir, 'cross.pem'), cross.certPem)
    writeFileSync(join(dir, 'new-leaf.pem'), leaf.certPem)
    const ok = openssl(
      'verify',
      '-x509_strict',
      '-CAfile',
      'old.pem',
      '-untrusted',
      'cross.pem',
      'new-leaf.pem',
    )
    expect(ok.out).toContain('new-leaf.pem: OK')
    const refused = openssl('verify', '-CAfile', 'old.pem', 'new-leaf.pem')
    expect(refused.status).not.toBe(0)
  })
})
