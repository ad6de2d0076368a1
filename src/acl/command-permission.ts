import type { TxnOp } from '../raft/policy/kv-commands.ts'
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
    case 'intention.replace':
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
    case 'kv.set':
      return need.keyWrite(cmd.key)
    case 'kv.delete':
      return cmd.recurse === true ? need.keyWritePrefix(cmd.key) : need.keyWrite(cmd.key)
    case 'kv.delete-tree':
      return need.keyWritePrefix(cmd.prefix)
    case 'session.create':
    case 'session.destroy':
    case 'session.renew':
      return need.sessionWrite(cmd.node)
    case 'txn':
      return txnPermission(cmd.ops)
    default:
      return need.aclWrite()
  }
}

/**
 * What a transaction needs: every operation's own permission (Consul checks each op): read on the
 * keys it reads, write on the keys it writes, write on every key under a tree it deletes. The
 * refusal names the first operation (the HTTP route checks them one by one, naming the one refused).
 */
export function txnPermission(ops: readonly TxnOp[]): [PermissionCheck, PermissionNeed] {
  const needs = ops.map(txnOpPermission)
  return [(a) => needs.every(([c]) => c(a)), needs[0]?.[1] ?? { permission: 'key:write' }]
}

/** What one transaction operation needs. */
export function txnOpPermission(op: TxnOp): [PermissionCheck, PermissionNeed] {
  switch (op.verb) {
    case 'get':
    case 'get-tree':
    case 'check-index':
    case 'check-session':
    case 'check-not-exists':
      return need.keyRead(op.key)
    case 'delete-tree':
      return need.keyWritePrefix(op.key)
    default:
      return need.keyWrite(op.key)
  }
}

/**
 * The mesh-wide default intention action is a kv entry under this name (connect/intention-view.ts):
 * writing it is a mesh setting, not a key.
 */
const MESH_KEYS = new Set(['connect.default-intention-action'])

/** `service:write` on service kinds, `key:write` on kv, `mesh:write` otherwise (proxy-defaults). */
export function configWrite(kind: string, name: string): [PermissionCheck, PermissionNeed] {
  // Consul: service-intentions needs `intentions = write` on the destination.
  if (kind === 'service-intentions') return need.intentionWrite(name)
  if (SERVICE_KINDS.has(kind)) return need.serviceWrite(name)
  if (kind === 'kv' && MESH_KEYS.has(name)) return need.meshWrite()
  if (kind === 'kv') return need.keyWrite(name)
  return need.meshWrite()
}

/** `service:read` on service kinds, `key:read` on kv, `mesh:read` otherwise. */
export function configRead(kind: string, name: string): [PermissionCheck, PermissionNeed] {
  if (kind === 'service-intentions') return need.intentionRead(name)
  if (SERVICE_KINDS.has(kind)) return need.serviceRead(name)
  if (kind === 'kv' && MESH_KEYS.has(name)) return need.meshRead()
  if (kind === 'kv') return need.keyRead(name)
  return need.meshRead()
}
