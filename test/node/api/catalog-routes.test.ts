import pino from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Catalog } from '../../../src/node/catalog/catalog.ts'
import { CheckRunner } from '../../../src/node/catalog/checks.ts'
import { registerCatalogRoutes } from '../../../src/node/api/catalog-routes.ts'
import { LocalPayloadPublisher } from '../../../src/node/catalog/local-payload.ts'
import { LocalServiceRegistry } from '../../../src/node/catalog/local-services.ts'
import { encodeNodePayload } from '../../../src/node/catalog/node-payload.ts'
import { parseServiceDefinition } from '../../../src/node/catalog/service-definition.ts'
import { HttpApi } from '../../../src/node/api/server.ts'
import { makeTempDir, removeTempDir } from '../../temp-dir.ts'

const json = async <T>(res: Response): Promise<T> => (await res.json()) as T

describe('catalog HTTP routes', () => {
  const dir = makeTempDir('routes')
  const api = new HttpApi(pino({ level: 'silent' }))
  const catalog = new Catalog()
  const local = LocalServiceRegistry.open({ dataDir: dir })
  const checks = new CheckRunner()
  const publisher = new LocalPayloadPublisher({ registry: local, checks })
  let version = 1
  let base = ''

  beforeAll(async () => {
    registerCatalogRoutes(api, { catalog, local, checks, nodeAddress: () => '127.0.0.1' })
    // What the agent does: gossip this node's payload, and feed it to the catalog like any member's.
    const self = () =>
      catalog.applyMember({
        id: 'self',
        name: 'self',
        address: '/ip4/127.0.0.1/tcp/4001',
        status: 'alive',
        version: version++,
        payload: publisher.payload(),
      })
    publisher.on('payload:change', self)
    publisher.start()
    self()
    const { port } = await api.listen('127.0.0.1', 0)
    base = `http://127.0.0.1:${port}`
  })
  afterAll(async () => {
    publisher.stop()
    await api.close()
    removeTempDir(dir)
  })

  const put = (path: string, body?: unknown) =>
    fetch(`${base}${path}`, {
      method: 'PUT',
      ...(body !== undefined
        ? { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } }
        : {}),
    })

  it('registers, lists and deregisters local services', async () => {
    const res = await put('/v1/agent/service/register', { name: 'web', port: 8080, checks: [{ ttl: '30s' }] })
    expect(res.status).toBe(200)
    const services = await (await fetch(`${base}/v1/agent/services`)).json()
    expect(services).toMatchObject({ web: { name: 'web', port: 8080, address: '127.0.0.1' } })
    expect((await put('/v1/agent/check/pass/service:web?note=ok')).status).toBe(200)
    const health = await json<unknown[]>(await fetch(`${base}/v1/health/service/web?passing`))
    expect(health).toHaveLength(1)
    expect(health[0]).toMatchObject({
      node: { name: 'self', peerId: 'self', address: '127.0.0.1' },
      service: { id: 'web', port: 8080 },
      status: 'passing',
    })
    const checkList = await json<Record<string, unknown>>(await fetch(`${base}/v1/agent/checks`))
    expect(checkList['service:web']).toMatchObject({ status: 'passing', output: 'ok' })
    expect(await (await fetch(`${base}/v1/catalog/services`)).json()).toEqual({ web: [] })
    expect((await put('/v1/agent/service/deregister/web')).status).toBe(200)
    expect(await (await fetch(`${base}/v1/catalog/service/web`)).json()).toEqual([])
  })

  it('answers 400 naming the field for bad input, and changes nothing', async () => {
    const before = catalog.index
    const res = await put('/v1/agent/service/register', {
      name: 'web',
      port: 80,
      checks: [{ tcp: 'a:1', interval: 'x' }],
    })
    expect(res.status).toBe(400)
    expect((await json<{ error: string }>(res)).error).toMatch(/checks\.0\.interval: /)
    expect((await put('/v1/agent/service/register')).status).toBe(400)
    expect((await put('/v1/agent/service/register?replace=1', { name: 'a', port: 1 })).status).toBe(400)
    expect((await put('/v1/agent/service/deregister/nope')).status).toBe(404)
    expect((await put('/v1/agent/check/warn/nope')).status).toBe(404)
    for (const q of [
      'index=abc',
      'index=-1',
      'wait=forever',
      'index=1&wait=11m',
      'bogus=1',
      'index=1&index=2',
    ]) {
      const r = await fetch(`${base}/v1/catalog/services?${q}`)
      expect(r.status, q).toBe(400)
    }
    expect((await fetch(`${base}/v1/health/service/web?passing=maybe`)).status).toBe(400)
    expect(catalog.index).toBe(before)
    expect(local.list()).toEqual([])
  })

  it('blocking query: returns when a change arrives, with the index headers', async () => {
    const first = await fetch(`${base}/v1/health/service/api`)
    const index = Number(first.headers.get('x-peermesh-index'))
    expect(first.headers.get('x-consul-index')).toBe(String(index))
    const started = Date.now()
    const blocked = fetch(`${base}/v1/health/service/api?index=${index}&wait=10s`)
    setTimeout(() => {
      catalog.applyMember({
        id: 'other',
        name: 'other',
        address: '10.1.1.1',
        status: 'alive',
        version: 1,
        payload: encodeNodePayload(
          [parseServiceDefinition({ name: 'api', port: 9000 }, 't')],
          () => undefined,
        ),
      })
    }, 100)
    const res = await blocked
    expect(Date.now() - started).toBeLessThan(5000)
    expect(Number(res.headers.get('x-peermesh-index'))).toBeGreaterThan(index)
    expect((await json<{ node: { name: string } }[]>(res)).map((e) => e.node.name)).toEqual(['other'])
  })

  it('blocking query: times out after wait with the same index', async () => {
    const index = catalog.index
    const started = Date.now()
    const res = await fetch(`${base}/v1/catalog/services?index=${index}&wait=300ms`)
    expect(Date.now() - started).toBeGreaterThanOrEqual(250)
    expect(res.headers.get('x-peermesh-index')).toBe(String(index))
  })

  it('blocking query on local services wakes on registration', async () => {
    const first = await fetch(`${base}/v1/agent/services`)
    const index = first.headers.get('x-peermesh-index')
    const blocked = fetch(`${base}/v1/agent/services?index=${index}&wait=10s`)
    setTimeout(() => local.register(parseServiceDefinition({ name: 'late', port: 1 }, 't')), 50)
    const res = await blocked
    expect(Object.keys(await json<object>(res))).toEqual(['late'])
  })

  it('a client that disconnects releases its waiter', async () => {
    const ac = new AbortController()
    const p = fetch(`${base}/v1/catalog/services?index=${catalog.index}&wait=10m`, {
      signal: ac.signal,
    }).catch(() => undefined)
    await new Promise((r) => setTimeout(r, 100))
    ac.abort()
    await p
    const deadline = Date.now() + 2000
    const waiting = () => catalog.blockedQueries
    while (waiting() > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10))
    expect(waiting()).toBe(0)
  })
})
