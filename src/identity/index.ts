// Public surface of the identity layer: node and cluster keys, the mesh CA and service leaves, and
// the CA and leaf lifecycle (leader-side CA manager and leaf signer, agent-side leaf manager).
export {
  type CreateRootCaOptions,
  type CrossSignedCa,
  createRootCa,
  crossSign,
  type RootCa,
  type SignedLeaf,
  type SigningCa,
  type SignLeafOptions,
  signLeaf,
} from './ca/ca.ts'
export {
  CaMalformedError,
  CaNotValidNowError,
  CsrBadSignatureError,
  CsrIdentityMismatchError,
  CsrMalformedError,
  IdentityError,
  InvalidCaOptionError,
  InvalidServiceNameError,
  InvalidSpiffeIdError,
  InvalidTrustDomainError,
  LeafRequestTimeoutError,
  LeafResponseInvalidError,
  LeafSigningRateLimitedError,
  PeerIdentityMismatchError,
  TrustDomainMismatchError,
  UnsupportedKeyTypeError,
} from './ca/errors.ts'
export {
  createLeafKeyAndCsr,
  LeafVerifier,
  type LeafVerificationCode,
  type VerifyLeafResult,
  verifyLeaf,
} from './ca/leaf.ts'
export { isDnsLabel, parseServiceSpiffeId, serviceSpiffeId, validateServiceName } from './ca/spiffe.ts'
export {
  CaManager,
  type CaManagerComponents,
  type CaSettings,
  type RotationStarted,
} from './connect/ca-manager.ts'
export {
  type CaRootRecord,
  type CaRoots,
  type CaRootsJson,
  type CaState,
  caRootsJson,
  parseRootRecords,
} from './connect/ca-state.ts'
export type {
  CaStateSource,
  CaStateWriter,
  ConnectLog,
  LeaderView,
  ServiceDirectory,
} from './connect/components.ts'
export {
  AgentStoppingError,
  CaNotReadyError,
  CaRotationConflictError,
  LeafSigningRefusedError,
  NotSigningLeaderError,
  ServiceNotRegisteredError,
} from './connect/errors.ts'
export {
  type CustodyIdentity,
  KeyCustody,
  type KeyCustodyComponents,
  type SigningRoot,
} from './connect/key-custody.ts'
export { LeafManager, type LeafManagerComponents, type LeafSigningChannel } from './connect/leaf-manager.ts'
export {
  LeafCertificateRotator,
  type LeafCertificateRotatorInit,
  type LeafCredentials,
  type LeafResponse,
} from './connect/leaf-rotator.ts'
export { LeafSigner, type LeafSignerComponents, type SignReply } from './connect/leaf-signer.ts'
export { ClusterKeyError, NodeKeyError } from './errors.ts'
export { generateClusterKey, parseClusterKey, readClusterKeyFile } from './keys/cluster-key.ts'
export type { KeyType } from './keys/keys.ts'
export { loadOrCreateNodeIdentity, type NodeIdentity } from './keys/node-key.ts'
