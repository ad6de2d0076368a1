import { PeermeshError } from '../common/errors.ts'

/** A policy's `Rules` text does not parse; the message names the rule and what is wrong with it. */
export class AclRulesError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_ACL_RULES'
}
