#!/usr/bin/env node
// Entry point: runs the TypeScript sources through tsx, so `npx peermesh` works right after
// `npm ci` with no build step. The polyfill must load before any libp2p module.
import { register } from 'tsx/esm/api'

register()
await import('../src/node/agent/polyfill.ts')
const { main } = await import('../src/node/cli/cli.ts')
await main(process.argv)
