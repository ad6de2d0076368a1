import type { PolicyCommand } from '../raft/policy/policy-commands.ts'
import { need, type PermissionCheck, type PermissionNeed } from './permissions.ts'

/** Config entry kinds written with `service:write` on the entry's name (Consul's service config entries). */
const SERVICE_KINDS = new Set(['service-splitter', 'service-resolver', 'service-router', 'service-defaults'])

/**
 * What a token must grant to write `cmd` (docs/SECURITY.md, the permission table): the same rule
 * on the HTTP route that takes the write and on the leader that receives it forwarded. Undefined:
 * no token is needed (`acl.bootstrap`, refused by the state once done). `ca.*` is the leader's own
 * CA manager's, and `acl.node.enroll` / `acl.service.grant` the leader's enrollment server's: never
 * authorized from a request (`operator:write` stands for them).
 */
export function commandPermission(cmd: PolicyCommand): [PermissionCheck, PermissionNeed] | undefined {
  switch (cmd.op) {
    case 'intention.upsert':
    case 'intention.delete':
      return need.intentionWrite(cmd.destination)
    case 'config.set':
    case 'config.delete':
      return configWrite(cmd.kind, cmd.name)
    case 'ca.setRoots':
    case 'acl.node.enroll':
    case 'acl.service.grant':
      // Never authorized from a request: the leader proposes these itself after checking a typed
      // request (node/raft/enrollment.ts); a forward of one is refused before this is asked.
      return need.operatorWrite()
    case 'acl.node.unenroll':
      // An operator's revoke of a node (`DELETE /v1/operator/enrollment/:node`).
      return need.operatorWrite()
    case 'acl.bootstrap':
      return undefined
    default:
      return need.aclWrite()
  }
}

/**
 * The mesh-wide default intention action is a kv entry under this name (connect/intention-view.ts):
 * writing it is a mesh setting, not a key.
 */
const MESH_KEYS = new Set(['connect.default-intention-action'])

/** `service:write` on service kinds, `key:write` on kv, `mesh:write` otherwise (proxy-defaults). */
export function configWrite(kind: string, name: string): [PermissionCheck, PermissionNeed] {
  if (SERVICE_KINDS.has(kind)) return need.serviceWrite(name)
  if (kind === 'kv' && MESH_KEYS.has(name)) return need.meshWrite()
  if (kind === 'kv') return need.keyWrite(name)
  return need.meshWrite()
}

/** `service:read` on service kinds, `key:read` on kv, `mesh:read` otherwise. */
export function configRead(kind: string, name: string): [PermissionCheck, PermissionNeed] {
  if (SERVICE_KINDS.has(kind)) return need.serviceRead(name)
  if (kind === 'kv' && MESH_KEYS.has(name)) return need.meshRead()
  if (kind === 'kv') return need.keyRead(name)
  return need.meshRead()
}
