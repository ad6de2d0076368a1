import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { BIN, freePort, waitFor } from './harness.ts'
import { makeTempDir, removeTempDir } from '../temp-dir.ts'

/** Whether a process with this pid exists. */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

describe('an agent started through npx', () => {
  const dir = makeTempDir('npx')
  afterAll(() => removeTempDir(dir))

  it('stops gracefully when the npm wrapper above it is killed, instead of running on orphaned', async () => {
    const http = `127.0.0.1:${await freePort()}`
    const p2p = await freePort()
    const pidFile = join(dir, 'agent.pid')
    // What `npx peermesh agent` runs: npm exec -> sh -c -> node bin/peermesh.js, with
    // npm_command=exec in the environment. The shell stands in for the wrapper here.
    const agentCmd = [
      process.execPath,
      BIN,
      'agent',
      '--name',
      'npx1',
      '--data-dir',
      join(dir, 'data'),
      '--listen',
      `/ip4/127.0.0.1/tcp/${p2p}`,
      '--http',
      http,
      '--dns',
      '127.0.0.1:0',
      '--bootstrap',
      '--log-level',
      'info',
    ]
      .map((a) => `'${a}'`)
      .join(' ')
    const wrapper = spawn(
      'sh',
      ['-c', `${agentCmd} 2>"${join(dir, 'agent.log')}" & echo $! > "${pidFile}"; wait`],
      {
        env: { ...process.env, npm_command: 'exec' },
        stdio: 'ignore',
      },
    )
    try {
      await waitFor('the agent API', async () => {
        const res = await fetch(`http://${http}/v1/agent/self`, { signal: AbortSignal.timeout(2000) })
        return res.ok ? true : undefined
      })
      const agentPid = Number(readFileSync(pidFile, 'utf8').trim())
      expect(alive(agentPid)).toBe(true)
      wrapper.kill('SIGKILL')
      await waitFor('the orphaned agent to stop', async () => (alive(agentPid) ? undefined : true), 10_000)
      expect(readFileSync(join(dir, 'agent.log'), 'utf8')).toMatch(/"signal":"SIGTERM","msg":"stopping"/)
    } finally {
      wrapper.kill('SIGKILL')
    }
  })
})
