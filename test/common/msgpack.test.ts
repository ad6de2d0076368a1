import { Packr } from 'msgpackr'
import { describe, expect, it } from 'vitest'
import { MsgpackDecodeError, msgpackProblem, pack, unpack, unpackRecord } from '../../src/common/msgpack.ts'
import { JSON_VALUE_LIMITS, plainValueProblem } from '../../src/common/plain-value.ts'

// What a hostile peer can produce with msgpackr's defaults: structured-clone references and
// extension types that decode into object graphs.
const hostile = new Packr({ structuredClone: true, useRecords: false, moreTypes: true })

describe('msgpack decoding accepts data, not object graphs', () => {
  it('round-trips plain data, bytes included', () => {
    const v = { a: [1, -2, 3.5, 'x', null, true], b: new Uint8Array([1, 2, 3]), c: { d: 2 ** 40 } }
    const back = unpack(pack(v)) as typeof v
    expect(back.a).toEqual(v.a)
    expect(new Uint8Array(back.b)).toEqual(v.b)
    expect(back.c.d).toBe(2 ** 40)
  })

  it('refuses a cyclic array built with structured-clone references', () => {
    const cyclic: unknown[] = [1]
    cyclic.push(cyclic)
    const bytes = hostile.pack({ op: 'config.set', value: { x: cyclic } })
    expect(msgpackProblem(bytes)).toMatch(/extension type/)
    expect(() => unpack(bytes)).toThrow(MsgpackDecodeError)
    expect(unpackRecord(bytes)).toBeUndefined()
  })

  it.each([
    ['Set', new Set([1, 2])],
    ['Date', new Date(0)],
    ['RegExp', /a+/],
    ['Error', new Error('boom')],
    ['BigInt', 2n ** 70n],
    ['undefined', undefined],
    ['Float64Array', new Float64Array([1])],
  ])('refuses the %s extension', (_name, value) => {
    const bytes = hostile.pack({ value })
    expect(msgpackProblem(bytes)).toMatch(/extension type/)
    expect(unpackRecord(bytes)).toBeUndefined()
  })

  it('refuses nesting deeper than the limit without recursing', () => {
    // 100,000 nested one-element arrays: 0x91 repeated, then a nil.
    const deep = new Uint8Array(100_001).fill(0x91)
    deep[100_000] = 0xc0
    expect(msgpackProblem(deep)).toMatch(/nested deeper than 64/)
    const ok = new Uint8Array(65).fill(0x91)
    ok[64] = 0xc0
    expect(msgpackProblem(ok)).toBeUndefined()
  })

  it('refuses truncated input, trailing bytes, counts beyond the input and non-string keys', () => {
    const good = pack({ a: 'hello' })
    expect(msgpackProblem(good.subarray(0, good.length - 1))).toBe('truncated')
    expect(msgpackProblem(new Uint8Array([...good, 0xc0]))).toMatch(/trailing/)
    // array32 claiming 2^32-1 items in 5 bytes
    expect(msgpackProblem(new Uint8Array([0xdd, 0xff, 0xff, 0xff, 0xff]))).toBe('truncated')
    // str32 claiming 4 GiB
    expect(msgpackProblem(new Uint8Array([0xdb, 0xff, 0xff, 0xff, 0xff]))).toBe('truncated')
    // {1: 2}
    expect(msgpackProblem(new Uint8Array([0x81, 0x01, 0x02]))).toBe('map key is not a string')
    expect(msgpackProblem(new Uint8Array([0xc1]))).toMatch(/reserved/)
    expect(msgpackProblem(new Uint8Array([]))).toBe('truncated')
  })

  it('never throws anything but its own error on random bytes', () => {
    let seed = 7
    const next = () => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff
      return seed
    }
    for (let i = 0; i < 20_000; i++) {
      const len = next() % 40
      const b = new Uint8Array(len)
      for (let j = 0; j < len; j++) b[j] = next() & 0xff
      try {
        const v = unpack(b)
        expect(plainValueProblem(v, { ...JSON_VALUE_LIMITS, allowBytes: true })).toBeUndefined()
      } catch (err) {
        expect(err).toBeInstanceOf(MsgpackDecodeError)
      }
    }
  })
})

describe('plainValueProblem', () => {
  it('accepts JSON data and names the path of what it refuses', () => {
    expect(plainValueProblem({ a: [1, 'b', null, { c: false }] }, JSON_VALUE_LIMITS)).toBeUndefined()
    expect(plainValueProblem({ a: [1, Number.NaN] }, JSON_VALUE_LIMITS)).toBe('$.a[1]: not a finite number')
    expect(plainValueProblem({ a: new Set() }, JSON_VALUE_LIMITS)).toBe('$.a: not a plain object')
    expect(plainValueProblem({ a: new Date() }, JSON_VALUE_LIMITS)).toBe('$.a: not a plain object')
    expect(plainValueProblem({ a: () => 1 }, JSON_VALUE_LIMITS)).toBe('$.a: a function is not data')
    expect(plainValueProblem(JSON.parse('{"__proto__":{"x":1}}'), JSON_VALUE_LIMITS)).toMatch(/__proto__/)
    expect(plainValueProblem({ b: new Uint8Array(1) }, JSON_VALUE_LIMITS)).toMatch(/binary/)
  })

  it('refuses cycles (as too many values) and deep nesting without recursing', () => {
    const cyclic: unknown[] = []
    cyclic.push(cyclic)
    expect(plainValueProblem(cyclic, JSON_VALUE_LIMITS)).toMatch(/nested deeper|more than/)
    let deep: unknown = 1
    for (let i = 0; i < 100_000; i++) deep = [deep]
    expect(plainValueProblem(deep, JSON_VALUE_LIMITS)).toMatch(/nested deeper than 32/)
    const wide = { a: new Array(200_000).fill(0) }
    expect(plainValueProblem(wide, JSON_VALUE_LIMITS)).toMatch(/more than 100000 values/)
  })
})
