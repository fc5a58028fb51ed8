import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { InputError } from "../errors.js";
import { type RepoRef, isCommitHash, parseRepoId } from "../io/repo-id.js";

export { type RepoRef, parseRepoId };

/** The environment a cache lookup reads: `process.env` from the command line, anything from a library caller. */
export type Environment = Readonly<Record<string, string | undefined>>;

/**
 * The Hugging Face hub cache folder, found the way `huggingface_hub` finds it: `HF_HUB_CACHE` (or its
 * older name `HUGGINGFACE_HUB_CACHE`), else `HF_HOME/hub`, else `XDG_CACHE_HOME/huggingface/hub`, else
 * `~/.cache/huggingface/hub`. A leading `~` is expanded, as Python's `expanduser` does.
 */
export function hubCacheDir(env: Environment): string {
  const expand = (p: string): string => (p === "~" || p.startsWith("~/") ? path.join(os.homedir(), p.slice(1)) : p);
  const direct = env["HF_HUB_CACHE"] || env["HUGGINGFACE_HUB_CACHE"];
  if (direct) return expand(direct);
  if (env["HF_HOME"]) return path.join(expand(env["HF_HOME"]), "hub");
  const xdg = env["XDG_CACHE_HOME"] || path.join(os.homedir(), ".cache");
  return path.join(expand(xdg), "huggingface", "hub");
}

/** `models--ORG--NAME`, the cache folder of a model repo. */
export function repoFolderName(repo: string): string {
  return `models--${repo.split("/").join("--")}`;
}

/**
 * The snapshot folder of a cached revision. A commit hash names its snapshot folder directly; a branch,
 * tag or `refs/pr/N` is looked up in `refs/` (which holds the commit it pointed to when last downloaded).
 * Nothing is downloaded: a revision not in the cache is an error that says where it looked.
 */
export function cachedSnapshot(ref: RepoRef, cacheDir: string): string {
  const repoDir = path.join(cacheDir, repoFolderName(ref.repo));
  const spec = `${ref.repo}@${ref.revision}`;
  if (!fs.existsSync(repoDir)) {
    throw new InputError(`${spec}: not a local folder, and not in the Hugging Face cache (looked for ${repoDir}); to read it from the Hub, name it hf://${ref.repo}${ref.revision === "main" ? "" : `@${ref.revision}`} (or fetch it first with huggingface-cli download ${ref.repo})`);
  }
  let commit = ref.revision;
  if (!isCommitHash(commit)) {
    const refFile = path.join(repoDir, "refs", ...ref.revision.split("/"));
    let text: string;
    try {
      text = fs.readFileSync(refFile, "utf8");
    } catch {
      throw new InputError(`${spec}: revision ${JSON.stringify(ref.revision)} is not in the Hugging Face cache (no ${refFile})`);
    }
    commit = text.trim();
    if (!isCommitHash(commit)) throw new InputError(`${refFile}: does not hold a commit hash`);
  }
  const snapshot = path.join(repoDir, "snapshots", commit);
  if (!fs.existsSync(snapshot)) {
    throw new InputError(`${spec}: commit ${commit} is not in the Hugging Face cache (no ${snapshot})`);
  }
  return snapshot;
}
