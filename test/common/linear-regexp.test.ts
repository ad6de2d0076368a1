/**
 * The linear-time regular expressions: what compiles, what is refused and why, and that matching
 * agrees with the default engine wherever both run. The attack patterns below take the default
 * engine minutes to years on these inputs; a hang here is the bug coming back (vitest's timeout).
 */
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import {
  compileLinear,
  compileLinearFullMatch,
  isRegExpSyntax,
  linearRegexpProblem,
  NonLinearRegexpError,
  tryCompileLinear,
} from '../../src/common/linear-regexp.ts'

const codeOf = (f: () => unknown): string | undefined => {
  try {
    f()
  } catch (err) {
    return (err as { code?: string }).code
  }
  return undefined
}

describe('compileLinear: backtracking patterns run in linear time', () => {
  it.each([
    ['^(a|a?)+$', `${'a'.repeat(50_000)}b`, false],
    ['^(a|a?)+$', 'a'.repeat(50_000), true],
    [`^(?:${Array(60).fill('.').join('|')})*!`, 'agent-1', false],
    ['^(?:/api/(\\w+/?)+/items)$', `/api/${'a'.repeat(10_000)}!`, false],
    ['^(?:/api/(\\w+/?)+/items)$', '/api/a/b/items', true],
    ['^(x+x+)+y$', 'x'.repeat(10_000), false],
  ])('%s on %d characters', (pattern, input, want) => {
    expect(compileLinear(pattern).test(input)).toBe(want)
  })

  it('adds the l flag and keeps the combinable ones', () => {
    expect(compileLinear('a').flags).toBe('l')
    expect(compileLinear('a', 'gmsy').flags).toBe('glmsy')
    expect(compileLinear('a', 'l').flags).toBe('l')
    expect(compileLinear('^b$', 'm').test('a\nb')).toBe(true)
    expect(compileLinear('a.b', 's').test('a\nb')).toBe(true)
  })
})

describe('compileLinear: refused, with a code', () => {
  it.each([
    ['a backreference', '(a)\\1'],
    ['a named backreference', '(?<x>a)\\k<x>'],
    ['a lookahead', 'a(?=b)'],
    ['a negative lookahead', '(?!admin)\\w+'],
    ['a lookbehind', '(?<=a)b'],
    ['a repetition count above 16', 'a{17}'],
    ['a repetition range above 16', '\\d{1,100}'],
    ['nested counts multiplying past 16', '(?:a{4}){5}'],
  ])('%s: %s', (_what, pattern) => {
    expect(codeOf(() => compileLinear(pattern))).toBe(NonLinearRegexpError.code)
    expect(tryCompileLinear(pattern)).toBeUndefined()
    expect(linearRegexpProblem(pattern)).toMatch(/cannot be run in linear time/)
    expect(isRegExpSyntax(pattern)).toBe(true)
  })

  it('tells a pattern that is not a regular expression from one that needs backtracking', () => {
    expect(linearRegexpProblem('([a-z')).toBe('is not a valid regular expression')
    expect(isRegExpSyntax('([a-z')).toBe(false)
    try {
      compileLinear('(')
      expect.unreachable()
    } catch (err) {
      expect((err as NonLinearRegexpError).code).toBe(NonLinearRegexpError.code)
      expect((err as Error).cause).toBeInstanceOf(SyntaxError)
    }
  })

  it.each(['i', 'u', 'v', 'd'])('flag %s (the linear engine has no such mode)', (flag) => {
    expect(codeOf(() => compileLinear('a', flag))).toBe(NonLinearRegexpError.code)
  })

  it('accepts what RE2 accepts here: classes, anchors, alternation, counts up to 16, groups', () => {
    for (const p of ['^/v[0-9]+/', '[0-9a-f]{8}-[0-9a-f]{4}', '(?:GET|HEAD)', '\\bword\\b', '(?<n>a)b', ''])
      expect(linearRegexpProblem(p), p).toBeUndefined()
  })
})

describe('compileLinearFullMatch (Envoy safe_regex: the whole string)', () => {
  it('anchors at both ends', () => {
    const re = compileLinearFullMatch('/items/[0-9]+')!
    expect(re.test('/items/42')).toBe(true)
    expect(re.test('/items/42/x')).toBe(false)
    expect(re.test('/x/items/42')).toBe(false)
    expect(compileLinearFullMatch('a|b')!.test('ab')).toBe(false)
  })

  it('refuses a source that would close the group around it, and any it cannot run', () => {
    expect(compileLinearFullMatch('a)|(b')).toBeUndefined()
    expect(compileLinearFullMatch('(a)\\1')).toBeUndefined()
  })
})

describe('agrees with the default engine on patterns both run (reference check)', () => {
  const atom: fc.Arbitrary<string> = fc.constantFrom('a', 'b', '.', '[ab]', '[^a]', '\\w', '^', '$')
  const pattern: fc.Arbitrary<string> = fc.letrec<{ re: string }>((tie) => ({
    re: fc.oneof(
      { depthSize: 'small', withCrossShrink: true },
      atom,
      fc.tuple(tie('re'), tie('re')).map(([x, y]) => x + y),
      fc.tuple(tie('re'), tie('re')).map(([x, y]) => `(?:${x}|${y})`),
      fc
        .tuple(tie('re'), fc.constantFrom('*', '+', '?', '{2}', '{0,3}', '*?'))
        .map(([x, q]) => `(?:${x})${q}`),
      tie('re').map((x) => `(${x})`),
    ),
  })).re
  // Whether a string matches, which is all the callers ask (`test`), anywhere or whole. Which match
  // is found may differ where a quantified group can match empty: `(?:a*|[ab]){0,3}` finds "" in
  // "b" here and "b" on the default engine, which retries an iteration that matched nothing.
  it('same answer, matched anywhere and as a whole string', () => {
    fc.assert(
      fc.property(pattern, fc.stringMatching(/^[ab\n-]{0,12}$/), (p, s) => {
        const linear = tryCompileLinear(p)
        fc.pre(linear !== undefined) // nested counts past the engine's bound
        expect(linear!.test(s)).toBe(new RegExp(p).test(s))
        expect(compileLinearFullMatch(p)!.test(s)).toBe(new RegExp(`^(?:${p})$`).test(s))
      }),
      { numRuns: 2000, seed: 42 },
    )
  })
})
