/**
 * Regular expressions that run in time linear in their input, for patterns that come from users
 * or the network: user-event filters (any member may fire one), `PathRegex` and header/query
 * `Regex` of L7 intentions, rate limits and service-router routes.
 *
 * V8's default engine (irregexp) backtracks: a pattern like `^(a|a?)+$` or `/api/(\w+/?)+/items`
 * takes time exponential in the length of the string it is matched against, on the event loop.
 * Consul and Envoy evaluate these fields with RE2, which is linear and so has no backreferences
 * and no lookaround; that is the contract here too. V8 ships a linear-time engine of the same kind
 * behind `--enable-experimental-regexp-engine`: with it, the `l` flag compiles a pattern for that
 * engine, and a pattern it cannot run in linear time is refused when it is compiled ("Cannot be
 * executed in linear time"), never slowly matched. This module sets that (process-wide) flag
 * when it is loaded, so every user of it gets the engine before it compiles anything.
 *
 * What the linear engine refuses (Node 20, V8 11.3): backreferences (`\1`, `\k<name>`),
 * lookahead and lookbehind, counted repetition whose bounds, multiplied through nesting, exceed
 * about 16 (`a{0,16}` and `(?:a{4}){4}` compile, `a{17}`, `\d{1,100}` and `(?:a{4}){5}` do not;
 * RE2 allows 1000), and the flags `i`, `u`, `v` and `d`. `g`, `m`, `s` and `y` combine with `l`.
 * Whether a string matches is what it answers as the default engine does; which match it finds
 * can differ where a quantified group matches the empty string.
 *
 * Linear is not free: a match costs about (compiled size of the pattern) x (length of the input),
 * so callers keep bounding both (the schemas' length limits on patterns, the HTTP parser's on
 * paths and headers).
 *
 * If the engine cannot be enabled (a Node.js without the flag), every pattern is refused: nothing
 * falls back to the backtracking engine.
 */
import { setFlagsFromString } from 'node:v8'
import { PeermeshError } from './errors.ts'

setFlagsFromString('--enable-experimental-regexp-engine')

/**
 * The flag that selects the linear engine. Never in a regular expression literal: the module's
 * source is parsed before the V8 flag above is set, and the literal would not parse.
 */
const LINEAR = 'l'

/** Flags that may be combined with the linear engine's `l`. */
const LINEAR_FLAGS = new Set(['g', 'm', 's', 'y'])

/** Whether this Node.js compiles `l` patterns (checked once, after the flag is set). */
const ENGINE_AVAILABLE = (() => {
  try {
    new RegExp('', LINEAR)
    return true
  } catch {
    return false
  }
})()

/** Why a pattern is refused, shown in validation errors (the field's path goes in front). */
const NOT_LINEAR =
  'cannot be run in linear time (RE2 rules, as in Consul and Envoy): backreferences, ' +
  'lookahead/lookbehind and repetition counts above 16 are not supported'

/** A pattern that is not a regular expression, or not one the linear-time engine can run. */
export class NonLinearRegexpError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_NON_LINEAR_REGEXP'
}

/**
 * Why `pattern` cannot be compiled by `compileLinear`, or undefined if it can: not a regular
 * expression at all ("is not a valid regular expression"), or one the linear engine refuses.
 */
export function linearRegexpProblem(pattern: string): string | undefined {
  try {
    compileLinear(pattern)
    return undefined
  } catch (err) {
    return (err as Error).message
  }
}

/**
 * `pattern` compiled for V8's linear-time engine (flag `l` added). Throws `NonLinearRegexpError`
 * (the engine's SyntaxError as its cause) for a pattern that does not compile or that the engine
 * cannot run in linear time, and for flags other than `g`, `m`, `s`, `y`.
 */
export function compileLinear(pattern: string, flags = ''): RegExp {
  for (const f of flags) {
    if (f !== LINEAR && !LINEAR_FLAGS.has(f))
      throw new NonLinearRegexpError(`flag ${f} cannot be used with the linear-time engine`)
  }
  if (!ENGINE_AVAILABLE)
    throw new NonLinearRegexpError(
      'the linear-time regular expression engine is not available in this Node.js',
    )
  try {
    // Compiling with the backtracking engine only parses (nothing is matched): it tells a pattern
    // that is not a regular expression from one that is but needs backtracking.
    new RegExp(pattern, flags.replace(LINEAR, ''))
  } catch (err) {
    throw new NonLinearRegexpError('is not a valid regular expression', { cause: err })
  }
  try {
    return new RegExp(pattern, flags.includes(LINEAR) ? flags : flags + LINEAR)
  } catch (err) {
    throw new NonLinearRegexpError(NOT_LINEAR, { cause: err })
  }
}

/**
 * Whether `pattern` is a regular expression at all, linear or not. It is parsed by the default
 * engine and never matched (parsing does not backtrack): for reading patterns stored before the
 * linear rule, which are then compiled with `compileLinear` or not at all.
 */
export function isRegExpSyntax(pattern: string): boolean {
  try {
    new RegExp(pattern)
    return true
  } catch {
    return false
  }
}

/**
 * `compileLinear`, or undefined where it would throw: for matching stored or received patterns.
 * One compile (the linear engine's); `compileLinear`'s first parse only tells its errors apart.
 */
export function tryCompileLinear(pattern: string, flags = ''): RegExp | undefined {
  if (!ENGINE_AVAILABLE) return undefined
  for (const f of flags) if (f !== LINEAR && !LINEAR_FLAGS.has(f)) return undefined
  try {
    return new RegExp(pattern, flags.includes(LINEAR) ? flags : flags + LINEAR)
  } catch {
    return undefined
  }
}

/**
 * A linear-time matcher of whole strings (Envoy's `safe_regex` semantics: the pattern must match
 * all of the string, not a part), or undefined if the linear engine cannot run `source`.
 */
export function compileLinearFullMatch(source: string): RegExp | undefined {
  // The source alone first: `a)|(b` must not pass by closing the group around it.
  if (tryCompileLinear(source) === undefined) return undefined
  return tryCompileLinear(`^(?:${source})$`)
}
