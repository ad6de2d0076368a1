import { describe, expect, it } from 'vitest'
import { oneLineError } from '../../../src/node/cli/cli.ts'
import { runCli } from '../../e2e/harness.ts'

describe('oneLineError (pure): commander errors as one line, with a suggestion', () => {
  it.each([
    [
      "error: unknown command 'memebrs'\n(Did you mean members?)\n",
      "peermesh: unknown command 'memebrs'. Did you mean 'members'?\n",
    ],
    [
      "error: unknown option '--jsn'\n(Did you mean --json?)\n",
      "peermesh: unknown option '--jsn'. Did you mean '--json'?\n",
    ],
    [
      "error: unknown command 'lst'\n(Did you mean one of list, last?)\n",
      "peermesh: unknown command 'lst'. Did you mean one of 'list', 'last'?\n",
    ],
    ["error: unknown command 'zzzz'\n", "peermesh: unknown command 'zzzz'\n"],
    ["error: missing required argument 'source'\n", "peermesh: missing required argument 'source'\n"],
  ])('%j', (input, expected) => {
    expect(oneLineError(input)).toBe(expected)
  })
})

describe('a mistyped command gets a suggestion and a non-zero exit (issue #16)', () => {
  it.each([
    [['memebrs'], "peermesh: unknown command 'memebrs'. Did you mean 'members'?"],
    [
      ['intention', 'craete', 'web', 'api', 'allow'],
      "peermesh: unknown command 'craete'. Did you mean 'create'?",
    ],
    [['acl', 'tokn', 'list'], "peermesh: unknown command 'tokn'. Did you mean 'token'?"],
    [['members', '--jsn'], "peermesh: unknown option '--jsn'. Did you mean '--json'?"],
    [['zzzz'], "peermesh: unknown command 'zzzz'"],
  ])('peermesh %j', async (args, line) => {
    const res = await runCli(args, { token: false })
    expect(res.code).toBe(1)
    expect(res.stderr).toBe(`${line}\n`)
    expect(res.stdout).toBe('')
  })
})
