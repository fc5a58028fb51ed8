import type { SourceOptions } from "../node/sources.js";
import { warn } from "./output.js";

/**
 * How the command line opens the checkpoints it is given: the environment is the process's, so repo ids
 * are looked up in the Hugging Face cache that `HF_HUB_CACHE` / `HF_HOME` / `XDG_CACHE_HOME` name, as
 * `huggingface_hub` does, and `hf://` sources go to `HF_ENDPOINT` (default the public Hub) with
 * `HF_TOKEN`. What is worth knowing about a source (an HTTP server without file identities) is printed
 * on stderr, unless the command is to print nothing but errors or JSON.
 */
export function sourceOptions(flags: { followSymlinks?: boolean; quiet?: boolean; json?: boolean }): SourceOptions {
  const endpoint = process.env["HF_ENDPOINT"]?.trim();
  const token = process.env["HF_TOKEN"]?.trim();
  return {
    env: process.env,
    ...(flags.followSymlinks ? { followSymlinks: true } : {}),
    http: { ...(endpoint ? { endpoint } : {}), ...(token ? { token } : {}) },
    ...(flags.quiet || flags.json ? {} : { onNote: warn }),
  };
}

export const SOURCE_HELP = "checkpoint folder, http(s):// URL of one, hf://ORG/NAME[@REV] on the Hub, or repo id ORG/NAME[@REV] in the local cache";
