// The compiled entry point (scripts/build.mjs bundles it into dist/peermesh.js). The polyfill is
// imported first so that it runs before any libp2p module is evaluated.
import '../agent/polyfill.ts'
import { main } from './cli.ts'

await main(process.argv)
