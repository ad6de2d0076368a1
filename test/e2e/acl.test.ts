import { randomUUID } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { multiaddr } from '@multiformats/multiaddr'
import pino from 'pino'
import { afterAll, describe, expect, it } from 'vitest'
import { pack, unpackRecord } from '../../src/common/msgpack.ts'
import { identityFromPrivateKey } from '../../src/identity/keys/node-key.ts'
import { RAFT_PROTOCOL, RAFT_RPC_PROTOCOL } from '../../src/node/raft/raft-module.ts'
import { createHost } from '../../src/node/transport/host.ts'
import { StreamMessenger } from '../../src/node/transport/stream-messenger.ts'
import { runCli, TestCluster, waitFor, apiCall as call, errorOf } from './harness.ts'
import { describeAgents, startRaftCluster } from './raft-helpers.ts'

describe('ACLs end to end (3 agents, ACLs on, an initial management token)', () => {
  const cluster = new TestCluster()
  afterAll(() => cluster.close())

  it('anonymous reads work and every write, secret and operator action needs a token that grants it; a forwarded write without one is refused by the leader', async () => {
    const mgmt = randomUUID()
    const config = join(cluster.dir, 'acl.json')
    writeFileSync(config, JSON.stringify({ acl: { enabled: true, initialManagementToken: mgmt } }), {
      mode: 0o600,
    })
    const agents = await startRaftCluster(cluster, 3, { prefix: 'acl', extraArgs: ['--config', config] })
    // The first leader applies the shared initial management token; then it works everywhere.
    const st = await waitFor(
      'the management token accepted on every agent, and a leader',
      async () => {
        const all = await Promise.all(
          agents.map((a) => call(a, 'GET', '/v1/operator/raft/status', { token: mgmt })),
        )
        if (!all.every((r) => r.status === 200)) return undefined
        const leader = (all[0]!.json as { leader: string }).leader
        return leader !== '' && all.every((r) => (r.json as { leader: string }).leader === leader)
          ? (all.map((r) => r.json) as { id: string; leader: string }[])
          : undefined
      },
      30_000,
    ).catch(async (err: unknown) => {
      await describeAgents(agents)
      throw err
    })
    const follower = agents[st.findIndex((s) => s.id !== s.leader)]!
    const leaderAgent = agents[st.findIndex((s) => s.id === s.leader)]!

    // Anonymous: reads of members, catalog and agent self; nothing else.
    expect((await call(follower, 'GET', '/v1/agent/members')).status).toBe(200)
    expect(((await call(follower, 'GET', '/v1/agent/members')).json as unknown[]).length).toBe(3)
    expect((await call(follower, 'GET', '/v1/catalog/services')).status).toBe(200)
    expect((await call(follower, 'GET', '/v1/agent/self')).status).toBe(200)
    const denied: [string, string, unknown, RegExp][] = [
      ['PUT', '/v1/connect/intentions/exact?source=*&destination=*', { action: 'allow' }, /intention:write/],
      ['PUT', '/v1/connect/intentions/default', { action: 'allow' }, /mesh:write/],
      ['PUT', '/v1/config', { kind: 'kv', name: 'k', value: 'v' }, /key:write/],
      ['POST', '/v1/connect/ca/rotate', {}, /operator:write/],
      ['GET', '/v1/operator/raft/configuration', undefined, /operator:read/],
      ['PUT', '/v1/agent/service/register', { name: 'db', port: 5432 }, /service:write/],
      ['GET', '/v1/agent/connect/ca/leaf/db', undefined, /service:write/],
      ['GET', '/v1/acl/tokens', undefined, /acl:read/],
    ]
    for (const [method, path, body, why] of denied) {
      const r = await call(follower, method, path, body === undefined ? {} : { body })
      expect(r.status, `${method} ${path}`).toBe(403)
      expect(errorOf(r)).toMatch(why)
    }
    // An unknown token is refused, not taken as anonymous.
    const unknown = await call(follower, 'GET', '/v1/agent/members', { token: randomUUID() })
    expect(unknown.status).toBe(403)
    expect(errorOf(unknown)).toBe('ACL not found')

    // A token for `web` (service and intentions write on web) writes only what it grants, through a
    // non-leader (the leader checks the forwarded token again).
    const policy = await call(follower, 'PUT', '/v1/acl/policy', {
      token: mgmt,
      body: {
        Name: 'web-owner',
        Rules: JSON.stringify({ service: { web: { policy: 'write', intentions: 'write' } } }),
      },
    })
    expect(policy.status, errorOf(policy)).toBe(200)
    const created = await call(follower, 'PUT', '/v1/acl/token', {
      token: mgmt,
      body: { Description: 'web', Policies: [{ Name: 'web-owner' }] },
    })
    expect(created.status, errorOf(created)).toBe(200)
    const web = (created.json as { SecretID: string; AccessorID: string }).SecretID
    const ok = await call(follower, 'PUT', '/v1/connect/intentions/exact?source=api&destination=web', {
      token: web,
      body: { action: 'allow' },
    })
    expect(ok.status, errorOf(ok)).toBe(200)
    const no = await call(follower, 'PUT', '/v1/connect/intentions/exact?source=web&destination=api', {
      token: web,
      body: { action: 'allow' },
    })
    expect(no.status).toBe(403)
    expect(errorOf(no)).toMatch(/lacks permission 'intention:write' on "api"/)
    // The CLI sends --token.
    const cli = await runCli([
      'intention',
      'create',
      'billing',
      'web',
      'deny',
      '--http',
      follower.http,
      '--token',
      web,
    ])
    expect(cli.code, cli.stderr).toBe(0)
    const self = await call(follower, 'GET', '/v1/acl/token/self', { token: web })
    expect((self.json as { Description: string }).Description).toBe('web')

    // The attacker's side: a host with the cluster key but no token forwards raw writes to the
    // leader over the write-forwarding RPC. Each is refused; nothing changes anywhere.
    const host = await createHost({
      identity: identityFromPrivateKey(await generateKeyPair('Ed25519')),
      clusterKey: (await import('node:fs')).readFileSync(join(cluster.dir, 'cluster.key')),
      listen: ['/ip4/127.0.0.1/tcp/0'],
    })
    await host.start()
    const leaderId = st.find((s) => s.id === s.leader)!.id
    try {
      await host.dial(multiaddr(`/ip4/127.0.0.1/tcp/${leaderAgent.p2pPort}/p2p/${leaderId}`))
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
      const attacks = [
        { op: 'intention.upsert', source: '*', destination: '*', action: 'allow' },
        { op: 'config.set', kind: 'kv', name: 'connect.default-intention-action', value: { value: 'allow' } },
        {
          op: 'acl.token.upsert',
          mode: 'create',
          accessorId: randomUUID(),
          secretId: randomUUID(),
          policies: [{ name: 'global-management' }],
          createTime: 't',
        },
      ]
      for (const [i, cmd] of attacks.entries()) {
        const reply = unpackRecord(
          await m.request(leaderId, pack({ t: 'write', cmd, clientId: `evil.${i}`, seq: 1 }), {
            signal: AbortSignal.timeout(10_000),
          }),
        )
        expect(reply?.['index'], JSON.stringify(cmd)).toBe(0)
        expect((reply?.['result'] as { code?: string })?.code).toBe('PEERMESH_ERR_PERMISSION_DENIED')
      }
      await m.stop()
    } finally {
      await host.stop()
    }
    for (const a of agents) {
      const list = (await call(a, 'GET', '/v1/connect/intentions', { token: mgmt })).json as {
        SourceName: string
      }[]
      expect(list.map((i) => i.SourceName).sort()).toEqual(['api', 'billing'])
      const def = await call(a, 'GET', '/v1/connect/intentions/default', { token: mgmt })
      expect((def.json as { action: string }).action).toBe('deny')
      const tokens = (await call(a, 'GET', '/v1/acl/tokens', { token: mgmt })).json as unknown[]
      expect(tokens).toHaveLength(3) // anonymous, initial management, web
    }
  })
})
