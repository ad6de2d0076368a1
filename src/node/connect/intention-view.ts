/**
 * The intentions as committed on this agent, and the `IntentionIndex` the sidecars decide with,
 * rebuilt only when the intentions or the default action change.
 */
import { IntentionIndex } from '../../proxy/intentions.ts'
import { type IntentionAction, isIntentionName, type StoredIntention } from '../../raft/policy/intention.ts'
import { readingStoredPatterns } from '../../raft/policy/config-entries.ts'
import type { ConfigEntry } from '../../raft/policy/policy-store.ts'
import type { IntentionChange } from './events.ts'

/** The cluster-wide default intention action: a `kv` config entry in the Raft policy store. */
export const DEFAULT_ACTION_ENTRY = { kind: 'kv', name: 'connect.default-intention-action' } as const

/** The policy store queries the view reads. */
export interface IntentionSource {
  readonly index: number
  /** Raft index of the last change to the intentions. */
  readonly intentionsModifyIndex: number
  listIntentions(): StoredIntention[]
  getConfigEntry(kind: string, name: string): ConfigEntry | undefined
}

export class IntentionView {
  private index = new IntentionIndex([], 'deny')
  private list: StoredIntention[] = []
  private key = ''
  /** Rebuilds so far (the `intention:change` count). */
  changes = 0

  constructor(private readonly store: IntentionSource) {}

  intentions(): StoredIntention[] {
    return this.list
  }

  intentionIndex(): IntentionIndex {
    return this.index
  }

  /** Rebuilds after a change applied to the store; returns the change, if the intentions changed. */
  refresh(): IntentionChange | undefined {
    // Read after every applied batch: the intentions are copied only when they changed.
    const def = this.defaultAction()
    const key = `${this.store.intentionsModifyIndex}:${def}`
    if (key === this.key) return undefined
    this.key = key
    const list = this.store.listIntentions()
    // Entries are validated on write; one that is not (e.g. written by a newer agent) is skipped.
    const valid = list.filter((i) => isIntentionName(i.source) && isIntentionName(i.destination))
    // Stored intentions are read by the rules they were written under (readingStoredPatterns).
    this.index = readingStoredPatterns(
      () =>
        new IntentionIndex(
          valid.map((i) => ({
            source: i.source,
            destination: i.destination,
            action: i.action,
            ...(i.permissions !== undefined ? { permissions: i.permissions } : {}),
          })),
          def,
        ),
    )
    this.list = valid
    this.changes++
    return { index: this.store.index, intentions: valid, defaultAction: def }
  }

  private defaultAction(): IntentionAction {
    const e = this.store.getConfigEntry(DEFAULT_ACTION_ENTRY.kind, DEFAULT_ACTION_ENTRY.name)
    return e?.value['value'] === 'allow' ? 'allow' : 'deny'
  }
}
