import { need, SIDECAR_SUFFIX } from '../../acl/index.ts'
import { ApiError } from '../agent/errors.ts'
import { createHash } from 'node:crypto'
import { authorizeById } from './acl-auth.ts'
import { ApiReply, type ApiRequest, type HttpApi } from './server.ts'
import type { Catalog, HealthCheckView, HealthEntry, NodeRef } from '../catalog/catalog.ts'
import type { CheckRunner } from '../catalog/checks.ts'
import {
  blockingParams,
  filtered,
  flagOf,
  type IndexedSource,
  indexedRead,
  nodeMetaOf,
  tagsOf,
} from './consul-query.ts'
import {
  agentCheckView,
  agentServiceView,
  catalogServiceView,
  checkView,
  healthView,
  instanceView,
  nodeView,
  type ViewContext,
} from './consul-views.ts'
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
  /** This agent's node name (`Node` of its checks). */
  nodeName?: () => string
  /** This agent's peer id: its own checks' outputs are shown in health answers. */
  selfId?: () => string
  /**
   * Registration grants (issue #12; service-grants.ts): after a registration passed its
   * `service:write` check, makes sure this agent may publish the service, asking the leader for a
   * grant with the request's token if not. Absent (ACLs off, or no Raft): nothing is asked.
   */
  grants?: Pick<ServiceGrants, 'ensure'>
  /** The agent's token: what a registration that carries none asks the leader's grant with. */
  defaultToken?: string
}

export { INDEX_HEADER } from './consul-query.ts'

/** Consul's id of the check that puts a service in maintenance (`/v1/agent/service/maintenance/:id`). */
export const serviceMaintenanceCheckId = (serviceId: string): string => `_service_maintenance:${serviceId}`
/**
 * Consul's node maintenance check is one `_node_maintenance` check on the node; peermesh's checks
 * belong to services (check ids are unique on an agent), so each local service gets its own.
 */
export const nodeMaintenanceCheckId = (serviceId: string): string => `_node_maintenance:${serviceId}`

/**
 * Adds the catalog, health and local-agent routes to the agent's HTTP API, in Consul's wire
 * format (issue #15; shapes in consul-views.ts, query parameters in consul-query.ts):
 *
 *   GET /v1/catalog/datacenters | services | nodes | node/:node | service/:name
 *   GET /v1/health/service/:name[?passing] | checks/:service | node/:node | state/:state
 *   GET /v1/agent/services | service/:id | checks
 *   PUT /v1/agent/service/register | service/deregister/:id | service/maintenance/:id?enable=&reason=
 *   PUT /v1/agent/maintenance?enable=&reason=
 *   PUT /v1/agent/check/register | deregister/:id | update/:id | pass|warn|fail/:id[?note=]
 *   PUT /v1/catalog/register | deregister        (this agent's own node only)
 *
 * Catalog and health reads are blocking queries (`?index=&wait=`); a query on one service waits
 * on that service's own index, so a change to `web` does not wake a query on `api`. Catalog data
 * comes from gossip: reads say `X-Consul-Effective-Consistency: stale` whatever was asked.
 */
export function registerCatalogRoutes(http: HttpApi, deps: CatalogRouteDeps): void {
  const { catalog, local, checks } = deps
  const ctx = (): ViewContext => ({
    datacenter: http.datacenter,
    serviceIndex: (n) => catalog.serviceIndex(n),
  })
  const whole: IndexedSource = {
    index: () => catalog.index,
    wait: (after, waitMs, signal) => catalog.waitForChange(after, waitMs, signal),
  }
  const ofService = (name: string): IndexedSource => ({
    index: () => catalog.serviceIndex(name),
    wait: (after, waitMs, signal) => catalog.waitForService(name, after, waitMs, signal),
  })
  const localIndex: IndexedSource = {
    index: () => local.index.current,
    wait: (after, waitMs, signal) => local.index.wait(after, waitMs, signal),
  }
  const nodeName = () => deps.nodeName?.() ?? ''
  /**
   * The service names a token may hold a permission on, for `authorizeById` (routes that find a
   * local service or check by ID): `id` (a service's ID is its name by default), this agent's
   * services and the catalog's.
   */
  function* serviceNames(id?: string): Generator<string> {
    if (id !== undefined) yield id
    for (const d of local.list()) yield d.name
    yield* Object.keys(catalog.services())
  }
  // Outputs of the checks this agent runs (the notes of `check/pass?note=` among them).
  const outputOf = (node: NodeRef, checkId: string) =>
    deps.selfId !== undefined && node.peerId === deps.selfId() ? checks.get(checkId)?.output : undefined

  /** Instances of `name` matching `?tag=` (all) and `?node-meta=` (nodes carry no meta here). */
  const instances = (req: ApiRequest, name: string, passing: boolean): HealthEntry[] => {
    const tags = tagsOf(req)
    const meta = nodeMetaOf(req)
    if (meta.length > 0) return []
    return catalog
      .health(name, passing ? { minStatus: 'passing' } : {})
      .filter((e) => tags.every((t) => e.service.tags.includes(t)))
  }

  http.route('GET', '/v1/catalog/datacenters', () => [http.datacenter])

  http.route('GET', '/v1/catalog/services', (req) =>
    indexedRead(
      req,
      whole,
      () => {
        const authz = req.auth.authorizer()
        return Object.fromEntries(Object.entries(catalog.services()).filter(([n]) => authz.serviceRead(n)))
      },
      'stale',
    ),
  )

  http.route('GET', '/v1/catalog/nodes', (req) =>
    indexedRead(
      req,
      whole,
      () => {
        if (nodeMetaOf(req).length > 0) return []
        const authz = req.auth.authorizer()
        const nodes = catalog
          .members()
          .filter((m) => authz.nodeRead(m.name))
          .map((m) => nodeView(m, ctx(), catalog.index))
        return filtered(req, nodes)
      },
      'stale',
    ),
  )

  http.route('GET', '/v1/catalog/node/:node', (req) => {
    const node = req.params['node']!
    req.auth.require(...need.nodeRead(node))
    return indexedRead(
      req,
      whole,
      () => {
        const ref = catalog.members().find((m) => m.name === node)
        if (ref === undefined) return null
        const authz = req.auth.authorizer()
        const services: Record<string, unknown> = {}
        for (const e of catalog.entries()) {
          if (e.node.name !== node || !authz.serviceRead(e.service.name)) continue
          services[e.service.id] = instanceView(e, catalog.serviceIndex(e.service.name))
        }
        return { Node: nodeView(ref, ctx(), catalog.index), Services: filtered(req, services) }
      },
      'stale',
    )
  })

  http.route('GET', '/v1/catalog/service/:name', (req) => {
    const name = req.params['name']!
    req.auth.require(...need.serviceRead(name))
    return indexedRead(
      req,
      ofService(name),
      () =>
        filtered(
          req,
          instances(req, name, false).map((e) => catalogServiceView(e, ctx())),
        ),
      'stale',
    )
  })

  http.route('GET', '/v1/health/service/:name', (req) => {
    const name = req.params['name']!
    req.auth.require(...need.serviceRead(name))
    const passing = flagOf(req, 'passing')
    return indexedRead(
      req,
      ofService(name),
      () =>
        filtered(
          req,
          instances(req, name, passing).map((e) => healthView(e, ctx(), outputOf)),
        ),
      'stale',
    )
  })

  http.route('GET', '/v1/health/checks/:service', (req) => {
    const name = req.params['service']!
    req.auth.require(...need.serviceRead(name))
    return indexedRead(
      req,
      ofService(name),
      () => {
        const list = instances(req, name, false).flatMap((e) =>
          e.checks
            .filter((c) => c.serviceId !== '')
            .map((c) =>
              checkView(
                { ...c, output: outputOf(e.node, c.checkId) ?? c.output },
                e.service.tags,
                catalog.serviceIndex(name),
              ),
            ),
        )
        return filtered(req, list)
      },
      'stale',
    )
  })

  /** Every check (node checks once per node) the token may read, with `keep` deciding. */
  const allChecks = (req: ApiRequest, keep: (c: HealthCheckView) => boolean): Record<string, unknown>[] => {
    const authz = req.auth.authorizer()
    const out: Record<string, unknown>[] = []
    for (const m of catalog.members()) {
      const c = catalog.nodeCheck(m.name)
      if (c !== undefined && authz.nodeRead(m.name) && keep(c)) out.push(checkView(c, [], catalog.index))
    }
    for (const e of catalog.entries()) {
      if (!authz.serviceRead(e.service.name)) continue
      for (const c of e.checks) {
        if (c.serviceId === '') continue
        const view = { ...c, output: outputOf(e.node, c.checkId) ?? c.output }
        if (keep(view)) out.push(checkView(view, e.service.tags, catalog.serviceIndex(e.service.name)))
      }
    }
    return out
  }

  http.route('GET', '/v1/health/node/:node', (req) => {
    const node = req.params['node']!
    req.auth.require(...need.nodeRead(node))
    return indexedRead(
      req,
      whole,
      () =>
        filtered(
          req,
          allChecks(req, (c) => c.node === node),
        ),
      'stale',
    )
  })

  http.route('GET', '/v1/health/state/:state', (req) => {
    const state = req.params['state']!
    if (!['any', 'passing', 'warning', 'critical'].includes(state))
      throw new ApiError(`Invalid state "${state}": expected any, passing, warning or critical`, 400)
    return indexedRead(
      req,
      whole,
      () =>
        filtered(
          req,
          allChecks(req, (c) => state === 'any' || c.status === state),
        ),
      'stale',
    )
  })

  const agentService = (def: ServiceDefinition) => agentServiceView(def, deps.nodeAddress(), http.datacenter)

  http.route('GET', '/v1/agent/services', (req) =>
    indexedRead(
      req,
      localIndex,
      () => {
        const out: Record<string, unknown> = {}
        const authz = req.auth.authorizer()
        for (const def of local.list()) if (authz.serviceRead(def.name)) out[def.id] = agentService(def)
        return filtered(req, out)
      },
      undefined,
    ),
  )

  http.route('GET', '/v1/agent/service/:id', async (req) => {
    const id = req.params['id']!
    const def = local.get(id)
    // Without service:read, the same answer whether `id` exists or not (authorizeById).
    if (!authorizeById(req, def?.name, need.serviceRead, () => serviceNames(id)) || def === undefined)
      throw new ApiError(`unknown service ID: ${id}`, 404)
    // Consul's hash-based blocking (`?hash=` with the `X-Consul-ContentHash` of an earlier answer):
    // waits until the registration differs or `wait` passes.
    const hashOf = (v: unknown) => createHash('sha256').update(JSON.stringify(v)).digest('hex').slice(0, 16)
    const hash = req.query.get('hash')
    if (hash !== null && hash !== '') {
      const { waitMs } = blockingParams(req)
      const signal = AbortSignal.any([req.signal, AbortSignal.timeout(waitMs)])
      while (!signal.aborted) {
        const now = local.get(id)
        if (now === undefined || hashOf(agentService(now)) !== hash) break
        await local.index.wait(local.index.current, waitMs, signal)
      }
    }
    const now = local.get(id)
    if (now === undefined) throw new ApiError(`unknown service ID: ${id}`, 404)
    const view = agentService(now)
    return new ApiReply(200, JSON.stringify({ ...view, ContentHash: hashOf(view) }), 'application/json', {
      'X-Consul-ContentHash': hashOf(view),
    })
  })

  http.route('GET', '/v1/agent/checks', (req) => {
    const out: Record<string, unknown> = {}
    const authz = req.auth.authorizer()
    for (const c of checks.list()) {
      if (!authz.serviceRead(c.serviceName)) continue
      out[c.checkId] = agentCheckView(c, nodeName(), local.get(c.serviceId))
    }
    return filtered(req, out)
  })

  /** Registers `def` after the checks Consul makes (service:write on it, and on its sidecar). */
  const register = async (req: ApiRequest, def: ServiceDefinition): Promise<void> => {
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
  }

  /** A local service re-parsed with its checks changed (what check register/deregister do). */
  const withChecks = (
    def: ServiceDefinition,
    change: (checks: unknown[]) => unknown[],
  ): ServiceDefinition => {
    const json = serviceDefinitionToJson(def)
    try {
      return parseServiceDefinition({ ...json, checks: change(json.checks ?? []) }, 'request body')
    } catch (err) {
      throw asApiError(err)
    }
  }

  http.route('PUT', '/v1/agent/service/register', async (req) => {
    if (req.body === undefined) throw new ApiError('missing body: a JSON service definition', 400)
    let def: ServiceDefinition
    try {
      def = parseServiceDefinition(req.body, 'request body')
    } catch (err) {
      throw asApiError(err)
    }
    await register(req, def)
    return null
  })

  http.route('PUT', '/v1/agent/service/deregister/:id', (req) => {
    const id = req.params['id']!
    authorizeById(req, local.get(id)?.name, need.serviceWrite, () => serviceNames(id))
    try {
      local.deregister(id)
    } catch (err) {
      throw asApiError(err)
    }
    return null
  })

  /** `?enable=true|false` of the maintenance routes (Consul: required, 400 without it). */
  const enableOf = (req: ApiRequest): boolean => {
    const v = req.query.get('enable')
    if (v === 'true') return true
    if (v === 'false') return false
    throw new ApiError('Missing value for enable', 400)
  }
  const maintenanceCheck = (id: string, name: string, req: ApiRequest) => {
    const reason = req.query.get('reason') ?? ''
    if (reason.length > 1024) throw new ApiError('reason: at most 1024 characters', 400)
    // Critical from the start; its TTL (the longest allowed) only keeps it critical.
    return {
      CheckID: id,
      Name: name,
      TTL: '24h',
      Status: 'critical',
      ...(reason !== '' ? { Notes: reason } : {}),
    }
  }
  const setMaintenance = async (
    req: ApiRequest,
    def: ServiceDefinition,
    checkId: string,
    name: string,
    on: boolean,
  ) => {
    const next = withChecks(def, (list) => [
      ...list.filter((c) => (c as { id?: string }).id !== checkId),
      ...(on ? [maintenanceCheck(checkId, name, req)] : []),
    ])
    await register(req, next)
  }

  http.route('PUT', '/v1/agent/service/maintenance/:id', async (req) => {
    const id = req.params['id']!
    const def = local.get(id)
    const on = enableOf(req)
    if (!authorizeById(req, def?.name, need.serviceWrite, () => serviceNames(id)) || def === undefined)
      throw new ApiError(`No service registered with ID "${id}"`, 404)
    await setMaintenance(req, def, serviceMaintenanceCheckId(def.id), 'Service Maintenance Mode', on)
    return null
  })

  http.route('PUT', '/v1/agent/maintenance', async (req) => {
    const on = enableOf(req)
    // Consul: node:write. Peermesh keeps node maintenance as a check on every local service.
    req.auth.require(...need.nodeWrite(nodeName()))
    for (const def of local.list())
      await setMaintenance(req, def, nodeMaintenanceCheckId(def.id), 'Node Maintenance Mode', on)
    return null
  })

  http.route('PUT', '/v1/agent/check/register', async (req) => {
    const body = req.body
    if (body === null || typeof body !== 'object' || Array.isArray(body))
      throw new ApiError('missing body: a JSON check definition', 400)
    const serviceId = Object.entries(body).find(
      ([k]) => k.toLowerCase().replaceAll('_', '') === 'serviceid',
    )?.[1]
    if (typeof serviceId !== 'string' || serviceId === '')
      throw new ApiError('ServiceID: peermesh checks belong to a service registered on this agent', 400)
    const def = local.get(serviceId)
    if (!authorizeById(req, def?.name, need.serviceWrite, () => serviceNames(serviceId)) || def === undefined)
      throw new ApiError(`ServiceID: no service "${serviceId}" on this agent`, 400)
    await register(
      req,
      withChecks(def, (list) => [...list, body]),
    )
    return null
  })

  const checkOwner = (req: ApiRequest, id: string): ServiceDefinition => {
    const def = local.list().find((d) => d.checks.some((c) => c.id === id))
    if (!authorizeById(req, def?.name, need.serviceWrite, () => serviceNames()) || def === undefined)
      throw new ApiError(`Unknown check ID "${id}"`, 404)
    return def
  }

  http.route('PUT', '/v1/agent/check/deregister/:id', async (req) => {
    const id = req.params['id']!
    const def = checkOwner(req, id)
    await register(
      req,
      withChecks(def, (list) => list.filter((c) => (c as { id?: string }).id !== id)),
    )
    return null
  })

  /** A field of a Consul body, whatever its case. */
  const fieldOf = (body: Record<string, unknown>, name: string): unknown =>
    Object.entries(body).find(([k]) => k.toLowerCase().replaceAll('_', '') === name)?.[1]
  /** Consul's catalog writes name a node: here only this agent's own, as gossip makes each node the owner of its entries. */
  const ownNode = (body: unknown): Record<string, unknown> => {
    if (body === null || typeof body !== 'object' || Array.isArray(body))
      throw new ApiError('missing body: a JSON catalog registration', 400)
    const b = body as Record<string, unknown>
    const node = fieldOf(b, 'node')
    if (node !== nodeName())
      throw new ApiError(
        `Node: peermesh registers only this agent's own node ("${nodeName()}"): each node announces its services itself`,
        400,
      )
    return b
  }

  http.route('PUT', '/v1/catalog/register', async (req) => {
    const b = ownNode(req.body)
    req.auth.require(...need.nodeWrite(nodeName()))
    for (const f of ['check', 'checks']) {
      const c = fieldOf(b, f)
      if (c !== undefined && c !== null && !(Array.isArray(c) && c.length === 0))
        throw new ApiError(
          `${f}: catalog checks are not supported: register checks with the service (/v1/agent/check/register)`,
          400,
        )
    }
    const service = fieldOf(b, 'service')
    if (service === undefined || service === null) return true
    let def: ServiceDefinition
    try {
      def = parseServiceDefinition(service, 'request body (Service)')
    } catch (err) {
      throw asApiError(err)
    }
    await register(req, def)
    return true
  })

  http.route('PUT', '/v1/catalog/deregister', async (req) => {
    const b = ownNode(req.body)
    req.auth.require(...need.nodeWrite(nodeName()))
    const serviceId = fieldOf(b, 'serviceid')
    const checkId = fieldOf(b, 'checkid')
    if (typeof serviceId === 'string' && serviceId !== '') {
      const def = local.get(serviceId)
      if (!authorizeById(req, def?.name, need.serviceWrite, () => serviceNames(serviceId))) return true
      local.deregister(serviceId)
      return true
    }
    if (typeof checkId === 'string' && checkId !== '') {
      const def = local.list().find((d) => d.checks.some((c) => c.id === checkId))
      if (!authorizeById(req, def?.name, need.serviceWrite, () => serviceNames()) || def === undefined)
        return true
      await register(
        req,
        withChecks(def, (list) => list.filter((c) => (c as { id?: string }).id !== checkId)),
      )
      return true
    }
    throw new ApiError('ServiceID or CheckID: required (peermesh does not deregister a whole node)', 400)
  })

  const updateTtl = (req: ApiRequest, id: string, status: CheckStatus, output: string) => {
    if (output.length > 4096) throw new ApiError('output: at most 4096 characters', 400)
    const check = checks.list().find((c) => c.checkId === id)
    authorizeById(req, check?.serviceName, need.serviceWrite, () => serviceNames())
    try {
      checks.updateTtl(id, status, output)
    } catch (err) {
      throw asApiError(err)
    }
    return null
  }

  for (const [verb, status] of [
    ['pass', 'passing'],
    ['warn', 'warning'],
    ['fail', 'critical'],
  ] as const) {
    http.route('PUT', `/v1/agent/check/${verb}/:id`, (req) =>
      updateTtl(req, req.params['id']!, status, req.query.get('note') ?? ''),
    )
  }

  http.route('PUT', '/v1/agent/check/update/:id', (req) => {
    const b = (req.body ?? {}) as Record<string, unknown>
    const field = (name: string) => Object.entries(b).find(([k]) => k.toLowerCase() === name)?.[1]
    const status = field('status')
    const output = field('output') ?? ''
    if (status !== 'passing' && status !== 'warning' && status !== 'critical')
      throw new ApiError('Status: must be passing, warning or critical', 400)
    if (typeof output !== 'string') throw new ApiError('Output: must be a string', 400)
    return updateTtl(req, req.params['id']!, status, output)
  })
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
