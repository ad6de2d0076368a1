import { randomUUID } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { multiaddr } from '@multiformats/multiaddr'
import pino from 'pino'
import { afterAll, describe, expect, it } from 'vitest'
import { pack, unpackRecord } from '../../src/common/msgpack.ts'
import { identityFromPrivateKey } from '../../src/identity/keys/node-key.ts'
import { enrollmentProof } from '../../src/node/raft/enrollment.ts'
import { RAFT_PROTOCOL, RAFT_RPC_PROTOCOL } from '../../src/node/raft/raft-module.ts'
import { createHost } from '../../src/node/transport/host.ts'
import { StreamMessenger } from '../../src/node/transport/stream-messenger.ts'
import { runCli, TestCluster, waitFor, apiCall as call } from './harness.ts'
import { type RaftConfiguration, startRaftCluster } from './raft-helpers.ts'

interface EnrollmentList {
  Enrollments: { PeerID: string; Node: string; Voter: boolean; AccessorID: string }[]
  Revoked: string[]
}

/** The value of `peermesh_raft_inputs_refused_total{reason=...}` on an agent's /metrics. */
async function refusedMetric(http: string, reason: string): Promise<number> {
  const text = await (await fetch(`http://${http}/metrics`, { signal: AbortSignal.timeout(5_000) })).text()
  const line = text
    .split('\n')
    .find((l) => l.startsWith(`peermesh_raft_inputs_refused_total{reason="${reason}"}`))
  return line === undefined ? 0 : Number(line.split(' ').at(-1))
}

describe('node enrollment end to end (ACLs on; 3 founders with the management token, 1 key holder)', () => {
  const cluster = new TestCluster()
  afterAll(() => cluster.close())

  it('a key holder without a token never joins Raft; with a node token it joins as a learner only; deleting the token removes it', async () => {
    const mgmt = randomUUID()
    const config = join(cluster.dir, 'acl.json')
    writeFileSync(config, JSON.stringify({ acl: { enabled: true, initialManagementToken: mgmt } }), {
      mode: 0o600,
    })
    const plain = join(cluster.dir, 'acl-plain.json')
    writeFileSync(plain, JSON.stringify({ acl: { enabled: true } }), { mode: 0o600 })
    const founders = await startRaftCluster(cluster, 3, { prefix: 'en', extraArgs: ['--config', config] })
    const conf = async (): Promise<RaftConfiguration | undefined> => {
      for (const a of founders) {
        const r = await call(a.http, 'GET', '/v1/operator/raft/configuration', { token: mgmt }).catch(
          () => undefined,
        )
        if (r === undefined) continue
        if (r.status === 200 && (r.json as RaftConfiguration).servers.some((s) => s.leader))
          return r.json as RaftConfiguration
      }
      return undefined
    }
    const first = await waitFor(
      'a leader, ACLs bootstrapped, the founders enrolled',
      async () => {
        const c = await conf()
        if (c === undefined) return undefined
        const r = await call(founders[0]!.http, 'GET', '/v1/operator/enrollment', { token: mgmt })
        const list = r.json as EnrollmentList
        return r.status === 200 && list.Enrollments.filter((e) => e.Voter).length === 3 ? c : undefined
      },
      30_000,
    )
    expect(first.servers.filter((s) => s.voter)).toHaveLength(3)
    const leaderId = first.servers.find((s) => s.leader)!.id
    const leader = founders.find((a) => first.servers.find((s) => s.id === leaderId)?.node === a.name)!

    // The key holder: the cluster key, no token. It gossips (a member), and warns it will not join.
    const seed = first.servers[0]!.address
    const joiner = cluster.agent({
      name: 'en4',
      initialManagementToken: false, // a plain key holder: no token from the harness
      clusterKeyFile: join(cluster.dir, 'cluster.key'),
      seeds: [seed],
      extraArgs: ['--config', plain],
    })
    await joiner.start()
    const joinerId = (await joiner.self())!.peerId
    expect(joinerId).toMatch(/^12D3/)
    await waitFor('en4 in gossip on the leader', async () => {
      const m = (await call(leader.http, 'GET', '/v1/agent/members')).json as {
        Name: string
        Status: number
      }[]
      return m.some((x) => x.Name === 'en4' && x.Status === 1) ? true : undefined
    })
    expect(joiner.log).toMatch(/will not join the Raft group/)

    // From the attacker's side, with the cluster key and a fresh node key: enroll and grant with a
    // bogus token, with a real token's proof made for another requester, in the old shape that
    // carried the secret, and a raw enrollment entry as a forwarded write. All refused and counted.
    const host = await createHost({
      identity: identityFromPrivateKey(await generateKeyPair('Ed25519')),
      clusterKey: readFileSync(join(cluster.dir, 'cluster.key')),
      listen: ['/ip4/127.0.0.1/tcp/0'],
    })
    await host.start()
    try {
      // Dialed all: leadership may move under load; a non-leader's answer names the leader.
      for (const s of first.servers) await host.dial(multiaddr(s.address))
      const m = new StreamMessenger({
        host,
        protocol: RAFT_PROTOCOL,
        requestProtocol: RAFT_RPC_PROTOCOL,
        requestMode: 'multiplexed',
        log: pino({ level: 'silent' }),
        maxMessageBytes: 1 << 20,
        maxRequestBytes: 1 << 20,
      })
      await m.start()
      const me = host.peerId.toString()
      /** Sends the request `build` makes for each member asked, following "not the leader". */
      const ask = async (build: (to: string) => unknown): Promise<Record<string, unknown> | undefined> => {
        let to = leaderId
        for (let i = 0; ; i++) {
          const bytes = pack(build(to))
          const r = unpackRecord(await m.request(to, bytes, { signal: AbortSignal.timeout(10_000) }))
          if (r?.['code'] !== 'PEERMESH_ERR_NOT_LEADER' || i >= 20) return r
          if (typeof r['leader'] === 'string') to = r['leader']
          else await new Promise((res) => setTimeout(res, 250))
        }
      }
      for (const token of [randomUUID(), 'anonymous']) {
        const enroll = await ask((to) => enrollmentProof({ t: 'enroll', node: 'evil', token }, me, to))
        expect(enroll?.['code']).toBe('PEERMESH_ERR_PERMISSION_DENIED')
        const grant = await ask((to) => enrollmentProof({ t: 'grant', service: 'db', token }, me, to))
        expect(grant?.['code']).toBe('PEERMESH_ERR_PERMISSION_DENIED')
      }
      // A proof of the management token made for another requester (en4), as a member asked by en4
      // would have seen it: refused from this peer id.
      const stolen = await ask((to) =>
        enrollmentProof({ t: 'enroll', node: 'evil', token: mgmt }, joinerId, to),
      )
      expect(stolen?.['code']).toBe('PEERMESH_ERR_PERMISSION_DENIED')
      // The old shape, carrying a secret (even a valid one): malformed, never read.
      for (const old of [
        { t: 'enroll', node: 'evil', token: mgmt },
        { t: 'grant', service: 'db', token: mgmt },
      ])
        expect((await ask(() => old))?.['code']).toBe('PEERMESH_ERR_BAD_REQUEST')
      const raw = await ask(() => ({
        t: 'write',
        cmd: {
          op: 'acl.node.enroll',
          peerId: host.peerId.toString(),
          node: 'evil',
          voter: true,
          accessorId: '00000000-0000-0000-0000-000000000003',
        },
        clientId: 'evil.1',
        seq: 1,
        token: mgmt,
      }))
      expect(raw?.['index']).toBe(0)
      expect((raw?.['result'] as { code?: string })?.code).toBe('PEERMESH_ERR_NOT_FORWARDABLE')
      await m.stop()
    } finally {
      await host.stop()
    }
    // Counted where they were refused (the leader, wherever it was at the time).
    const total = async (reason: string) =>
      (await Promise.all(founders.map((a) => refusedMetric(a.http, reason)))).reduce((x, y) => x + y, 0)
    expect(await total('enroll_denied')).toBeGreaterThanOrEqual(3)
    expect(await total('grant_denied')).toBeGreaterThanOrEqual(2)
    expect(await total('forward_not_forwardable')).toBeGreaterThanOrEqual(1)

    // Over a few autopilot rounds, neither en4 nor the attacker becomes a learner.
    const deadline = Date.now() + 3_000
    while (Date.now() < deadline) {
      const c = await conf()
      expect(c?.servers.map((s) => s.id) ?? []).not.toContain(joinerId)
      expect(c?.servers.map((s) => s.id) ?? []).not.toContain(host.peerId.toString())
      await new Promise((r) => setTimeout(r, 200))
    }
    const listed = (await call(leader.http, 'GET', '/v1/operator/enrollment', { token: mgmt }))
      .json as EnrollmentList
    expect(listed.Enrollments.map((e) => e.Node).sort()).toEqual(['en1', 'en2', 'en3'])
    expect((await call(leader.http, 'GET', '/v1/operator/enrollment')).status).toBe(403)

    // A node token for en4 (not --voter): restarted with it, en4 joins as a learner, never a voter.
    // It also reads agents (a policy beside the node identity), as an operator's agent token may.
    const policy = await call(leader.http, 'PUT', '/v1/acl/policy', {
      token: mgmt,
      body: { Name: 'agent-read', Rules: 'agent_prefix "" { policy = "read" }' },
    })
    expect(policy.status, JSON.stringify(policy.json)).toBe(200)
    const created = await call(leader.http, 'PUT', '/v1/acl/token', {
      token: mgmt,
      body: {
        Description: 'en4 agent',
        NodeIdentities: [{ NodeName: 'en4', Datacenter: 'dc1' }],
        Policies: [{ Name: 'agent-read' }],
      },
    })
    expect(created.status, JSON.stringify(created.json)).toBe(200)
    const { SecretID, AccessorID } = created.json as { SecretID: string; AccessorID: string }
    const tokenFile = join(cluster.dir, 'en4.token')
    writeFileSync(tokenFile, SecretID, { mode: 0o600 })
    await joiner.stop()
    const restarted = cluster.agent({
      name: 'en4',
      initialManagementToken: false, // a plain key holder: no token from the harness
      clusterKeyFile: join(cluster.dir, 'cluster.key'),
      dataDir: joiner.dataDir,
      seeds: [seed],
      extraArgs: ['--config', plain, '--token-file', tokenFile],
    })
    await restarted.start().catch(async (err) => {
      const r = await fetch(`http://${restarted.http}/v1/agent/self`).then(
        async (x) => `${x.status} ${await x.text()}`,
        String,
      )
      console.log('SELF', r)
      console.log(restarted.log.slice(-6000))
      console.log(
        leader.log
          .split('\n')
          .filter((l) => /enroll|autopilot|refused/.test(l))
          .join('\n')
          .slice(-4000),
      )
      throw err
    })
    const joined = await waitFor(
      'en4 a learner',
      async () => {
        const c = await conf()
        const s = c?.servers.find((x) => x.id === joinerId)
        return s !== undefined ? s : undefined
      },
      20_000,
    ).catch(async (err) => {
      console.log(JSON.stringify(await conf()))
      console.log(
        restarted.log
          .split('\n')
          .filter((l) => /raft|enroll/.test(l))
          .join('\n')
          .slice(-5000),
      )
      throw err
    })
    expect(joined.voter).toBe(false)
    const cli = await runCli(['enroll', 'list', '--json', '--http', leader.http, '--token', mgmt])
    expect(cli.code, cli.stderr).toBe(0)
    const viaCli = JSON.parse(cli.stdout) as EnrollmentList
    expect(viaCli.Enrollments.find((e) => e.Node === 'en4')).toMatchObject({
      PeerID: joinerId,
      Voter: false,
      AccessorID,
    })

    // A voter dies: autopilot may not replace it with en4 (not voter-eligible).
    const victim = founders.find((a) => a !== leader)!
    const victimId = first.servers.find((s) => s.node === victim.name)!.id
    await victim.stop('SIGKILL')
    const after = await waitFor(
      'the dead voter removed',
      async () => {
        const c = await conf()
        return c !== undefined && !c.servers.some((s) => s.id === victimId) ? c : undefined
      },
      30_000,
    )
    expect(after.servers.find((s) => s.id === joinerId)?.voter).toBe(false)
    expect(after.servers.filter((s) => s.voter)).toHaveLength(2)

    // Deleting en4's token revokes its enrollment: autopilot removes it from the configuration.
    const del = await call(leader.http, 'DELETE', `/v1/acl/token/${AccessorID}`, { token: mgmt })
    expect(del.status, JSON.stringify(del.json)).toBe(200)
    await waitFor(
      'en4 removed from the configuration',
      async () => {
        const c = await conf()
        return c !== undefined && !c.servers.some((s) => s.id === joinerId) ? true : undefined
      },
      20_000,
    )
    const revoked = (await call(leader.http, 'GET', '/v1/operator/enrollment', { token: mgmt }))
      .json as EnrollmentList
    expect(revoked.Revoked).toContain(joinerId)
    expect(revoked.Enrollments.map((e) => e.Node)).not.toContain('en4')
  }, 180_000)
})
