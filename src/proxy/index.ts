// Public surface of the data plane: the sidecar and its listeners, the narrow interfaces the agent
// implements for it (certificates, endpoints, authorization), static sources, and its errors.
export {
  InvalidProxyConfigError,
  InvalidSplitConfigError,
  ListenerStateError,
  NoCertificateError,
  NoHealthyEndpointError,
  ProxyError,
  UpstreamConnectError,
  UpstreamDeniedError,
  UpstreamResetError,
  UpstreamTimeoutError,
} from './errors.ts'
export { InboundListener, type InboundListenerInit } from './inbound.ts'
export { type Intention, IntentionIndex, isIntentionName } from './intentions.ts'
export { ProxyMetrics } from './metrics.ts'
export {
  HttpOutboundListener,
  type HttpOutboundListenerInit,
  PROXY_ERROR_HEADER,
  REQUEST_ID_HEADER,
} from './outbound-http.ts'
export { H2OutboundListener, type H2OutboundListenerInit } from './outbound-h2.ts'
export { OutboundListener, type OutboundListenerInit } from './outbound-tcp.ts'
export { OtlpHttpExporter, type OtlpHttpExporterInit } from './otlp-exporter.ts'
export { type SpanExporter, Tracer, type TracerInit } from './tracing.ts'
export type { UpstreamListenerInit } from './outbound-common.ts'
export type { OutlierConfig } from './outlier.ts'
export type { RetryBudgetConfig } from './retry-budget.ts'
export {
  type AnyOutboundListener,
  Sidecar,
  type SidecarInit,
  type SidecarUpstream,
  type UpstreamTuning,
} from './sidecar.ts'
export { IntentionAuthorizer, StaticCertificateSource, StaticEndpointSource } from './sources.ts'
export { type SplitConfig, type SplitEntry, validateSplitConfig } from './split.ts'
export {
  CONCURRENCY_LIMIT_CODE,
  REJECT_HEADER,
} from './outbound-http.ts'
export { EMPTY_POLICY, type TrafficPolicy } from './traffic.ts'
export {
  type AuthorizationDecision,
  type Authorizer,
  type CertificateSource,
  type Endpoint,
  type EndpointSource,
  type AccessLogMode,
  type ListenerEnvironment,
  type ProxyLogger,
  type ServiceCertificate,
  silentLogger,
  type Unsubscribe,
} from './types.ts'
