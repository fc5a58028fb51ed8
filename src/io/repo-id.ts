/**
 * How a Hugging Face model repo is named: `ORG/NAME`, optionally `@REVISION`. Shared by the local cache
 * lookup (Node) and `hf://` sources (the core), so both accept exactly the same names.
 */
export interface RepoRef {
  /** `ORG/NAME` */
  readonly repo: string;
  /** A branch, tag, `refs/pr/N` or commit hash; `main` when the user gave none. */
  readonly revision: string;
}

/** Whether a revision is a full commit hash (which names a cache snapshot, and a Hub revision, directly). */
export function isCommitHash(revision: string): boolean {
  return /^[0-9a-f]{40}$/.test(revision);
}

/** A repo id segment as the Hub allows them: letters, digits, `-`, `_`, `.`, not starting with `-` or `.`. */
const SEGMENT = /^[A-Za-z0-9_][A-Za-z0-9_.-]*$/;

/** `ORG/NAME` or `ORG/NAME@REVISION`, or undefined when the text is not a repo id. */
export function parseRepoId(spec: string): RepoRef | undefined {
  const at = spec.indexOf("@");
  const repo = at < 0 ? spec : spec.slice(0, at);
  const revision = at < 0 ? "main" : spec.slice(at + 1);
  const parts = repo.split("/");
  if (parts.length !== 2 || !parts.every((p) => SEGMENT.test(p) && !p.includes(".."))) return undefined;
  if (revision.length === 0 || revision.includes("..") || revision.startsWith("/") || /\s/.test(revision)) return undefined;
  return { repo, revision };
}
