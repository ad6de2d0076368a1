/**
 * A config entry's kind is a caller's string: names of Object's own methods (`constructor`,
 * `toString`, ...) are unknown kinds like any other, refused with a 400 by the route and as an
 * invalid command by the check every agent and the leader run, never a TypeError (a 500).
 */
import { describe, expect, it } from 'vitest'
import { ApiError } from '../../../src/node/agent/errors.ts'
import { parseConfigEntryBody } from '../../../src/node/api/raft-routes.ts'
import { CONFIG_ENTRY_SCHEMAS, preparePolicyCommand } from '../../../src/raft/policy/policy-commands.ts'

const INHERITED = ['constructor', 'toString', '__proto__', 'hasOwnProperty', 'valueOf', 'isPrototypeOf']

describe('config entry kinds named like Object methods', () => {
  it('are unknown to the table', () => {
    for (const kind of INHERITED) expect(CONFIG_ENTRY_SCHEMAS[kind]).toBeUndefined()
    expect(CONFIG_ENTRY_SCHEMAS['kv']).toBeDefined()
  })

  it('get a 400 naming the kind from PUT /v1/config', () => {
    for (const kind of INHERITED) {
      let thrown: unknown
      try {
        parseConfigEntryBody({ Kind: kind, Name: 'x' }, new URLSearchParams())
      } catch (err) {
        thrown = err
      }
      expect(thrown).toBeInstanceOf(ApiError)
      expect((thrown as ApiError).status).toBe(400)
      expect((thrown as ApiError).message).toContain(`unknown config entry kind "${kind}"`)
    }
  })

  it('are refused, not thrown, by the command check', () => {
    for (const kind of INHERITED) {
      const r = preparePolicyCommand({ op: 'config.set', kind, name: 'x', value: {} })
      expect(r.ok).toBe(false)
      if (!r.ok) expect(r.message).toMatch(/unknown config entry kind/)
    }
  })
})
