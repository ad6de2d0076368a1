/**
 * Consul's `?filter=` expression language (hashicorp/go-bexpr), evaluated over the JSON values a
 * listing endpoint returns. Pure: `parseFilter` turns the text into a tree (or throws
 * `FilterSyntaxError`), `matches` evaluates it on one element.
 *
 * Grammar (go-bexpr's, the subset Consul documents):
 *
 *   expr     := or
 *   or       := and ("or" and)*
 *   and      := unary ("and" unary)*
 *   unary    := "not" unary | "(" expr ")" | match
 *   match    := selector ("==" | "!=") value
 *             | selector ["not"] "contains" value
 *             | selector "is" ["not"] "empty"
 *             | value ["not"] "in" selector
 *   selector := ident ("." ident | "[" string "]")*
 *   value    := "double-quoted" | `raw` | bare word (number, true, false, name)
 *
 * Semantics: `==`/`!=` compare as strings, numbers or booleans after the selected field's type;
 * `in`/`contains` test list membership, map key presence or substring; `is empty` holds for an
 * empty or missing list, map or string. Selector segments match field names exactly, else
 * case-insensitively (Go's JSON field matching); a selector through a list (`Checks.Status`) matches
 * when any element does (`!=` and `not ...` when none does). Unlike Consul, a selector naming no field is not
 * an error: it selects nothing (`is empty` is true, `==` false). `matches` (regular expressions)
 * is refused: Go's engine runs in linear time, JavaScript's does not, and a filter is user input.
 */

export class FilterSyntaxError extends Error {
  override readonly name = 'FilterSyntaxError'
  readonly code = 'PEERMESH_ERR_FILTER_SYNTAX'
}

export type FilterExpr =
  | { op: 'and' | 'or'; left: FilterExpr; right: FilterExpr }
  | { op: 'not'; expr: FilterExpr }
  | { op: '==' | '!=' | 'contains' | 'not contains'; selector: string[]; value: string }
  | { op: 'in' | 'not in'; selector: string[]; value: string }
  | { op: 'empty' | 'not empty'; selector: string[] }

/** Longest filter text accepted, and deepest nesting: a filter is a short line, never a program. */
export const FILTER_LIMITS = Object.freeze({ maxLength: 2048, maxDepth: 32 })

type Token =
  | { t: 'word'; v: string }
  | { t: 'str'; v: string }
  | { t: 'op'; v: '==' | '!=' | '(' | ')' | '.' | '[' | ']' }

function tokenize(text: string): Token[] {
  const out: Token[] = []
  let i = 0
  while (i < text.length) {
    const c = text[i]!
    if (/\s/.test(c)) {
      i++
      continue
    }
    if (c === '=' || c === '!') {
      if (text[i + 1] !== '=') throw new FilterSyntaxError(`unexpected "${c}" at ${i}: expected == or !=`)
      out.push({ t: 'op', v: c === '=' ? '==' : '!=' })
      i += 2
      continue
    }
    if (c === '(' || c === ')' || c === '.' || c === '[' || c === ']') {
      out.push({ t: 'op', v: c })
      i++
      continue
    }
    if (c === '"') {
      let v = ''
      i++
      for (;;) {
        if (i >= text.length) throw new FilterSyntaxError('unterminated string')
        const d = text[i]!
        if (d === '"') break
        if (d === '\\') {
          const e = text[i + 1]
          if (e === undefined) throw new FilterSyntaxError('unterminated string')
          v += e === 'n' ? '\n' : e === 't' ? '\t' : e
          i += 2
          continue
        }
        v += d
        i++
      }
      i++
      out.push({ t: 'str', v })
      continue
    }
    if (c === '`') {
      const end = text.indexOf('`', i + 1)
      if (end < 0) throw new FilterSyntaxError('unterminated raw string')
      out.push({ t: 'str', v: text.slice(i + 1, end) })
      i = end + 1
      continue
    }
    const m = /^[A-Za-z0-9_\-+:/@]+/.exec(text.slice(i))
    if (m === null) throw new FilterSyntaxError(`unexpected "${c}" at ${i}`)
    out.push({ t: 'word', v: m[0] })
    i += m[0].length
  }
  return out
}

const KEYWORDS = new Set(['and', 'or', 'not', 'in', 'contains', 'matches', 'is', 'empty'])

class Parser {
  private pos = 0
  private depth = 0
  constructor(private readonly tokens: Token[]) {}

  parse(): FilterExpr {
    const e = this.or()
    if (this.pos < this.tokens.length) throw new FilterSyntaxError(`unexpected ${this.describe(this.peek())}`)
    return e
  }

  private peek(k = 0): Token | undefined {
    return this.tokens[this.pos + k]
  }

  private isWord(v: string, k = 0): boolean {
    const t = this.peek(k)
    return t?.t === 'word' && t.v === v
  }

  private describe(t: Token | undefined): string {
    return t === undefined ? 'end of filter' : `"${t.v}"`
  }

  private or(): FilterExpr {
    let left = this.and()
    while (this.isWord('or')) {
      this.pos++
      left = { op: 'or', left, right: this.and() }
    }
    return left
  }

  private and(): FilterExpr {
    let left = this.unary()
    while (this.isWord('and')) {
      this.pos++
      left = { op: 'and', left, right: this.unary() }
    }
    return left
  }

  private unary(): FilterExpr {
    if (++this.depth > FILTER_LIMITS.maxDepth) throw new FilterSyntaxError('filter nested too deeply')
    try {
      if (this.isWord('not')) {
        this.pos++
        return { op: 'not', expr: this.unary() }
      }
      const t = this.peek()
      if (t?.t === 'op' && t.v === '(') {
        this.pos++
        const e = this.or()
        const close = this.peek()
        if (close?.t !== 'op' || close.v !== ')')
          throw new FilterSyntaxError(`expected ")" but found ${this.describe(close)}`)
        this.pos++
        return e
      }
      return this.match()
    } finally {
      this.depth--
    }
  }

  private match(): FilterExpr {
    // `value [not] in selector`: a value first, then `in` or `not in`.
    const first = this.peek()
    if (
      first?.t === 'str' ||
      (first?.t === 'word' && (this.isWord('in', 1) || (this.isWord('not', 1) && this.isWord('in', 2))))
    ) {
      const value = this.value()
      let op: 'in' | 'not in' = 'in'
      if (this.isWord('not')) {
        this.pos++
        op = 'not in'
      }
      if (!this.isWord('in'))
        throw new FilterSyntaxError(`expected "in" but found ${this.describe(this.peek())}`)
      this.pos++
      return { op, selector: this.selector(), value }
    }
    const selector = this.selector()
    const t = this.peek()
    if (t?.t === 'op' && (t.v === '==' || t.v === '!=')) {
      this.pos++
      return { op: t.v, selector, value: this.value() }
    }
    if (this.isWord('is')) {
      this.pos++
      let op: 'empty' | 'not empty' = 'empty'
      if (this.isWord('not')) {
        this.pos++
        op = 'not empty'
      }
      if (!this.isWord('empty'))
        throw new FilterSyntaxError(`expected "empty" but found ${this.describe(this.peek())}`)
      this.pos++
      return { op, selector }
    }
    let negate = false
    if (this.isWord('not')) {
      this.pos++
      negate = true
    }
    if (this.isWord('matches'))
      throw new FilterSyntaxError('"matches" (regular expressions) is not supported by peermesh')
    if (this.isWord('contains')) {
      this.pos++
      return { op: negate ? 'not contains' : 'contains', selector, value: this.value() }
    }
    throw new FilterSyntaxError(
      `expected an operator (==, !=, contains, in, is empty) after ${selector.join('.')} but found ${this.describe(this.peek())}`,
    )
  }

  private selector(): string[] {
    const t = this.peek()
    if (t?.t !== 'word' || KEYWORDS.has(t.v) || !/^[A-Za-z_][A-Za-z0-9_-]*$/.test(t.v))
      throw new FilterSyntaxError(`expected a selector but found ${this.describe(t)}`)
    this.pos++
    const parts = [t.v]
    for (;;) {
      const n = this.peek()
      if (n?.t === 'op' && n.v === '.') {
        this.pos++
        const w = this.peek()
        if (w?.t !== 'word')
          throw new FilterSyntaxError(`expected a field name after "." but found ${this.describe(w)}`)
        this.pos++
        parts.push(w.v)
      } else if (n?.t === 'op' && n.v === '[') {
        this.pos++
        const k = this.peek()
        const close = this.peek(1)
        if (k?.t !== 'str' || close?.t !== 'op' || close.v !== ']')
          throw new FilterSyntaxError('expected ["key"] in a selector')
        this.pos += 2
        parts.push(k.v)
      } else return parts
    }
  }

  private value(): string {
    const t = this.peek()
    if (t?.t === 'str' || (t?.t === 'word' && !KEYWORDS.has(t.v))) {
      this.pos++
      return t.v
    }
    throw new FilterSyntaxError(`expected a value but found ${this.describe(t)}`)
  }
}

/** Parses a filter expression; throws `FilterSyntaxError` saying what is wrong. */
export function parseFilter(text: string): FilterExpr {
  if (text.length > FILTER_LIMITS.maxLength)
    throw new FilterSyntaxError(`filter longer than ${FILTER_LIMITS.maxLength} characters`)
  const tokens = tokenize(text)
  if (tokens.length === 0) throw new FilterSyntaxError('empty filter')
  return new Parser(tokens).parse()
}

/** The values a selector reaches through a list (`Checks.Status`): the match holds for any of them. */
class AnyOf {
  constructor(readonly values: unknown[]) {}
}

function field(o: Record<string, unknown>, key: string): unknown {
  if (Object.hasOwn(o, key)) return o[key]
  const lower = key.toLowerCase()
  const found = Object.keys(o).find((k) => k.toLowerCase() === lower)
  return found === undefined ? undefined : o[found]
}

function select(root: unknown, path: readonly string[]): unknown {
  let v = root
  for (const [i, key] of path.entries()) {
    if (Array.isArray(v)) {
      const rest = path.slice(i)
      return new AnyOf(
        v.flatMap((e) => {
          const x = select(e, rest)
          return x instanceof AnyOf ? x.values : [x]
        }),
      )
    }
    if (typeof v !== 'object' || v === null) return undefined
    v = field(v as Record<string, unknown>, key)
  }
  return v
}

function equal(field: unknown, value: string): boolean {
  if (field instanceof AnyOf) return field.values.some((x) => equal(x, value))
  if (typeof field === 'string') return field === value
  if (typeof field === 'number') return value.trim() !== '' && Number(value) === field
  if (typeof field === 'boolean') return value === String(field)
  return false
}

function contains(field: unknown, value: string): boolean {
  if (field instanceof AnyOf) return field.values.some((x) => contains(x, value))
  if (typeof field === 'string') return field.includes(value)
  if (Array.isArray(field)) return field.some((x) => equal(x, value))
  if (typeof field === 'object' && field !== null) return Object.hasOwn(field, value)
  return false
}

function isEmpty(field: unknown): boolean {
  if (field instanceof AnyOf) return field.values.every(isEmpty)
  if (field === undefined || field === null) return true
  if (typeof field === 'string' || Array.isArray(field)) return field.length === 0
  if (typeof field === 'object') return Object.keys(field).length === 0
  return false
}

/** Whether `item` (one element of a listing) passes the filter. */
export function matches(expr: FilterExpr, item: unknown): boolean {
  switch (expr.op) {
    case 'and':
      return matches(expr.left, item) && matches(expr.right, item)
    case 'or':
      return matches(expr.left, item) || matches(expr.right, item)
    case 'not':
      return !matches(expr.expr, item)
    case '==':
      return equal(select(item, expr.selector), expr.value)
    case '!=':
      return !equal(select(item, expr.selector), expr.value)
    case 'in':
    case 'contains':
      return contains(select(item, expr.selector), expr.value)
    case 'not in':
    case 'not contains':
      return !contains(select(item, expr.selector), expr.value)
    case 'empty':
      return isEmpty(select(item, expr.selector))
    case 'not empty':
      return !isEmpty(select(item, expr.selector))
  }
}
