import { existsSync, mkdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { writeFileAtomicSync } from '../../common/fs-atomic.ts'
import { ChangeIndex } from './change-index.ts'
import { ServiceDefinitionError, ServiceNotFoundError, ServicesFileError } from './errors.ts'
import { DEFAULT_MAX_PAYLOAD_BYTES, encodeNodePayload } from './node-payload.ts'
import {
  parseServiceDefinition,
  type ServiceDefinition,
  type ServiceDefinitionJson,
  serviceDefinitionToJson,
} from './service-definition.ts'
import type { Clock } from '../../common/clock.ts'
import { TypedEmitter, type Unsubscribe } from '../../common/events.ts'

/** File in the data dir that holds this agent's registrations. */
export const SERVICES_FILE = 'services.json'

export interface LocalServiceRegistryInit {
  /** The agent's data dir; registrations live in `<dataDir>/services.json`. */
  dataDir: string
  /**
   * Limit on this node's encoded catalog payload; a registration that would exceed it is refused
   * (`PayloadTooLargeError`). Give `LocalPayloadPublisher` the same registry, it uses this value.
   */
  maxPayloadBytes?: number
  /** For the blocking-query index of `GET /v1/agent/services`. */
  clock?: Clock
}

export interface ServiceChange {
  op: 'register' | 'deregister'
  id: string
  /** The new definition (register) or the removed one (deregister). */
  service: ServiceDefinition
}

interface ServicesFile {
  version: 1
  services: ServiceDefinitionJson[]
}

/**
 * The services registered with this agent: the source of truth for what it announces in gossip.
 * Every change is written atomically to `<dataDir>/services.json` before it is visible (a crash
 * leaves the old or the new set, never a mix) and reloaded by `open()`. Emits `service:change`.
 * A refused change (invalid, conflicting, too large, or the write failed) throws and changes nothing.
 */
export class LocalServiceRegistry {
  private readonly events = new TypedEmitter<{ 'service:change': ServiceChange }>()
  readonly path: string
  readonly maxPayloadBytes: number
  /** Bumped on every change: the index of `GET /v1/agent/services` blocking queries. */
  readonly index: ChangeIndex
  private services = new Map<string, ServiceDefinition>()

  private constructor(init: LocalServiceRegistryInit) {
    this.path = join(init.dataDir, SERVICES_FILE)
    this.maxPayloadBytes = init.maxPayloadBytes ?? DEFAULT_MAX_PAYLOAD_BYTES
    this.index = new ChangeIndex(init.clock)
  }

  on(type: 'service:change', listener: (change: ServiceChange) => void): Unsubscribe {
    return this.events.on(type, listener)
  }

  /**
   * Opens the registry of `dataDir`, creating the directory if needed and loading the saved
   * registrations. Throws `ServicesFileError` if the file exists but is not valid.
   */
  static open(init: LocalServiceRegistryInit): LocalServiceRegistry {
    const reg = new LocalServiceRegistry(init)
    mkdirSync(init.dataDir, { recursive: true, mode: 0o700 })
    if (existsSync(reg.path)) reg.services = load(reg.path)
    return reg
  }

  /** Registered services, sorted by id. */
  list(): ServiceDefinition[] {
    return [...this.services.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
  }

  get(id: string): ServiceDefinition | undefined {
    return this.services.get(id)
  }

  /**
   * Adds or replaces (same id) a service. Throws `ServiceDefinitionError` if one of its check ids
   * belongs to another service, `PayloadTooLargeError` if the node's payload would not fit.
   * Re-registering an identical definition changes nothing (no write, no event).
   */
  register(def: ServiceDefinition): void {
    const old = this.services.get(def.id)
    if (old !== undefined && JSON.stringify(old) === JSON.stringify(def)) return
    for (const [i, c] of def.checks.entries()) {
      for (const other of this.services.values()) {
        if (other.id !== def.id && other.checks.some((oc) => oc.id === c.id)) {
          throw new ServiceDefinitionError(
            `checks.${i}.id: check id "${c.id}" belongs to service "${other.id}"`,
            `checks.${i}.id`,
          )
        }
      }
    }
    const next = new Map(this.services)
    next.set(def.id, structuredClone(def))
    encodeNodePayload([...next.values()], () => undefined, this.maxPayloadBytes)
    this.commit(next)
    this.events.emit('service:change', { op: 'register', id: def.id, service: structuredClone(def) })
  }

  /** Removes a service; throws `ServiceNotFoundError` if there is none with this id. */
  deregister(id: string): void {
    const old = this.services.get(id)
    if (old === undefined) throw new ServiceNotFoundError(`no service with id "${id}" on this agent`, id)
    const next = new Map(this.services)
    next.delete(id)
    this.commit(next)
    this.events.emit('service:change', { op: 'deregister', id, service: old })
  }

  private commit(next: Map<string, ServiceDefinition>): void {
    const file: ServicesFile = {
      version: 1,
      services: [...next.values()].map(serviceDefinitionToJson),
    }
    writeFileAtomicSync(this.path, `${JSON.stringify(file, null, 2)}\n`, 0o600)
    this.services = next
    this.index.bump()
  }
}

function load(path: string): Map<string, ServiceDefinition> {
  let raw: unknown
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'))
  } catch (err) {
    throw new ServicesFileError(`cannot read ${path}: ${(err as Error).message}`, { cause: err })
  }
  const file = raw as Partial<ServicesFile> | null
  if (typeof file !== 'object' || file === null || file.version !== 1 || !Array.isArray(file.services)) {
    throw new ServicesFileError(`${path} is not a version 1 services file`)
  }
  const out = new Map<string, ServiceDefinition>()
  for (const [i, json] of file.services.entries()) {
    try {
      const def = parseServiceDefinition(json, `${path} (services.${i})`)
      if (out.has(def.id)) throw new ServicesFileError(`${path}: services.${i}: duplicate id "${def.id}"`)
      out.set(def.id, def)
    } catch (err) {
      if (err instanceof ServicesFileError) throw err
      throw new ServicesFileError((err as Error).message, { cause: err })
    }
  }
  return out
}
