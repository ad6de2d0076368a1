// Public surface of the identity layer: node key, cluster key, mesh CA and service leaves.
export * from './ca.ts'
export * from './cluster-key.ts'
export * from './errors.ts'
export * from './errors-ca.ts'
export * from './leaf.ts'
export * from './node-key.ts'
export * from './rotation.ts'
export * from './spiffe.ts'
