// Public surface of the identity layer: node key, cluster key, mesh CA and service leaves.
export * from './ca/ca.ts'
export * from './keys/cluster-key.ts'
export * from './errors.ts'
export * from './ca/errors.ts'
export * from './ca/leaf.ts'
export * from './keys/node-key.ts'
export * from './connect/leaf-rotator.ts'
export * from './ca/spiffe.ts'
