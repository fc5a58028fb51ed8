import type { Folder } from "../io/folder.js";
import { Checkpoint as CoreCheckpoint } from "../safetensors/checkpoint.js";
import { type SourceOptions, openSource } from "./sources.js";

/**
 * The core's `Checkpoint`, opened also from a path as the command line names it: a folder, a Hugging
 * Face cache snapshot or repo id, or a bare `.safetensors` file.
 */
export class Checkpoint extends CoreCheckpoint {
  static override async open(location: string | Folder, options: SourceOptions & { signal?: AbortSignal } = {}): Promise<CoreCheckpoint> {
    if (typeof location !== "string") return CoreCheckpoint.open(location, options);
    return (await openSource(location, options)).checkpoint;
  }
}
