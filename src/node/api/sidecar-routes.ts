import { need } from '../../acl/index.ts'
import { ApiError } from '../agent/errors.ts'
import type { LocalServiceRegistry } from '../catalog/local-services.ts'
import type { SidecarReadiness } from '../sidecars/sidecar-module.ts'
import { authorizeById } from './acl-auth.ts'
import { type HttpApi, requestDeadline } from './server.ts'

/** What the readiness route needs of the agent. */
export interface SidecarRouteDeps {
  local: Pick<LocalServiceRegistry, 'get' | 'list'>
  whenReady(serviceId: string, options: { signal?: AbortSignal }): Promise<SidecarReadiness>
}

/** How long a readiness request waits by default, and at most (`?timeout=` in milliseconds). */
export const SIDECAR_READY_WAIT = { defaultMs: 10_000, maxMs: 60_000, maxDigits: 5 }

/**
 * `GET /v1/agent/sidecar/:id[?timeout=MS]` (peermesh's own): waits until the sidecar of local
 * service `:id` has bound its inbound and upstream listeners, or failed to, and answers
 * `{ ServiceID, Ready: true }` or `{ ServiceID, Ready: false, Error }` (e.g. "port 21000 (inbound)
 * is in use", or "sidecar not started yet" when the wait ends first: a sidecar starts once its
 * first leaf certificate is signed, which needs a Raft leader). A service without a sidecar is
 * ready at once; an unknown id is a 404. Needs service:read on the service; a token without
 * service:read on `:id` nor on any local service gets the same 403 whether `:id` exists or not
 * (`authorizeById`). `peermesh register`
 * calls it after registering, so a sidecar that cannot listen fails the command.
 */
export function registerSidecarRoutes(http: HttpApi, deps: SidecarRouteDeps): void {
  http.route('GET', '/v1/agent/sidecar/:id', async (req) => {
    const id = req.params['id']!
    const def = deps.local.get(id)
    const names = () => [id, ...deps.local.list().map((d) => d.name)]
    if (!authorizeById(req, def?.name, need.serviceRead, names) || def === undefined)
      throw new ApiError(`no local service with id ${id}`, 404)
    if (def.connect?.sidecarService === undefined) return { ServiceID: id, Ready: true }
    const r = await deps.whenReady(id, { signal: requestDeadline(req, SIDECAR_READY_WAIT) })
    return r.ok ? { ServiceID: id, Ready: true } : { ServiceID: id, Ready: false, Error: r.error }
  })
}
