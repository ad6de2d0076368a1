/** Service catalog and health checks: public surface for the agent. */
export {
  type ApplyResult,
  Catalog,
  type CatalogEvents,
  type CatalogInit,
  type HealthCheckView,
  type HealthEntry,
  hostOf,
  type InstanceService,
  type MemberStatus,
  type MemberUpdate,
  NODE_CHECK_ID,
  type NodeRef,
} from './catalog.ts'
export { ChangeIndex, DEFAULT_BLOCKING_WAIT_MS, MAX_BLOCKING_WAIT_MS } from './change-index.ts'
export {
  type CheckRunnerInit,
  CheckRunner,
  type CheckState,
  type CheckUpdate,
  type ProbeOptions,
  type ProbeResult,
  type Probes,
  systemProbes,
} from './checks.ts'
export {
  CONSUL_DNS_DOMAIN,
  DEFAULT_DATACENTER,
  DEFAULT_DNS_ADDRESS,
  DEFAULT_DNS_DOMAIN,
  DnsServer,
  type DnsServerInit,
  type DnsStats,
} from './dns.ts'
export { formatDuration, parseDuration } from './duration.ts'
export {
  CheckNotFoundError,
  CheckNotTtlError,
  PayloadTooLargeError,
  ServiceDefinitionError,
  ServiceNotFoundError,
  ServicesFileError,
} from './errors.ts'
// The blocking-query header is the catalog's index, served by the API's catalog routes.
export { INDEX_HEADER } from '../api/consul-query.ts'
export { LocalPayloadPublisher, type LocalPayloadPublisherInit } from './local-payload.ts'
export {
  LocalServiceRegistry,
  type LocalServiceRegistryInit,
  SERVICES_FILE,
  type ServiceChange,
} from './local-services.ts'
export {
  type AnnouncedCheck,
  type AnnouncedService,
  CATALOG_META_KEY,
  DEFAULT_MAX_PAYLOAD_BYTES,
  decodeNodePayload,
  encodeNodePayload,
  type NodePayload,
  type PayloadDecodeResult,
  payloadBytes,
} from './node-payload.ts'
export {
  type CheckDefinition,
  type CheckStatus,
  type HttpCheckDefinition,
  parseServiceDefinition,
  SERVICE_LIMITS,
  type ServiceDefinition,
  type ServiceDefinitionJson,
  type SidecarDefinition,
  serviceDefinitionToJson,
  type TcpCheckDefinition,
  type TtlCheckDefinition,
  type UpstreamDefinition,
} from './service-definition.ts'
