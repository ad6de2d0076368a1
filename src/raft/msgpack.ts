import { Packr } from 'msgpackr'

/**
 * The one msgpack configuration used on disk and on the wire: plain maps (no record extension, so
 * other implementations can read it), binary as bin.
 */
export const packr = new Packr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' })

export function pack(value: unknown): Uint8Array {
  return packr.pack(value)
}

export function unpack(bytes: Uint8Array): unknown {
  return packr.unpack(bytes)
}

/**
 * Decodes bytes from a peer that should hold a msgpack map: its fields, or undefined when the
 * bytes are not msgpack or not a map (the caller then treats the message as malformed).
 */
export function unpackRecord(bytes: Uint8Array): Record<string, unknown> | undefined {
  let v: unknown
  try {
    v = packr.unpack(bytes)
  } catch {
    return undefined
  }
  return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined
}
