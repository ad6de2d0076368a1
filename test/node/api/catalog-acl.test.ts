import { randomUUID } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pino from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { AclResolver } from '../../../src/node/api/acl-auth.ts'
import { registerCatalogRoutes } from '../../../src/node/api/catalog-routes.ts'
import { HttpApi } from '../../../src/node/api/server.ts'
import { Catalog } from '../../../src/node/catalog/catalog.ts'
import { CheckRunner } from '../../../src/node/catalog/checks.ts'
import { LocalServiceRegistry } from '../../../src/node/catalog/local-services.ts'
import { parseServiceDefinition } from '../../../src/node/catalog/service-definition.ts'
import type { PolicyCommand } from '../../../src/raft/index.ts'
import { encodePolicyCommand, PolicyStore } from '../../../src/raft/policy/policy-store.ts'

const id = (n: number): string => `00000000-0000-4000-8000-${n.toString(16).padStart(12, '0')}`
const MGMT = id(101)
/** A token with the service identity `web`: service:write on web, read on the rest. */
const WEB = id(11)

/**
 * The Consul endpoints added for issue #15, from the attacker's side: with ACLs on, no token, an
 * unknown token or one for another service gets a 403 naming the missing permission, and nothing
 * changes on the agent.
 */
describe('catalog and agent routes under ACLs (issue #15)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'peermesh-catalog-acl-'))
  const http = new HttpApi(pino({ level: 'silent' }))
  const local = LocalServiceRegistry.open({ dataDir: dir })
  const checks = new CheckRunner()
  let base = ''

  beforeAll(async () => {
    const store = new PolicyStore()
    let index = 0
    const apply = (cmd: unknown) =>
      store.apply({
        term: 1,
        index: ++index,
        type: 'normal',
        data: encodePolicyCommand(cmd as PolicyCommand),
      })
    apply({ op: 'acl.bootstrap', accessorId: id(100), secretId: MGMT, createTime: 't' })
    apply({
      op: 'acl.token.upsert',
      mode: 'create',
      accessorId: id(10),
      secretId: WEB,
      serviceIdentities: [{ serviceName: 'web' }],
      createTime: 't',
    })
    http.useAcl(new AclResolver(store.acl, { enabled: true, defaultPolicy: 'deny', anonymousRead: true }))
    registerCatalogRoutes(http, {
      catalog: new Catalog(),
      local,
      checks,
      nodeAddress: () => '127.0.0.1',
      nodeName: () => 'n1',
      selfId: () => 'n1',
    })
    // Checks follow the registry, as the catalog module wires them.
    local.on('service:change', () => checks.sync(local.list()))
    local.register(
      parseServiceDefinition({ name: 'db', port: 5432, checks: [{ ttl: '30s', id: 'db-ttl' }] }, 't'),
    )
    checks.sync(local.list())
    base = `http://127.0.0.1:${(await http.listen('127.0.0.1', 0)).port}`
  })
  afterAll(async () => {
    checks.stop()
    await http.close()
    rmSync(dir, { recursive: true, force: true })
  })

  const put = async (path: string, body?: unknown, token?: string) => {
    const res = await fetch(`${base}${path}`, {
      method: 'PUT',
      headers: {
        ...(token !== undefined ? { 'x-consul-token': token } : {}),
        ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
      },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    })
    return { status: res.status, text: await res.text() }
  }
  const state = () =>
    JSON.stringify([local.list(), checks.list().map((c) => [c.checkId, c.status, c.output])])

  const writes: [string, unknown, RegExp][] = [
    ['/v1/agent/service/register', { Name: 'db', Port: 1 }, /service:write/],
    ['/v1/agent/check/register', { CheckID: 'x', ServiceID: 'db', TTL: '10s' }, /service:write/],
    ['/v1/agent/check/deregister/db-ttl', undefined, /service:write/],
    ['/v1/agent/check/update/db-ttl', { Status: 'passing', Output: 'pwned' }, /service:write/],
    ['/v1/agent/check/pass/db-ttl?note=pwned', undefined, /service:write/],
    ['/v1/agent/service/maintenance/db?enable=true', undefined, /service:write/],
    ['/v1/agent/maintenance?enable=true', undefined, /node:write/],
    ['/v1/catalog/register', { Node: 'n1', Service: { Service: 'db', Port: 2 } }, /node:write/],
    ['/v1/catalog/deregister', { Node: 'n1', ServiceID: 'db' }, /node:write/],
    ['/v1/agent/service/deregister/db', undefined, /service:write/],
  ]

  it.each(writes)('PUT %s: 403 with no token or a web token, nothing changed', async (path, body, need) => {
    const before = state()
    for (const token of [undefined, WEB]) {
      const r = await put(path, body, token)
      expect(r.status, `${token ?? 'anonymous'}: ${r.text}`).toBe(403)
      expect(r.text).toMatch(need)
    }
    const unknown = await put(path, body, randomUUID())
    expect(unknown.status).toBe(403)
    expect(state()).toBe(before)
  })

  it('a web token may register and maintain web, and the management token anything', async () => {
    expect((await put('/v1/agent/service/register', { Name: 'web', Port: 80 }, WEB)).status).toBe(200)
    expect((await put('/v1/agent/service/maintenance/web?enable=true', undefined, WEB)).status).toBe(200)
    expect((await put('/v1/agent/maintenance?enable=true', undefined, MGMT)).status).toBe(200)
    expect(
      checks
        .list()
        .map((c) => c.checkId)
        .sort(),
    ).toEqual(['_node_maintenance:db', '_node_maintenance:web', '_service_maintenance:web', 'db-ttl'])
    expect((await put('/v1/agent/maintenance?enable=false', undefined, MGMT)).status).toBe(200)
    expect((await put('/v1/agent/service/deregister/web', undefined, WEB)).status).toBe(200)
  })

  it('reads: anonymous reads are allowed (anonymousRead), an unknown token is refused', async () => {
    expect((await fetch(`${base}/v1/agent/services`)).status).toBe(200)
    const r = await fetch(`${base}/v1/catalog/nodes`, { headers: { 'x-consul-token': randomUUID() } })
    expect(r.status).toBe(403)
  })
})
