/**
 * Two sidecars wired as the agent will: web's upstream listener reaches api's app through api's
 * sidecar (HTTP mode), with metrics for both in one registry; stop() closes everything.
 */
import { Registry } from 'prom-client'
import { afterEach, describe, expect, it } from 'vitest'
import { InvalidProxyConfigError } from '../../src/proxy/errors.ts'
import { Sidecar } from '../../src/proxy/sidecar.ts'
import {
  IntentionAuthorizer,
  StaticCertificateSource,
  StaticEndpointSource,
} from '../../src/proxy/sources.ts'
import { endpoint, httpGet, leafFor, makeRoot, metricValue, startHttpApp, TD } from './helpers.ts'

const cleanups: (() => Promise<void>)[] = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

describe('Sidecar', () => {
  it('web -> its api upstream -> api sidecar -> api app, then stop', async () => {
    const root = await makeRoot()
    const [apiCert, webCert] = await Promise.all([leafFor(root, 'api'), leafFor(root, 'web')])
    const authorizer = IntentionAuthorizer.from([{ source: 'web', destination: 'api', action: 'allow' }])
    const registry = new Registry()
    const app = await startHttpApp('api-app')
    cleanups.push(() => app.close())

    const api = new Sidecar({
      service: 'api',
      trustDomain: TD,
      inbound: { port: 0, bindAddress: '127.0.0.1', localServicePort: app.port },
      upstreams: [],
      certificates: new StaticCertificateSource(apiCert),
      authorizer,
      registry,
    })
    await api.start()
    cleanups.push(() => api.stop())

    const apiEndpoints = new StaticEndpointSource([endpoint('node1/api', api.inbound.port)])
    const web = new Sidecar({
      service: 'web',
      trustDomain: TD,
      inbound: { port: 0, bindAddress: '127.0.0.1', localServicePort: 1 },
      upstreams: [{ destinationName: 'api', localBindPort: 0, protocol: 'http', endpoints: apiEndpoints }],
      certificates: new StaticCertificateSource(webCert),
      authorizer,
      registry,
    })
    await web.start()
    cleanups.push(() => web.stop())

    const port = web.upstream('api')!.port
    const r = await httpGet(port, '/hello')
    expect(r).toMatchObject({ status: 200, body: 'api-app' })
    expect(
      await metricValue(registry, 'peermesh_proxy_requests_total', { service: 'web', upstream: 'api' }),
    ).toBe(1)
    expect(
      await metricValue(registry, 'peermesh_proxy_connections_total', {
        service: 'api',
        direction: 'inbound',
      }),
    ).toBe(1)

    await web.stop()
    await expect(httpGet(port, '/hello')).rejects.toThrow()
  })

  it('rejects an upstream listed twice', () => {
    const source = new StaticEndpointSource([])
    const up = { destinationName: 'api', localBindPort: 0, protocol: 'tcp' as const, endpoints: source }
    expect(
      () =>
        new Sidecar({
          service: 'web',
          trustDomain: TD,
          inbound: { port: 0, localServicePort: 1 },
          upstreams: [up, up],
          certificates: new StaticCertificateSource(),
          authorizer: IntentionAuthorizer.from([]),
        }),
    ).toThrowError(expect.objectContaining({ code: InvalidProxyConfigError.code }))
  })
})
