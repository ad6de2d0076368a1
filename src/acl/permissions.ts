import type { Authorizer } from './authorizer.ts'

/** Consul's permission names, as its "lacks permission" messages show them. */
export type PermissionName =
  | 'service:read'
  | 'service:write'
  | 'intention:read'
  | 'intention:write'
  | 'node:read'
  | 'node:write'
  | 'key:read'
  | 'key:write'
  | 'session:read'
  | 'session:write'
  | 'agent:read'
  | 'agent:write'
  | 'event:read'
  | 'event:write'
  | 'operator:read'
  | 'operator:write'
  | 'acl:read'
  | 'acl:write'
  | 'mesh:read'
  | 'mesh:write'

/** A permission a request needs: its name, and the resource it is on (none for operator/acl/mesh). */
export interface PermissionNeed {
  permission: PermissionName
  resource?: string
}

export type PermissionCheck = (authz: Authorizer) => boolean

/**
 * Each permission as a `[check, what]` pair, to spread into `requirePermission(req, acl, ...need.serviceWrite('web'))`.
 */
export const need = {
  serviceRead: (name: string) => pair((a) => a.serviceRead(name), 'service:read', name),
  serviceWrite: (name: string) => pair((a) => a.serviceWrite(name), 'service:write', name),
  intentionRead: (destination: string) =>
    pair((a) => a.intentionRead(destination), 'intention:read', destination),
  intentionWrite: (destination: string) =>
    pair((a) => a.intentionWrite(destination), 'intention:write', destination),
  nodeRead: (name: string) => pair((a) => a.nodeRead(name), 'node:read', name),
  nodeWrite: (name: string) => pair((a) => a.nodeWrite(name), 'node:write', name),
  keyRead: (key: string) => pair((a) => a.keyRead(key), 'key:read', key),
  keyWrite: (key: string) => pair((a) => a.keyWrite(key), 'key:write', key),
  /** Write on `prefix` and every key under it (a recursive delete): Consul's KeyWritePrefix. */
  keyWritePrefix: (prefix: string) => pair((a) => a.keyWritePrefix(prefix), 'key:write', prefix),
  sessionRead: (node: string) => pair((a) => a.sessionRead(node), 'session:read', node),
  sessionWrite: (node: string) => pair((a) => a.sessionWrite(node), 'session:write', node),
  agentRead: (node: string) => pair((a) => a.agentRead(node), 'agent:read', node),
  agentWrite: (node: string) => pair((a) => a.agentWrite(node), 'agent:write', node),
  eventRead: (name: string) => pair((a) => a.eventRead(name), 'event:read', name),
  eventWrite: (name: string) => pair((a) => a.eventWrite(name), 'event:write', name),
  operatorRead: () => pair((a) => a.operatorRead(), 'operator:read'),
  operatorWrite: () => pair((a) => a.operatorWrite(), 'operator:write'),
  aclRead: () => pair((a) => a.aclRead(), 'acl:read'),
  aclWrite: () => pair((a) => a.aclWrite(), 'acl:write'),
  meshRead: () => pair((a) => a.meshRead(), 'mesh:read'),
  meshWrite: () => pair((a) => a.meshWrite(), 'mesh:write'),
} as const

function pair(
  check: PermissionCheck,
  permission: PermissionName,
  resource?: string,
): [PermissionCheck, PermissionNeed] {
  return [check, resource === undefined ? { permission } : { permission, resource }]
}

/**
 * Consul's refusal text: `Permission denied: token with AccessorID '<id>' lacks permission
 * 'service:write' on "web"` (the resource quoted as Go's %q does, absent for operator/acl/mesh).
 */
export function permissionDeniedMessage(accessorId: string, what: PermissionNeed): string {
  const on = what.resource === undefined ? '' : ` on ${JSON.stringify(what.resource)}`
  return `Permission denied: token with AccessorID '${accessorId}' lacks permission '${what.permission}'${on}`
}
