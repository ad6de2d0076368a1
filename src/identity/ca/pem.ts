/** Strict single-block PEM decoding for untrusted input. */
import { MAX_PEM_LENGTH } from './constants.ts'
import { x509 } from './x509-setup.ts'

/**
 * Decodes a PEM string that must hold exactly one block labelled `label`; returns `undefined`
 * for anything else (not a string, too long, no block, several blocks, another label).
 */
export function decodeSinglePem(pem: unknown, label: string): ArrayBuffer | undefined {
  if (typeof pem !== 'string' || pem.length === 0 || pem.length > MAX_PEM_LENGTH) return undefined
  let blocks: ReturnType<typeof x509.PemConverter.decodeWithHeaders>
  try {
    blocks = x509.PemConverter.decodeWithHeaders(pem)
  } catch {
    return undefined
  }
  if (blocks.length !== 1 || blocks[0]!.type !== label || blocks[0]!.rawData.byteLength === 0)
    return undefined
  return blocks[0]!.rawData
}

/** Splits a PEM bundle into its blocks of type `label`, each re-encoded as its own PEM. */
export function splitPemBundle(pem: string, label: string): string[] {
  return x509.PemConverter.decodeWithHeaders(pem)
    .filter((b) => b.type === label)
    .map((b) => x509.PemConverter.encode(b.rawData, label))
}
