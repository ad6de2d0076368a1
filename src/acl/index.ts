// Public surface of the ACL system: rules, the authorizer, synthesized identity policies,
// permission names and the records the replicated state holds (src/raft/policy/acl-state.ts).
export {
  anonymousReadRules,
  type Authorizer,
  type DefaultPolicy,
  DENY_ALL,
  MANAGE_ALL,
  nodeIdentityRules,
  PolicyAuthorizer,
  SIDECAR_SUFFIX,
  serviceIdentityRules,
} from './authorizer.ts'
export {
  ANONYMOUS_TOKEN_ID,
  ANONYMOUS_TOKEN_SECRET,
  GLOBAL_MANAGEMENT_POLICY_ID,
  GLOBAL_MANAGEMENT_POLICY_NAME,
  REDACTED_SECRET,
} from './constants.ts'
export { AclRulesError } from './errors.ts'
export {
  need,
  type PermissionCheck,
  type PermissionName,
  type PermissionNeed,
  permissionDeniedMessage,
} from './permissions.ts'
export { parseRules } from './rules.ts'
export type {
  AccessLevel,
  AclNodeIdentity,
  AclPolicy,
  AclServiceIdentity,
  AclToken,
  RuleSet,
  ServiceRule,
} from './types.ts'
export {
  authorizerForToken,
  RuleSetCache,
  type TokenAuthorizerOptions,
} from './token-authorizer.ts'
