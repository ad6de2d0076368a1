/**
 * Response heads the inbound writes itself, on a connection Node's server has handed over (an
 * upgrade request). llhttp lets through characters Node's own writer refuses (a control character
 * in a reason phrase), so every value is checked here, and a head that cannot be written is
 * reported as `undefined` instead of being written raw or throwing.
 */
import http from 'node:http'

/** RFC 9112 §4: reason-phrase = *( HTAB / SP / VCHAR / obs-text ). */
const INVALID_REASON_CHAR = /[^\t\x20-\x7e\x80-\xff]/

/** True when `reason` may be written as a reason phrase (Node's `writeHead` would accept it). */
export function isValidReasonPhrase(reason: string): boolean {
  return !INVALID_REASON_CHAR.test(reason)
}

/**
 * `HTTP/1.1 <status> <reason>` and the `[name, value, ...]` headers, ending with the empty line;
 * `undefined` when the reason phrase or a header cannot be written.
 */
export function formatResponseHead(
  status: number,
  reason: string | undefined,
  rawHeaders: readonly string[],
): string | undefined {
  const phrase = reason || http.STATUS_CODES[status] || 'unknown'
  if (!isValidReasonPhrase(phrase)) return undefined
  let head = `HTTP/1.1 ${status} ${phrase}\r\n`
  try {
    for (let i = 0; i < rawHeaders.length; i += 2) {
      http.validateHeaderName(rawHeaders[i]!)
      http.validateHeaderValue(rawHeaders[i]!, rawHeaders[i + 1]!)
      head += `${rawHeaders[i]}: ${rawHeaders[i + 1]}\r\n`
    }
  } catch {
    return undefined
  }
  return `${head}\r\n`
}
