/**
 * Errors of the identity layer. Each failure has its own class with a stable `name` and `code`;
 * callers and tests check `code`, never the message text.
 */
export class NodeKeyError extends Error {
  override name = 'NodeKeyError'
  readonly code = 'PEERMESH_ERR_NODE_KEY'
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options)
  }
}

export class ClusterKeyError extends Error {
  override name = 'ClusterKeyError'
  readonly code = 'PEERMESH_ERR_CLUSTER_KEY'
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options)
  }
}
