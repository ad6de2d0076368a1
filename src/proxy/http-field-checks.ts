/**
 * Checks of an HTTP/1.1 message's header fields that the proxies make before they act on it, where
 * Node's view of a message (`message.headers`) and the bytes forwarded (`message.rawHeaders`)
 * would disagree:
 *
 * - A field Node keeps one value of (`authorization`, `host`, `user-agent`, ...: the list of
 *   Node's `message.headers` docs) sent more than once: the L7 gate and the router would match on
 *   the first value, while the next hop gets both lines and may read the last. RFC 9110 §5.3: a
 *   sender must not send several field lines of a field that is not a list. The request gets 400.
 * - A `transfer-encoding` other than exactly `chunked` (`gzip, chunked`, or two field lines):
 *   Node's parser removes the chunked framing, and the body forwarded chunked would reach the next
 *   hop without its other codings. Envoy answers such a request 501 Not Implemented; so do we.
 *
 * The scan allocates nothing: a raw name is compared, case-insensitively and char by char, only
 * with the checked names of its length.
 */

/** Why a request is refused: the `reason` of the error metric and of the access log. */
export type FieldProblem = 'duplicate_header' | 'unsupported_transfer_coding'

/** The status a request refused for each problem gets, on the inbound and the outbound alike. */
export const FIELD_PROBLEM_STATUS: Readonly<Record<FieldProblem, number>> = {
  duplicate_header: 400,
  unsupported_transfer_coding: 501,
}

/** Fields of which Node's `message.headers` keeps the first value only (Node's docs, `message.headers`). */
export const SINGLE_VALUE_FIELDS: readonly string[] = [
  'age',
  'authorization',
  'content-length',
  'content-type',
  'etag',
  'expires',
  'from',
  'host',
  'if-modified-since',
  'if-unmodified-since',
  'last-modified',
  'location',
  'max-forwards',
  'proxy-authorization',
  'referer',
  'retry-after',
  'server',
  'user-agent',
]

const TRANSFER_ENCODING = 'transfer-encoding'

interface CheckedField {
  readonly name: string
  /** The field's bit in the scan's `seen` mask. */
  readonly bit: number
  readonly transferEncoding: boolean
}

/** The checked fields by name length (at most a few per length). */
const BY_LENGTH: (CheckedField[] | undefined)[] = []
for (const [i, name] of [...SINGLE_VALUE_FIELDS, TRANSFER_ENCODING].entries()) {
  const list = BY_LENGTH[name.length] ?? []
  list.push({ name, bit: 1 << i, transferEncoding: name === TRANSFER_ENCODING })
  BY_LENGTH[name.length] = list
}

/** Whether `name` is `lower` (lower-case letters and `-`) in any case. */
function sameName(name: string, lower: string): boolean {
  for (let i = 0; i < lower.length; i++) {
    const c = name.charCodeAt(i)
    const l = lower.charCodeAt(i)
    // `| 0x20` lower-cases A-Z; `l` is a letter or `-`, so only its own two cases match.
    if (c !== l && (l < 0x61 || (c | 0x20) !== l)) return false
  }
  return true
}

/** A `transfer-encoding` value that is exactly `chunked` (any case; surrounding whitespace allowed). */
const CHUNKED_ONLY = /^[ \t]*chunked[ \t]*$/i

/** The checked field `name` is, if any. */
function checkedField(name: string): CheckedField | undefined {
  const candidates = BY_LENGTH[name.length]
  if (candidates === undefined) return undefined
  for (let j = 0; j < candidates.length; j++) if (sameName(name, candidates[j]!.name)) return candidates[j]
  return undefined
}

/**
 * What is wrong with a request's raw header fields (`[name, value, ...]`): a single-value field
 * sent twice (`duplicate_header`), or a transfer coding other than `chunked`
 * (`unsupported_transfer_coding`); the first found in field order. Undefined when neither.
 */
export function requestFieldProblem(raw: readonly string[]): FieldProblem | undefined {
  let seen = 0
  for (let i = 0; i < raw.length; i += 2) {
    const field = checkedField(raw[i]!)
    if (field === undefined) continue
    if ((seen & field.bit) !== 0)
      return field.transferEncoding ? 'unsupported_transfer_coding' : 'duplicate_header'
    if (field.transferEncoding && !CHUNKED_ONLY.test(raw[i + 1]!)) return 'unsupported_transfer_coding'
    seen |= field.bit
  }
  return undefined
}

/**
 * Whether a message's raw header fields carry a `transfer-encoding` other than exactly one field
 * line `chunked`: for a response, forwarded re-chunked without its codings, as for a request.
 */
export function hasUnsupportedTransferCoding(raw: readonly string[]): boolean {
  let seen = false
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!
    if (name.length !== TRANSFER_ENCODING.length || !sameName(name, TRANSFER_ENCODING)) continue
    if (seen || !CHUNKED_ONLY.test(raw[i + 1]!)) return true
    seen = true
  }
  return false
}
