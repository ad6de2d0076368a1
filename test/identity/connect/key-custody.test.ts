import { beforeAll, describe, expect, it } from 'vitest'
import { createRootCa, type RootCa } from '../../../src/identity/ca/ca.ts'
import { rootRecordOf } from '../../../src/identity/connect/ca-state.ts'
import {
  KeyCustody,
  type PolicyEntrySigner,
  type SigningRoot,
} from '../../../src/identity/connect/key-custody.ts'
import { FakeCa, nodeIdentity } from './fakes.ts'

let root: RootCa
beforeAll(async () => {
  root = await createRootCa({ trustDomain: 'test.peermesh', nowMs: Date.now() })
})

function setup(sealedTo: string[], self = nodeIdentity()) {
  const ca = new FakeCa()
  const record = rootRecordOf(root, 0, sealedTo)
  ca.state = { roots: [record], active: record, modifyIndex: 1 }
  const signed: SigningRoot[] = []
  const signEntry: PolicyEntrySigner = (r, _index, _rid, data) => {
    signed.push(r)
    return new Uint8Array([...data, 0xff])
  }
  const custody = new KeyCustody({ ca, identity: () => self, signEntry })
  return { custody, ca, signed, self }
}

describe('KeyCustody', () => {
  it('signs nothing without a sealed copy of the key (a learner): entries go out unchanged', () => {
    const { custody, signed } = setup([nodeIdentity().id])
    const data = new Uint8Array([1, 2, 3])
    expect(custody.holdsActiveKey()).toBe(false)
    expect(custody.sealEntry(5, undefined, data)).toBe(data)
    expect(custody.snapshotSigningRoot()).toBeUndefined()
    expect(signed).toHaveLength(0)
  })

  it('signs nothing before the CA exists or before the node key is loaded', () => {
    const self = nodeIdentity()
    const none = new KeyCustody({ ca: new FakeCa(), identity: () => self, signEntry: () => new Uint8Array() })
    expect(none.holdsActiveKey()).toBe(false)
    const { ca } = setup([self.id], self)
    const unloaded = new KeyCustody({ ca, identity: () => undefined, signEntry: () => new Uint8Array() })
    expect(unloaded.snapshotSigningRoot()).toBeUndefined()
  })

  it('a voter opens its copy and signs each entry with the active root and its key', () => {
    const self = nodeIdentity()
    const { custody, signed } = setup([self.id], self)
    expect(custody.holdsActiveKey()).toBe(true)
    expect(custody.sealEntry(7, { clientId: 'c', seq: 1 }, new Uint8Array([9]))).toEqual(
      new Uint8Array([9, 0xff]),
    )
    expect(signed[0]).toMatchObject({ id: root.id, keyPem: root.keyPem })
    expect(custody.snapshotSigningRoot()?.keyPem).toBe(root.keyPem)
  })
})
