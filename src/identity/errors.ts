/**
 * Errors of the identity layer. Each failure has its own class with a stable `name` and `code`;
 * callers and tests check `code`, never the message text.
 */
import { PeermeshError } from '../common/errors.ts'

export class NodeKeyError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_NODE_KEY'
}

export class ClusterKeyError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_CLUSTER_KEY'
}
