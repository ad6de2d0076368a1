import { describe, expect, it } from 'vitest'
import { reduceMemoryOnce, userSetsMemoryReducer } from '../../../src/node/agent/memory-reducer.ts'

describe("the agent process's memory reducer", () => {
  it('asks V8 for one memory-reducing collection', () => {
    const set: string[] = []
    expect(reduceMemoryOnce((f) => set.push(f), false)).toBe(true)
    expect(set).toEqual(['--memory-reducer-single-gc'])
  })

  it("the user's own memory reducer flags win: nothing is set", () => {
    const set: string[] = []
    expect(reduceMemoryOnce((f) => set.push(f), true)).toBe(false)
    expect(set).toEqual([])
  })

  it.each([
    [[], '', false],
    [['--no-memory-reducer'], '', true],
    [[], '--max-old-space-size=200 --memory_reducer_for_small_heaps', true],
    [['--enable-source-maps'], '--max-semi-space-size=8', false],
  ])('execArgv %j, NODE_OPTIONS %j: user flags = %s', (execArgv, nodeOptions, expected) => {
    expect(userSetsMemoryReducer(execArgv, nodeOptions)).toBe(expected)
  })
})
