import pino from 'pino'
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { AclResolver } from '../../../src/node/api/acl-auth.ts'
import { registerCatalogRoutes } from '../../../src/node/api/catalog-routes.ts'
import { registerRaftRoutes } from '../../../src/node/api/raft-routes.ts'
import { HttpApi } from '../../../src/node/api/server.ts'
import { registerSidecarRoutes } from '../../../src/node/api/sidecar-routes.ts'
import { Catalog } from '../../../src/node/catalog/catalog.ts'
import { CheckRunner } from '../../../src/node/catalog/checks.ts'
import { LocalServiceRegistry } from '../../../src/node/catalog/local-services.ts'
import { parseServiceDefinition } from '../../../src/node/catalog/service-definition.ts'
import type { RaftModule } from '../../../src/node/raft/raft-module.ts'
import type { PolicyCommand } from '../../../src/raft/index.ts'
import { encodePolicyCommand, PolicyStore } from '../../../src/raft/policy/policy-store.ts'
import { makeTempDir, removeTempDir } from '../../temp-dir.ts'

const id = (n: number): string => `00000000-0000-4000-8000-${n.toString(16).padStart(12, '0')}`
const MGMT = id(101)
/** node:write on n1 (so the catalog writes get past their node check), nothing on services. */
const OUTSIDER = id(11)
/** service:write on db (and node:write on n1). */
const DB_WRITER = id(12)
/** The service identity `web` (service:write on web, read on every service), and node:write on n1. */
const WEB = id(13)

/** A policy store with the management token and the tokens above; `apply` applies a command. */
function aclStore() {
  const store = new PolicyStore()
  let index = 0
  const apply = (cmd: unknown) =>
    store.apply({ term: 1, index: ++index, type: 'normal', data: encodePolicyCommand(cmd as PolicyCommand) })
  apply({ op: 'acl.bootstrap', accessorId: id(100), secretId: MGMT, createTime: 't' })
  const token = (n: number, secretId: string, rules: string, serviceIdentities: unknown[] = []) => {
    apply({
      op: 'acl.policy.upsert',
      mode: 'create',
      id: id(200 + n),
      name: `p${n}`,
      description: '',
      rules,
      datacenters: [],
    })
    apply({
      op: 'acl.token.upsert',
      mode: 'create',
      accessorId: id(n),
      secretId,
      description: '',
      policies: [{ id: id(200 + n) }],
      serviceIdentities,
      nodeIdentities: [],
      local: false,
      voter: false,
      createTime: 't',
    })
  }
  token(1, OUTSIDER, 'node "n1" { policy = "write" }')
  token(2, DB_WRITER, 'node "n1" { policy = "write" }\nservice "db" { policy = "write" }')
  token(3, WEB, 'node "n1" { policy = "write" }', [{ serviceName: 'web' }])
  return { store, apply, index: () => index }
}

async function call(base: string, method: string, path: string, token: string, body?: unknown) {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: {
      'x-consul-token': token,
      ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
    },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  })
  return { status: res.status, text: await res.text() }
}

/**
 * The security review's existence leak, from the attacker's side: with ACLs on, a token that may
 * not see an object gets the same answer (status and body) whether it exists or not, on the
 * routes that look an object up by ID; a token with the permission still gets 200 / 404.
 */
describe('routes by ID under ACLs: no existence leak', () => {
  const dir = makeTempDir('existence-acl')
  const http = new HttpApi(pino({ level: 'silent' }))
  const local = LocalServiceRegistry.open({ dataDir: dir })
  const checks = new CheckRunner()
  let base = ''

  beforeAll(async () => {
    const { store } = aclStore()
    http.useAcl(new AclResolver(store.acl, { enabled: true, defaultPolicy: 'deny', anonymousRead: false }))
    registerCatalogRoutes(http, {
      catalog: new Catalog(),
      local,
      checks,
      nodeAddress: () => '127.0.0.1',
      nodeName: () => 'n1',
      selfId: () => 'n1',
    })
    registerSidecarRoutes(http, { local, whenReady: async () => ({ ok: true }) })
    local.on('service:change', () => checks.sync(local.list()))
    base = `http://127.0.0.1:${(await http.listen('127.0.0.1', 0)).port}`
  })
  beforeEach(() => {
    // Each case starts with the local service `db` and its TTL check `db-ttl`, and nothing else.
    for (const d of local.list()) local.deregister(d.id)
    local.register(
      parseServiceDefinition({ name: 'db', port: 5432, checks: [{ ttl: '30s', id: 'db-ttl' }] }, 't'),
    )
    checks.sync(local.list())
  })
  afterAll(async () => {
    checks.stop()
    await http.close()
    removeTempDir(dir)
  })

  /** [route, method, path of an existing object, of a missing one, body of each, status of a miss with the permission]. */
  const cases: [string, string, string, string, unknown, unknown, number][] = [
    [
      'GET /v1/agent/service/:id',
      'GET',
      '/v1/agent/service/db',
      '/v1/agent/service/nope',
      undefined,
      undefined,
      404,
    ],
    [
      'GET /v1/agent/sidecar/:id',
      'GET',
      '/v1/agent/sidecar/db',
      '/v1/agent/sidecar/nope',
      undefined,
      undefined,
      404,
    ],
    [
      'PUT /v1/agent/service/deregister/:id',
      'PUT',
      '/v1/agent/service/deregister/db',
      '/v1/agent/service/deregister/nope',
      undefined,
      undefined,
      404,
    ],
    [
      'PUT /v1/agent/service/maintenance/:id',
      'PUT',
      '/v1/agent/service/maintenance/db?enable=true',
      '/v1/agent/service/maintenance/nope?enable=true',
      undefined,
      undefined,
      404,
    ],
    [
      'PUT /v1/agent/check/register',
      'PUT',
      '/v1/agent/check/register',
      '/v1/agent/check/register',
      { CheckID: 'x', ServiceID: 'db', TTL: '10s' },
      { CheckID: 'x', ServiceID: 'nope', TTL: '10s' },
      400,
    ],
    [
      'PUT /v1/agent/check/deregister/:id',
      'PUT',
      '/v1/agent/check/deregister/db-ttl',
      '/v1/agent/check/deregister/nope',
      undefined,
      undefined,
      404,
    ],
    ...(['pass', 'warn', 'fail'] as const).map(
      (verb): [string, string, string, string, unknown, unknown, number] => [
        `PUT /v1/agent/check/${verb}/:id`,
        'PUT',
        `/v1/agent/check/${verb}/db-ttl`,
        `/v1/agent/check/${verb}/nope`,
        undefined,
        undefined,
        404,
      ],
    ),
    [
      'PUT /v1/agent/check/update/:id',
      'PUT',
      '/v1/agent/check/update/db-ttl',
      '/v1/agent/check/update/nope',
      { Status: 'passing' },
      { Status: 'passing' },
      404,
    ],
    [
      'PUT /v1/catalog/deregister (ServiceID)',
      'PUT',
      '/v1/catalog/deregister',
      '/v1/catalog/deregister',
      { Node: 'n1', ServiceID: 'db' },
      { Node: 'n1', ServiceID: 'nope' },
      200,
    ],
    [
      'PUT /v1/catalog/deregister (CheckID)',
      'PUT',
      '/v1/catalog/deregister',
      '/v1/catalog/deregister',
      { Node: 'n1', CheckID: 'db-ttl' },
      { Node: 'n1', CheckID: 'nope' },
      200,
    ],
  ]

  it.each(cases)(
    '%s: the same 403 for an existing and a missing object without the permission; 200 / the miss answer with it',
    async (_, method, hit, miss, hitBody, missBody, missStatus) => {
      const reading = method === 'GET'
      // Reads need service:read: OUTSIDER has none. Writes need service:write: WEB has it only on
      // `web`, which this agent does not know of, and OUTSIDER on nothing.
      for (const token of reading ? [OUTSIDER] : [OUTSIDER, WEB]) {
        const onHit = await call(base, method, hit, token, hitBody)
        const onMiss = await call(base, method, miss, token, missBody)
        expect(onHit.status, onHit.text).toBe(403)
        expect(onMiss, `${token}: miss vs hit`).toEqual(onHit)
        expect(onHit.text).toMatch(reading ? /service:read/ : /service:write/)
        expect(onHit.text).not.toContain('db')
      }
      expect(local.get('db')?.checks.map((c) => c.id)).toEqual(['db-ttl'])
      const allowed = reading ? WEB : DB_WRITER
      expect((await call(base, method, miss, allowed, missBody)).status).toBe(missStatus)
      const ok = await call(base, method, hit, allowed, hitBody)
      expect(ok.status, ok.text).toBe(200)
    },
  )
})

describe('DELETE /v1/config/service-intentions/:name under ACLs: no existence leak', () => {
  let http: HttpApi | undefined
  afterAll(async () => {
    await http?.close()
  })

  it('the same 403 for an existing and a missing entry without intention:write; 200 / 404 with it', async () => {
    const { store, apply, index } = aclStore()
    apply({ op: 'intention.upsert', source: 'web', destination: 'db', action: 'allow' })
    const raft = {
      store,
      write: async (cmd: PolicyCommand) => ({ result: apply(cmd), index: index() }),
    } as unknown as RaftModule
    http = new HttpApi(pino({ level: 'silent' }))
    http.useAcl(new AclResolver(store.acl, { enabled: true, defaultPolicy: 'deny', anonymousRead: false }))
    registerRaftRoutes(http, raft)
    const base = `http://127.0.0.1:${(await http.listen('127.0.0.1', 0)).port}`
    const del = (name: string, token: string) =>
      call(base, 'DELETE', `/v1/config/service-intentions/${name}`, token)
    // OUTSIDER has no intention permission at all; WEB reads every intention but writes only web's.
    // The refusal names the entry asked (as for any name in a path): compared with it left out.
    const asked = (r: { status: number; text: string }, name: string) => ({
      status: r.status,
      text: r.text.replaceAll(`\\"${name}\\"`, '<asked>'),
    })
    for (const token of [OUTSIDER, WEB]) {
      const onHit = await del('db', token)
      const onMiss = await del('nope', token)
      expect(onHit.status, onHit.text).toBe(403)
      expect(asked(onMiss, 'nope'), `${token}: miss vs hit`).toEqual(asked(onHit, 'db'))
      expect(onHit.text).toMatch(/intention:write/)
    }
    expect(store.listIntentions().map((i) => i.destination)).toEqual(['db'])
    expect((await del('nope', MGMT)).status).toBe(404)
    expect((await del('db', MGMT)).status).toBe(200)
    expect(store.listIntentions()).toEqual([])
  })
})
