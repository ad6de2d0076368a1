import { createSocket } from 'node:dgram'
import { connect } from 'node:net'
import type { Answer, DecodedPacket } from 'dns-packet'
import dnsPacket from 'dns-packet'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Catalog } from '../../../src/node/catalog/catalog.ts'
import { DnsServer, ipToHex } from '../../../src/node/catalog/dns.ts'
import { encodeNodePayload } from '../../../src/node/catalog/node-payload.ts'
import { type CheckStatus, parseServiceDefinition } from '../../../src/node/catalog/service-definition.ts'

const def = (json: object) => parseServiceDefinition(json, 'test')

describe('DnsServer', () => {
  const catalog = new Catalog()
  const dns = new DnsServer({ catalog })
  let udpPort = 0
  let tcpPort = 0

  function add(
    id: string,
    ip: string,
    services: object[],
    status: CheckStatus = 'passing',
    nodeStatus = 'alive',
  ) {
    catalog.applyMember({
      id,
      name: `node-${id}`,
      address: `/ip4/${ip}/tcp/4001`,
      status: nodeStatus as 'alive',
      version: 1,
      payload: encodeNodePayload(services.map(def), () => status),
    })
  }

  beforeAll(async () => {
    add('1', '10.0.0.1', [
      { name: 'web', port: 8080, tags: ['v1'], checks: [{ ttl: '10s' }], weights: { passing: 5 } },
    ])
    add('2', '10.0.0.2', [{ name: 'web', port: 8081, tags: ['v2'], checks: [{ ttl: '10s' }] }], 'warning')
    add('3', '10.0.0.3', [{ name: 'web', port: 8082, tags: ['v1'], checks: [{ ttl: '10s' }] }], 'critical')
    add('4', '10.0.0.4', [{ name: 'web', port: 8083, tags: ['v1'] }], 'passing', 'dead')
    add('6', '10.0.0.6', [{ name: 'v6', port: 80, address: 'fd00::1' }])
    ;({ udpPort, tcpPort } = await dns.start({ host: '127.0.0.1', port: 0 }))
  })
  afterAll(() => dns.stop())

  async function udpQuery(
    name: string,
    type: string,
    raw?: Buffer,
    timeoutMs = 2000,
  ): Promise<DecodedPacket | undefined> {
    const socket = createSocket('udp4')
    try {
      const msg =
        raw ??
        dnsPacket.encode({
          type: 'query',
          id: 42,
          flags: dnsPacket.RECURSION_DESIRED,
          questions: [{ name, type: type as 'A' }],
        })
      return await new Promise<DecodedPacket | undefined>((resolve) => {
        const timer = setTimeout(() => resolve(undefined), timeoutMs)
        socket.once('message', (reply) => {
          clearTimeout(timer)
          resolve(dnsPacket.decode(reply))
        })
        socket.send(msg, udpPort, '127.0.0.1')
      })
    } finally {
      socket.close()
    }
  }

  /** Record data, whatever the record type (dns-packet's union has no `data` on OPT). */
  const dataOf = (a: Answer) => (a as { data?: unknown }).data
  const rcode = (p: DecodedPacket | undefined) => (p as { rcode?: string } | undefined)?.rcode

  it('answers A with passing and warning instances only', async () => {
    const r = await udpQuery('web.service.peermesh', 'A')
    expect(r?.id).toBe(42)
    expect(r?.flag_aa).toBe(true)
    expect(rcode(r)).toBe('NOERROR')
    expect(r?.answers?.map((a) => dataOf(a)).sort()).toEqual(['10.0.0.1', '10.0.0.2'])
  })

  it('answers SRV with ports, weights and address targets', async () => {
    const r = await udpQuery('web.service.peermesh', 'SRV')
    const srv = (r?.answers ?? []).map((a) => dataOf(a) as { port: number; weight: number; target: string })
    expect(srv.map((s) => [s.port, s.weight, s.target]).sort()).toEqual([
      [8080, 5, `${ipToHex('10.0.0.1')}.addr.peermesh`],
      [8081, 1, `${ipToHex('10.0.0.2')}.addr.peermesh`],
    ])
    expect(
      r?.additionals
        ?.filter((a) => a.type === 'A')
        .map((a) => dataOf(a))
        .sort(),
    ).toEqual(['10.0.0.1', '10.0.0.2'])
    const target = await udpQuery(`${ipToHex('10.0.0.1')}.addr.peermesh`, 'A')
    expect(dataOf(target!.answers![0]!)).toBe('10.0.0.1')
  })

  it('filters by tag, in both name forms', async () => {
    const r = await udpQuery('v1.web.service.peermesh', 'A')
    expect(r?.answers?.map((a) => dataOf(a))).toEqual(['10.0.0.1'])
    const rfc = await udpQuery('_web._v2.service.peermesh', 'SRV')
    expect(rfc?.answers?.map((a) => (dataOf(a) as { port: number }).port)).toEqual([8081])
  })

  it('answers AAAA for IPv6 services', async () => {
    const r = await udpQuery('v6.service.peermesh', 'AAAA')
    expect(r?.answers?.map((a) => dataOf(a))).toEqual(['fd00::1'])
    expect((await udpQuery('v6.service.peermesh', 'A'))?.answers).toEqual([])
  })

  it('NXDOMAIN for unknown services, REFUSED outside the zone', async () => {
    const r = await udpQuery('nope.service.peermesh', 'A')
    expect(rcode(r)).toBe('NXDOMAIN')
    expect(r?.authorities?.[0]?.type).toBe('SOA')
    expect(rcode(await udpQuery('example.com', 'A'))).toBe('REFUSED')
    expect(rcode(await udpQuery('x.y.z.web.service.peermesh', 'A'))).toBe('NXDOMAIN')
  })

  it('drops garbage packets, counts them, and keeps serving', async () => {
    const before = dns.stats.malformed
    expect(await udpQuery('', 'A', Buffer.from('definitely not dns'), 300)).toBeUndefined()
    expect(await udpQuery('', 'A', Buffer.alloc(0), 300)).toBeUndefined()
    // A response packet is not a query: dropped too.
    const resp = dnsPacket.encode({
      type: 'response',
      id: 1,
      questions: [{ name: 'web.service.peermesh', type: 'A' }],
    })
    expect(await udpQuery('', 'A', resp, 300)).toBeUndefined()
    expect(dns.stats.malformed).toBe(before + 3)
    for (let i = 0; i < 200; i++) {
      const junk = Buffer.from(Array.from({ length: (i % 40) + 12 }, (_, k) => (i * 31 + k * 17) & 0xff))
      dns.handle(junk, 'udp') // must not throw, whatever it returns
    }
    expect((await udpQuery('web.service.peermesh', 'A'))?.answers).toHaveLength(2)
  })

  it('serves TCP with length-prefixed messages', async () => {
    const socket = connect(tcpPort, '127.0.0.1')
    const reply = await new Promise<DecodedPacket>((resolve, reject) => {
      let buf = Buffer.alloc(0)
      socket.on('data', (c) => {
        buf = Buffer.concat([buf, c])
        if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0))
          resolve(dnsPacket.decode(buf.subarray(2)))
      })
      socket.on('error', reject)
      socket.write(
        dnsPacket.streamEncode({
          type: 'query',
          id: 7,
          questions: [{ name: 'web.service.peermesh', type: 'SRV' }],
        }),
      )
    })
    socket.destroy()
    expect(reply.id).toBe(7)
    expect(reply.answers).toHaveLength(2)
  })

  it('truncates a UDP reply that does not fit in 512 bytes', () => {
    const big = new Catalog()
    for (let i = 0; i < 60; i++) {
      big.applyMember({
        id: `n${i}`,
        name: `node-${i}`,
        address: `10.1.0.${i}`,
        status: 'alive',
        version: 1,
        payload: encodeNodePayload([def({ name: 'api', port: 80 })], () => undefined),
      })
    }
    const server = new DnsServer({ catalog: big })
    const q = dnsPacket.encode({
      type: 'query',
      id: 1,
      questions: [{ name: 'api.service.peermesh', type: 'SRV' }],
    })
    const udp = server.handle(q, 'udp')!
    expect(udp.length).toBeLessThanOrEqual(512)
    expect(dnsPacket.decode(udp).flag_tc).toBe(true)
    expect(dnsPacket.decode(server.handle(q, 'tcp')!).answers).toHaveLength(60)
  })
})

describe('DnsServer with ACLs (queries carry no token: the anonymous authorizer decides)', () => {
  const catalog = new Catalog()
  for (const [id, ip] of [
    ['1', '10.0.1.1'],
    ['2', '10.0.1.2'],
  ] as const)
    catalog.applyMember({
      id,
      name: `node-${id}`,
      address: `/ip4/${ip}/tcp/4001`,
      status: 'alive',
      version: 1,
      payload: encodeNodePayload(
        [def({ name: 'api', port: 80 }), def({ name: 'db', port: 5432 })],
        () => 'passing',
      ),
    })
  // What anonymous may read: the service api (not db), and node-1 only.
  let acls = true
  const dns = new DnsServer({
    catalog,
    authorizer: () =>
      acls ? { serviceRead: (s: string) => s === 'api', nodeRead: (n: string) => n === 'node-1' } : undefined,
  })
  let udpPort = 0
  beforeAll(async () => {
    ;({ udpPort } = await dns.start({ host: '127.0.0.1', port: 0 }))
  })
  afterAll(() => dns.stop())

  async function query(name: string): Promise<DecodedPacket> {
    const socket = createSocket('udp4')
    try {
      return await new Promise<DecodedPacket>((resolve) => {
        socket.once('message', (reply) => resolve(dnsPacket.decode(reply)))
        socket.send(
          dnsPacket.encode({ type: 'query', id: 7, questions: [{ name, type: 'A' }] }),
          udpPort,
          '127.0.0.1',
        )
      })
    } finally {
      // closed after the reply
      setTimeout(() => socket.close(), 0)
    }
  }
  const rcode = (p: DecodedPacket) => (p as { rcode?: string }).rcode
  const ips = (p: DecodedPacket) => (p.answers ?? []).map((a) => (a as { data?: unknown }).data).sort()

  it('a service anonymous may not read is NXDOMAIN; instances on nodes it may not read are left out', async () => {
    expect(ips(await query('api.service.peermesh'))).toEqual(['10.0.1.1'])
    expect(rcode(await query('db.service.peermesh'))).toBe('NXDOMAIN')
    acls = false // no ACL resolver in use: everything
    expect(ips(await query('api.service.peermesh'))).toEqual(['10.0.1.1', '10.0.1.2'])
    expect(ips(await query('db.service.peermesh'))).toEqual(['10.0.1.1', '10.0.1.2'])
  })
})
