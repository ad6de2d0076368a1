/** The inbound's passive HTTP/1.x framing: statuses of final responses, whatever the chunking of the bytes. */
import { describe, expect, it } from 'vitest'
import { HttpExchangeSniffer } from '../../src/proxy/http-sniffer.ts'

/** Feeds `bytes` in pieces of `size` (the framing must not depend on where chunks end). */
function feed(push: (b: Buffer) => void, text: string, size: number): void {
  const b = Buffer.from(text, 'latin1')
  for (let i = 0; i < b.length; i += size) push(b.subarray(i, i + size))
}

function statuses(requests: string, responses: string, size: number): number[] {
  const seen: number[] = []
  const s = new HttpExchangeSniffer(
    () => 0,
    (status) => seen.push(status),
  )
  feed((b) => s.request(b), requests, size)
  feed((b) => s.response(b), responses, size)
  return seen
}

const req = (method: string, body = '') =>
  `${method} /x HTTP/1.1\r\nHost: a\r\n${body ? `Content-Length: ${body.length}\r\n` : ''}\r\n${body}`

describe('HttpExchangeSniffer', () => {
  const requests = [req('GET'), req('POST', 'hello'), req('HEAD'), req('GET'), req('GET'), req('GET')].join(
    '',
  )
  const responses = [
    'HTTP/1.1 100 Continue\r\n\r\n',
    'HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello',
    'HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nabcde\r\n4\r\n\r\n\r\n\r\n0\r\nTrailer: t\r\n\r\n',
    'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n', // HEAD: no body despite the length
    'HTTP/1.1 204 No Content\r\n\r\n',
    'HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n',
    'HTTP/1.0 503 Busy\r\n\r\nuntil close HTTP/1.1 200 OK\r\n\r\n', // body to the end: nothing after counts
  ].join('')

  it.each([1, 2, 7, 64, 100_000])('counts final responses in order, fed %i bytes at a time', (size) => {
    expect(statuses(requests, responses, size)).toEqual([200, 500, 200, 204, 404, 503])
  })

  it('stops at an upgrade, at a response to nothing, and at what is not HTTP', () => {
    expect(
      statuses(req('GET') + req('GET'), 'HTTP/1.1 101 Switching\r\n\r\nHTTP/1.1 200 OK\r\n\r\n', 3),
    ).toEqual([])
    expect(statuses('', 'HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n', 5)).toEqual([])
    expect(statuses('\x16\x03\x01 binary', 'SSH-2.0-OpenSSH\r\n\r\n', 4)).toEqual([])
  })

  it('gives up on a head over 64 KiB instead of buffering it', () => {
    const s = new HttpExchangeSniffer(
      () => 0,
      () => {},
    )
    s.request(Buffer.from(`GET / HTTP/1.1\r\nX: ${'a'.repeat(70_000)}`))
    s.response(Buffer.from(`HTTP/1.1 200 OK\r\nX: ${'a'.repeat(70_000)}`))
    expect(s.done).toBe(true)
  })

  it('reports when each request began', () => {
    let t = 10
    const seen: [number, number][] = []
    const s = new HttpExchangeSniffer(
      () => t,
      (status, at) => seen.push([status, at]),
    )
    s.request(Buffer.from(req('GET')))
    t = 20
    s.request(Buffer.from(req('GET')))
    s.response(
      Buffer.from(
        'HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 502 Bad\r\nContent-Length: 0\r\n\r\n',
      ),
    )
    expect(seen).toEqual([
      [200, 10],
      [502, 20],
    ])
  })
})
