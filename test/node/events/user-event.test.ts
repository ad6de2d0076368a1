import { describe, expect, it } from 'vitest'
import { pack } from '../../../src/common/msgpack.ts'
import { systemClock } from '../../../src/common/clock.ts'
import { UserEventBuffer } from '../../../src/node/events/event-buffer.ts'
import {
  decodeEventBody,
  encodeEventBody,
  eventAppliesTo,
  eventListIndex,
  type UserEventRecord,
  userEventJson,
  userEventProblem,
} from '../../../src/node/events/user-event.ts'

const ev = (patch: Partial<UserEventRecord> = {}): UserEventRecord => ({
  id: '00000000-0000-4000-8000-000000000001',
  name: 'deploy',
  payload: new TextEncoder().encode('v2'),
  nodeFilter: '',
  serviceFilter: '',
  tagFilter: '',
  version: 1,
  ltime: 7,
  ...patch,
})

describe('user event body', () => {
  it('round-trips through the gossip body', () => {
    const e = ev({ nodeFilter: '^web', serviceFilter: 'api', tagFilter: 'v1' })
    const { id, ltime, ...rest } = e
    expect(decodeEventBody(id, ltime, encodeEventBody(rest))).toEqual(e)
  })

  it.each([
    ['garbage', new Uint8Array([0xc1])],
    ['not an array', pack({ name: 'x' })],
    ['a missing field', pack([1, 'x', new Uint8Array(0), '', ''])],
    ['a string payload', pack([1, 'x', 'payload', '', '', ''])],
    ['an empty name', pack([1, '', new Uint8Array(0), '', '', ''])],
    ['a payload past 512 bytes', pack([1, 'x', new Uint8Array(513), '', '', ''])],
    ['a tag filter without a service filter', pack([1, 'x', new Uint8Array(0), '', '', 'v1'])],
  ])('refuses %s from the network', (_what, body) => {
    expect(decodeEventBody('id', 1, body)).toBeUndefined()
  })

  it("is shown in Consul's shape", () => {
    expect(userEventJson(ev())).toEqual({
      ID: '00000000-0000-4000-8000-000000000001',
      Name: 'deploy',
      Payload: 'djI=',
      NodeFilter: '',
      ServiceFilter: '',
      TagFilter: '',
      Version: 1,
      LTime: 7,
    })
    expect(userEventJson(ev({ payload: new Uint8Array(0) })).Payload).toBeNull()
  })
})

describe('firing rules (Consul validateUserEventParams)', () => {
  it.each([
    [{}, undefined],
    [{ name: '' }, 'Missing name'],
    [{ tagFilter: 'v1' }, 'Cannot provide tag filter without service filter'],
    [{ nodeFilter: '(' }, 'Invalid node filter: not a regular expression'],
    [{ serviceFilter: 'a', tagFilter: '[' }, 'Invalid tag filter: not a regular expression'],
    [{ payload: new Uint8Array(513) }, 'payload: 513 bytes, more than the limit of 512'],
    [{ name: 'x'.repeat(129) }, 'name: at most 128 characters'],
  ])('%j -> %s', (patch, problem) => {
    expect(userEventProblem(ev(patch))).toBe(problem)
  })
})

describe('which agents an event is for (Consul shouldProcessUserEvent)', () => {
  const target = {
    node: 'web-1',
    services: [
      { name: 'api', tags: ['v1', 'canary'] },
      { name: 'db', tags: [] },
    ],
  }
  it.each([
    [{}, true],
    [{ nodeFilter: '^web' }, true],
    [{ nodeFilter: 'db-' }, false],
    [{ serviceFilter: 'ap' }, true],
    [{ serviceFilter: '^cache$' }, false],
    [{ serviceFilter: 'api', tagFilter: 'canary' }, true],
    [{ serviceFilter: 'db', tagFilter: 'canary' }, false],
    [{ nodeFilter: 'web', serviceFilter: 'api', tagFilter: '^v2$' }, false],
    [{ version: 2 }, false],
  ])('%j -> %s', (patch, want) => {
    expect(eventAppliesTo(ev(patch), target)).toBe(want)
  })
})

describe('hostile filters (any member fires events; every agent evaluates them)', () => {
  // Each of these held every agent's event loop for seconds to hours on the backtracking engine;
  // with the linear-time engine they return at once (a hang here is that bug back).
  const sixtyWays = `^(?:${Array(60).fill('.').join('|')})*!`
  const agent = { node: 'agent-1', services: [{ name: 'api', tags: [`${'a'.repeat(26)}b`, 'a'.repeat(27)] }] }

  it('a node filter with 60 alternatives under a star: accepted, evaluated in linear time', () => {
    expect(userEventProblem(ev({ nodeFilter: sixtyWays }))).toBeUndefined()
    expect(eventAppliesTo(ev({ nodeFilter: sixtyWays }), agent)).toBe(false)
    expect(eventAppliesTo(ev({ nodeFilter: sixtyWays }), { ...agent, node: 'agent-1!' })).toBe(true)
  })

  it('a tag filter ^(a|a?)+$ against long tags gives the right answer', () => {
    const e = ev({ serviceFilter: 'api', tagFilter: '^(a|a?)+$' })
    expect(eventAppliesTo(e, agent)).toBe(true) // the 27 a's
    expect(eventAppliesTo(e, { ...agent, services: [{ name: 'api', tags: [`${'a'.repeat(40)}b`] }] })).toBe(
      false,
    )
  })

  it.each([
    [{ nodeFilter: '(a)\\1' }, 'node'],
    [{ nodeFilter: '^(?!db)' }, 'node'],
    [{ serviceFilter: '(?<=x)api' }, 'service'],
    [{ serviceFilter: 'api', tagFilter: 'v\\d{1,100}' }, 'tag'],
  ])('%j is refused when fired: the linear engine cannot run it', (patch, what) => {
    expect(userEventProblem(ev(patch))).toMatch(
      new RegExp(`^Invalid ${what} filter: cannot be run in linear time`),
    )
  })

  it('such an event from the network is dropped, and applies nowhere if it gets past', () => {
    const e = ev({ nodeFilter: '^(agent)-\\1' })
    const { id, ltime, ...rest } = e
    expect(decodeEventBody(id, ltime, encodeEventBody(rest))).toBeUndefined()
    expect(eventAppliesTo(e, { node: 'agent-agent', services: [] })).toBe(false)
    expect(eventAppliesTo(ev({ serviceFilter: 'api', tagFilter: '(?=a)a' }), agent)).toBe(false)
  })
})

describe("the event list's index (Consul uuidToUint64)", () => {
  it('XORs the two halves of the last ID; 1 when the list is empty', () => {
    expect(eventListIndex(undefined)).toBe('1')
    expect(eventListIndex('00000000-0000-0000-0000-000000000005')).toBe('5')
    expect(eventListIndex('ffffffff-ffff-ffff-0000-000000000000')).toBe('18446744073709551615')
    expect(eventListIndex('b54fe110-7af5-cafc-d1fb-afc8ba432b1c')).toBe(
      (0xb54fe1107af5cafcn ^ 0xd1fbafc8ba432b1cn).toString(),
    )
  })
})

describe('UserEventBuffer (Consul eventBuf, 256)', () => {
  it('keeps the last N, oldest first', () => {
    const b = new UserEventBuffer(systemClock, 3)
    for (let i = 1; i <= 5; i++) b.add(ev({ id: `e${i}` }))
    expect(b.list().map((e) => e.id)).toEqual(['e3', 'e4', 'e5'])
  })

  it('waitWhile ends when the condition changes, not at an add that keeps it', async () => {
    const b = new UserEventBuffer(systemClock)
    let ended = false
    const p = b
      .waitWhile(() => !b.list().some((e) => e.name === 'wanted'), 60_000)
      .then(() => {
        ended = true
      })
    b.add(ev({ id: 'a', name: 'other' }))
    await Promise.resolve()
    expect(ended).toBe(false)
    expect(b.waiting).toBe(1)
    b.add(ev({ id: 'b', name: 'wanted' }))
    await p
    expect(b.waiting).toBe(0)
  })
})
