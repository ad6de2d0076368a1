/**
 * What the serving side of multiplexed requests tells a peer when a handler throws: our own coded
 * errors go back as `<code>: <message>`, anything else as `internal error` (its message, which may
 * name files, hosts or library internals, stays in the local debug log); `busy` is unchanged.
 */
import { Writable } from 'node:stream'
import pino from 'pino'
import { describe, expect, it } from 'vitest'
import { PeermeshError } from '../../../src/common/errors.ts'
import {
  encodeMuxFrame,
  FrameDecoder,
  MUX_ERROR,
  MUX_HEADER_BYTES,
  MUX_REPLY,
  MUX_REQUEST,
  parseMuxHeader,
} from '../../../src/node/transport/frames.ts'
import { MuxServer, type MuxRequestHandler } from '../../../src/node/transport/mux-server.ts'
import { NotLeaderError } from '../../../src/raft/errors.ts'

class ShelfEmptyError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_TEST_SHELF_EMPTY'
}

interface Sent {
  id: number
  kind: number
  text: string
}

/** A MuxServer serving `handler`, the frames it writes (decoded) and its debug log lines. */
function serverWith(handler: MuxRequestHandler, maxConcurrent = 4) {
  const sent: Sent[] = []
  const lines: Record<string, unknown>[] = []
  const decoder = new FrameDecoder(1 << 20)
  const log = pino(
    { level: 'debug' },
    new Writable({
      write(chunk: Buffer, _enc, done) {
        lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>)
        done()
      },
    }),
  )
  const server = new MuxServer({
    from: 'peer-a',
    maxConcurrent,
    handler: () => handler,
    write: (frame) => {
      for (const f of decoder.push(frame)) {
        const head = parseMuxHeader(f)!
        sent.push({ ...head, text: Buffer.from(f.subarray(MUX_HEADER_BYTES)).toString() })
      }
    },
    onBadFrame: () => {},
    log,
  })
  /** Sends request `id` and resolves with what came back for it. */
  const ask = async (id: number, body = 'x'): Promise<Sent> => {
    const frames = new FrameDecoder(1 << 20).push(encodeMuxFrame(id, MUX_REQUEST, Buffer.from(body)))
    server.receive(frames)
    for (let i = 0; i < 100; i++) {
      const got = sent.find((s) => s.id === id)
      if (got !== undefined) return got
      await new Promise((r) => setTimeout(r, 1))
    }
    throw new Error(`no answer to request ${id}`)
  }
  return { server, sent, lines, ask }
}

describe('MuxServer error replies', () => {
  it('a handler that throws an error of the OS or a library: the peer gets "internal error", the log the message', async () => {
    const secret = '/secret/path ENOENT'
    const { ask, lines } = serverWith(async (_from, bytes) => {
      const what = Buffer.from(bytes).toString()
      if (what === 'plain') throw new Error(secret)
      if (what === 'errno')
        throw Object.assign(new Error(`ENOENT: no such file or directory, open '${secret}'`), {
          code: 'ENOENT',
          path: secret,
        })
      if (what === 'type') throw new TypeError(`Cannot read properties of undefined (reading '${secret}')`)
      if (what === 'string') throw secret
      // Our base class without a code of its own is no refusal meant for a caller either.
      throw new PeermeshError(secret)
    })
    for (const [id, what] of ['plain', 'errno', 'type', 'string', 'base'].entries()) {
      const r = await ask(id + 1, what)
      expect(r.kind, what).toBe(MUX_ERROR)
      expect(r.text, what).toBe('internal error')
      expect(r.text, what).not.toContain('secret')
    }
    const failed = lines.filter((l) => l['msg'] === 'request failed')
    expect(failed).toHaveLength(5)
    expect(failed.every((l) => l['level'] === 20 && l['peer'] === 'peer-a')).toBe(true)
    expect(failed.every((l) => String(l['err']).includes(secret))).toBe(true)
  })

  it('a handler that throws one of our coded errors: the peer gets its code and message', async () => {
    const { ask } = serverWith(async (_from, bytes) => {
      const what = Buffer.from(bytes).toString()
      if (what === 'not-leader') throw new NotLeaderError('peer-b')
      if (what === 'long') throw new ShelfEmptyError('y'.repeat(10_000))
      throw new ShelfEmptyError('no more widgets')
    })
    const a = await ask(1, 'coded')
    expect(a).toEqual({ id: 1, kind: MUX_ERROR, text: 'PEERMESH_ERR_TEST_SHELF_EMPTY: no more widgets' })
    expect((await ask(2, 'not-leader')).text).toBe(
      'PEERMESH_ERR_NOT_LEADER: not the leader; leader is peer-b',
    )
    const long = await ask(3, 'long')
    expect(long.text.startsWith('PEERMESH_ERR_TEST_SHELF_EMPTY: yyy')).toBe(true)
    expect(long.text.length).toBeLessThan(600)
  })

  it('replies, and refuses "busy" over the concurrency limit, as before', async () => {
    let release = (): void => {}
    const held = new Promise<void>((r) => {
      release = r
    })
    const { ask, sent } = serverWith(async (_from, bytes) => {
      if (Buffer.from(bytes).toString() === 'hold') await held
      return Buffer.from(`echo:${Buffer.from(bytes).toString()}`)
    }, 1)
    const first = ask(1, 'hold')
    expect(await ask(2, 'second')).toEqual({ id: 2, kind: MUX_ERROR, text: 'busy' })
    release()
    expect(await first).toEqual({ id: 1, kind: MUX_REPLY, text: 'echo:hold' })
    expect(sent).toHaveLength(2)
  })
})
