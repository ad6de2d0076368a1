import { request } from 'node:http'
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

/** A PUT as python-consul's requests sends it: a JSON body with no Content-Type, no browser headers. */
function rawPut(url: string, body: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      { method: 'PUT', headers: { 'content-length': Buffer.byteLength(body) } },
      (res) => {
        res.resume()
        resolve(res.statusCode ?? 0)
      },
    )
    req.on('error', reject)
    req.end(body)
  })
}

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
    registerCatalogRoutes(api, {
      catalog,
      local,
      checks,
      nodeAddress: () => '127.0.0.1',
      nodeName: () => 'self',
      selfId: () => 'self',
    })
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

  it('registers, lists and deregisters local services, in Consul shapes', async () => {
    const res = await put('/v1/agent/service/register', { name: 'web', port: 8080, checks: [{ ttl: '30s' }] })
    expect(res.status).toBe(200)
    const services = await (await fetch(`${base}/v1/agent/services`)).json()
    expect(services).toMatchObject({
      web: {
        ID: 'web',
        Service: 'web',
        Port: 8080,
        Address: '127.0.0.1',
        Tags: [],
        Meta: {},
        Datacenter: 'dc1',
      },
    })
    expect((await put('/v1/agent/check/pass/service:web?note=ok')).status).toBe(200)
    const health = await json<Record<string, unknown>[]>(await fetch(`${base}/v1/health/service/web?passing`))
    expect(health).toHaveLength(1)
    expect(health[0]).toMatchObject({
      Node: { Node: 'self', ID: 'self', Address: '127.0.0.1', Datacenter: 'dc1' },
      Service: { ID: 'web', Service: 'web', Port: 8080, Weights: { Passing: 1, Warning: 1 } },
      Checks: [
        { CheckID: 'serfHealth', Name: 'Serf Health Status', Status: 'passing', ServiceID: '' },
        // The note of check/pass reaches Output.
        { CheckID: 'service:web', Status: 'passing', Output: 'ok', ServiceID: 'web', ServiceName: 'web' },
      ],
    })
    const checkList = await json<Record<string, unknown>>(await fetch(`${base}/v1/agent/checks`))
    expect(checkList['service:web']).toMatchObject({
      CheckID: 'service:web',
      Status: 'passing',
      Output: 'ok',
      Node: 'self',
      ServiceID: 'web',
      Type: 'ttl',
    })
    const cat = await json<Record<string, unknown>[]>(await fetch(`${base}/v1/catalog/service/web`))
    expect(cat[0]).toMatchObject({
      Node: 'self',
      Address: '127.0.0.1',
      ServiceID: 'web',
      ServiceName: 'web',
      ServiceAddress: '127.0.0.1',
      ServicePort: 8080,
      ServiceTags: [],
      ServiceWeights: { Passing: 1, Warning: 1 },
    })
    expect(await (await fetch(`${base}/v1/catalog/services`)).json()).toEqual({ web: [] })
    expect((await put('/v1/agent/service/deregister/web')).status).toBe(200)
    expect(await (await fetch(`${base}/v1/catalog/service/web`)).json()).toEqual([])
  })

  it("registers Consul's PascalCase body (node-consul) and python-consul's lowercase check", async () => {
    const r1 = await put('/v1/agent/service/register', {
      Name: 'Pascal_Svc',
      ID: 'pascal-1',
      Port: 81,
      Tags: ['a'],
      Check: { HTTP: 'http://127.0.0.1:1/health', Interval: '10s' },
    })
    expect(r1.status).toBe(200)
    // python-consul: no Content-Type, lowercase singular check.
    const r2 = await rawPut(
      `${base}/v1/agent/service/register`,
      JSON.stringify({ name: 'py', port: 82, check: { ttl: '10s' } }),
    )
    expect(r2).toBe(200)
    const svcs = await json<Record<string, { Checks: unknown[] }>>(await fetch(`${base}/v1/agent/services`))
    expect(svcs['pascal-1']).toMatchObject({
      Service: 'Pascal_Svc',
      Checks: [{ CheckID: 'service:pascal-1', HTTP: 'http://127.0.0.1:1/health', Interval: '10s' }],
    })
    expect(svcs['py']?.Checks).toEqual([expect.objectContaining({ CheckID: 'service:py', TTL: '10s' })])
    const one = await fetch(`${base}/v1/agent/service/pascal-1`)
    expect(one.status).toBe(200)
    expect(await json<object>(one)).toMatchObject({ ID: 'pascal-1', Service: 'Pascal_Svc' })
    expect((await fetch(`${base}/v1/agent/service/nope`)).status).toBe(404)
    // Hash-based blocking (the Go client's agent.Service with WaitHash): wakes on a change.
    const hash = one.headers.get('x-consul-contenthash')
    expect(hash).toMatch(/^[0-9a-f]{16}$/)
    const blocked = fetch(`${base}/v1/agent/service/pascal-1?hash=${hash}&wait=10s`)
    await new Promise((r) => setTimeout(r, 50))
    expect(
      (await put('/v1/agent/service/register', { Name: 'Pascal_Svc', ID: 'pascal-1', Port: 99 })).status,
    ).toBe(200)
    const changed = await blocked
    expect(((await changed.json()) as { Port: number }).Port).toBe(99)
    expect(changed.headers.get('x-consul-contenthash')).not.toBe(hash)
    // A wait in fractions of a millisecond (Go's Duration prints `1.5ms`) times out like any other.
    for (const w of ['1.5ms', '100ns', '1500us']) {
      const r = await fetch(
        `${base}/v1/agent/service/pascal-1?hash=${changed.headers.get('x-consul-contenthash')}&wait=${w}`,
      )
      expect(r.status).toBe(200)
    }
    expect((await put('/v1/agent/service/deregister/pascal-1')).status).toBe(200)
    expect((await put('/v1/agent/service/deregister/py')).status).toBe(200)
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
    expect((await put('/v1/agent/service/deregister/nope')).status).toBe(404)
    expect((await put('/v1/agent/check/warn/nope')).status).toBe(404)
    for (const q of [
      'index=abc',
      'index=-1',
      'wait=forever',
      'stale&consistent',
      'filter=Node%20%3D%3D',
      'node-meta=x',
    ]) {
      const r = await fetch(`${base}/v1/catalog/service/web?${q}`)
      expect(r.status, q).toBe(400)
    }
    expect(catalog.index).toBe(before)
    expect(local.list()).toEqual([])
  })

  it("Consul's query parameters: unknown ignored, dc, pretty, stale, repeated tag, filter; headers on reads", async () => {
    const def = (json: object) => encodeNodePayload([parseServiceDefinition(json, 't')], () => undefined)
    catalog.applyMember({
      id: 'q1',
      name: 'q1',
      address: '10.2.0.1',
      status: 'alive',
      version: 1,
      payload: def({ name: 'tagged', port: 1, tags: ['a', 'b'] }),
    })
    catalog.applyMember({
      id: 'q2',
      name: 'q2',
      address: '10.2.0.2',
      status: 'alive',
      version: 1,
      payload: def({ name: 'tagged', port: 2, tags: ['a'], meta: { v: '2' } }),
    })
    const nodes = async (q: string) =>
      (await json<{ Node: string }[]>(await fetch(`${base}/v1/catalog/service/tagged?${q}`))).map(
        (e) => e.Node,
      )
    expect(
      await nodes('bogus=1&token=&near=_agent&cached&index=0&wait=11m&replace-existing-checks=true'),
    ).toEqual(['q1', 'q2'])
    expect(await nodes('tag=a&tag=b')).toEqual(['q1'])
    expect(await nodes('tag=a')).toEqual(['q1', 'q2'])
    expect(await nodes('filter=ServiceMeta.v%20%3D%3D%20%222%22')).toEqual(['q2'])
    expect(await nodes(`filter=${encodeURIComponent('"b" not in ServiceTags and Node != q1')}`)).toEqual([
      'q2',
    ])
    expect(await nodes('dc=dc1')).toEqual(['q1', 'q2'])
    const other = await fetch(`${base}/v1/catalog/service/tagged?dc=other`)
    expect(other.status).toBe(500)
    expect(await other.text()).toBe('No path to datacenter')
    const stale = await fetch(`${base}/v1/health/service/tagged?stale`)
    expect(stale.status).toBe(200)
    for (const h of [
      'x-consul-index',
      'x-consul-knownleader',
      'x-consul-lastcontact',
      'x-consul-effective-consistency',
    ])
      expect(stale.headers.get(h), h).not.toBeNull()
    expect(stale.headers.get('x-consul-effective-consistency')).toBe('stale')
    expect(stale.headers.get('x-consul-index')).toBe(String(catalog.serviceIndex('tagged')))
    const pretty = await (await fetch(`${base}/v1/catalog/services?pretty`)).text()
    expect(pretty).toMatch(/^\{\n {4}"/)
    expect(pretty.endsWith('\n')).toBe(true)
    expect(await json<string[]>(await fetch(`${base}/v1/catalog/datacenters`))).toEqual(['dc1'])
    const nodeList = await json<{ Node: string }[]>(
      await fetch(`${base}/v1/catalog/nodes?filter=${encodeURIComponent('Node == q2')}`),
    )
    expect(nodeList.map((n) => n.Node)).toEqual(['q2'])
    const node = await json<{ Node: { Node: string }; Services: Record<string, { Port: number }> }>(
      await fetch(`${base}/v1/catalog/node/q1`),
    )
    expect(node.Node.Node).toBe('q1')
    expect(node.Services['tagged']?.Port).toBe(1)
    expect(await json<unknown>(await fetch(`${base}/v1/catalog/node/nobody`))).toBeNull()
    const nodeChecks = await json<{ CheckID: string }[]>(await fetch(`${base}/v1/health/node/q1`))
    expect(nodeChecks.map((c) => c.CheckID)).toEqual(['serfHealth'])
    const critical = await json<{ Node: string; ServiceName: string }[]>(
      await fetch(`${base}/v1/health/state/critical`),
    )
    expect(critical.some((c) => c.ServiceName === 'tagged')).toBe(false)
    expect((await fetch(`${base}/v1/health/state/bogus`)).status).toBe(400)
    catalog.removeMember('q1')
    catalog.removeMember('q2')
  })

  it('blocking query on a service is not woken by a change to another service', async () => {
    const payloadOf = (name: string, port: number) =>
      encodeNodePayload([parseServiceDefinition({ name, port }, 't')], () => undefined)
    catalog.applyMember({
      id: 'b1',
      name: 'b1',
      address: '10.3.0.1',
      status: 'alive',
      version: 1,
      payload: payloadOf('apisvc', 1),
    })
    const first = await fetch(`${base}/v1/health/service/apisvc`)
    const index = first.headers.get('x-consul-index')
    let done = false
    const blocked = fetch(`${base}/v1/health/service/apisvc?index=${index}&wait=20s`).then((r) => {
      done = true
      return r
    })
    await new Promise((r) => setTimeout(r, 50))
    // web changes several times: the query on apisvc sleeps on.
    for (let v = 1; v <= 3; v++)
      catalog.applyMember({
        id: 'b2',
        name: 'b2',
        address: '10.3.0.2',
        status: 'alive',
        version: v,
        payload: payloadOf('websvc', v),
      })
    await new Promise((r) => setTimeout(r, 200))
    expect(done).toBe(false)
    catalog.applyMember({
      id: 'b1',
      name: 'b1',
      address: '10.3.0.1',
      status: 'alive',
      version: 2,
      payload: payloadOf('apisvc', 2),
    })
    const res = await blocked
    expect(Number(res.headers.get('x-consul-index'))).toBeGreaterThan(Number(index))
    expect((await json<{ Service: { Port: number } }[]>(res))[0]?.Service.Port).toBe(2)
    catalog.removeMember('b1')
    catalog.removeMember('b2')
  })

  it("catalog register/deregister: this agent's own node only", async () => {
    const r = await put('/v1/catalog/register', {
      Node: 'self',
      Address: '127.0.0.1',
      Service: { Service: 'ext', ID: 'ext-1', Port: 7000, Tags: ['x'] },
    })
    expect(r.status).toBe(200)
    expect(await r.json()).toBe(true)
    expect(local.get('ext-1')).toMatchObject({ name: 'ext', port: 7000 })
    const other = await put('/v1/catalog/register', {
      Node: 'elsewhere',
      Service: { Service: 'ext2', Port: 1 },
    })
    expect(other.status).toBe(400)
    expect(
      (
        await put('/v1/catalog/register', {
          Node: 'self',
          Service: { Service: 'e', Port: 1 },
          Check: { Status: 'passing' },
        })
      ).status,
    ).toBe(400)
    expect((await put('/v1/catalog/deregister', { Node: 'self' })).status).toBe(400)
    expect((await put('/v1/catalog/deregister', { Node: 'self', ServiceID: 'ext-1' })).status).toBe(200)
    expect(local.get('ext-1')).toBeUndefined()
    expect(local.list().map((d) => d.id)).not.toContain('ext2')
  })

  it('check register/update/deregister and service maintenance', async () => {
    expect((await put('/v1/agent/service/register', { Name: 'mnt', Port: 90 })).status).toBe(200)
    expect(
      (
        await put('/v1/agent/check/register', {
          Name: 'extra',
          CheckID: 'mnt-ttl',
          ServiceID: 'mnt',
          TTL: '30s',
        })
      ).status,
    ).toBe(200)
    expect((await put('/v1/agent/check/register', { Name: 'x', TTL: '30s' })).status).toBe(400)
    expect((await put('/v1/agent/check/update/mnt-ttl', { Status: 'warning', Output: 'half' })).status).toBe(
      200,
    )
    let checksNow = await json<Record<string, { Status: string; Output: string }>>(
      await fetch(`${base}/v1/agent/checks`),
    )
    expect(checksNow['mnt-ttl']).toMatchObject({ Status: 'warning', Output: 'half' })
    expect((await put('/v1/agent/service/maintenance/mnt?enable=true&reason=upgrade')).status).toBe(200)
    checksNow = await json(await fetch(`${base}/v1/agent/checks`))
    expect(checksNow['_service_maintenance:mnt']).toMatchObject({ Status: 'critical', Notes: 'upgrade' })
    expect((await put('/v1/agent/service/maintenance/mnt')).status).toBe(400)
    expect((await put('/v1/agent/service/maintenance/mnt?enable=false')).status).toBe(200)
    expect((await put('/v1/agent/check/deregister/mnt-ttl')).status).toBe(200)
    expect((await put('/v1/agent/check/deregister/mnt-ttl')).status).toBe(404)
    checksNow = await json(await fetch(`${base}/v1/agent/checks`))
    expect(Object.keys(checksNow)).toEqual([])
    expect((await put('/v1/agent/service/deregister/mnt')).status).toBe(200)
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
    expect((await json<{ Node: { Node: string } }[]>(res)).map((e) => e.Node.Node)).toEqual(['other'])
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
