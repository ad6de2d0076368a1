import { Option } from 'commander'
import { DEFAULT_HTTP } from '../agent/config-constants.ts'

/** `--http`: the agent API a client command talks to (`PEERMESH_HTTP_ADDR` sets the default). */
export function httpOption(): Option {
  return new Option('--http <host:port>', 'address of the agent HTTP API').default(
    process.env['PEERMESH_HTTP_ADDR'] ?? DEFAULT_HTTP,
  )
}

/** `--token`: the ACL token (SecretID) to send (default: `$PEERMESH_HTTP_TOKEN`, `$CONSUL_HTTP_TOKEN`). */
export function tokenOption(): Option {
  return new Option(
    '--token <secret>',
    'ACL token (SecretID) to send; default: $PEERMESH_HTTP_TOKEN, $CONSUL_HTTP_TOKEN',
  )
}

/** `--token-file`: a file holding the ACL token to send. */
export function tokenFileOption(): Option {
  return new Option('--token-file <file>', 'file holding the ACL token to send')
}
