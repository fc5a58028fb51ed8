import { InputError } from "../errors.js";
import { type AutomodelSaveOptions, type AutomodelSaveSummary, writeAutomodelSave } from "../synth/automodel-save.js";
import { LocalOutput } from "./local-output.js";
import { OutputFolder } from "./output-folder.js";
import { openSource } from "./sources.js";

export interface SaveRequest extends AutomodelSaveOptions {
  readonly force?: boolean;
  readonly followSymlinks?: boolean;
}

/**
 * Write an HF checkpoint folder as NeMo Automodel's sharded training save into `dst` (the save's `model/`
 * folder), built in a temporary sibling and renamed into place when complete.
 */
export async function synthesizeSave(src: string, dst: string, req: SaveRequest): Promise<AutomodelSaveSummary> {
  const { checkpoint, source } = await openSource(src, req.followSymlinks ? { followSymlinks: true } : {});
  try {
    if (source.folder === undefined) throw new InputError(`${src}: a sharded save is made from a checkpoint folder (with config.json), not a single file`);
    const out = OutputFolder.prepare(dst, { ...(source.localDir !== undefined ? { source: source.localDir } : {}), ...(req.force ? { force: true } : {}) });
    try {
      const summary = await writeAutomodelSave(checkpoint, new LocalOutput(out.tmp, dst), req);
      out.commit();
      return summary;
    } catch (e) {
      throw out.fail(e);
    }
  } finally {
    checkpoint.close();
  }
}
