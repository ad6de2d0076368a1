import { Option } from 'commander'
import { DEFAULT_HTTP } from '../agent/config.ts'

/** `--http`: the agent API a client command talks to (`PEERMESH_HTTP_ADDR` sets the default). */
export function httpOption(): Option {
  return new Option('--http <host:port>', 'address of the agent HTTP API').default(
    process.env['PEERMESH_HTTP_ADDR'] ?? DEFAULT_HTTP,
  )
}
