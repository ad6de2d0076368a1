import { need, SIDECAR_SUFFIX } from '../../acl/index.ts'
import { ApiError } from '../agent/errors.ts'
import { ApiReply, type ApiRequest, type HttpApi } from './server.ts'
import type { Catalog, HealthEntry } from '../catalog/catalog.ts'
import { DEFAULT_BLOCKING_WAIT_MS, MAX_BLOCKING_WAIT_MS } from '../catalog/change-index.ts'
import type { CheckRunner } from '../catalog/checks.ts'
import { parseDuration } from '../catalog/duration.ts'
import {
  CheckNotFoundError,
  CheckNotTtlError,
  PayloadTooLargeError,
  ServiceDefinitionError,
  ServiceNotFoundError,
} from '../catalog/errors.ts'
import type { LocalServiceRegistry } from '../catalog/local-services.ts'
import type { ServiceGrants } from '../catalog/service-grants.ts'
import {
  type CheckStatus,
  parseServiceDefinition,
  type ServiceDefinition,
  serviceDefinitionToJson,
} from '../catalog/service-definition.ts'

export interface CatalogRouteDeps {
  catalog: Catalog
  local: LocalServiceRegistry
  checks: CheckRunner
  /** This agent's address (IP or host), shown for local services registered without one. */
  nodeAddress: () => string
  /**
   * Registration grants (issue #12; service-grants.ts): after a registration passed its
   * `service:write` check, makes sure this agent may publish the service, asking the leader for a
   * grant with the request's token if not. Absent (ACLs off, or no Raft): nothing is asked.
   */
  grants?: Pick<ServiceGrants, 'ensure'>
  /** The agent's token: what a registration that carries none asks the leader's grant with. */
  defaultToken?: string
}

/** Header carrying the index of a blocking query's answer (`X-Consul-Index` is sent too). */
export const INDEX_HEADER = 'X-Peermesh-Index'

/**
 * Adds the catalog, health and local-agent routes to the agent's HTTP API:
 *
 *   GET /v1/catalog/services                      { [name]: tags[] }
 *   GET /v1/catalog/service/:name[?tag=T]         instances (any health)
 *   GET /v1/health/service/:name[?passing][&tag=T] Consul-shaped entries with aggregated status
 *   GET /v1/agent/services                        this agent's registrations { [id]: definition }
 *   GET /v1/agent/checks                          this agent's checks { [id]: state with output }
 *   PUT /v1/agent/service/register                body: a service definition
 *   PUT /v1/agent/service/deregister/:id
 *   PUT /v1/agent/check/pass|warn|fail/:id[?note=]
 *
 * The GET routes (except checks) are blocking queries: `?index=N[&wait=30s]` waits until the
 * index is above N (at most 10 min, 5 min by default) and every reply carries the index in
 * `X-Peermesh-Index` and `X-Consul-Index`. Unknown or malformed query parameters are a 400.
 */
export function registerCatalogRoutes(http: HttpApi, deps: CatalogRouteDeps): void {
  const { catalog, local, checks } = deps

  http.route('GET', '/v1/catalog/services', (req) =>
    blocking(
      req,
      [],
      (after, wait) => catalog.waitForChange(after, wait, req.signal),
      () => catalog.index,
      () => {
        const authz = req.auth.authorizer()
        return Object.fromEntries(Object.entries(catalog.services()).filter(([n]) => authz.serviceRead(n)))
      },
    ),
  )

  http.route('GET', '/v1/catalog/service/:name', (req) => {
    const name = req.params['name']!
    req.auth.require(...need.serviceRead(name))
    return blocking(
      req,
      ['tag'],
      (after, wait) => catalog.waitForChange(after, wait, req.signal),
      () => catalog.index,
      () => catalog.health(name, tagFilter(req)).map(catalogView),
    )
  })

  http.route('GET', '/v1/health/service/:name', (req) => {
    const name = req.params['name']!
    req.auth.require(...need.serviceRead(name))
    const passing = flag(req, 'passing')
    return blocking(
      req,
      ['tag', 'passing'],
      (after, wait) => catalog.waitForChange(after, wait, req.signal),
      () => catalog.index,
      () =>
        catalog.health(name, { ...tagFilter(req), ...(passing ? { minStatus: 'passing' as const } : {}) }),
    )
  })

  http.route('GET', '/v1/agent/services', (req) =>
    blocking(
      req,
      [],
      (after, wait) => local.index.wait(after, wait, req.signal),
      () => local.index.current,
      () => {
        const out: Record<string, unknown> = {}
        const authz = req.auth.authorizer()
        for (const def of local.list()) {
          if (!authz.serviceRead(def.name)) continue
          out[def.id] = { ...serviceDefinitionToJson(def), address: def.address ?? deps.nodeAddress() }
        }
        return out
      },
    ),
  )

  http.route('GET', '/v1/agent/checks', (req) => {
    onlyParams(req, [])
    const out: Record<string, unknown> = {}
    const authz = req.auth.authorizer()
    for (const c of checks.list()) if (authz.serviceRead(c.serviceName)) out[c.checkId] = c
    return out
  })

  http.route('PUT', '/v1/agent/service/register', async (req) => {
    onlyParams(req, [])
    if (req.body === undefined) throw new ApiError('missing body: a JSON service definition', 400)
    let def: ServiceDefinition
    try {
      def = parseServiceDefinition(req.body, 'request body')
    } catch (err) {
      throw asApiError(err)
    }
    // The instance, and its sidecar's identity (Consul: service:write on both).
    req.auth.require(...need.serviceWrite(def.name))
    if (def.connect?.sidecarService !== undefined)
      req.auth.require(...need.serviceWrite(`${def.name}${SIDECAR_SUFFIX}`))
    try {
      local.register(def)
    } catch (err) {
      throw asApiError(err)
    }
    // Kept whatever the answer: without a grant the others ignore it until one is committed.
    await deps.grants?.ensure(def.name, req.auth.secret() ?? deps.defaultToken, { signal: req.signal })
    return null
  })

  http.route('PUT', '/v1/agent/service/deregister/:id', (req) => {
    onlyParams(req, [])
    const def = local.get(req.params['id']!)
    if (def !== undefined) req.auth.require(...need.serviceWrite(def.name))
    try {
      local.deregister(req.params['id']!)
    } catch (err) {
      throw asApiError(err)
    }
    return null
  })

  for (const [verb, status] of [
    ['pass', 'passing'],
    ['warn', 'warning'],
    ['fail', 'critical'],
  ] as const) {
    http.route('PUT', `/v1/agent/check/${verb}/:id`, (req) => {
      onlyParams(req, ['note'])
      const note = req.query.get('note') ?? ''
      if (note.length > 4096) throw new ApiError('note: at most 4096 characters', 400)
      const check = checks.list().find((c) => c.checkId === req.params['id'])
      if (check !== undefined) req.auth.require(...need.serviceWrite(check.serviceName))
      try {
        checks.updateTtl(req.params['id']!, status satisfies CheckStatus, note)
      } catch (err) {
        throw asApiError(err)
      }
      return null
    })
  }
}

/** Query parameters every blocking route accepts. */
const BLOCKING_PARAMS = ['index', 'wait']

async function blocking(
  req: ApiRequest,
  allowed: string[],
  wait: (afterIndex: number, waitMs: number) => Promise<number>,
  index: () => number,
  answer: () => unknown,
): Promise<ApiReply> {
  onlyParams(req, [...allowed, ...BLOCKING_PARAMS])
  const after = req.query.get('index')
  const waitText = req.query.get('wait')
  let waitMs = DEFAULT_BLOCKING_WAIT_MS
  if (waitText !== null) {
    const ms = parseDuration(waitText)
    if (ms === undefined || ms > MAX_BLOCKING_WAIT_MS) {
      throw new ApiError('wait: must be a duration like "30s", at most 10m', 400)
    }
    waitMs = ms
  }
  if (after !== null) {
    if (!/^\d{1,15}$/.test(after)) throw new ApiError('index: must be a non-negative integer', 400)
    await wait(Number(after), waitMs)
  }
  // Read the index before the answer: a change in between makes the client ask again, never miss one.
  const at = String(index())
  return new ApiReply(200, JSON.stringify(answer()), 'application/json', {
    [INDEX_HEADER]: at,
    'X-Consul-Index': at,
  })
}

function onlyParams(req: ApiRequest, allowed: string[]): void {
  for (const key of new Set(req.query.keys())) {
    if (!allowed.includes(key) && key !== 'token') {
      throw new ApiError(
        `unknown query parameter "${key}"${allowed.length > 0 ? ` (allowed: ${allowed.join(', ')})` : ''}`,
        400,
      )
    }
    if (req.query.getAll(key).length > 1)
      throw new ApiError(`query parameter "${key}" given more than once`, 400)
  }
}

function flag(req: ApiRequest, key: string): boolean {
  const v = req.query.get(key)
  if (v === null || v === 'false' || v === '0') return false
  if (v === '' || v === 'true' || v === '1') return true
  throw new ApiError(`${key}: must be empty, true or false`, 400)
}

function tagFilter(req: ApiRequest): { tag?: string } {
  const tag = req.query.get('tag')
  if (tag === null) return {}
  if (tag.length === 0) throw new ApiError('tag: must not be empty', 400)
  return { tag }
}

/** Consul's `/v1/catalog/service` shape (camelCase): one flat object per instance. */
function catalogView(e: HealthEntry): Record<string, unknown> {
  return {
    node: e.node.name,
    peerId: e.node.peerId,
    address: e.node.address,
    serviceId: e.service.id,
    serviceName: e.service.name,
    serviceAddress: e.service.address,
    servicePort: e.service.port,
    serviceTags: e.service.tags,
    serviceMeta: e.service.meta,
    serviceWeights: e.service.weights,
    ...(e.service.sidecar !== undefined ? { sidecar: e.service.sidecar } : {}),
    status: e.status,
  }
}

function asApiError(err: unknown): unknown {
  if (
    err instanceof ServiceDefinitionError ||
    err instanceof PayloadTooLargeError ||
    err instanceof CheckNotTtlError
  ) {
    return new ApiError(err.message, 400, { cause: err })
  }
  if (err instanceof ServiceNotFoundError || err instanceof CheckNotFoundError) {
    return new ApiError(err.message, 404, { cause: err })
  }
  return err
}
