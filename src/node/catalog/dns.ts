import { createSocket, type Socket as UdpSocket } from 'node:dgram'
import type { Authorizer } from '../../acl/authorizer.ts'
import { createServer, isIP, type Server, type Socket } from 'node:net'
import type { Answer, DecodedPacket, Packet, Question } from 'dns-packet'
import dnsPacket from 'dns-packet'
import type { Catalog, HealthEntry } from './catalog.ts'

/** Default DNS interface address (Consul's port, loopback only). */
export const DEFAULT_DNS_ADDRESS = Object.freeze({ host: '127.0.0.1', port: 8600 })

export interface DnsServerInit {
  catalog: Catalog
  /** Zone served: `<name>.service.<domain>`. */
  domain?: string
  /** Orders answers (shuffled so clients spread their load). Uniform in [0, 1). */
  rng?: () => number
  /** Most simultaneous TCP clients; more are closed at once. */
  maxTcpConnections?: number
  /** A TCP client silent this long is closed. */
  tcpIdleTimeoutMs?: number
  /**
   * What a query may see (ACLs; DNS queries carry no token, so this is the anonymous token's
   * authorizer, asked at each query): a service it may not read is NXDOMAIN, and instances on
   * nodes it may not read are left out, as Consul's DNS does. Absent, or answering undefined (no ACLs): everything.
   */
  authorizer?: () => Pick<Authorizer, 'serviceRead' | 'nodeRead'> | undefined
}

export interface DnsStats {
  /** Queries answered (any rcode). */
  queries: number
  /** Packets that could not be decoded, or were not queries: dropped without a reply. */
  malformed: number
  /** Queries that failed inside the server and got SERVFAIL. */
  servfail: number
  /** UDP replies cut to fit (TC bit set; the client retries over TCP). */
  truncated: number
}

const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const
/** Classic DNS over UDP limit, used unless the query advertises a larger EDNS buffer. */
const UDP_DEFAULT_SIZE = 512
const UDP_MAX_SIZE = 4096
const TCP_MAX_MESSAGE = 65535

/**
 * DNS interface to the catalog, over UDP and TCP:
 *   `NAME.service.peermesh`        A / AAAA / SRV of passing and warning instances
 *   `TAG.NAME.service.peermesh`    the same, only instances with tag TAG
 *   `_NAME._TAG.service.peermesh`  RFC 2782 form (`_tcp` means no tag filter)
 *   `<hex ip>.addr.peermesh`       A / AAAA: SRV targets point here
 * Unknown service names get NXDOMAIN, names outside the zone REFUSED. A packet that cannot be
 * decoded is dropped and counted in `stats.malformed`; an internal failure answers SERVFAIL.
 * Records have TTL 0: health changes take effect on the next lookup.
 */
export class DnsServer {
  readonly stats: DnsStats = { queries: 0, malformed: 0, servfail: 0, truncated: 0 }
  private readonly catalog: Catalog
  private readonly domain: string
  private readonly rng: () => number
  private readonly maxTcp: number
  private readonly tcpIdleMs: number
  private readonly authorizer: DnsServerInit['authorizer']
  private udp?: UdpSocket
  private tcp?: Server
  private readonly conns = new Set<Socket>()

  constructor(init: DnsServerInit) {
    this.catalog = init.catalog
    this.domain = (init.domain ?? 'peermesh').toLowerCase().replace(/\.$/, '')
    this.rng = init.rng ?? Math.random
    this.maxTcp = init.maxTcpConnections ?? 256
    this.tcpIdleMs = init.tcpIdleTimeoutMs ?? 10_000
    this.authorizer = init.authorizer
  }

  /**
   * Listens on `host:port` over UDP and TCP. With port 0 each gets its own free port; both are
   * returned.
   */
  async start(
    addr: { host: string; port: number } = DEFAULT_DNS_ADDRESS,
  ): Promise<{ host: string; udpPort: number; tcpPort: number }> {
    const udp = createSocket(isIP(addr.host) === 6 ? 'udp6' : 'udp4')
    await new Promise<void>((resolve, reject) => {
      udp.once('error', reject)
      udp.bind(addr.port, addr.host, () => {
        udp.off('error', reject)
        resolve()
      })
    })
    udp.on('error', () => {}) // e.g. ICMP unreachable for a reply: nothing to do
    udp.on('message', (msg, rinfo) => {
      const reply = this.handle(msg, 'udp')
      if (reply !== undefined) udp.send(reply, rinfo.port, rinfo.address)
    })
    this.udp = udp
    const tcp = createServer((socket) => this.onTcp(socket))
    try {
      await new Promise<void>((resolve, reject) => {
        tcp.once('error', reject)
        tcp.listen(addr.port, addr.host, () => {
          tcp.off('error', reject)
          resolve()
        })
      })
    } catch (err) {
      udp.close()
      this.udp = undefined
      throw err
    }
    this.tcp = tcp
    const tcpAddr = tcp.address()
    return {
      host: addr.host,
      udpPort: udp.address().port,
      tcpPort: typeof tcpAddr === 'object' && tcpAddr !== null ? tcpAddr.port : addr.port,
    }
  }

  async stop(): Promise<void> {
    const { udp, tcp } = this
    this.udp = undefined
    this.tcp = undefined
    for (const c of this.conns) c.destroy()
    this.conns.clear()
    await Promise.all([
      udp === undefined ? undefined : new Promise<void>((resolve) => udp.close(() => resolve())),
      tcp === undefined ? undefined : new Promise<void>((resolve) => tcp.close(() => resolve())),
    ])
  }

  /**
   * Answers one DNS message (without TCP length prefix). Returns the encoded reply, or undefined
   * if the message is dropped. Never throws.
   */
  handle(msg: Buffer, transport: 'udp' | 'tcp'): Buffer | undefined {
    let query: DecodedPacket
    try {
      query = dnsPacket.decode(msg)
    } catch {
      this.stats.malformed++
      return undefined
    }
    if (query.type !== 'query' || !Array.isArray(query.questions)) {
      this.stats.malformed++
      return undefined
    }
    this.stats.queries++
    const opcode = ((query.flags ?? 0) >> 11) & 0xf
    const base = {
      id: query.id ?? 0,
      rd: (query.flags ?? 0) & dnsPacket.RECURSION_DESIRED,
      questions: query.questions.slice(0, 1),
    }
    try {
      if (opcode !== 0) return this.encode(base, RCODE.NOTIMP, [], [], transport, query)
      if (query.questions.length !== 1) return this.encode(base, RCODE.FORMERR, [], [], transport, query)
      const r = this.resolve(query.questions[0]!)
      return this.encode(base, r.rcode, r.answers, r.additionals, transport, query)
    } catch {
      this.stats.servfail++
      try {
        return this.encode(base, RCODE.SERVFAIL, [], [], transport, query)
      } catch {
        return undefined
      }
    }
  }

  private resolve(question: Question): { rcode: number; answers: Answer[]; additionals: Answer[] } {
    // dns-packet's types omit ANY (255) and unknown types, which it decodes as strings too.
    const q = { name: question.name, type: question.type as string }
    const qname = q.name.toLowerCase().replace(/\.$/, '')
    const none = (rcode: number) => ({ rcode, answers: [] as Answer[], additionals: [] as Answer[] })
    if (qname !== this.domain && !qname.endsWith(`.${this.domain}`)) return none(RCODE.REFUSED)
    const labels = qname === this.domain ? [] : qname.slice(0, -(this.domain.length + 1)).split('.')
    const kind = labels.at(-1)
    if (kind === 'addr' && labels.length === 2) {
      const ip = ipFromHex(labels[0]!)
      if (ip === undefined) return none(RCODE.NXDOMAIN)
      const rr = addressRecord(q.name, ip)
      return { rcode: RCODE.NOERROR, answers: wants(q.type, rr.type) ? [rr] : [], additionals: [] }
    }
    if (kind !== 'service' || labels.length < 2 || labels.length > 3) {
      return none(labels.length === 0 ? RCODE.NOERROR : RCODE.NXDOMAIN)
    }
    let name: string
    let tag: string | undefined
    if (labels[0]!.startsWith('_') && labels.length === 3) {
      name = labels[0]!.slice(1)
      tag = labels[1] === '_tcp' || labels[1] === '_udp' ? undefined : labels[1]!.replace(/^_/, '')
    } else {
      name = labels.length === 3 ? labels[1]! : labels[0]!
      tag = labels.length === 3 ? labels[0] : undefined
    }
    const authz = this.authorizer?.()
    if (!this.catalog.hasService(name) || (authz !== undefined && !authz.serviceRead(name)))
      return none(RCODE.NXDOMAIN)
    const entries = this.shuffle(
      this.catalog
        .health(name, { minStatus: 'warning', ...(tag !== undefined ? { tag } : {}) })
        .filter((e) => authz === undefined || authz.nodeRead(e.node.name)),
    )
    const answers: Answer[] = []
    const additionals: Answer[] = []
    for (const e of entries) {
      const ip = isIP(e.service.address) !== 0 ? e.service.address : undefined
      if (q.type === 'SRV' || q.type === 'ANY') {
        const target = ip !== undefined ? `${ipToHex(ip)}.addr.${this.domain}` : e.service.address
        answers.push({
          name: q.name,
          type: 'SRV',
          ttl: 0,
          data: { priority: 1, weight: weightOf(e), port: e.service.port, target },
        })
        if (ip !== undefined) additionals.push(addressRecord(target, ip))
      }
      if (ip !== undefined && (q.type === 'A' || q.type === 'AAAA' || q.type === 'ANY')) {
        const rr = addressRecord(q.name, ip)
        if (wants(q.type, rr.type)) answers.push(rr)
      }
    }
    return { rcode: RCODE.NOERROR, answers, additionals }
  }

  private encode(
    base: { id: number; rd: number; questions: Question[] },
    rcode: number,
    answers: Answer[],
    additionals: Answer[],
    transport: 'udp' | 'tcp',
    query: Packet,
  ): Buffer {
    const authorities: Answer[] = answers.length === 0 ? [this.soa()] : []
    const limit = transport === 'tcp' ? TCP_MAX_MESSAGE : udpLimit(query)
    let flags = dnsPacket.AUTHORITATIVE_ANSWER | base.rd | rcode
    let reply: Packet = {
      type: 'response',
      id: base.id,
      flags,
      questions: base.questions,
      answers,
      additionals,
      authorities,
    }
    let bytes = dnsPacket.encode(reply)
    if (bytes.length <= limit) return bytes
    // Too big: drop extra records first, then answers, until it fits; tell the client (TC).
    this.stats.truncated++
    flags |= dnsPacket.TRUNCATED_RESPONSE
    let n = answers.length
    do {
      n = Math.floor(n / 2)
      reply = {
        type: 'response',
        id: base.id,
        flags,
        questions: base.questions,
        answers: answers.slice(0, n),
      }
      bytes = dnsPacket.encode(reply)
    } while (bytes.length > limit && n > 0)
    return bytes
  }

  private soa(): Answer {
    return {
      name: this.domain,
      type: 'SOA',
      ttl: 0,
      data: {
        mname: `ns.${this.domain}`,
        rname: `hostmaster.${this.domain}`,
        serial: this.catalog.index % 0x1_0000_0000,
        refresh: 3600,
        retry: 600,
        expire: 86_400,
        minimum: 0, // negative answers are not cached either
      },
    }
  }

  private onTcp(socket: Socket): void {
    if (this.conns.size >= this.maxTcp) {
      socket.destroy()
      return
    }
    this.conns.add(socket)
    socket.setTimeout(this.tcpIdleMs, () => socket.destroy())
    socket.on('close', () => this.conns.delete(socket))
    socket.on('error', () => socket.destroy())
    let buf: Buffer = Buffer.alloc(0)
    socket.on('data', (chunk: Buffer) => {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk])
      while (buf.length >= 2) {
        const len = buf.readUInt16BE(0)
        if (buf.length < 2 + len) break
        const msg = buf.subarray(2, 2 + len)
        buf = buf.subarray(2 + len)
        const reply = this.handle(msg, 'tcp')
        if (reply === undefined) {
          socket.destroy() // framing can no longer be trusted
          return
        }
        const prefix = Buffer.alloc(2)
        prefix.writeUInt16BE(reply.length)
        socket.write(Buffer.concat([prefix, reply]))
      }
    })
  }

  private shuffle(entries: HealthEntry[]): HealthEntry[] {
    for (let i = entries.length - 1; i > 0; i--) {
      const j = Math.floor(this.rng() * (i + 1))
      ;[entries[i], entries[j]] = [entries[j]!, entries[i]!]
    }
    return entries
  }
}

function weightOf(e: HealthEntry): number {
  return e.status === 'passing' ? e.service.weights.passing : e.service.weights.warning
}

function wants(qtype: string, rrtype: 'A' | 'AAAA'): boolean {
  return qtype === rrtype || qtype === 'ANY'
}

function addressRecord(name: string, ip: string): Answer & { type: 'A' | 'AAAA' } {
  return { name, type: isIP(ip) === 6 ? 'AAAA' : 'A', ttl: 0, data: ip }
}

function udpLimit(query: Packet): number {
  const opt = query.additionals?.find((a) => a.type === 'OPT') as { udpPayloadSize?: number } | undefined
  const size = opt?.udpPayloadSize
  return typeof size === 'number' && size > UDP_DEFAULT_SIZE ? Math.min(size, UDP_MAX_SIZE) : UDP_DEFAULT_SIZE
}

/** `10.0.0.5` -> `0a000005`; IPv6 -> 32 hex digits (Consul's `.addr.` form). */
export function ipToHex(ip: string): string {
  if (isIP(ip) === 4)
    return ip
      .split('.')
      .map((o) => Number(o).toString(16).padStart(2, '0'))
      .join('')
  return expandIpv6(ip)
}

function ipFromHex(hex: string): string | undefined {
  if (/^[0-9a-f]{8}$/.test(hex)) {
    return [0, 2, 4, 6].map((i) => Number.parseInt(hex.slice(i, i + 2), 16)).join('.')
  }
  if (/^[0-9a-f]{32}$/.test(hex)) return hex.match(/.{4}/g)!.join(':')
  return undefined
}

function expandIpv6(ip: string): string {
  const [head = '', tail] = ip.split('::')
  const h = head === '' ? [] : head.split(':')
  const t = tail === undefined || tail === '' ? [] : tail.split(':')
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t]
  return groups.map((g) => g.padStart(4, '0')).join('')
}
