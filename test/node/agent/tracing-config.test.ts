/**
 * The agent's `tracing` setting (config file) and `--otlp-endpoint` flag: off by default,
 * validated field by field, flags over the file.
 */
import { describe, expect, it } from 'vitest'
import { resolveAgentConfig, validateAgentConfig } from '../../../src/node/agent/config.ts'

const file = (o: object) => validateAgentConfig(o, 'config file x.json')
const flags = (o: object) => validateAgentConfig(o, 'flags')

describe('tracing setting', () => {
  it('is off by default', () => {
    expect(resolveAgentConfig({}, {}, {}).tracing).toBeUndefined()
  })

  it('turns on with an endpoint; the sample ratio defaults to 1', () => {
    expect(
      resolveAgentConfig(file({ tracing: { otlpEndpoint: 'http://127.0.0.1:4318' } }), {}, {}).tracing,
    ).toEqual({
      otlpEndpoint: 'http://127.0.0.1:4318',
      sampleRatio: 1,
    })
  })

  it('--otlp-endpoint wins over the file field by field, keeping its sample ratio', () => {
    const cfg = resolveAgentConfig(
      file({ tracing: { otlpEndpoint: 'http://file:4318', sampleRatio: 0.1 } }),
      flags({ tracing: { otlpEndpoint: 'https://flag.example:4318' } }),
      {},
    )
    expect(cfg.tracing).toEqual({ otlpEndpoint: 'https://flag.example:4318', sampleRatio: 0.1 })
    expect(
      resolveAgentConfig(
        file({ tracing: { sampleRatio: 0 } }),
        flags({ tracing: { otlpEndpoint: 'http://c:4318' } }),
        {},
      ).tracing,
    ).toEqual({ otlpEndpoint: 'http://c:4318', sampleRatio: 0 })
  })

  it('a tracing block without an endpoint is refused, naming the field', () => {
    expect(() => resolveAgentConfig(file({ tracing: { sampleRatio: 0.5 } }), {}, {})).toThrow(
      expect.objectContaining({ code: 'PEERMESH_ERR_INVALID_CONFIG', field: 'tracing.otlpEndpoint' }),
    )
  })

  it.each([
    [{ tracing: { otlpEndpoint: 'ftp://c:21' } }, 'tracing.otlpEndpoint'],
    [{ tracing: { otlpEndpoint: 'http://user:pw@c:4318' } }, 'tracing.otlpEndpoint'],
    [{ tracing: { otlpEndpoint: 'http://c:4318/?k=v' } }, 'tracing.otlpEndpoint'],
    [{ tracing: { otlpEndpoint: '' } }, 'tracing.otlpEndpoint'],
    [{ tracing: { otlpEndpoint: 4318 } }, 'tracing.otlpEndpoint'],
    [{ tracing: { otlpEndpoint: `http://c/${'x'.repeat(3000)}` } }, 'tracing.otlpEndpoint'],
    [{ tracing: { otlpEndpoint: 'http://c:4318', sampleRatio: 1.5 } }, 'tracing.sampleRatio'],
    [{ tracing: { otlpEndpoint: 'http://c:4318', sampleRatio: -1 } }, 'tracing.sampleRatio'],
    [{ tracing: { otlpEndpoint: 'http://c:4318', sampleRatio: '1' } }, 'tracing.sampleRatio'],
    [{ tracing: { otlpEndpoint: 'http://c:4318', headers: { a: 'b' } } }, 'headers'],
    [{ tracing: 'on' }, 'tracing'],
  ])('rejects %j naming the field', (input, field) => {
    expect(() => file(input)).toThrow(expect.objectContaining({ code: 'PEERMESH_ERR_INVALID_CONFIG', field }))
  })

  it('a bad --otlp-endpoint is reported as the flag', () => {
    expect(() => flags({ tracing: { otlpEndpoint: 'not a url' } })).toThrow(
      /^--otlp-endpoint: must be an http\(s\) URL/,
    )
  })
})
