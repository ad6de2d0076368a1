import { createSocket } from 'node:dgram'
import { connect } from 'node:net'
import type { Answer, DecodedPacket } from 'dns-packet'
import dnsPacket from 'dns-packet'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Catalog } from '../../../src/node/catalog/catalog.ts'
import {
  DNS_TCP_MAX_UNANSWERED_BYTES,
  DNS_TCP_MAX_UNSENT_BYTES,
  DnsServer,
  ipFromReverseName,
  ipToHex,
  parseZoneLabels,
} from '../../../src/node/catalog/dns.ts'
import { encodeNodePayload } from '../../../src/node/catalog/node-payload.ts'
import { type CheckStatus, parseServiceDefinition } from '../../../src/node/catalog/service-definition.ts'
import { eventually } from './helpers.ts'

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
    // Two nodes on one host (as agents on one machine), one of them with three instances of `dup`,
    // two of them on the same port.
    add('7', '10.0.0.7', [
      { name: 'dup', id: 'dup-1', port: 1 },
      { name: 'dup', id: 'dup-2', port: 2 },
      { name: 'dup', id: 'dup-3', port: 2 },
    ])
    add('8', '10.0.0.7', [{ name: 'dup', id: 'dup-4', port: 3 }])
    add('9', '10.0.0.9', [{ name: 'down', port: 80, checks: [{ ttl: '10s' }] }], 'critical')
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

  it('serves the consul zone like the primary one, naming records in the zone asked', async () => {
    const a = await udpQuery('web.service.consul', 'A')
    expect(rcode(a)).toBe('NOERROR')
    expect(a?.answers?.map((x) => dataOf(x)).sort()).toEqual(['10.0.0.1', '10.0.0.2'])
    expect(a?.answers?.[0]?.name).toBe('web.service.consul')
    const srv = await udpQuery('web.service.consul', 'SRV')
    expect(srv?.answers?.map((x) => (dataOf(x) as { target: string }).target).sort()).toEqual([
      `${ipToHex('10.0.0.1')}.addr.consul`,
      `${ipToHex('10.0.0.2')}.addr.consul`,
    ])
    const nx = await udpQuery('nope.service.consul', 'A')
    expect(rcode(nx)).toBe('NXDOMAIN')
    expect(nx?.authorities?.map((x) => [x.type, x.name])).toEqual([['SOA', 'consul']])
    expect(rcode(await udpQuery('WEB.Service.CONSUL.', 'A'))).toBe('NOERROR')
  })

  it('answers NAME.service.DC for its own datacenter only', async () => {
    for (const name of ['web.service.dc1.consul', 'web.service.dc1.peermesh', 'web.service.dc1.dc.consul']) {
      const r = await udpQuery(name, 'A')
      expect(rcode(r), name).toBe('NOERROR')
      expect(r?.answers?.map((x) => dataOf(x)).sort(), name).toEqual(['10.0.0.1', '10.0.0.2'])
    }
    const other = await udpQuery('web.service.dc2.consul', 'A')
    expect(rcode(other)).toBe('NXDOMAIN')
    expect(other?.authorities?.[0]?.type).toBe('SOA')
    expect(rcode(await udpQuery('web.service.a.b.consul', 'A'))).toBe('NXDOMAIN')
  })

  it('answers the RFC 2782 forms: _NAME._tcp (any tag), _NAME._TAG, and SRV without the service label', async () => {
    const ports = async (name: string) =>
      ((await udpQuery(name, 'SRV'))?.answers ?? []).map((x) => (dataOf(x) as { port: number }).port).sort()
    expect(await ports('_web._tcp.service.consul')).toEqual([8080, 8081])
    expect(await ports('_web._v1.service.consul')).toEqual([8080])
    expect(await ports('_web._v2.service.dc1.peermesh')).toEqual([8081])
    expect(await ports('_web._tcp.consul')).toEqual([8080, 8081])
    expect(rcode(await udpQuery('_web._nosuchtag.service.consul', 'SRV'))).toBe('NXDOMAIN')
  })

  it('answers NODE.node with the node address; unknown nodes and other datacenters are NXDOMAIN', async () => {
    const r = await udpQuery('node-1.node.consul', 'A')
    expect(rcode(r)).toBe('NOERROR')
    expect(r?.answers?.map((x) => [x.name, x.type, dataOf(x)])).toEqual([
      ['node-1.node.consul', 'A', '10.0.0.1'],
    ])
    expect((await udpQuery('NODE-2.node.dc1.peermesh', 'A'))?.answers?.map((x) => dataOf(x))).toEqual([
      '10.0.0.2',
    ])
    // A node whose instances are all critical still has an address.
    expect((await udpQuery('node-3.node.consul', 'A'))?.answers?.map((x) => dataOf(x))).toEqual(['10.0.0.3'])
    const aaaa = await udpQuery('node-1.node.consul', 'AAAA')
    expect(rcode(aaaa)).toBe('NOERROR')
    expect(aaaa?.answers).toEqual([])
    expect(aaaa?.authorities?.[0]?.type).toBe('SOA')
    expect(rcode(await udpQuery('node-99.node.consul', 'A'))).toBe('NXDOMAIN')
    expect(rcode(await udpQuery('node-1.node.dc2.consul', 'A'))).toBe('NXDOMAIN')
  })

  it('answers PTR for known node and service addresses, NXDOMAIN for others', async () => {
    const node = await udpQuery('1.0.0.10.in-addr.arpa', 'PTR')
    expect(rcode(node)).toBe('NOERROR')
    expect(node?.answers?.map((x) => [x.type, dataOf(x)])).toEqual([['PTR', 'node-1.node.dc1.peermesh']])
    // fd00::1 is no node's address, but the v6 instance's own.
    const v6 = await udpQuery(`${[...ipToHex('fd00::1')].reverse().join('.')}.ip6.arpa`, 'PTR')
    expect(v6?.answers?.map((x) => dataOf(x))).toEqual(['v6.service.dc1.peermesh'])
    const unknown = await udpQuery('200.0.0.10.in-addr.arpa', 'PTR')
    expect(rcode(unknown)).toBe('NXDOMAIN')
    expect(unknown?.authorities?.[0]?.type).toBe('SOA')
    expect(rcode(await udpQuery('0.10.in-addr.arpa', 'PTR'))).toBe('NXDOMAIN')
  })

  it('lists no record twice: one A per address, one SRV per node, address and port', async () => {
    const a = await udpQuery('dup.service.consul', 'A')
    expect(a?.answers?.map((x) => dataOf(x))).toEqual(['10.0.0.7'])
    const srv = await udpQuery('dup.service.consul', 'SRV')
    expect(srv?.answers?.map((x) => (dataOf(x) as { port: number }).port).sort()).toEqual([1, 2, 3])
    expect(srv?.additionals?.filter((x) => x.type === 'A').map((x) => dataOf(x))).toEqual(['10.0.0.7'])
    const any = await udpQuery('dup.service.consul', 'ANY')
    expect(any?.answers?.filter((x) => x.type === 'A')).toHaveLength(1)
    expect(any?.answers?.filter((x) => x.type === 'SRV')).toHaveLength(3)
  })

  it('answers a service whose instances are all critical with NXDOMAIN and the SOA, as Consul', async () => {
    for (const type of ['A', 'SRV']) {
      const r = await udpQuery('down.service.consul', type)
      expect(rcode(r)).toBe('NXDOMAIN')
      expect(r?.answers).toEqual([])
      expect(r?.authorities?.map((x) => x.type)).toEqual(['SOA'])
    }
    // A known name without records of the type asked is NODATA: NOERROR with the SOA.
    const nodata = await udpQuery('v6.service.consul', 'A')
    expect(rcode(nodata)).toBe('NOERROR')
    expect(nodata?.authorities?.map((x) => x.type)).toEqual(['SOA'])
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

describe('DNS names (pure parsing, as Consul reads them)', () => {
  it.each([
    [[], 'A', { kind: 'apex' }],
    [['web', 'service'], 'A', { kind: 'service', service: 'web' }],
    [['v1', 'web', 'service'], 'A', { kind: 'service', service: 'web', tag: 'v1' }],
    [['a', 'b', 'web', 'service'], 'A', { kind: 'service', service: 'web', tag: 'a.b' }],
    [['web', 'service', 'dc1'], 'A', { kind: 'service', service: 'web', datacenter: 'dc1' }],
    [['web', 'service', 'east', 'dc'], 'A', { kind: 'service', service: 'web', datacenter: 'east' }],
    [['_web', '_tcp', 'service'], 'SRV', { kind: 'service', service: 'web' }],
    [
      ['_web', '_v2', 'service', 'dc1'],
      'SRV',
      { kind: 'service', service: 'web', tag: 'v2', datacenter: 'dc1' },
    ],
    [['_web', '_tcp'], 'SRV', { kind: 'service', service: 'web' }],
    [['_web', '_tcp'], 'A', { kind: 'invalid' }],
    [['service'], 'A', { kind: 'invalid' }],
    [['web', 'service', 'a', 'b'], 'A', { kind: 'invalid' }],
    [['db', 'node'], 'A', { kind: 'node', node: 'db' }],
    [['db', 'local', 'node', 'dc1'], 'A', { kind: 'node', node: 'db.local', datacenter: 'dc1' }],
    [['0a000001', 'addr'], 'A', { kind: 'addr', ip: '10.0.0.1' }],
    [['0a000001', 'addr', 'dc1'], 'A', { kind: 'addr', ip: '10.0.0.1' }],
    [['zz000001', 'addr'], 'A', { kind: 'invalid' }],
    [['foo'], 'A', { kind: 'invalid' }],
  ])('%j %s', (labels, qtype, want) => {
    expect(parseZoneLabels(labels, qtype)).toEqual(want)
  })

  it.each([
    ['4.3.2.1.in-addr.arpa', '1.2.3.4'],
    ['4.3.2.1.IN-ADDR.ARPA.', '1.2.3.4'],
    ['3.2.1.in-addr.arpa', undefined],
    ['256.3.2.1.in-addr.arpa', undefined],
    ['04.3.2.1.in-addr.arpa', undefined],
    [
      `${[...'fd000000000000000000000000000001'].reverse().join('.')}.ip6.arpa`,
      'fd00:0000:0000:0000:0000:0000:0000:0001',
    ],
    ['1.0.ip6.arpa', undefined],
    ['example.com', undefined],
  ])('%s -> %s', (name, ip) => {
    expect(ipFromReverseName(name)).toBe(ip)
  })
})

describe('DnsServer with another primary domain', () => {
  const catalog = new Catalog()
  catalog.applyMember({
    id: '1',
    name: 'n1',
    address: '/ip4/10.2.0.1/tcp/1',
    status: 'alive',
    version: 1,
    payload: encodeNodePayload([def({ name: 'api', port: 80 })], () => undefined),
  })
  const ask = (server: DnsServer, name: string) =>
    dnsPacket.decode(
      server.handle(dnsPacket.encode({ type: 'query', id: 1, questions: [{ name, type: 'A' }] }), 'udp')!,
    ) as DecodedPacket & { rcode?: string }

  it('serves --dns-domain and consul, refuses peermesh; altDomain false serves the primary only', () => {
    const server = new DnsServer({ catalog, domain: 'Mesh.Example.', datacenter: 'east' })
    expect(ask(server, 'api.service.mesh.example').answers?.map((a) => (a as { data: string }).data)).toEqual(
      ['10.2.0.1'],
    )
    expect(ask(server, 'api.service.east.consul').rcode).toBe('NOERROR')
    expect(ask(server, 'api.service.dc1.consul').rcode).toBe('NXDOMAIN')
    expect(ask(server, 'api.service.peermesh').rcode).toBe('REFUSED')
    const only = new DnsServer({ catalog, domain: 'mesh.example', altDomain: false })
    expect(ask(only, 'api.service.consul').rcode).toBe('REFUSED')
    expect(ask(only, 'n1.node.mesh.example').answers?.map((a) => (a as { data: string }).data)).toEqual([
      '10.2.0.1',
    ])
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
    acls = true
  })

  it('a node anonymous may not read is NXDOMAIN by name and has no PTR', async () => {
    expect(ips(await query('node-1.node.consul'))).toEqual(['10.0.1.1'])
    expect(rcode(await query('node-2.node.consul'))).toBe('NXDOMAIN')
    const ptr = (name: string) =>
      dnsPacket.decode(
        dns.handle(dnsPacket.encode({ type: 'query', id: 1, questions: [{ name, type: 'PTR' }] }), 'udp')!,
      ) as DecodedPacket & { rcode?: string }
    expect(ptr('1.1.0.10.in-addr.arpa').answers?.map((a) => (a as { data?: unknown }).data)).toEqual([
      'node-1.node.dc1.peermesh',
    ])
    expect(ptr('2.1.0.10.in-addr.arpa').rcode).toBe('NXDOMAIN')
  })
})

describe('DnsServer over TCP: back-pressure against a client that does not read its replies', () => {
  /** 400 instances of `api`: an SRV reply over TCP is tens of KiB, from a query of a few dozen bytes. */
  function bigCatalog(): Catalog {
    const catalog = new Catalog()
    for (let i = 0; i < 400; i++) {
      catalog.applyMember({
        id: `n${i}`,
        name: `node-${i}`,
        address: `/ip4/10.2.${i >> 8}.${(i & 0xff) + 1}/tcp/4001`,
        status: 'alive',
        version: 1,
        payload: encodeNodePayload([def({ name: 'api', port: 8000 })], () => undefined),
      })
    }
    return catalog
  }

  /** `n` SRV queries for `name`, ids 0..n-1, each with its length prefix, in one buffer. */
  function pipelined(n: number, name = 'api.service.peermesh'): Buffer {
    return Buffer.concat(
      Array.from({ length: n }, (_, id) =>
        dnsPacket.streamEncode({ type: 'query', id, questions: [{ name, type: 'SRV' }] }),
      ),
    )
  }

  async function open(port: number) {
    const socket = connect(port, '127.0.0.1')
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve)
      socket.once('error', reject)
    })
    return socket
  }

  /** Reads length-prefixed replies off `socket` until `n` have come; resolves with them in order. */
  function replies(socket: ReturnType<typeof connect>, n: number): Promise<DecodedPacket[]> {
    return new Promise((resolve, reject) => {
      const out: DecodedPacket[] = []
      let buf = Buffer.alloc(0)
      socket.on('data', (c: Buffer) => {
        buf = Buffer.concat([buf, c])
        while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
          const len = buf.readUInt16BE(0)
          out.push(dnsPacket.decode(buf.subarray(2, 2 + len)))
          buf = buf.subarray(2 + len)
        }
        if (out.length >= n) resolve(out)
      })
      socket.on('error', reject)
      socket.on('close', () => reject(new Error(`closed after ${out.length} of ${n} replies`)))
    })
  }

  /** Most a client may leave unread here: the cap, plus the one reply written as it was reached. */
  const UNSENT_BOUND = DNS_TCP_MAX_UNSENT_BYTES + 2 + 65_535

  it('stops reading a client that pipelines and never reads: its backlog stays bounded, others are served', async () => {
    const dns = new DnsServer({ catalog: bigCatalog(), tcpIdleTimeoutMs: 60_000 })
    const { tcpPort } = await dns.start({ host: '127.0.0.1', port: 0 })
    const attacker = await open(tcpPort)
    try {
      attacker.pause() // never reads a reply
      // 2,000 queries of ~40 bytes each would be ~2,000 replies of tens of KiB (tens of MiB).
      const flood = pipelined(2_000)
      attacker.write(flood)
      let worst = 0
      await eventually(() => {
        for (const c of dns.tcpClients()) worst = Math.max(worst, c.unsentBytes)
        return dns.tcpClients().some((c) => !c.reading)
      }, 20_000)
      // Keep sending: nothing more is read, answered or buffered for it.
      attacker.write(pipelined(2_000))
      const answered = dns.stats.queries
      const [held] = dns.tcpClients()
      expect(held?.reading).toBe(false)
      expect(held!.unsentBytes).toBeLessThanOrEqual(UNSENT_BOUND)
      expect(held!.unansweredBytes).toBeLessThanOrEqual(DNS_TCP_MAX_UNANSWERED_BYTES)
      expect(worst).toBeLessThanOrEqual(UNSENT_BOUND)
      expect(dns.stats.tcpPaused).toBeGreaterThanOrEqual(1)
      expect(answered).toBeLessThan(2_000)

      // Another client is answered meanwhile.
      const other = await open(tcpPort)
      try {
        const got = replies(other, 1)
        other.write(
          dnsPacket.streamEncode({
            type: 'query',
            id: 9,
            questions: [{ name: 'api.service.peermesh', type: 'A' }],
          }),
        )
        const [reply] = await got
        expect(reply?.id).toBe(9)
        expect(reply?.answers?.length).toBeGreaterThan(0)
      } finally {
        other.destroy()
      }
      // The flooding client still holds no more than before.
      const [after] = dns.tcpClients()
      expect(after?.reading).toBe(false)
      expect(after!.unsentBytes).toBeLessThanOrEqual(UNSENT_BOUND)
      expect(dns.stats.queries).toBe(answered + 1)
    } finally {
      attacker.destroy()
      await dns.stop()
    }
  }, 30_000)

  it('closes a client that leaves its replies unread past the idle timeout, though it keeps sending', async () => {
    const dns = new DnsServer({ catalog: bigCatalog(), tcpIdleTimeoutMs: 300 })
    const { tcpPort } = await dns.start({ host: '127.0.0.1', port: 0 })
    const attacker = await open(tcpPort)
    attacker.on('error', () => {}) // reset by the server
    attacker.pause()
    const sending = setInterval(() => attacker.write(pipelined(50)), 50)
    try {
      attacker.write(pipelined(2_000))
      await eventually(() => dns.stats.tcpPaused > 0, 20_000)
      await eventually(() => dns.tcpClients().length === 0, 10_000)
    } finally {
      clearInterval(sending)
      attacker.destroy()
      await dns.stop()
    }
  }, 30_000)

  it('answers a pipelining client every query, in order, across pauses while it falls behind', async () => {
    const dns = new DnsServer({ catalog: bigCatalog(), tcpIdleTimeoutMs: 60_000 })
    const { tcpPort } = await dns.start({ host: '127.0.0.1', port: 0 })
    const client = await open(tcpPort)
    try {
      const n = 150 // ~10 MB of replies: dozens of pauses at the 256 KiB cap
      client.pause() // falls behind at first ...
      client.write(pipelined(n))
      await eventually(() => dns.tcpClients().some((c) => !c.reading), 20_000)
      const got = replies(client, n) // ... then reads everything
      client.resume()
      const all = await got
      expect(all.map((r) => r.id)).toEqual(Array.from({ length: n }, (_, i) => i))
      expect(all.every((r) => (r.answers?.length ?? 0) > 0)).toBe(true)
      expect(dns.stats.queries).toBe(n)
      expect(dns.tcpClients()).toHaveLength(1) // still open, reading again
      expect(dns.tcpClients()[0]?.reading).toBe(true)
    } finally {
      client.destroy()
      await dns.stop()
    }
  }, 30_000)
})
