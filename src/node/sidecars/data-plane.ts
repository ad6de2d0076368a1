/**
 * The data plane's classes, in a module of their own so that the agent loads them on first use
 * (`loadDataPlane`): an agent without sidecars and without tracing never loads the proxy (its
 * listeners, the HTTP/1.1 and HTTP/2 paths, TLS material, spans) nor Node's `http2` and `tls`
 * modules with it. Imported only through `loadDataPlane`, and type-only elsewhere.
 */
export { InboundGate } from '../../proxy/inbound-gate.ts'
export { OtlpHttpExporter } from '../../proxy/otlp-exporter.ts'
export { Sidecar } from '../../proxy/sidecar.ts'
export { Tracer } from '../../proxy/tracing.ts'
