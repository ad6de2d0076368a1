/**
 * bench:fuzz — hostile inputs, at volume, against every network entry point of a live agent.
 *
 * Three real agents on 127.0.0.1 (a bootstraps Raft; b and c join). A fuzzer that holds the cluster
 * key (so its inputs get past the private network and the datagram seal, to the decoders behind
 * them) but is not a member sends `--count` generated inputs (default 1,000,000) to each entry
 * point of agent a:
 *   gossip-datagram  sealed UDP datagrams (SWIM messages), plus unsealed garbage
 *   pushpull         push/pull requests (`/peermesh/swim/pushpull/1`)
 *   raft-stream      Raft messages (`/peermesh/raft/2`, chunked frames)
 *   raft-rpc         forwarded writes (`/peermesh/raft/rpc/3`, multiplexed requests)
 *   connect-rpc      CSR / rotate requests (`/peermesh/connect/sign/1`)
 *   dns              DNS queries over UDP
 *   http             raw HTTP/1.1 requests to the local API (malformed ones included)
 * Inputs: mutations of valid messages (bit flips, truncation, splices, insertions), random
 * bytes, hostile msgpack (extension types, structured-clone cycles, 100k-deep nesting, lengths
 * claiming 4 GiB, non-string keys) and valid shapes with wrong field types or extreme numbers.
 *
 * The agents run with ACLs off, given explicitly (`--config`, so the run does not depend on the
 * default): with them on, a forwarded write without a token stops at the leader's token check,
 * and the fuzz would no longer reach the command checks behind it. Every decoder runs either way.
 *
 * Reported per entry point: inputs sent, rate, whether every agent is still up and answers
 * (`crashes`), agent a's RSS growth (VmRSS after minus before, MiB), the same after a forced full
 * garbage collection before and after (bench/fuzz-gc-probe.mjs, loaded into the agents), with the
 * V8 heap and the external/ArrayBuffer memory still referenced then: memory that grows after a
 * collection is held (a leak, or a bounded cache filling), RSS growth that a collection removes,
 * or that the heap does not show, is the collector's or the allocator's slack. False suspicions: polls
 * of b's and c's member lists (every 250 ms through the whole run) that showed a, or each other,
 * not alive. Suspect/dead messages in the corpus name random ids, never real members: accusing a
 * real member is a legitimate protocol message for a key holder, not garbage.
 *
 * Flags: --count N (per entry point)  --seconds S (per entry point: stop sending after S seconds,
 * whatever the count; default none)  --sample-seconds S (a's memory after a forced collection every
 * S seconds of a run; default 120)  --entry NAME (repeatable; default all)  --seed S  --json.
 * JSON (last line): crashes, false_suspicions, polls, and per entry point {sent, ms, rss_growth_mib,
 * rss_before_mib, rss_after_mib, gc_before and gc_after: {rss, heap_used, heap_total, external} MiB,
 * samples: [{sent, s, rss, heap_used, heap_total, external}], kv_entries, ca_root_changed}.
 */
import '../src/node/agent/polyfill.ts'
import { createSocket } from 'node:dgram'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { connect as netConnect, type Socket } from 'node:net'
import { multiaddr } from '@multiformats/multiaddr'
import { Packr } from 'msgpackr'
import pino from 'pino'
import { pack } from '../src/common/msgpack.ts'
import { seededRng } from '../src/common/rng.ts'
import { encodeMessage as encodeSwim, encodePushPull } from '../src/gossip/codec.ts'
import { identityFromPrivateKey } from '../src/identity/keys/node-key.ts'
import { CONNECT_PROTOCOL, CONNECT_SIGN_PROTOCOL } from '../src/node/connect/connect-rpc.ts'
import { SWIM_PROTOCOL, SWIM_PUSHPULL_PROTOCOL } from '../src/node/gossip/libp2p-glue.ts'
import { RAFT_PROTOCOL, RAFT_RPC_PROTOCOL } from '../src/node/raft/raft-module.ts'
import { deriveDatagramKey, sealDatagram } from '../src/node/transport/gossip-udp.ts'
import { createHost } from '../src/node/transport/host.ts'
import { StreamMessenger } from '../src/node/transport/stream-messenger.ts'
import { encodePolicyCommand } from '../src/raft/index.ts'
import { encodeMessage as encodeRaft } from '../src/raft/codec.ts'
import type { Message } from '../src/raft/types.ts'
import { type AgentProcess, freePort, TestCluster, waitFor } from '../test/e2e/harness.ts'
import { argValue, emitJson, jsonMode, progress, table } from './lib.ts'
import { generateKeyPair } from '@libp2p/crypto/keys'

const ENTRIES = [
  'gossip-datagram',
  'pushpull',
  'raft-stream',
  'raft-rpc',
  'connect-rpc',
  'dns',
  'http',
] as const
type Entry = (typeof ENTRIES)[number]

const COUNT = Number(argValue('count', '1000000'))
const SEED = Number(argValue('seed', '1'))
const BUDGET_MS = Number(argValue('seconds', 'Infinity')) * 1000
/** How often a's memory is sampled after a forced collection during a run (`--sample-seconds`). */
const SAMPLE_MS = Number(argValue('sample-seconds', '120')) * 1000
const chosen: Entry[] = (() => {
  const picked: Entry[] = []
  process.argv.forEach((a, i) => {
    if (a === '--entry') picked.push(process.argv[i + 1] as Entry)
  })
  for (const p of picked) if (!ENTRIES.includes(p)) throw new Error(`unknown --entry ${p}`)
  return picked.length > 0 ? picked : [...ENTRIES]
})()

// ---- input generation ---------------------------------------------------------------------------

const rng = seededRng(SEED)
const int = (n: number): number => Math.floor(rng() * n)
const hostilePackr = new Packr({ structuredClone: true, useRecords: false, moreTypes: true })

function randomBytes(max: number): Uint8Array {
  const b = new Uint8Array(int(max + 1))
  for (let i = 0; i < b.length; i++) b[i] = int(256)
  return b
}

/** Msgpack that a strict decoder must refuse (or that decodes to something absurd). */
function hostileMsgpack(): Uint8Array {
  switch (int(9)) {
    case 0: {
      const depth = [10, 65, 1_343, 100_000][int(4)]!
      const b = new Uint8Array(depth + 1).fill(0x91)
      b[depth] = 0xc0
      return b
    }
    case 1: // fixext 1..16 and ext 8 of every kind msgpackr knows
      return new Uint8Array([[0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xc7][int(6)]!, ...randomBytes(24)])
    case 2: {
      const cyclic: unknown[] = [1]
      cyclic.push(cyclic)
      return hostilePackr.pack({ op: 'config.set', kind: 'kv', name: 'x', value: { v: cyclic } })
    }
    case 3:
      return hostilePackr.pack({
        v: [new Set([1]), new Date(), /x/, new Error('e'), 2n ** 80n, undefined][int(6)],
      })
    case 4: // array32 / map32 / str32 / bin32 claiming ~4 GiB
      return new Uint8Array([[0xdd, 0xdf, 0xdb, 0xc6][int(4)]!, 0xff, 0xff, 0xff, 0xff, 1, 2])
    case 5: // a map with integer keys
      return new Uint8Array([0x82, 0x01, 0x02, 0x03, 0x04])
    case 6: {
      const wide: Record<string, number> = {}
      for (let i = 0; i < 5_000; i++) wide[`k${i}`] = i
      return pack({ t: 'state', join: false, members: wide })
    }
    case 7:
      return pack({ t: 'compound', parts: Array.from({ length: 300 }, () => randomBytes(16)) })
    default:
      return pack(JSON.parse('{"__proto__":{"polluted":true},"t":"ping","seq":1,"target":"x"}'))
  }
}

const WEIRD: unknown[] = [
  -1,
  2 ** 53 - 1,
  2 ** 53,
  2 ** 64,
  -(2 ** 63),
  1.5,
  Number.NaN,
  Number.POSITIVE_INFINITY,
  '',
  'x'.repeat(70_000),
  [],
  {},
  null,
  true,
  new Uint8Array(0),
  'ping',
  'app',
]

/** A valid-shaped object with one field replaced by something it should never be. */
function wrongTypes(obj: Record<string, unknown>): Uint8Array {
  const keys = Object.keys(obj)
  const o: Record<string, unknown> = { ...obj }
  const n = 1 + int(2)
  for (let i = 0; i < n; i++) o[keys[int(keys.length)]!] = WEIRD[int(WEIRD.length)]
  if (int(4) === 0) o[`extra${int(3)}`] = WEIRD[int(WEIRD.length)]
  return pack(o)
}

function mutate(seed: Uint8Array): Uint8Array {
  const b = new Uint8Array(seed)
  switch (int(5)) {
    case 0: {
      const flips = 1 + int(8)
      for (let i = 0; i < flips && b.length > 0; i++) b[int(b.length)]! ^= 1 << int(8)
      return b
    }
    case 1:
      return b.subarray(0, int(b.length + 1))
    case 2: {
      const at = int(b.length + 1)
      return new Uint8Array([...b.subarray(0, at), ...randomBytes(16), ...b.subarray(at)])
    }
    case 3: {
      const at = int(b.length + 1)
      return new Uint8Array([...b.subarray(0, at), ...hostileMsgpack().subarray(0, 64), ...b.subarray(at)])
    }
    default: {
      // set a byte to a msgpack type tag (ext, huge length) somewhere
      if (b.length > 0) b[int(b.length)] = [0xc1, 0xc7, 0xd4, 0xdd, 0xdf, 0xdb, 0xc6, 0xff][int(8)]!
      return b
    }
  }
}

interface Corpus {
  bytes: Uint8Array[]
  objects: Record<string, unknown>[]
}

function generate(c: Corpus): Uint8Array {
  const r = int(10)
  if (r < 4) return mutate(c.bytes[int(c.bytes.length)]!)
  if (r < 6) return randomBytes(r === 4 ? 64 : 2_048)
  if (r < 8) return hostileMsgpack()
  return wrongTypes(c.objects[int(c.objects.length)]!)
}

// ---- the cluster and the fuzzer's host ----------------------------------------------------------

const log = pino({ level: 'silent' })

async function members(a: AgentProcess): Promise<{ name: string; status: string }[] | undefined> {
  const list = await a.api<{ Name: string; State: string }[]>('/v1/agent/members', undefined, {
    token: false,
  })
  return list?.map((m) => ({ name: m.Name, status: m.State }))
}

function rssMib(a: AgentProcess): number {
  const pid = a.child?.pid
  if (pid === undefined) return Number.NaN
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m === null ? Number.NaN : Number(m[1]) / 1024
  } catch {
    return Number.NaN
  }
}

const GC_PROBE = fileURLToPath(new URL('./fuzz-gc-probe.mjs', import.meta.url))
const GC_PROBE_LINE = /^fuzz-gc-probe (\{.*\})$/gm

/** Memory of an agent after a full collection (bench/fuzz-gc-probe.mjs), MiB. */
interface AfterGc {
  rss: number
  heap_used: number
  /** What V8 holds for its heap, used or not (its own slack is heap_total - heap_used). */
  heap_total: number
  external: number
}

/** Forces a full collection in `a` (SIGUSR2 to the probe) and reads what is left. */
async function afterGc(a: AgentProcess): Promise<AfterGc | undefined> {
  const seen = [...a.log.matchAll(GC_PROBE_LINE)].length
  a.child?.kill('SIGUSR2')
  const mib = (n: number): number => Number((n / 2 ** 20).toFixed(1))
  return waitFor(
    `${a.name}'s memory after a forced collection`,
    async () => {
      const lines = [...a.log.matchAll(GC_PROBE_LINE)]
      if (lines.length <= seen) return undefined
      const m = JSON.parse(lines[lines.length - 1]![1]!) as {
        rss: number
        heapUsed: number
        heapTotal: number
        external: number
      }
      return {
        rss: mib(m.rss),
        heap_used: mib(m.heapUsed),
        heap_total: mib(m.heapTotal),
        external: mib(m.external),
      }
    },
    30_000,
  ).catch(() => undefined)
}

function dnsQuery(name: string, type = 1): Uint8Array {
  const labels = name.split('.').flatMap((l) => [l.length, ...Buffer.from(l)])
  return new Uint8Array([int(256), int(256), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, ...labels, 0, 0, type, 0, 1])
}

async function main(): Promise<void> {
  // The agents inherit this: the probe answers SIGUSR2 with a forced collection (see afterGc).
  process.env['NODE_OPTIONS'] = `${process.env['NODE_OPTIONS'] ?? ''} --expose-gc --import ${GC_PROBE}`.trim()
  const cluster = new TestCluster()
  const keyFile = await cluster.writeClusterKey()
  const aclOff = join(cluster.dir, 'acl-off.json')
  writeFileSync(aclOff, JSON.stringify({ acl: { enabled: false } }))
  const dnsPort = await freePort()
  const a = cluster.agent({
    name: 'a',
    initialManagementToken: false, // ACLs off (below): no token
    clusterKeyFile: keyFile,
    dns: `127.0.0.1:${dnsPort}`,
    extraArgs: ['--config', aclOff, '--bootstrap', '--log-level', 'warn'],
  })
  let crashes = 0
  let polls = 0
  let falseSuspicions = 0
  let polling = true
  let current = 'setup'
  const suspicionsBy: Record<string, number> = {}
  const results: Record<
    string,
    {
      sent: number
      ms: number
      rss_before_mib: number
      rss_after_mib: number
      rss_growth_mib: number
      gc_before?: AfterGc
      gc_after?: AfterGc
      /** a's memory after a forced collection every SAMPLE_MS of the run (MiB), with inputs sent. */
      samples: (AfterGc & { sent: number; s: number })[]
      /** kv config entries on a after the run: state the fuzz wrote (ACLs off: a key holder may). */
      kv_entries: number
      /** Whether the CA's active root changed during the entry's run (a rotation happened). */
      ca_root_changed: boolean
      up: boolean
      false_suspicions: number
    }
  > = {}
  try {
    await a.start()
    const seed = `/ip4/127.0.0.1/tcp/${a.p2pPort}`
    const b = cluster.agent({
      name: 'b',
      initialManagementToken: false,
      clusterKeyFile: keyFile,
      seeds: [seed],
      extraArgs: ['--config', aclOff, '--log-level', 'warn'],
    })
    const c = cluster.agent({
      name: 'c',
      initialManagementToken: false,
      clusterKeyFile: keyFile,
      seeds: [seed],
      extraArgs: ['--config', aclOff, '--log-level', 'warn'],
    })
    await Promise.all([b.start(), c.start()])
    const agents = [a, b, c]
    await waitFor(
      'three members alive everywhere',
      async () => {
        for (const x of agents) {
          const ms = await members(x)
          if (ms === undefined || ms.filter((m) => m.status === 'alive').length !== 3) return undefined
        }
        return true
      },
      60_000,
    )
    const aId = (await a.self())?.peerId ?? ''
    if (aId === '') throw new Error('no peer id in /v1/agent/self')
    progress(`cluster up; agent a is ${aId}`)

    // The observers: any poll of b or c that shows a member not alive is a false suspicion.
    const poller = (async () => {
      while (polling) {
        for (const x of [b, c]) {
          const ms = await members(x)
          if (ms === undefined) continue
          polls++
          const down = ms.filter((m) => m.status !== 'alive')
          if (down.length > 0) {
            falseSuspicions++
            suspicionsBy[current] = (suspicionsBy[current] ?? 0) + 1
            progress(
              `  ${x.name} sees ${down.map((m) => `${m.name} ${m.status}`).join(', ')} (during ${current})`,
            )
          }
        }
        await new Promise((r) => setTimeout(r, 250))
      }
    })()

    const clusterKey = readFileSync(keyFile)
    const identity = identityFromPrivateKey(await generateKeyPair('Ed25519'))
    const host = await createHost({ identity, clusterKey, listen: ['/ip4/127.0.0.1/tcp/0'] })
    await host.start()
    await host.dial(multiaddr(`/ip4/127.0.0.1/tcp/${a.p2pPort}/p2p/${aId}`))
    const messenger = (protocol: string, requestProtocol: string, mode: 'stream' | 'multiplexed') =>
      new StreamMessenger({
        host,
        protocol: `${protocol}`,
        requestProtocol,
        requestMode: mode,
        log,
        maxMessageBytes: 16 << 20,
        maxRequestBytes: 16 << 20,
        maxQueuedPerPeer: 100_000,
        // As the agent's Raft channel frames them (kind byte, chunks); harmless on the others.
        ...(protocol === RAFT_PROTOCOL ? { chunking: { maxFrameBytes: 1 << 20 } } : {}),
      })
    const raftM = messenger(RAFT_PROTOCOL, RAFT_RPC_PROTOCOL, 'multiplexed')
    const swimM = messenger(SWIM_PROTOCOL, SWIM_PUSHPULL_PROTOCOL, 'stream')
    const connM = messenger(CONNECT_PROTOCOL, CONNECT_SIGN_PROTOCOL, 'stream')
    await Promise.all([raftM.start(), swimM.start(), connM.start()])
    const psk = deriveDatagramKey(clusterKey)

    const raftMsg = (over: Partial<Message>): Message => ({
      type: 'app',
      from: identity.id,
      to: aId,
      term: 1,
      logTerm: 1,
      index: 1,
      commit: 1,
      entries: [],
      reject: false,
      rejectHint: 0,
      context: '',
      ...over,
    })
    const raftObjects: Record<string, unknown>[] = [
      {
        type: 'app',
        from: identity.id,
        to: aId,
        term: 3,
        logTerm: 1,
        index: 1,
        commit: 1,
        entries: [],
        reject: false,
        rejectHint: 0,
        context: '',
      },
      {
        type: 'vote',
        from: identity.id,
        to: aId,
        term: 9,
        logTerm: 9,
        index: 99,
        commit: 0,
        entries: [],
        reject: false,
        rejectHint: 0,
        context: 'transfer',
      },
    ]
    const corpora: Record<Entry, Corpus> = {
      'raft-stream': {
        bytes: [
          encodeRaft(
            raftMsg({ entries: [{ term: 1, index: 2, type: 'normal', data: new Uint8Array([1, 2]) }] }),
          ),
          encodeRaft(raftMsg({ type: 'vote', term: 2, context: 'transfer' })),
          encodeRaft(raftMsg({ type: 'heartbeat' })),
          encodeRaft(raftMsg({ type: 'appResp', index: 1_000 })),
        ],
        objects: raftObjects,
      },
      'raft-rpc': {
        // Forwarded writes as rpc/3 carries them: the command as a map, the leader checks it.
        bytes: [
          pack({
            t: 'write',
            cmd: { op: 'config.set', kind: 'kv', name: 'fuzz', value: { value: 'x' } },
            clientId: 'fuzz',
            seq: 1,
          }),
          pack({
            t: 'write',
            cmd: { op: 'intention.upsert', source: 'fz', destination: 'web', action: 'allow' },
            clientId: 'fuzz-b',
            seq: 7,
            token: '00000000-0000-4000-8000-000000000000',
          }),
          pack({ t: 'write', cmd: { op: 'ca.rotate' }, clientId: 'fuzz', seq: 2 }),
          // The old rpc/2 shape, an encoded entry: refused as malformed.
          pack({
            t: 'propose',
            data: encodePolicyCommand({ op: 'config.set', kind: 'kv', name: 'fuzz', value: { value: 'x' } }),
            clientId: 'fuzz',
            seq: 1,
          }),
        ],
        objects: [
          { t: 'write', cmd: { op: 'config.delete', kind: 'kv', name: 'fuzz' }, clientId: 'fuzz', seq: 1 },
          { t: 'write', cmd: { op: 'config.set', kind: 'kv', name: 'z', value: {} }, clientId: 'f', seq: 3 },
        ],
      },
      pushpull: {
        bytes: [
          encodePushPull({ t: 'state', join: false, members: [] }),
          encodePushPull({ t: 'state', join: true, members: [] }),
        ],
        objects: [{ t: 'state', join: false, members: [] }],
      },
      'gossip-datagram': {
        bytes: [
          encodeSwim({ t: 'ping', seq: 1, target: aId }),
          encodeSwim({ t: 'ack', seq: 1 }),
          encodeSwim({ t: 'ping-req', seq: 2, target: identity.id, nack: true }),
          encodeSwim({ t: 'suspect', id: identity.id, inc: 1, from: identity.id }),
          encodeSwim({ t: 'dead', id: 'not-a-member', inc: 3, from: identity.id }),
        ],
        objects: [
          { t: 'ping', seq: 1, target: aId },
          { t: 'suspect', id: 'not-a-member', inc: 1, from: identity.id },
          { t: 'compound', parts: [] },
        ],
      },
      'connect-rpc': {
        bytes: [pack({ op: 'sign', service: 'web', csr: 'MIIB' }), pack({ op: 'rotate' })],
        objects: [{ service: 'web', csr: '-----BEGIN CERTIFICATE REQUEST-----' }],
      },
      dns: {
        bytes: [
          dnsQuery('web.service.peermesh'),
          dnsQuery('a.node.peermesh', 28),
          dnsQuery('x.service.consul', 33),
        ],
        objects: [{ q: 1 }],
      },
      http: { bytes: [], objects: [] },
    }

    const httpRequests = [
      'GET /v1/agent/members HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n',
      'GET /v1/catalog/services?index=1&wait=1ms HTTP/1.1\r\nHost: localhost\r\n\r\n',
      'PUT /v1/connect/intentions/exact?source=fz&destination=fz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 19\r\n\r\n{"Action":"allow"}\n',
      'PUT /v1/agent/service/register HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}',
      `PUT /v1/config HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 2700\r\n\r\n${'['.repeat(1350)}${']'.repeat(1350)}`,
      'GET /v1/health/service/%E0%A4%A HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n',
      'DELETE /v1/connect/intentions/exact?source=*&destination=* HTTP/1.1\r\nHost: evil.example\r\n\r\n',
    ].map((s) => Buffer.from(s))

    async function run(entry: Entry): Promise<void> {
      const corpus = corpora[entry]
      current = entry
      const rss0 = rssMib(a)
      const gcBefore = await afterGc(a)
      const root0 = await activeRoot(a)
      const started = Date.now()
      const more = (n: number): boolean => n < COUNT && Date.now() - started < BUDGET_MS
      let sent = 0
      // Every SAMPLE_MS: a's memory after a forced collection, with the inputs sent so far, so a
      // trend shows (a leak grows with the inputs; slack levels off).
      const samples: (AfterGc & { sent: number; s: number })[] = []
      let sampling = true
      const sampler = (async () => {
        while (sampling) {
          await new Promise((r) => setTimeout(r, SAMPLE_MS))
          if (!sampling) break
          const m = await afterGc(a)
          if (m !== undefined) samples.push({ sent, s: Math.round((Date.now() - started) / 1000), ...m })
        }
      })()
      switch (entry) {
        case 'gossip-datagram': {
          const sock = createSocket('udp4')
          for (; more(sent); sent++) {
            const payload = generate(corpus)
            const d = int(10) === 0 ? randomBytes(1_200) : sealDatagram(psk, identity.id, payload)
            sock.send(d, a.p2pPort, '127.0.0.1')
            if (sent % 256 === 255) await new Promise((r) => setImmediate(r))
          }
          await new Promise<void>((r) => sock.close(() => r()))
          break
        }
        case 'dns': {
          const sock = createSocket('udp4')
          sock.on('message', () => {})
          for (; more(sent); sent++) {
            sock.send(generate(corpus), dnsPort, '127.0.0.1')
            if (sent % 256 === 255) await new Promise((r) => setImmediate(r))
          }
          await new Promise<void>((r) => sock.close(() => r()))
          break
        }
        case 'raft-stream': {
          for (; more(sent); sent++) {
            raftM.send(aId, generate(corpus))
            // Bound what is in flight: a request round trip on the same connection every 512.
            if (sent % 512 === 511)
              await raftM
                .request(aId, new Uint8Array([0xc0]), { signal: AbortSignal.timeout(10_000) })
                .catch(() => {})
          }
          break
        }
        case 'raft-rpc':
        case 'pushpull':
        case 'connect-rpc': {
          const m = entry === 'raft-rpc' ? raftM : entry === 'pushpull' ? swimM : connM
          const concurrency = entry === 'raft-rpc' ? 64 : 32
          let next = 0
          await Promise.all(
            Array.from({ length: concurrency }, async () => {
              while (more(next)) {
                next++
                await m
                  .request(aId, generate(corpus), { signal: AbortSignal.timeout(10_000) })
                  .catch(() => {})
                sent++
              }
            }),
          )
          break
        }
        case 'http': {
          let next = 0
          await Promise.all(
            Array.from({ length: 16 }, async () => {
              let sock: Socket | undefined
              while (more(next)) {
                next++
                const base = httpRequests[int(httpRequests.length)]!
                const req = int(3) === 0 ? base : int(2) === 0 ? mutate(base) : randomBytes(512)
                sock = await httpExchange(sock, a.httpPort, req)
                sent++
              }
              sock?.destroy()
            }),
          )
          break
        }
      }
      const ms = Date.now() - started
      sampling = false
      await sampler
      const rss1 = rssMib(a)
      // Let what is in flight (timers, streams closing) finish before the collection.
      await new Promise((r) => setTimeout(r, 2_000))
      const gcAfter = await afterGc(a)
      const root1 = await activeRoot(a)
      const up = (
        await Promise.all(agents.map((x) => x.api('/v1/agent/self', undefined, { token: false })))
      ).every((r) => r !== undefined)
      const exited = agents.filter((x) => x.child?.exitCode !== null || x.child?.signalCode !== null)
      if (!up || exited.length > 0) crashes++
      results[entry] = {
        sent,
        ms,
        rss_before_mib: Number(rss0.toFixed(1)),
        rss_after_mib: Number(rss1.toFixed(1)),
        rss_growth_mib: Number((rss1 - rss0).toFixed(1)),
        ...(gcBefore !== undefined ? { gc_before: gcBefore } : {}),
        ...(gcAfter !== undefined ? { gc_after: gcAfter } : {}),
        samples,
        kv_entries: (await a.api<unknown[]>('/v1/config/kv'))?.length ?? -1,
        ca_root_changed: root0 !== root1,
        up,
        false_suspicions: suspicionsBy[entry] ?? 0,
      }
      if (root0 !== root1) progress(`  the CA's active root changed during ${entry}: ${root0} -> ${root1}`)
      progress(
        `${entry}: ${sent} inputs in ${(ms / 1000).toFixed(1)} s, agents up: ${up}, a's RSS ${rss0.toFixed(0)} -> ${rss1.toFixed(0)} MiB; after a forced collection ${describeGc(gcBefore)} -> ${describeGc(gcAfter)}`,
      )
      if (exited.length > 0)
        throw new Error(`agent ${exited[0]!.name} exited:\n${exited[0]!.log.slice(-2_000)}`)
    }

    for (const e of chosen) await run(e)
    polling = false
    await poller
    await Promise.all([raftM.stop(), swimM.stop(), connM.stop()])
    await host.stop()
  } finally {
    polling = false
    await cluster.close()
  }

  const growth = (r: (typeof results)[string], k: keyof AfterGc): string =>
    r.gc_before === undefined || r.gc_after === undefined ? '?' : (r.gc_after[k] - r.gc_before[k]).toFixed(1)
  table(
    [
      'entry point',
      'inputs',
      'seconds',
      'agents up',
      "a's RSS (MiB)",
      'growth',
      'after GC: RSS growth',
      'heap growth',
      'external growth',
      'false suspicions',
    ],
    Object.entries(results).map(([k, r]) => [
      k,
      r.sent,
      (r.ms / 1000).toFixed(1),
      String(r.up),
      `${r.rss_before_mib.toFixed(0)} -> ${r.rss_after_mib.toFixed(0)}`,
      r.rss_growth_mib,
      growth(r, 'rss'),
      growth(r, 'heap_used'),
      growth(r, 'external'),
      r.false_suspicions,
    ]),
  )
  console.log(`crashes: ${crashes}; false suspicions: ${falseSuspicions} of ${polls} member-list polls`)
  if (jsonMode)
    emitJson({ crashes, false_suspicions: falseSuspicions, polls, count: COUNT, entries: results })
  if (crashes > 0) process.exitCode = 1
}

async function activeRoot(a: AgentProcess): Promise<string | undefined> {
  return (await a.api<{ ActiveRootID?: string }>('/v1/connect/ca/roots'))?.ActiveRootID
}

function describeGc(m: AfterGc | undefined): string {
  return m === undefined
    ? '?'
    : `RSS ${m.rss}, heap ${m.heap_used} of ${m.heap_total}, external ${m.external} MiB`
}

/**
 * Sends one raw request and waits for the response to start, the socket to close, or 300 ms (a
 * mutated Content-Length leaves the server waiting for body bytes: the fuzzer moves on).
 */
async function httpExchange(
  sock: Socket | undefined,
  port: number,
  req: Uint8Array,
): Promise<Socket | undefined> {
  let s = sock
  if (s === undefined || s.destroyed) {
    s = netConnect(port, '127.0.0.1')
    s.on('error', () => {})
    await new Promise<void>((r) => {
      s!.once('connect', () => r())
      s!.once('close', () => r())
    })
    if (s.destroyed) return undefined
  }
  const conn = s
  await new Promise<void>((resolve) => {
    const done = (): void => {
      clearTimeout(timer)
      conn.off('data', done)
      conn.off('close', done)
      resolve()
    }
    const timer = setTimeout(() => {
      conn.destroy()
      done()
    }, 300)
    conn.on('data', done)
    conn.on('close', done)
    conn.write(req)
  })
  return conn.destroyed ? undefined : conn
}

await main()
