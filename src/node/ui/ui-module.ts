import type { AgentContext, AgentModule } from '../agent/agent.ts'
import { loadUiAssets, type UiAsset } from './assets.ts'
import { registerUiRoutes } from './ui-routes.ts'

/**
 * The web UI at `/ui` on the agent's own HTTP API (no separate server). Its files are read when
 * the module is built, so a broken install fails the agent's start rather than the first page
 * load; the page itself only calls the agent's public API.
 */
export class UiModule implements AgentModule {
  readonly name = 'ui'
  private readonly assets: ReadonlyMap<string, UiAsset>

  constructor(init: { assets?: ReadonlyMap<string, UiAsset> } = {}) {
    this.assets = init.assets ?? loadUiAssets()
  }

  start(ctx: Pick<AgentContext, 'http'>): void {
    registerUiRoutes(ctx.http, this.assets)
  }

  stop(): void {
    // Routes go away with the HTTP API.
  }
}
