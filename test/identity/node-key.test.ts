import { statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { generateClusterKey, parseClusterKey } from '../../src/identity/keys/cluster-key.ts'
import { loadOrCreateNodeIdentity, NODE_KEY_FILE, verifyByPeerId } from '../../src/identity/keys/node-key.ts'
import { TempDirs } from '../temp-dir.ts'

const tmp = new TempDirs()
afterAll(() => tmp.removeAll())

describe('node key', () => {
  it('is created on first start with mode 0600 and reused on restart (same peer id)', async () => {
    const dir = join(tmp.make('key'), 'data')
    const first = await loadOrCreateNodeIdentity(dir)
    expect(statSync(join(dir, NODE_KEY_FILE)).mode & 0o777).toBe(0o600)
    const second = await loadOrCreateNodeIdentity(dir)
    expect(second.id).toBe(first.id)
    expect(first.id).toMatch(/^12D3KooW/)
  })

  it('signs with node:crypto and verifies by peer id; a wrong key, tampered data or junk fails', async () => {
    const a = await loadOrCreateNodeIdentity(tmp.make('key'))
    const b = await loadOrCreateNodeIdentity(tmp.make('key'))
    const data = new TextEncoder().encode('record v1')
    const sig = a.sign(data)
    expect(verifyByPeerId(a.id, data, sig)).toBe(true)
    expect(verifyByPeerId(b.id, data, sig)).toBe(false)
    expect(verifyByPeerId(a.id, new TextEncoder().encode('record v2'), sig)).toBe(false)
    expect(verifyByPeerId(a.id, data, sig.subarray(1))).toBe(false)
    expect(verifyByPeerId('not-a-peer-id', data, sig)).toBe(false)
  })

  it('refuses a corrupt key file instead of silently replacing the identity', async () => {
    const dir = tmp.make('key')
    writeFileSync(join(dir, NODE_KEY_FILE), 'garbage')
    await expect(loadOrCreateNodeIdentity(dir)).rejects.toMatchObject({ code: 'PEERMESH_ERR_NODE_KEY' })
  })
})

describe('cluster key', () => {
  it('round-trips the 95-byte swarm key format', () => {
    const text = generateClusterKey()
    expect(parseClusterKey(text)).toHaveLength(95)
  })

  it.each([
    '',
    'hello',
    '/key/swarm/psk/1.0.0/\n/base16/\nabc',
    '/key/swarm/psk/1.0.0/\n/base64/\n' + 'a'.repeat(64),
  ])('rejects malformed key text %#', (text) => {
    expect(() => parseClusterKey(text)).toThrow(expect.objectContaining({ code: 'PEERMESH_ERR_CLUSTER_KEY' }))
  })
})
