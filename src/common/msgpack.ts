import { Packr } from 'msgpackr'

/**
 * The one msgpack configuration used on disk and on the wire: plain maps (no record extension, so
 * other implementations can read it), binary as bin, and nothing else. Every decode first scans
 * the bytes (`msgpackProblem`): extension types (msgpackr's structured-clone references, Set,
 * Date, RegExp, Error, BigInt, typed arrays, undefined) and nesting deeper than the limit are
 * refused before anything is built, so a peer's bytes decode to data, never to an object graph.
 */
const packr = new Packr({
  useRecords: false,
  mapsAsObjects: true,
  int64AsType: 'number',
  structuredClone: false,
  moreTypes: false,
})

export interface MsgpackLimits {
  /** Deepest nesting of arrays and maps (a top-level scalar is depth 0). */
  maxDepth: number
}

/** Deep enough for every message and entry peermesh writes; far below any stack limit. */
export const MSGPACK_LIMITS: MsgpackLimits = Object.freeze({ maxDepth: 64 })

export class MsgpackDecodeError extends Error {
  readonly code = 'PEERMESH_ERR_MSGPACK'
}

export function pack(value: unknown): Uint8Array {
  return packr.pack(value)
}

/** Decodes one msgpack value filling all of `bytes`; throws MsgpackDecodeError otherwise. */
export function unpack(bytes: Uint8Array, limits: MsgpackLimits = MSGPACK_LIMITS): unknown {
  const problem = msgpackProblem(bytes, limits)
  if (problem !== undefined) throw new MsgpackDecodeError(`refused msgpack: ${problem}`)
  try {
    return packr.unpack(bytes)
  } catch (err) {
    throw new MsgpackDecodeError(`bad msgpack: ${(err as Error).message}`, { cause: err })
  }
}

/**
 * Decodes bytes from a peer that should hold a msgpack map: its fields, or undefined when the
 * bytes are not plain msgpack or not a map (the caller then treats the message as malformed).
 */
export function unpackRecord(bytes: Uint8Array): Record<string, unknown> | undefined {
  let v: unknown
  try {
    v = unpack(bytes)
  } catch {
    return undefined
  }
  return v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Uint8Array)
    ? (v as Record<string, unknown>)
    : undefined
}

/**
 * Why `bytes` is not exactly one plain msgpack value (nil, bool, int, float, str, bin, array, map
 * with string keys) nested at most `limits.maxDepth` deep, or undefined when it is. Linear in the
 * input, no recursion, no allocation per item.
 */
export function msgpackProblem(
  bytes: Uint8Array,
  limits: MsgpackLimits = MSGPACK_LIMITS,
): string | undefined {
  const n = bytes.length
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  // remaining[d]: values still to read in the container open at depth d (the root is one value);
  // inMap[d]: that container is a map, where keys (an even count remaining) must be strings.
  const remaining: number[] = [1]
  const inMap: boolean[] = [false]
  let pos = 0
  while (remaining.length > 0) {
    const d = remaining.length - 1
    if (remaining[d] === 0) {
      remaining.pop()
      inMap.pop()
      continue
    }
    const isKey = inMap[d]! && remaining[d]! % 2 === 0
    remaining[d]!--
    if (pos >= n) return 'truncated'
    const b = bytes[pos++]!
    let strLen = -1
    let skip = 0
    let open = -1
    let isMap = false
    if (b <= 0x7f || b >= 0xe0) skip = 0
    else if (b >= 0x80 && b <= 0x8f) {
      open = b & 0x0f
      isMap = true
    } else if (b >= 0x90 && b <= 0x9f) open = b & 0x0f
    else if (b >= 0xa0 && b <= 0xbf) strLen = b & 0x1f
    else {
      switch (b) {
        case 0xc0:
        case 0xc2:
        case 0xc3:
          break
        case 0xc4:
          if (pos + 1 > n) return 'truncated'
          skip = bytes[pos]!
          pos += 1
          break
        case 0xc5:
          if (pos + 2 > n) return 'truncated'
          skip = view.getUint16(pos)
          pos += 2
          break
        case 0xc6:
          if (pos + 4 > n) return 'truncated'
          skip = view.getUint32(pos)
          pos += 4
          break
        case 0xca:
          skip = 4
          break
        case 0xcb:
          skip = 8
          break
        case 0xcc:
        case 0xd0:
          skip = 1
          break
        case 0xcd:
        case 0xd1:
          skip = 2
          break
        case 0xce:
        case 0xd2:
          skip = 4
          break
        case 0xcf:
        case 0xd3:
          skip = 8
          break
        case 0xd9:
          if (pos + 1 > n) return 'truncated'
          strLen = bytes[pos]!
          pos += 1
          break
        case 0xda:
          if (pos + 2 > n) return 'truncated'
          strLen = view.getUint16(pos)
          pos += 2
          break
        case 0xdb:
          if (pos + 4 > n) return 'truncated'
          strLen = view.getUint32(pos)
          pos += 4
          break
        case 0xdc:
          if (pos + 2 > n) return 'truncated'
          open = view.getUint16(pos)
          pos += 2
          break
        case 0xdd:
          if (pos + 4 > n) return 'truncated'
          open = view.getUint32(pos)
          pos += 4
          break
        case 0xde:
          if (pos + 2 > n) return 'truncated'
          open = view.getUint16(pos)
          pos += 2
          isMap = true
          break
        case 0xdf:
          if (pos + 4 > n) return 'truncated'
          open = view.getUint32(pos)
          pos += 4
          isMap = true
          break
        default:
          // 0xc1 (never used), 0xc7–0xc9 and 0xd4–0xd8 (extension types).
          return b === 0xc1 ? 'reserved byte 0xc1' : `extension type (0x${b.toString(16)}) refused`
      }
    }
    if (isKey && strLen < 0) return 'map key is not a string'
    if (strLen >= 0) skip = strLen
    if (skip > 0) {
      if (pos + skip > n) return 'truncated'
      pos += skip
    }
    if (open >= 0) {
      const items = isMap ? open * 2 : open
      // Every item takes at least one byte: a claimed count beyond the input is a lie.
      if (items > n - pos) return 'truncated'
      if (remaining.length > limits.maxDepth) return `nested deeper than ${limits.maxDepth} levels`
      remaining.push(items)
      inMap.push(isMap)
    }
  }
  if (pos !== n) return `${n - pos} trailing bytes`
  return undefined
}
