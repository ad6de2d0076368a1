import { StreamState, YamuxStream } from '@chainsafe/libp2p-yamux/stream'

/**
 * Window updates as Go's yamux (hashicorp/yamux `stream.go`, `sendWindowUpdate`) sends them: only
 * once half of the receive window is used up, or when a SYN/ACK flag must go out. js yamux sends
 * one after every data frame it receives, so each small message (a Raft heartbeat, its answer)
 * cost a second frame back, with its own noise encryption, private-network cipher and socket
 * write: half of an idle agent's stream traffic. The sender's window still never runs out while
 * the receiver reads: it gets the consumed half back as one update. Both behaviours are yamux as
 * specified, so peers running either interoperate.
 */

/** The fields of a YamuxStream the check reads (private in its typings). */
interface WindowFields {
  state: StreamState
  recvWindow: number
  recvWindowCapacity: number
}

/**
 * Whether a window update can wait: no flag to send (the stream is established) and less than
 * half of the receive window consumed.
 */
export function windowUpdateCanWait(s: WindowFields): boolean {
  if (s.state === StreamState.Init || s.state === StreamState.SYNReceived) return false
  if (s.state === StreamState.Paused) return false // the original only moves its epoch then
  return s.recvWindow - s.recvWindowCapacity < s.recvWindow / 2
}

const INSTALLED = Symbol.for('peermesh.yamuxWindowUpdateThreshold')

/** Installs the threshold on every yamux stream of this process (once; later calls do nothing). */
export function installYamuxWindowThreshold(): void {
  const proto = YamuxStream.prototype as unknown as Record<PropertyKey, unknown> & {
    sendWindowUpdate(this: YamuxStream): void
  }
  if (proto[INSTALLED] === true) return
  const original = proto.sendWindowUpdate
  proto.sendWindowUpdate = function (this: YamuxStream): void {
    if (windowUpdateCanWait(this as unknown as WindowFields)) return
    original.call(this)
  }
  proto[INSTALLED] = true
}
