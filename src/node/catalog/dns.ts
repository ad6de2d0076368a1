import { createSocket, type Socket as UdpSocket } from 'node:dgram'
import type { Authorizer } from '../../acl/authorizer.ts'
import { createServer, isIP, type Server, type Socket } from 'node:net'
import type { Answer, DecodedPacket, Packet, Question } from 'dns-packet'
import dnsPacket from 'dns-packet'
import type { Catalog, HealthEntry } from './catalog.ts'

/** Default DNS interface address (Consul's port, loopback only). */
export const DEFAULT_DNS_ADDRESS = Object.freeze({ host: '127.0.0.1', port: 8600 })

/** Primary zone served unless `--dns-domain` says otherwise. */
export const DEFAULT_DNS_DOMAIN = 'peermesh'
/**
 * Zone served beside the primary one (Consul's `alt_domain`), so that tools and stub zones written
 * for Consul resolve unchanged.
 */
export const CONSUL_DNS_DOMAIN = 'consul'
/** Datacenter name answered for when none is configured (Consul's default). */
export const DEFAULT_DATACENTER = 'dc1'

export interface DnsServerInit {
  catalog: Catalog
  /** Primary zone: `<name>.service.<domain>` (default `peermesh`). Names in answers use the zone asked. */
  domain?: string
  /**
   * A second zone answered like the primary one (Consul's `alt_domain`); default `consul`, so
   * `api.service.consul` works out of the box. `false`: the primary zone only.
   */
  altDomain?: string | false
  /**
   * This agent's datacenter: `api.service.<dc>.<domain>` answers for it; any other datacenter is
   * NXDOMAIN (Consul's "No path to datacenter"). Default `dc1`.
   */
  datacenter?: string
  /** Orders answers (shuffled so clients spread their load). Uniform in [0, 1). */
  rng?: () => number
  /** Most simultaneous TCP clients; more are closed at once. */
  maxTcpConnections?: number
  /**
   * A TCP client silent this long is closed; so is one that has left DNS_TCP_MAX_UNSENT_BYTES of
   * replies unread this long (its reading is paused meanwhile).
   */
  tcpIdleTimeoutMs?: number
  /**
   * What a query may see (ACLs; DNS queries carry no token, so this is the anonymous token's
   * authorizer, asked at each query): a service it may not read is NXDOMAIN, and instances on
   * nodes it may not read are left out, as Consul's DNS does. Absent, or answering undefined (no ACLs): everything.
   */
  authorizer?: () => DnsAuthorizer | undefined
}

/** The part of an ACL authorizer DNS asks. */
export type DnsAuthorizer = Pick<Authorizer, 'serviceRead' | 'nodeRead'>

export interface DnsStats {
  /** Queries answered (any rcode). */
  queries: number
  /** Packets that could not be decoded, or were not queries: dropped without a reply. */
  malformed: number
  /** Queries that failed inside the server and got SERVFAIL. */
  servfail: number
  /** UDP replies cut to fit (TC bit set; the client retries over TCP). */
  truncated: number
  /** Times a TCP client's queries waited because it left DNS_TCP_MAX_UNSENT_BYTES of replies unread. */
  tcpPaused: number
}

/** One open DNS-over-TCP client, as `tcpClients()` shows it. */
export interface DnsTcpClientBacklog {
  /** Reply bytes written but not yet taken by the kernel (the socket's `writableLength`). */
  unsentBytes: number
  /** Received bytes of queries not yet answered. */
  unansweredBytes: number
  /** False while its queries wait for it to read its replies. */
  reading: boolean
}

const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const
/** Classic DNS over UDP limit, used unless the query advertises a larger EDNS buffer. */
const UDP_DEFAULT_SIZE = 512
const UDP_MAX_SIZE = 4096
const TCP_MAX_MESSAGE = 65535
/**
 * Reply bytes a TCP client may leave unread in this agent before its further queries wait:
 * reading stops (`pause`) until the socket drains. Four full-size replies, so a pipelining client
 * that reads as it sends never waits, and one that never reads costs at most this plus one reply.
 */
export const DNS_TCP_MAX_UNSENT_BYTES = 256 * 1024
/**
 * Received bytes not yet answered that one TCP client may hold here (its queries in flight): one
 * partial message plus one socket read (at most 64 KiB), which is all there can be while reading
 * stops whenever replies back up. More means the client is not framing messages: it is closed.
 */
export const DNS_TCP_MAX_UNANSWERED_BYTES = 2 * (2 + TCP_MAX_MESSAGE)

/** What a name inside a served zone asks for (labels left of the zone, lowercase). */
export type ZoneLookup =
  | { kind: 'apex' }
  /** `[tag.]name.service[.dc]`, `_name._tag.service[.dc]`; `datacenter` undefined: this one. */
  | { kind: 'service'; service: string; tag?: string; datacenter?: string }
  /** `name.node[.dc]` (a node name may hold dots). */
  | { kind: 'node'; node: string; datacenter?: string }
  /** `<hex ip>.addr[.dc]`: the IP itself (SRV targets point here). */
  | { kind: 'addr'; ip: string }
  | { kind: 'invalid' }

/**
 * Reads the labels left of the zone as Consul's DNS does (agent/dns.go `dispatch`): the rightmost
 * `service`, `node` or `addr` label says what is asked, the labels right of it are the datacenter
 * (`dc1` or `dc1.dc`), the labels left of it the name. `_name._tag.service` is RFC 2782's form
 * (`_tcp` means any tag), and for SRV the `service` label may be left out (`_api._tcp.consul`).
 * Otherwise every label before the service name is the tag (Consul allows dots in tags).
 */
export function parseZoneLabels(labels: readonly string[], qtype: string): ZoneLookup {
  if (labels.length === 0) return { kind: 'apex' }
  const invalid = { kind: 'invalid' } as const
  for (let i = labels.length - 1; i >= 0; i--) {
    const label = labels[i]!
    let kind: 'service' | 'node' | 'addr'
    let parts: string[]
    let suffixes: string[]
    if (label === 'service' || label === 'node' || label === 'addr') {
      kind = label
      parts = labels.slice(0, i)
      suffixes = labels.slice(i + 1)
    } else if (qtype === 'SRV' && label.startsWith('_')) {
      kind = 'service'
      parts = labels.slice(0, i + 1)
      suffixes = labels.slice(i + 1)
    } else continue
    const dc = datacenterOf(suffixes)
    if (dc === false || parts.length === 0 || parts.some((p) => p === '')) return invalid
    const datacenter = dc === undefined ? {} : { datacenter: dc }
    if (kind === 'addr') {
      const ip = parts.length === 1 ? ipFromHex(parts[0]!) : undefined
      return ip === undefined ? invalid : { kind: 'addr', ip }
    }
    if (kind === 'node') return { kind: 'node', node: parts.join('.'), ...datacenter }
    if (parts.length === 2 && parts[0]!.startsWith('_') && parts[1]!.startsWith('_')) {
      const tag = parts[1]!.slice(1)
      const service = parts[0]!.slice(1)
      if (service === '') return invalid
      return { kind: 'service', service, ...(tag === 'tcp' || tag === '' ? {} : { tag }), ...datacenter }
    }
    const tag = parts.slice(0, -1).join('.')
    return { kind: 'service', service: parts.at(-1)!, ...(tag === '' ? {} : { tag }), ...datacenter }
  }
  return invalid
}

/** `[]` -> this datacenter (undefined), `[dc]` or `[dc, 'dc']` -> dc, anything else: false. */
function datacenterOf(suffixes: string[]): string | undefined | false {
  if (suffixes.length === 0) return undefined
  if (suffixes.length === 1) return suffixes[0]!
  if (suffixes.length === 2 && suffixes[1] === 'dc') return suffixes[0]!
  return false
}

/**
 * The IP a reverse name stands for: `4.3.2.1.in-addr.arpa` -> `1.2.3.4`, 32 nibbles of
 * `.ip6.arpa` -> the IPv6 address; undefined for anything else (a partial name, a bad label).
 */
export function ipFromReverseName(qname: string): string | undefined {
  const name = qname.toLowerCase().replace(/\.$/, '')
  if (name.endsWith('.in-addr.arpa')) {
    const octets = name.slice(0, -'.in-addr.arpa'.length).split('.')
    if (octets.length !== 4 || !octets.every((o) => /^(0|[1-9][0-9]{0,2})$/.test(o) && Number(o) <= 255))
      return undefined
    return octets.reverse().join('.')
  }
  if (name.endsWith('.ip6.arpa')) {
    const nibbles = name.slice(0, -'.ip6.arpa'.length).split('.')
    if (nibbles.length !== 32 || !nibbles.every((n) => /^[0-9a-f]$/.test(n))) return undefined
    return ipFromHex(nibbles.reverse().join(''))
  }
  return undefined
}

interface Resolved {
  rcode: number
  answers: Answer[]
  additionals: Answer[]
  /** Zone whose SOA goes in the authority section of an empty answer (NXDOMAIN or NODATA). */
  zone?: string
}

/**
 * DNS interface to the catalog, over UDP and TCP, for two zones: the primary one (`peermesh`, or
 * `--dns-domain`) and `consul` (Consul's `alt_domain`), answered alike, in the zone asked:
 *   `NAME.service[.DC].peermesh`      A / AAAA / SRV of passing and warning instances
 *   `TAG.NAME.service[.DC].peermesh`  the same, only instances with tag TAG
 *   `_NAME._TAG.service[.DC].peermesh` RFC 2782 form (`_tcp` means no tag filter)
 *   `NODE.node[.DC].peermesh`         A / AAAA of the node's address
 *   `<hex ip>.addr.peermesh`          A / AAAA: SRV targets point here
 *   `d.c.b.a.in-addr.arpa` (PTR)      the node at that address (`NODE.node.DC.peermesh`), else a
 *                                     service instance with that address (`NAME.service.DC.peermesh`)
 * DC is this agent's datacenter; another one is NXDOMAIN, as Consul answers "No path to
 * datacenter". As Consul: a service with no passing or warning instance, an unknown service or
 * node, and an unknown reverse address get NXDOMAIN with the zone's SOA; a known name without
 * records of the type asked gets NOERROR with the SOA (NODATA). Names and tags match without
 * regard to case. No record is listed twice (one A per address, one SRV per node, address and
 * port). Names outside both zones and `.arpa` get REFUSED. A packet that cannot be decoded is
 * dropped and counted in `stats.malformed`; an internal failure answers SERVFAIL. Records have
 * TTL 0: health changes take effect on the next lookup.
 */
export class DnsServer {
  readonly stats: DnsStats = { queries: 0, malformed: 0, servfail: 0, truncated: 0, tcpPaused: 0 }
  private readonly catalog: Catalog
  private readonly domain: string
  /** Zones served, longest first (a name matches the most specific one). */
  private readonly zones: string[]
  private readonly datacenter: string
  private readonly rng: () => number
  private readonly maxTcp: number
  private readonly tcpIdleMs: number
  private readonly authorizer: DnsServerInit['authorizer']
  private udp?: UdpSocket
  private tcp?: Server
  /** Open TCP clients, each with how to read its backlog. */
  private readonly conns = new Map<Socket, () => DnsTcpClientBacklog>()

  constructor(init: DnsServerInit) {
    this.catalog = init.catalog
    this.domain = normalizeDomain(init.domain ?? DEFAULT_DNS_DOMAIN)
    const alt = init.altDomain === false ? undefined : normalizeDomain(init.altDomain ?? CONSUL_DNS_DOMAIN)
    this.zones = [...new Set([this.domain, ...(alt !== undefined ? [alt] : [])])].sort(
      (a, b) => b.length - a.length,
    )
    this.datacenter = (init.datacenter ?? DEFAULT_DATACENTER).toLowerCase()
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
    for (const c of this.conns.keys()) c.destroy()
    this.conns.clear()
    await Promise.all([
      udp === undefined ? undefined : new Promise<void>((resolve) => udp.close(() => resolve())),
      tcp === undefined ? undefined : new Promise<void>((resolve) => tcp.close(() => resolve())),
    ])
  }

  /** The backlog of each open TCP client: what back-pressure keeps bounded. */
  tcpClients(): DnsTcpClientBacklog[] {
    return [...this.conns.values()].map((backlog) => backlog())
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
      if (opcode !== 0)
        return this.encode(base, { rcode: RCODE.NOTIMP, answers: [], additionals: [] }, transport, query)
      if (query.questions.length !== 1)
        return this.encode(base, { rcode: RCODE.FORMERR, answers: [], additionals: [] }, transport, query)
      return this.encode(base, this.resolve(query.questions[0]!), transport, query)
    } catch {
      this.stats.servfail++
      try {
        return this.encode(base, { rcode: RCODE.SERVFAIL, answers: [], additionals: [] }, transport, query)
      } catch {
        return undefined
      }
    }
  }

  private resolve(question: Question): Resolved {
    // dns-packet's types omit ANY (255) and unknown types, which it decodes as strings too.
    const q = { name: question.name, type: question.type as string }
    const qname = q.name.toLowerCase().replace(/\.$/, '')
    const authz = this.authorizer?.()
    if (qname.endsWith('.arpa')) return this.reverse(q, qname, authz)
    const zone = this.zones.find((z) => qname === z || qname.endsWith(`.${z}`))
    if (zone === undefined) return { rcode: RCODE.REFUSED, answers: [], additionals: [] }
    const none = (rcode: number): Resolved => ({ rcode, answers: [], additionals: [], zone })
    const labels = qname === zone ? [] : qname.slice(0, -(zone.length + 1)).split('.')
    const lookup = parseZoneLabels(labels, q.type)
    switch (lookup.kind) {
      case 'apex':
        return q.type === 'SOA'
          ? { rcode: RCODE.NOERROR, answers: [this.soa(zone)], additionals: [], zone }
          : none(RCODE.NOERROR)
      case 'invalid':
        return none(RCODE.NXDOMAIN)
      case 'addr': {
        const rr = addressRecord(q.name, lookup.ip)
        return { rcode: RCODE.NOERROR, answers: wants(q.type, rr.type) ? [rr] : [], additionals: [], zone }
      }
      case 'node':
        if (!this.isLocalDatacenter(lookup.datacenter)) return none(RCODE.NXDOMAIN)
        return this.node(q, lookup.node, zone, authz)
      case 'service':
        if (!this.isLocalDatacenter(lookup.datacenter)) return none(RCODE.NXDOMAIN)
        return this.service(q, lookup.service, lookup.tag, zone, authz)
    }
  }

  private isLocalDatacenter(dc: string | undefined): boolean {
    return dc === undefined || dc === this.datacenter
  }

  private service(
    q: { name: string; type: string },
    name: string,
    tag: string | undefined,
    zone: string,
    authz: DnsAuthorizer | undefined,
  ): Resolved {
    const entries = this.shuffle(
      Object.keys(this.catalog.services())
        .filter((s) => s.toLowerCase() === name && (authz === undefined || authz.serviceRead(s)))
        .flatMap((s) => this.catalog.health(s, { minStatus: 'warning' }))
        .filter(
          (e) =>
            (tag === undefined || e.service.tags.some((t) => t.toLowerCase() === tag)) &&
            (authz === undefined || authz.nodeRead(e.node.name)),
        ),
    )
    // Unknown, unreadable, or no instance passing or warning: NXDOMAIN, as Consul answers.
    if (entries.length === 0) return { rcode: RCODE.NXDOMAIN, answers: [], additionals: [], zone }
    const answers: Answer[] = []
    const additionals: Answer[] = []
    // One SRV per node, address and port; one A/AAAA per address (several instances on one node,
    // or several nodes on one host, share one); one additional record per SRV target.
    const seenSrv = new Set<string>()
    const seenAddress = new Set<string>()
    const seenTarget = new Set<string>()
    for (const e of entries) {
      const ip = isIP(e.service.address) !== 0 ? e.service.address : undefined
      if (q.type === 'SRV' || q.type === 'ANY') {
        const key = `${e.node.name}\u0000${e.service.address}\u0000${e.service.port}`
        if (!seenSrv.has(key)) {
          seenSrv.add(key)
          const target = ip !== undefined ? `${ipToHex(ip)}.addr.${zone}` : e.service.address
          answers.push({
            name: q.name,
            type: 'SRV',
            ttl: 0,
            data: { priority: 1, weight: weightOf(e), port: e.service.port, target },
          })
          if (ip !== undefined && !seenTarget.has(target)) {
            seenTarget.add(target)
            additionals.push(addressRecord(target, ip))
          }
        }
      }
      if (ip !== undefined && (q.type === 'A' || q.type === 'AAAA' || q.type === 'ANY')) {
        const rr = addressRecord(q.name, ip)
        const key = ipToHex(ip)
        if (wants(q.type, rr.type) && !seenAddress.has(key)) {
          seenAddress.add(key)
          answers.push(rr)
        }
      }
    }
    return { rcode: RCODE.NOERROR, answers, additionals, zone }
  }

  /** `NODE.node[.dc].<zone>`: the node's address (A/AAAA), or a CNAME to its host name. */
  private node(
    q: { name: string; type: string },
    name: string,
    zone: string,
    authz: DnsAuthorizer | undefined,
  ): Resolved {
    const nodes = this.catalog
      .members()
      .filter((m) => m.name.toLowerCase() === name && (authz === undefined || authz.nodeRead(m.name)))
    if (nodes.length === 0) return { rcode: RCODE.NXDOMAIN, answers: [], additionals: [], zone }
    const answers: Answer[] = []
    const seen = new Set<string>()
    for (const n of nodes) {
      if (seen.has(n.address)) continue
      seen.add(n.address)
      if (isIP(n.address) !== 0) {
        const rr = addressRecord(q.name, n.address)
        if (wants(q.type, rr.type)) answers.push(rr)
      } else if (q.type === 'A' || q.type === 'AAAA' || q.type === 'ANY' || q.type === 'CNAME') {
        answers.push({ name: q.name, type: 'CNAME', ttl: 0, data: n.address })
      }
    }
    return { rcode: RCODE.NOERROR, answers, additionals: [], zone }
  }

  /**
   * PTR for `in-addr.arpa` / `ip6.arpa`, as Consul's `handlePtr`: the first node (by name) at that
   * address, else the first service instance registered with that address of its own; NXDOMAIN
   * when none is known (or readable).
   */
  private reverse(
    q: { name: string; type: string },
    qname: string,
    authz: DnsAuthorizer | undefined,
  ): Resolved {
    const zone = this.domain
    const ip = ipFromReverseName(qname)
    const none = (rcode: number): Resolved => ({ rcode, answers: [], additionals: [], zone })
    if (ip === undefined) return none(RCODE.NXDOMAIN)
    const key = ipToHex(ip)
    const sameIp = (address: string) => isIP(address) !== 0 && ipToHex(address) === key
    let target: string | undefined
    const node = this.catalog
      .members()
      .find((m) => sameIp(m.address) && (authz === undefined || authz.nodeRead(m.name)))
    if (node !== undefined) target = `${node.name}.node.${this.datacenter}.${zone}`
    else {
      for (const s of Object.keys(this.catalog.services())) {
        if (authz !== undefined && !authz.serviceRead(s)) continue
        const e = this.catalog
          .health(s)
          .find((h) => sameIp(h.service.address) && (authz === undefined || authz.nodeRead(h.node.name)))
        if (e !== undefined) {
          target = `${s}.service.${this.datacenter}.${zone}`
          break
        }
      }
    }
    if (target === undefined) return none(RCODE.NXDOMAIN)
    const answers: Answer[] =
      q.type === 'PTR' || q.type === 'ANY' ? [{ name: q.name, type: 'PTR', ttl: 0, data: target }] : []
    return { rcode: RCODE.NOERROR, answers, additionals: [], zone }
  }

  private encode(
    base: { id: number; rd: number; questions: Question[] },
    resolved: Resolved,
    transport: 'udp' | 'tcp',
    query: Packet,
  ): Buffer {
    const { rcode, answers, additionals, zone } = resolved
    // RFC 2308: a negative answer (NXDOMAIN, or NOERROR without records) carries the zone's SOA.
    const negative = rcode === RCODE.NXDOMAIN || (rcode === RCODE.NOERROR && answers.length === 0)
    const authorities: Answer[] = negative && zone !== undefined ? [this.soa(zone)] : []
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

  private soa(zone: string): Answer {
    return {
      name: zone,
      type: 'SOA',
      ttl: 0,
      data: {
        mname: `ns.${zone}`,
        rname: `hostmaster.${zone}`,
        serial: this.catalog.index % 0x1_0000_0000,
        refresh: 3600,
        retry: 600,
        expire: 86_400,
        minimum: 0, // negative answers are not cached either
      },
    }
  }

  /**
   * One TCP client: length-prefixed queries, answered in order, as many pipelined as it likes
   * (RFC 7766 §6.2.1). Back-pressure: once DNS_TCP_MAX_UNSENT_BYTES of replies wait unsent,
   * reading stops and the queries already received wait until the socket drains; a client that
   * does not read them within the idle timeout is closed. The idle timeout also closes a client
   * that sends nothing.
   */
  private onTcp(socket: Socket): void {
    if (this.conns.size >= this.maxTcp) {
      socket.destroy()
      return
    }
    let input: Buffer = Buffer.alloc(0)
    /** Set while reading is paused for a drain: closes the client if it does not come in time. */
    let stalled: NodeJS.Timeout | undefined
    this.conns.set(socket, () => ({
      unsentBytes: socket.writableLength,
      unansweredBytes: input.length,
      reading: stalled === undefined,
    }))
    socket.setTimeout(this.tcpIdleMs, () => socket.destroy())
    socket.on('close', () => {
      clearTimeout(stalled)
      this.conns.delete(socket)
    })
    socket.on('error', () => socket.destroy())
    /** Answers the complete queries held, in order, until none is left or replies back up. */
    const answer = (): void => {
      while (input.length >= 2 && !socket.destroyed) {
        // writableNeedDrain: a write has returned false, so 'drain' will come (the cap is above
        // the socket's high-water mark, so it always has by then).
        if (socket.writableNeedDrain && socket.writableLength >= DNS_TCP_MAX_UNSENT_BYTES) {
          this.stats.tcpPaused++
          socket.pause()
          stalled = setTimeout(() => socket.destroy(), this.tcpIdleMs)
          socket.once('drain', () => {
            clearTimeout(stalled)
            stalled = undefined
            answer()
            if (stalled === undefined && !socket.destroyed) socket.resume()
          })
          return
        }
        const len = input.readUInt16BE(0)
        if (input.length < 2 + len) return
        const msg = input.subarray(2, 2 + len)
        input = input.subarray(2 + len)
        const reply = this.handle(msg, 'tcp')
        if (reply === undefined) {
          socket.destroy() // framing can no longer be trusted
          return
        }
        const framed = Buffer.allocUnsafe(2 + reply.length)
        framed.writeUInt16BE(reply.length)
        reply.copy(framed, 2)
        socket.write(framed)
      }
    }
    socket.on('data', (chunk: Buffer) => {
      if (input.length + chunk.length > DNS_TCP_MAX_UNANSWERED_BYTES) {
        socket.destroy()
        return
      }
      input = input.length === 0 ? chunk : Buffer.concat([input, chunk])
      if (stalled === undefined) answer()
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

/** Lowercase, without the trailing dot. */
function normalizeDomain(domain: string): string {
  return domain.toLowerCase().replace(/\.$/, '')
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
