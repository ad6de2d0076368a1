/** The intention view rebuilds from the policy store only when the intentions or the default action changed. */
import { describe, expect, it, vi } from 'vitest'
import { DEFAULT_ACTION_ENTRY, IntentionView } from '../../../src/node/connect/intention-view.ts'
import {
  encodePolicyCommand,
  type PolicyCommand,
  PolicyStore,
} from '../../../src/raft/policy/policy-store.ts'

function applier(store: PolicyStore): (cmd: PolicyCommand) => void {
  let index = 0
  return (cmd) => {
    const r = store.apply({ term: 1, index: ++index, type: 'normal', data: encodePolicyCommand(cmd) })
    expect(r.ok).toBe(true)
  }
}

describe('IntentionView', () => {
  it('copies the intentions only after a batch that changed them or the default action', () => {
    const store = new PolicyStore()
    const apply = applier(store)
    const view = new IntentionView(store)
    const lists = vi.spyOn(store, 'listIntentions')
    expect(view.refresh()).toBeDefined() // the first look
    apply({ op: 'intention.upsert', source: 'web', destination: 'api', action: 'allow' })
    expect(view.refresh()?.intentions.map((i) => i.source)).toEqual(['web'])
    const copies = lists.mock.calls.length
    for (let i = 0; i < 20; i++) {
      apply({ op: 'config.set', kind: 'kv', name: `k${i}`, value: { value: 'x' } })
      expect(view.refresh()).toBeUndefined()
    }
    expect(lists.mock.calls.length).toBe(copies)

    apply({ op: 'intention.replace', destination: 'api', sources: [{ source: 'ops', action: 'deny' }] })
    expect(view.refresh()?.intentions.map((i) => `${i.source}:${i.action}`)).toEqual(['ops:deny'])
    apply({ op: 'config.set', ...DEFAULT_ACTION_ENTRY, value: { value: 'allow' } })
    expect(view.refresh()?.defaultAction).toBe('allow')
    apply({ op: 'intention.delete', source: 'ops', destination: 'api' })
    expect(view.refresh()?.intentions).toEqual([])
    expect(view.refresh()).toBeUndefined()
  })

  it('rebuilds after a snapshot restore', () => {
    const source = new PolicyStore()
    applier(source)({ op: 'intention.upsert', source: 'web', destination: 'db', action: 'allow' })
    const store = new PolicyStore()
    const view = new IntentionView(store)
    expect(view.refresh()?.intentions).toEqual([])
    store.restore(source.snapshot())
    expect(view.refresh()?.intentions.map((i) => i.destination)).toEqual(['db'])
    expect(view.intentionIndex()).toBeDefined()
  })

  it('reads an L7 intention stored before the linear-time rule (a backreference) without throwing', () => {
    const store = new PolicyStore()
    applier(store)({
      op: 'intention.upsert',
      source: 'web',
      destination: 'api',
      action: 'deny',
      permissions: [{ Action: 'allow', HTTP: { PathRegex: '/(a)\\1' } }],
    })
    const view = new IntentionView(store)
    expect(view.refresh()?.intentions.map((i) => i.source)).toEqual(['web'])
    expect(view.intentionIndex().decide('web', 'api').permissions).toHaveLength(1)
  })
})
