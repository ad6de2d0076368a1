export { loadUiAssets, staticDir, UI_FILES, type UiAsset } from './assets.ts'
export { UiAssetsMissingError } from './errors.ts'
export { UiModule } from './ui-module.ts'
export { acceptsGzip, registerUiRoutes, UI_CSP } from './ui-routes.ts'
