import { describe, expect, it } from 'vitest'
import { commandPermission } from '../../src/acl/command-permission.ts'
import { MANAGE_ALL, PolicyAuthorizer, parseRules } from '../../src/acl/index.ts'
import type { PolicyCommand } from '../../src/raft/policy/policy-commands.ts'

/**
 * What the leader checks on a forwarded KV, session or txn write (the same rule as the routes):
 * a token that reads `app/` and the sessions, and writes only `app/mine/` and sessions on `n1`.
 */
const token = new PolicyAuthorizer(
  [
    parseRules(
      'key_prefix "app/" { policy = "read" }\nkey_prefix "app/mine/" { policy = "write" }\nsession "n1" { policy = "write" }\nsession_prefix "" { policy = "read" }',
    ),
  ],
  'deny',
)

const S = '11111111-1111-4111-8111-111111111111'
const session = (node: string): PolicyCommand => ({
  op: 'session.create',
  id: S,
  name: '',
  node,
  lockDelayMs: 0,
  behavior: 'release',
  ttlMs: 0,
  checks: [],
  now: 0,
})

const cases: [string, PolicyCommand, boolean, string][] = [
  ['set under the write prefix', { op: 'kv.set', key: 'app/mine/x', value: '', now: 0 }, true, 'key:write'],
  ['set a read-only key', { op: 'kv.set', key: 'app/x', value: '', now: 0 }, false, 'key:write'],
  [
    'acquire a read-only key',
    { op: 'kv.set', key: 'app/x', value: '', acquire: S, now: 0 },
    false,
    'key:write',
  ],
  ['delete a read-only key', { op: 'kv.delete', key: 'app/x' }, false, 'key:write'],
  [
    'recursive delete of the write prefix',
    { op: 'kv.delete', key: 'app/mine/', recurse: true },
    true,
    'key:write',
  ],
  [
    'recursive delete over a read-only tree',
    { op: 'kv.delete', key: 'app/', recurse: true },
    false,
    'key:write',
  ],
  ['delete-tree over a read-only tree', { op: 'kv.delete-tree', prefix: 'app/' }, false, 'key:write'],
  ['session on its own node', session('n1'), true, 'session:write'],
  ['session on another node', session('n2'), false, 'session:write'],
  [
    'destroy a session on another node',
    { op: 'session.destroy', id: S, node: 'n2', now: 0 },
    false,
    'session:write',
  ],
  [
    'renew a session on another node',
    { op: 'session.renew', id: S, node: 'n2', now: 0 },
    false,
    'session:write',
  ],
  [
    'txn reading app/ and writing app/mine/',
    {
      op: 'txn',
      now: 0,
      ops: [
        { verb: 'get', key: 'app/x' },
        { verb: 'set', key: 'app/mine/y', value: '' },
      ],
    },
    true,
    'key:read',
  ],
  [
    'txn with one write outside its prefix',
    {
      op: 'txn',
      now: 0,
      ops: [
        { verb: 'set', key: 'app/mine/y', value: '' },
        { verb: 'delete', key: 'app/x' },
      ],
    },
    false,
    'key:write',
  ],
  [
    'txn reading a key it may not read',
    { op: 'txn', now: 0, ops: [{ verb: 'get', key: 'secret' }] },
    false,
    'key:read',
  ],
]

describe('commandPermission of KV, session and txn commands', () => {
  it.each(cases)('%s', (_name, cmd, allowed, permission) => {
    const [check, what] = commandPermission(cmd)!
    expect(check(token)).toBe(allowed)
    expect(what.permission).toBe(permission)
    expect(check(MANAGE_ALL)).toBe(true)
  })
})
