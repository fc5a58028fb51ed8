import type { SourceOptions } from "../node/sources.js";

/**
 * How the command line opens the checkpoints it is given: the environment is the process's, so repo ids
 * are looked up in the Hugging Face cache that `HF_HUB_CACHE` / `HF_HOME` / `XDG_CACHE_HOME` name, as
 * `huggingface_hub` does.
 */
export function sourceOptions(flags: { followSymlinks?: boolean }): SourceOptions {
  return { env: process.env, ...(flags.followSymlinks ? { followSymlinks: true } : {}) };
}

export const SOURCE_HELP = "checkpoint folder, Hugging Face cache snapshot, or repo id ORG/NAME[@REV] in the local cache";
