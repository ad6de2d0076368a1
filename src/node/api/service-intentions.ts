/**
 * Consul's `service-intentions` config entry over the intention store: `PUT /v1/config` with
 * `Kind: "service-intentions"` replaces every intention to the entry's `Name` in one Raft command
 * (`intention.replace`), and `GET /v1/config/service-intentions[/name]` shows the stored
 * intentions grouped by destination. Same data as `/v1/connect/intentions`, two shapes.
 */
import { configEntryProblemOf } from '../../raft/policy/config-entries.ts'
import { serviceIntentionsSchema } from '../../raft/policy/config-entries.ts'
import { WILDCARD } from '../../raft/policy/intention.ts'
import type { StoredIntention } from '../../raft/policy/intention.ts'
import type { PolicyCommand } from '../../raft/policy/policy-commands.ts'
import { intentionPrecedence } from '../../proxy/intentions.ts'
import { isDnsLabel } from '../../identity/ca/spiffe.ts'
import { ApiError } from '../agent/errors.ts'
import type { ConfigEntryJson } from './raft-routes.ts'

export const SERVICE_INTENTIONS_KIND = 'service-intentions'

/** A `PUT /v1/config` body of kind service-intentions (`Kind`/`Name` already taken out) as a command. */
export function serviceIntentionsCommand(name: unknown, value: Record<string, unknown>): PolicyCommand {
  if (name !== WILDCARD && !isDnsLabel(name))
    throw new ApiError("name: must be a service name (lowercase a-z, 0-9, '-', 1-63 characters) or '*'", 400)
  const problem = configEntryProblemOf(serviceIntentionsSchema, value)
  if (problem !== undefined) throw new ApiError(problem, 400)
  const entry = serviceIntentionsSchema.parse(value)
  return {
    op: 'intention.replace',
    destination: name as string,
    sources: (entry.Sources ?? []).map((s) => ({
      source: s.Name,
      action: s.Permissions !== undefined ? 'deny' : s.Action!,
      ...(s.Permissions !== undefined ? { permissions: s.Permissions } : {}),
      ...(s.Description !== undefined && s.Description !== '' ? { description: s.Description } : {}),
    })),
  }
}

/** The stored intentions to `destination` as Consul's service-intentions entry; undefined if none. */
export function serviceIntentionsJson(
  intentions: readonly StoredIntention[],
  destination: string,
): ConfigEntryJson | undefined {
  const mine = intentions
    .filter((i) => i.destination === destination)
    .sort((a, b) => intentionPrecedence(b) - intentionPrecedence(a) || (a.source < b.source ? -1 : 1))
  if (mine.length === 0) return undefined
  // The flat shape of every config entry on this API (`configEntryJson`).
  return {
    Sources: mine.map((i) => ({
      Name: i.source,
      ...(i.permissions !== undefined ? { Permissions: i.permissions } : { Action: i.action }),
      ...(i.description !== undefined ? { Description: i.description } : {}),
      Precedence: intentionPrecedence(i),
      Type: 'consul',
    })),
    kind: SERVICE_INTENTIONS_KIND,
    name: destination,
    createIndex: Math.min(...mine.map((i) => i.createdIndex)),
    modifyIndex: Math.max(...mine.map((i) => i.modifyIndex)),
  }
}

/** Every destination's entry, by name. */
export function allServiceIntentionsJson(intentions: readonly StoredIntention[]): ConfigEntryJson[] {
  const names = [...new Set(intentions.map((i) => i.destination))].sort()
  return names.map((n) => serviceIntentionsJson(intentions, n)!)
}
