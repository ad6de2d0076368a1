import pino from 'pino'
import { afterEach, describe, expect, it } from 'vitest'
import { AclResolver } from '../../../src/node/api/acl-auth.ts'
import { type EnrollmentListJson, registerRaftRoutes } from '../../../src/node/api/raft-routes.ts'
import { HttpApi } from '../../../src/node/api/server.ts'
import type { RaftModule } from '../../../src/node/raft/raft-module.ts'
import type { PolicyCommand } from '../../../src/raft/index.ts'
import { encodePolicyCommand, PolicyStore } from '../../../src/raft/policy/policy-store.ts'

const id = (n: number): string => `00000000-0000-4000-8000-${n.toString(16).padStart(12, '0')}`
const MGMT = id(101)
const NODE_TOKEN = id(11)

let http: HttpApi | undefined
afterEach(async () => {
  await http?.close()
  http = undefined
})

/** The raft routes over a real store; writes apply at once (what the leader would propose). */
async function setup() {
  const store = new PolicyStore()
  let index = 0
  const writes: PolicyCommand[] = []
  const apply = (cmd: unknown) =>
    store.apply({ term: 1, index: ++index, type: 'normal', data: encodePolicyCommand(cmd as PolicyCommand) })
  apply({ op: 'acl.bootstrap', accessorId: id(100), secretId: MGMT, createTime: 't' })
  apply({
    op: 'acl.token.upsert',
    mode: 'create',
    accessorId: id(10),
    secretId: NODE_TOKEN,
    nodeIdentities: [{ nodeName: 'web-1', datacenter: 'dc1' }],
    createTime: 't',
  })
  apply({ op: 'acl.node.enroll', peerId: 'PeerW', node: 'web-1', voter: false, accessorId: id(10) })
  apply({ op: 'acl.service.grant', peerId: 'PeerW', service: 'api', accessorId: id(10) })
  const raft = {
    store,
    write: async (cmd: PolicyCommand) => {
      writes.push(cmd)
      const result = apply(cmd)
      return { index, result }
    },
  } as unknown as RaftModule
  http = new HttpApi(pino({ level: 'silent' }))
  http.useAcl(new AclResolver(store.acl, { enabled: true, defaultPolicy: 'deny', anonymousRead: true }))
  registerRaftRoutes(http, raft)
  const addr = await http.listen('127.0.0.1', 0)
  const call = async (method: string, path: string, token?: string) => {
    const res = await fetch(`http://127.0.0.1:${addr.port}${path}`, {
      method,
      headers: token !== undefined ? { 'x-consul-token': token } : {},
    })
    return { status: res.status, json: (await res.json()) as Record<string, unknown> }
  }
  return { store, writes, call }
}

describe('enrollment routes', () => {
  it('GET /v1/operator/enrollment lists enrollments, grants and revoked ids, with operator:read', async () => {
    const { call } = await setup()
    expect((await call('GET', '/v1/operator/enrollment')).status).toBe(403)
    expect((await call('GET', '/v1/operator/enrollment', NODE_TOKEN)).json['error']).toMatch(/operator:read/)
    const r = await call('GET', '/v1/operator/enrollment', MGMT)
    expect(r.status).toBe(200)
    expect(r.json as unknown as EnrollmentListJson).toEqual({
      Enrollments: [{ PeerID: 'PeerW', Node: 'web-1', Voter: false, AccessorID: id(10), CreateIndex: 3 }],
      Grants: [{ PeerID: 'PeerW', Service: 'api', AccessorID: id(10), CreateIndex: 4 }],
      Revoked: [],
    })
  })

  it('DELETE /v1/operator/enrollment/:node revokes with operator:write (404 when not enrolled, 400 on a bad name)', async () => {
    const { call, store, writes } = await setup()
    const denied = await call('DELETE', '/v1/operator/enrollment/web-1', NODE_TOKEN)
    expect(denied.status).toBe(403)
    expect(denied.json['error']).toMatch(/operator:write/)
    expect(writes).toEqual([])
    expect((await call('DELETE', '/v1/operator/enrollment/web-1', MGMT)).status).toBe(200)
    expect(writes).toEqual([{ op: 'acl.node.unenroll', node: 'web-1' }])
    expect(store.acl.revoked('PeerW')).toBe(true)
    expect((await call('DELETE', '/v1/operator/enrollment/web-1', MGMT)).status).toBe(404)
    expect((await call('DELETE', '/v1/operator/enrollment/-x', MGMT)).status).toBe(400)
  })
})
