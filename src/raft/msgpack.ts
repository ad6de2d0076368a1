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
