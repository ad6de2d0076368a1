/**
 * Who may hold a sealed copy of the CA root key when ACLs are on (issue #12): the predicate the
 * agent gives the CA manager as `keyHolderEligible` (ca-manager.ts).
 *
 * - An enrolled peer: exactly when its enrollment says voter (its token was voter-eligible).
 * - A peer with no enrollment: only a founder (a member of this agent's founding set, i.e. of the
 *   founding configuration) that was never revoked. Founders proved the initial management token
 *   before they were written as voters (src/node/raft/founding.ts), which makes them voters by
 *   right; the leader enrolls them as founders (FOUNDER_ACCESSOR_ID) soon after, from when on the
 *   first rule decides. They must get the key at once: the CA is created by the first leader right
 *   after founding, before any founder is enrolled, and were it sealed to that leader alone, its
 *   death before the founders' enrollment would lose the key for good (no other voter could sign).
 * - Anyone else: no, even if the Raft configuration lists it as a voter (a forced configuration
 *   change must not hand out the key).
 *
 * `founders()` is this agent's founding set (its durable founding commitment), undefined on an
 * agent that did not found. Every leader in the window before the founders are enrolled is itself a
 * founder (only enrolled voters are ever promoted), so the leader that applies this rule knows the
 * set when it matters.
 */

/** What the rule reads of the committed ACL state (AclStateView has these). */
export interface EnrollmentView {
  enrollment(peerId: string): { voter: boolean } | undefined
  revoked(peerId: string): boolean
}

export function enrolledVoterOrFounder(
  acl: EnrollmentView,
  founders: () => readonly string[] | undefined,
): (peerId: string) => boolean {
  return (peerId) => {
    const enrolled = acl.enrollment(peerId)
    if (enrolled !== undefined) return enrolled.voter
    return !acl.revoked(peerId) && (founders()?.includes(peerId) ?? false)
  }
}
