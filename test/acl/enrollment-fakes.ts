import type { NodeEnrollment, ServiceGrant } from '../../src/acl/types.ts'
import { type AclCommandInput, AclState } from '../../src/raft/policy/acl-state.ts'

/**
 * The real ACL state (tokens and policies through `apply`) with enrollments and service grants
 * kept here, until the enrollment commands land in AclState: every change bumps `index` as an
 * applied entry would.
 */
export class FakeEnrollmentState extends AclState {
  private readonly enrolled = new Map<string, NodeEnrollment>()
  private readonly grants = new Map<string, ServiceGrant[]>()
  private readonly revokedIds = new Set<string>()
  private next = 1

  /** Applies an ACL command at the next index; throws if refused. */
  run(cmd: AclCommandInput): void {
    const r = this.apply(cmd, this.next++)
    if (!r.ok) throw new Error(`${r.code}: ${r.message}`)
    if (cmd.op === 'acl.token.delete') this.cascade(cmd.accessorId)
  }

  enroll(peerId: string, node: string, accessorId: string, voter = false): void {
    const at = this.next++
    this.enrolled.set(peerId, { peerId, node, voter, accessorId, createIndex: at })
    this.revokedIds.delete(peerId)
    this.index = at
  }

  grant(peerId: string, service: string, accessorId: string): void {
    const at = this.next++
    const list = this.grants.get(peerId) ?? []
    list.push({ peerId, service, accessorId, createIndex: at })
    this.grants.set(peerId, list)
    this.index = at
  }

  private cascade(accessorId: string): void {
    for (const [id, e] of this.enrolled) {
      if (e.accessorId !== accessorId) continue
      this.enrolled.delete(id)
      this.revokedIds.add(id)
    }
    for (const [id, list] of this.grants)
      this.grants.set(
        id,
        list.filter((g) => g.accessorId !== accessorId),
      )
  }

  override enrollment(peerId: string): NodeEnrollment | undefined {
    const e = this.enrolled.get(peerId)
    return e === undefined ? undefined : { ...e }
  }

  override enrollments(): NodeEnrollment[] {
    return [...this.enrolled.values()].map((e) => ({ ...e }))
  }

  override revoked(peerId: string): boolean {
    return this.revokedIds.has(peerId)
  }

  override serviceGrants(peerId: string): ServiceGrant[] {
    return (this.grants.get(peerId) ?? []).map((g) => ({ ...g }))
  }
}

let uuidCount = 0
/** A fresh UUID-shaped id, counting up (readable in failures). */
export function testUuid(): string {
  return `00000000-0000-4000-8000-${(++uuidCount).toString(16).padStart(12, '0')}`
}

/** Creates a token (and returns its AccessorID) with the given policies (by name) and service identities. */
export function createToken(
  state: FakeEnrollmentState,
  opts: { policies?: string[]; services?: string[]; nodes?: string[] } = {},
): { accessorId: string; secretId: string } {
  const accessorId = testUuid()
  const secretId = testUuid()
  state.run({
    op: 'acl.token.upsert',
    mode: 'create',
    accessorId,
    secretId,
    policies: (opts.policies ?? []).map((name) => ({ name })),
    serviceIdentities: (opts.services ?? []).map((serviceName) => ({ serviceName })),
    nodeIdentities: (opts.nodes ?? []).map((nodeName) => ({ nodeName, datacenter: 'dc1' })),
    createTime: '2026-12-04T00:00:00Z',
  })
  return { accessorId, secretId }
}

/** Creates (or, given its id, updates) a policy named `name` with these rules; returns its id. */
export function putPolicy(state: FakeEnrollmentState, name: string, rules: string, id?: string): string {
  const policyId = id ?? testUuid()
  state.run({
    op: 'acl.policy.upsert',
    mode: id === undefined ? 'create' : 'update',
    id: policyId,
    name,
    rules,
  })
  return policyId
}
