/**
 * The CA's certificate code (ca.ts with @peculiar/x509 and its ASN.1 schemas under it), loaded at
 * its first use: when the leader creates or rotates the CA or signs a leaf. Evaluating it builds
 * the ASN.1 schema tables and compiles the code that reads them, a large part of an idle agent's
 * heap; an agent that never does these never loads it. The build puts it in a chunk of its own.
 */
import { lazyModule } from '../../common/lazy-module.ts'

export type CaCode = typeof import('../ca/ca.ts')

const caCode = lazyModule<CaCode>(() => import('../ca/ca.ts'))

export function loadCa(): Promise<CaCode> {
  return caCode.load()
}
