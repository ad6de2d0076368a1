/**
 * gRPC through real sidecars of an agent process (issue #17): a `@grpc/grpc-js` client on one
 * connection to its sidecar's upstream port makes 3,000 unary calls to a service of 3 instances
 * (each a grpc-js server behind its own sidecar, `Protocol: grpc` from service-defaults). The
 * calls are balanced per call — each instance gets 33% ± 5 — over that one client connection; then
 * one instance's server is killed in the middle of another 3,000 calls, and no call fails.
 */
import * as grpc from '@grpc/grpc-js'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type AgentProcess, authHeaders, freePort, TestCluster, waitFor } from './harness.ts'

interface Hello {
  from: string
}

const json = {
  serialize: (v: unknown): Buffer => Buffer.from(JSON.stringify(v)),
  deserialize: (b: Buffer): unknown => JSON.parse(b.toString()),
}

/** `greeter.Greeter/Say`, with JSON messages instead of protobuf (no .proto files needed). */
const GREETER: grpc.ServiceDefinition = {
  Say: {
    path: '/greeter.Greeter/Say',
    requestStream: false,
    responseStream: false,
    requestSerialize: json.serialize,
    requestDeserialize: json.deserialize,
    responseSerialize: json.serialize,
    responseDeserialize: json.deserialize,
  },
}
const GreeterClient = grpc.makeGenericClientConstructor(GREETER, 'Greeter')

type SayFn = (
  req: object,
  options: grpc.CallOptions,
  cb: (err: grpc.ServiceError | null, res?: Hello) => void,
) => void

async function startServer(name: string, port: number): Promise<grpc.Server> {
  const server = new grpc.Server()
  server.addService(GREETER, {
    Say: (_call: unknown, cb: (err: null, res: Hello) => void) => cb(null, { from: name }),
  })
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (err) =>
      err ? reject(err) : resolve(),
    ),
  )
  return server
}

describe('gRPC through the sidecars (end to end, grpc-js client and servers)', () => {
  const cluster = new TestCluster()
  const servers = new Map<string, grpc.Server>()
  let a: AgentProcess
  let client: grpc.Client
  let say: (i: number) => Promise<string>

  const put = async (path: string, body: object, method = 'PUT') => {
    const res = await fetch(`http://${a.http}${path}`, {
      method,
      headers: { ...authHeaders(), 'content-type': 'application/json' },
      body: JSON.stringify(body),
    })
    expect(res.status, await res.text()).toBe(200)
  }

  /** `total` calls, `concurrency` in flight; the serving instance of each, or `error:<code>`. */
  const run = async (total: number, concurrency: number, onProgress?: (done: number) => void) => {
    const out: string[] = []
    let next = 0
    const worker = async () => {
      while (next < total) {
        const i = next++
        out[i] = await say(i).catch((e: grpc.ServiceError) => `error:${e.code}:${e.details}`)
        onProgress?.(out.filter((x) => x !== undefined).length)
      }
    }
    await Promise.all(Array.from({ length: concurrency }, worker))
    return out
  }

  const countBy = (xs: string[]) => {
    const m = new Map<string, number>()
    for (const x of xs) m.set(x, (m.get(x) ?? 0) + 1)
    return m
  }

  /** Outbound connections accepted by web's sidecar for upstream greeter (from /metrics). */
  const clientConnections = async () => {
    const text = await (await fetch(`http://${a.http}/metrics`)).text()
    let sum = 0
    for (const line of text.split('\n')) {
      if (!line.startsWith('peermesh_proxy_connections_total{')) continue
      if (line.includes('direction="outbound"') && line.includes('upstream="greeter"'))
        sum += Number(line.slice(line.lastIndexOf(' ') + 1))
    }
    return sum
  }

  beforeAll(async () => {
    const key = await cluster.writeClusterKey()
    a = cluster.agent({ name: 'ga', clusterKeyFile: key, extraArgs: ['--bootstrap'] })
    await a.start()
    await waitFor(
      'a Raft leader',
      async () => ((await a.api<string>('/v1/status/leader')) ? true : undefined),
      30_000,
    )
    await cluster.waitForManagementToken()
    const ports = await Promise.all(Array.from({ length: 8 }, () => freePort()))
    const upstreamPort = ports[7]!

    await put('/v1/config', { Kind: 'service-defaults', Name: 'greeter', Protocol: 'grpc' })
    for (let i = 1; i <= 3; i++) {
      const name = `greeter-${i}`
      const appPort = ports[2 * i - 2]!
      servers.set(name, await startServer(name, appPort))
      await put('/v1/agent/service/register', {
        name: 'greeter',
        id: name,
        port: appPort,
        address: '127.0.0.1',
        connect: { sidecarService: { port: ports[2 * i - 1]! } },
      })
    }
    await put('/v1/agent/service/register', {
      name: 'web',
      port: ports[6]!,
      connect: {
        sidecarService: {
          port: ports[6]!,
          upstreams: [{ destinationName: 'greeter', localBindPort: upstreamPort }],
        },
      },
    })
    await put('/v1/connect/intentions', { source: 'web', destination: 'greeter', action: 'allow' }, 'POST')

    client = new GreeterClient(`127.0.0.1:${upstreamPort}`, grpc.credentials.createInsecure())
    const fn = (client as unknown as { Say: SayFn }).Say.bind(client)
    say = (i) =>
      new Promise((resolve, reject) =>
        fn({ i }, { deadline: Date.now() + 10_000 }, (err, res) => (err ? reject(err) : resolve(res!.from))),
      )
    await waitFor(
      'every instance answering through the sidecars',
      async () => {
        const seen = new Set(await run(30, 3))
        return ['greeter-1', 'greeter-2', 'greeter-3'].every((n) => seen.has(n)) ? true : undefined
      },
      60_000,
      250,
    )
  }, 120_000)

  afterAll(async () => {
    client?.close()
    for (const s of servers.values()) s.forceShutdown()
    await cluster.close()
  })

  it('3,000 unary calls over one client connection: each instance gets 33% ± 5', async () => {
    const results = await run(3_000, 32)
    const counts = countBy(results)
    expect([...counts.keys()].sort()).toEqual(['greeter-1', 'greeter-2', 'greeter-3'])
    for (const [name, n] of counts) {
      const share = (100 * n) / results.length
      expect(share, `${name}: ${n} calls`).toBeGreaterThanOrEqual(100 / 3 - 5)
      expect(share, `${name}: ${n} calls`).toBeLessThanOrEqual(100 / 3 + 5)
    }
    // The client's one HTTP/2 connection carried every call (and the warm-up's).
    expect(await clientConnections()).toBe(1)
  }, 60_000)

  it('killing one instance in the middle of 3,000 calls fails none of them', async () => {
    let killed = false
    const results = await run(3_000, 32, (done) => {
      if (!killed && done >= 1_000) {
        killed = true
        servers.get('greeter-3')!.forceShutdown() // in-flight calls on it die with it
      }
    })
    expect(killed).toBe(true)
    const counts = countBy(results)
    const failed = results.filter((r) => r.startsWith('error:'))
    expect(failed, [...countBy(failed)].join(', ')).toEqual([])
    expect(counts.get('greeter-1')! + counts.get('greeter-2')!).toBeGreaterThan(2_000)
    expect(await clientConnections()).toBe(1)
  }, 60_000)

  it('an L7 intention denies one gRPC method with PERMISSION_DENIED on the open connection, and allows it again', async () => {
    const exact = '/v1/connect/intentions/exact?source=web&destination=greeter'
    await put(exact, {
      Permissions: [
        { Action: 'allow', HTTP: { PathExact: '/greeter.Greeter/Other' } },
        { Action: 'deny', HTTP: { PathExact: '/greeter.Greeter/Say' } },
      ],
    })
    const denied = await waitFor(
      'calls refused by the L7 intention',
      async () => {
        const r = await run(3, 1)
        return r.every((x) => x.startsWith(`error:${grpc.status.PERMISSION_DENIED}:`)) ? r : undefined
      },
      10_000,
      50,
    )
    expect(denied).toHaveLength(3)
    await put(exact, { Action: 'allow' })
    await waitFor(
      'calls allowed again',
      async () => ((await run(3, 1)).every((x) => x.startsWith('greeter-')) ? true : undefined),
      10_000,
      50,
    )
    // The client's one connection stayed open through both changes.
    expect(await clientConnections()).toBe(1)
  }, 60_000)
})
