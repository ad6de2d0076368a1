import { PeermeshError } from '../../common/errors.ts'

/** The web UI's files are not where the agent looked for them (a broken install). */
export class UiAssetsMissingError extends PeermeshError {
  static override readonly code = 'PEERMESH_ERR_UI_ASSETS_MISSING'
}
