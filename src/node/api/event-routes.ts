import { need } from '../../acl/index.ts'
import { InvalidUserEventError } from '../../gossip/index.ts'
import { DEFAULT_BLOCKING_WAIT_MS, MAX_BLOCKING_WAIT_MS } from '../catalog/change-index.ts'
import { parseDuration } from '../catalog/duration.ts'
import { ApiError } from '../agent/errors.ts'
import type { UserEventBuffer } from '../events/event-buffer.ts'
import {
  eventListIndex,
  type UserEventRecord,
  userEventJson,
  userEventProblem,
  USER_EVENT_VERSION,
} from '../events/user-event.ts'
import { ApiReply, type ApiRequest, type HttpApi } from './server.ts'

export interface EventRouteDeps {
  /**
   * Fires an event to every agent (gossip); returns it with its id and Lamport time. Throws
   * `InvalidUserEventError` when gossip cannot carry it.
   */
  fire(e: Omit<UserEventRecord, 'id' | 'ltime'>): UserEventRecord
  /** The events this agent received (for it), for the list. */
  events: UserEventBuffer
}

/**
 * Consul's user event API (agent/event_endpoint.go):
 * - `PUT /v1/event/fire/:name[?node=&service=&tag=]`, the body the payload (at most 512 bytes):
 *   needs `event:write` on the name; answers the event (`ID`, `Name`, `Payload` base64, filters,
 *   `Version`, `LTime`). The event reaches every agent by gossip; each keeps it if the filters
 *   (regular expressions on its node name, service names and their tags) match it.
 * - `GET /v1/event/list[?name=]`: the events this agent received (the last 256), oldest first,
 *   those the token may not read (`event:read`) left out, as Consul does; `X-Consul-Index` is
 *   Consul's hash of the last event's ID, and `?index=&wait=` blocks while it is unchanged.
 */
export function registerEventRoutes(http: Pick<HttpApi, 'route'>, deps: EventRouteDeps): void {
  http.route(
    'PUT',
    '/v1/event/fire/:name',
    (req) => {
      const name = req.params['name'] ?? ''
      if (name === '') throw new ApiError('Missing name', 400)
      req.auth.require(...need.eventWrite(name))
      const e = {
        name,
        payload: eventPayload(req),
        nodeFilter: req.query.get('node') ?? '',
        serviceFilter: req.query.get('service') ?? '',
        tagFilter: req.query.get('tag') ?? '',
        version: USER_EVENT_VERSION,
      }
      const problem = userEventProblem(e)
      if (problem !== undefined) throw new ApiError(problem, problem.startsWith('payload') ? 413 : 400)
      let fired: UserEventRecord
      try {
        fired = deps.fire(e)
      } catch (err) {
        // Within every limit above and still more than gossip carries (multi-byte names and filters).
        if (err instanceof InvalidUserEventError) throw new ApiError(`event too large: ${err.message}`, 413)
        throw err
      }
      return userEventJson(fired)
    },
    // Consul's payload is opaque: any bytes, any content type.
    { rawBody: true },
  )

  http.route('GET', '/v1/event/list', async (req) => {
    const name = req.query.get('name') ?? ''
    const authz = req.auth.authorizer()
    const visible = () =>
      deps.events.list().filter((e) => authz.eventRead(e.name) && (name === '' || e.name === name))
    const { after, waitMs } = blockingParams(req)
    const indexOf = (events: UserEventRecord[]) => eventListIndex(events.at(-1)?.id)
    // Waits while the list's index is the client's: another name's event keeps it waiting.
    if (after !== undefined)
      await deps.events.waitWhile(() => indexOf(visible()) === after, waitMs, req.signal)
    const events = visible()
    const index = indexOf(events)
    return new ApiReply(200, JSON.stringify(events.map(userEventJson)), 'application/json', {
      'X-Consul-Index': index,
    })
  })
}

/** The request body as the event payload, byte for byte (the fire route takes its body raw). */
export function eventPayload(req: Pick<ApiRequest, 'body'>): Uint8Array {
  return req.body instanceof Uint8Array ? req.body : new Uint8Array(0)
}

function blockingParams(req: ApiRequest): { after?: string; waitMs: number } {
  const index = req.query.get('index')
  const waitText = req.query.get('wait')
  let waitMs = DEFAULT_BLOCKING_WAIT_MS
  if (waitText !== null) {
    const ms = parseDuration(waitText)
    if (ms === undefined || ms > MAX_BLOCKING_WAIT_MS)
      throw new ApiError('wait: must be a duration like "30s", at most 10m', 400)
    waitMs = Math.ceil(ms)
  }
  if (index === null) return { waitMs }
  if (!/^\d{1,20}$/.test(index) || BigInt(index) > 0xffff_ffff_ffff_ffffn)
    throw new ApiError('index: must be a non-negative integer', 400)
  return { after: BigInt(index).toString(), waitMs }
}
