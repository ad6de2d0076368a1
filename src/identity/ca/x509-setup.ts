/**
 * The one place that prepares @peculiar/x509: it needs `reflect-metadata` loaded before it and a
 * WebCrypto provider. Every identity module imports `x509` from here, never from the package.
 */
import 'reflect-metadata'
import { webcrypto } from 'node:crypto'
import * as x509 from '@peculiar/x509'

x509.cryptoProvider.set(webcrypto)

export { x509 }

/** Node's WebCrypto `subtle`. */
export const subtle: webcrypto.SubtleCrypto = webcrypto.subtle
