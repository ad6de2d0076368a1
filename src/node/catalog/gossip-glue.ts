/**
 * How gossip feeds the catalog, as pure functions shared by the agent (`CatalogModule`) and the
 * simulation tests: a node's payload rides in its gossip record's `meta[CATALOG_META_KEY]`, and
 * every member view gossip reports (the local node included) becomes a `Catalog.applyMember`.
 */
import type { MemberView, SwimEvent } from '../../gossip/index.ts'
import type { Catalog, MemberUpdate } from './catalog.ts'
import { CATALOG_META_KEY, type NodePayload } from './node-payload.ts'

/** The record meta that carries `payload` (replaces the whole meta: the catalog owns it). */
export function catalogMeta(payload: NodePayload): Record<string, unknown> {
  return { [CATALOG_META_KEY]: payload }
}

/** What the catalog needs of a gossip member view. */
export function memberUpdateOf(m: MemberView): MemberUpdate {
  return {
    id: m.id,
    name: m.name,
    address: m.address,
    status: m.status,
    version: m.version,
    payload: m.meta[CATALOG_META_KEY],
  }
}

/**
 * Applies one gossip event to the catalog: a reaped member is forgotten, a name conflict changes
 * nothing the catalog shows, every other event carries the member's current view.
 */
export function applyGossipEvent(catalog: Catalog, e: SwimEvent): void {
  if (e.type === 'member:reap') catalog.removeMember(e.member.id)
  else if (e.type !== 'member:conflict') catalog.applyMember(memberUpdateOf(e.member))
}
