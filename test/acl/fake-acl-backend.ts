import pino from 'pino'
import { AclResolver, type AclResolverConfig } from '../../src/node/api/acl-auth.ts'
import { type AclBackend, registerAclRoutes } from '../../src/node/api/acl-routes.ts'
import { HttpApi } from '../../src/node/api/server.ts'
import { type AclCommand, type AclResult, AclState } from '../../src/raft/policy/acl-state.ts'

/** The Raft side of the ACL routes, faked: every write is applied at the next index at once. */
export class FakeAclBackend implements AclBackend {
  readonly state = new AclState()
  index = 0
  readonly writes: AclCommand[] = []
  failWith: Error | undefined

  async write(cmd: AclCommand): Promise<AclResult> {
    if (this.failWith) throw this.failWith
    this.writes.push(cmd)
    return this.state.apply(cmd, ++this.index)
  }
}

export const ACL_ON: AclResolverConfig = { enabled: true, defaultPolicy: 'deny', anonymousRead: true }

/** A real HttpApi on 127.0.0.1 with the ACL routes over a fake backend; IDs count up from 1. */
export async function startAclApi(config: AclResolverConfig = ACL_ON): Promise<{
  http: HttpApi
  backend: FakeAclBackend
  address: string
}> {
  const backend = new FakeAclBackend()
  let ids = 0
  const http = new HttpApi(pino({ level: 'silent' }))
  registerAclRoutes(http, {
    backend,
    resolver: new AclResolver(backend.state, config),
    newId: () => `00000000-0000-4000-8000-${(++ids).toString(16).padStart(12, '0')}`,
    now: () => new Date('2026-12-04T14:00:00Z'),
  })
  const addr = await http.listen('127.0.0.1', 0)
  return { http, backend, address: `127.0.0.1:${addr.port}` }
}
