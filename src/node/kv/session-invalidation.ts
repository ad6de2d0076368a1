import type { StoredSession } from '../../raft/policy/kv-state.ts'
import type { NodeHealth } from '../api/kv-http.ts'
import { isGossipCheck } from '../api/session-routes.ts'

/**
 * Which sessions must be invalidated now, and why (Consul's rules):
 * - `ttl`: a session with a TTL not renewed for twice its TTL (Consul's `sessionTTLMultiplier`:
 *   the TTL is a lower bound, the server may wait up to twice as long), counted at the earliest
 *   from `leadingSince` (the leader's wall clock when it took over: like Consul, a new leader
 *   gives every session a full TTL, since no renewal could be committed while there was none);
 * - `node`: its node has failed in gossip (dead or left), or is gone from the catalog once
 *   `missingNodeFails` (the caller's catalog has had time to learn every member: a new leader's
 *   catalog starts empty, and must not take every node for gone);
 * - `check`: one of its health checks is critical (the gossip check: the node is not alive).
 * A check the catalog does not show (a remote node's record not seen yet) invalidates nothing.
 * Pure: the leader's invalidator (kv-module.ts) commits what this returns.
 */
export function sessionsToInvalidate(
  sessions: readonly StoredSession[],
  now: number,
  health: (node: string) => NodeHealth | undefined,
  missingNodeFails: boolean,
  leadingSince = 0,
): { session: StoredSession; reason: 'ttl' | 'node' | 'check' }[] {
  const out: { session: StoredSession; reason: 'ttl' | 'node' | 'check' }[] = []
  const cache = new Map<string, NodeHealth | undefined>()
  for (const s of sessions) {
    if (s.ttlMs > 0 && now > Math.max(s.renewedAt, leadingSince) + 2 * s.ttlMs) {
      out.push({ session: s, reason: 'ttl' })
      continue
    }
    if (!cache.has(s.node)) cache.set(s.node, health(s.node))
    const h = cache.get(s.node)
    if (h === undefined ? missingNodeFails : !h.alive) {
      out.push({ session: s, reason: 'node' })
      continue
    }
    if (h !== undefined && s.checks.some((c) => !isGossipCheck(c) && h.checks.get(c) === 'critical'))
      out.push({ session: s, reason: 'check' })
  }
  return out
}
