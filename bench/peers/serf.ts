import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import { connect, type Socket } from 'node:net'
import { Packr, Unpackr } from 'msgpackr'

/**
 * HashiCorp Serf (Debian package `serf`) as the peer system for gossip benchmarks: agents on
 * 127.0.0.1 and a client for Serf's msgpack RPC protocol (handshake, members), so membership is
 * polled over one persistent connection per agent instead of spawning `serf members`.
 */
export function serfAvailable(): boolean {
  return spawnSync('serf', ['version'], { stdio: 'ignore' }).status === 0
}

export interface SerfMember {
  Name: string
  Status: string
}

export class SerfRpc {
  private readonly packr = new Packr({ useRecords: false, mapsAsObjects: true })
  private readonly unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true })
  private buffer = Buffer.alloc(0)
  private seq = 0
  private readonly waiting = new Map<
    number,
    { body: boolean; resolve: (v: unknown) => void; reject: (e: Error) => void }
  >()
  private pendingHeader?: { Seq: number; Error: string }

  private constructor(private readonly socket: Socket) {
    socket.on('data', (d: Buffer) => this.onData(d))
    socket.on('error', (err) => this.failAll(err))
    socket.on('close', () => this.failAll(new Error('serf rpc closed')))
  }

  static async connect(port: number): Promise<SerfRpc> {
    const socket = connect(port, '127.0.0.1')
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve)
      socket.once('error', reject)
    })
    socket.setNoDelay(true)
    const rpc = new SerfRpc(socket)
    await rpc.call('handshake', { Version: 1 }, false)
    return rpc
  }

  async members(): Promise<SerfMember[]> {
    const body = (await this.call('members', undefined, true)) as { Members: SerfMember[] }
    return body.Members
  }

  close(): void {
    this.socket.destroy()
  }

  private call(command: string, body: unknown, expectBody: boolean): Promise<unknown> {
    const seq = this.seq++
    const parts = [this.packr.pack({ Command: command, Seq: seq })]
    if (body !== undefined) parts.push(this.packr.pack(body))
    return new Promise((resolve, reject) => {
      this.waiting.set(seq, { body: expectBody, resolve, reject })
      this.socket.write(Buffer.concat(parts))
    })
  }

  private onData(d: Buffer): void {
    this.buffer = Buffer.concat([this.buffer, d])
    for (;;) {
      let value: unknown
      let used = 0
      try {
        // Decode one value; msgpackr throws on an incomplete buffer.
        const values: unknown[] = []
        this.unpackr.unpackMultiple(this.buffer, (v: unknown, _start?: number, end?: number) => {
          values.push(v)
          used = end ?? this.buffer.length
          return false
        })
        if (values.length === 0) return
        value = values[0]
      } catch {
        return
      }
      this.buffer = this.buffer.subarray(used)
      if (this.pendingHeader === undefined) {
        const header = value as { Seq: number; Error: string }
        const w = this.waiting.get(header.Seq)
        if (w === undefined) continue
        if (header.Error) {
          this.waiting.delete(header.Seq)
          w.reject(new Error(header.Error))
        } else if (w.body) {
          this.pendingHeader = header
        } else {
          this.waiting.delete(header.Seq)
          w.resolve(undefined)
        }
      } else {
        const w = this.waiting.get(this.pendingHeader.Seq)
        this.waiting.delete(this.pendingHeader.Seq)
        this.pendingHeader = undefined
        w?.resolve(value)
      }
    }
  }

  private failAll(err: Error): void {
    for (const w of this.waiting.values()) w.reject(err)
    this.waiting.clear()
  }
}

export interface SerfAgent {
  name: string
  bindPort: number
  rpcPort: number
  child: ChildProcess
  rpc?: SerfRpc
}

/** Starts one serf agent with the given profile, joined to `join` (a bind address) if given. */
export function startSerf(
  name: string,
  bindPort: number,
  rpcPort: number,
  profile: string,
  join?: string,
): SerfAgent {
  const args = [
    'agent',
    `-node=${name}`,
    `-bind=127.0.0.1:${bindPort}`,
    `-advertise=127.0.0.1:${bindPort}`,
    `-rpc-addr=127.0.0.1:${rpcPort}`,
    `-profile=${profile}`,
    '-log-level=err',
  ]
  if (join !== undefined) args.push(`-join=${join}`, '-replay=false')
  const child = spawn('serf', args, { stdio: ['ignore', 'ignore', 'ignore'] })
  return { name, bindPort, rpcPort, child }
}
