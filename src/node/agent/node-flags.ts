/**
 * Whether node was started with V8 flags of the user's own matching `pattern` (in node's own
 * arguments or `NODE_OPTIONS`): the agent then leaves those settings alone.
 */
export function userSetsNodeFlags(
  pattern: RegExp,
  execArgv: readonly string[] = process.execArgv,
  nodeOptions: string = process.env['NODE_OPTIONS'] ?? '',
): boolean {
  return execArgv.some((s) => pattern.test(s)) || pattern.test(nodeOptions)
}
