import { FormatError, InputError, throwIfAborted } from "../errors.js";
import { type ByteSource, MemorySource } from "./byte-source.js";

/** What a folder holds under a name: a file of some size, a sub-folder, or something that is neither. */
export type EntryKind = "file" | "folder" | "other";

export interface FolderEntry {
  readonly name: string;
  readonly kind: EntryKind;
  /** For "other": what it is, for messages ("a FIFO", "a socket"). */
  readonly detail?: string;
  /**
   * For a folder that storage can reach by more than one name (a symlinked folder on a local disk): one
   * identity for all of them, so a walk visits it once and a link to an ancestor cannot make it loop.
   */
  readonly id?: string;
}

export interface EntryStat {
  readonly kind: EntryKind;
  readonly size: number;
  readonly detail?: string;
}

/**
 * A checkpoint folder wherever it lives: on a local disk, behind an HTTP URL, on the Hugging Face Hub, in
 * memory. Names inside it are relative, `/`-separated, and never escape it; each implementation keeps its
 * own storage's rules (symlinks and FIFOs for a local disk, redirects and ETags for HTTP) to itself, so the
 * format code above it has none. A `signal` cancels what a folder has to ask of its storage (a remote
 * folder's requests, and its waits between retries): the call rejects with an `AbortError`.
 */
export interface Folder {
  /** How the folder is named in messages: a path or a URL. */
  readonly name: string;
  /** How a file inside is named in messages. */
  describe(rel: string): string;
  /**
   * The entries directly inside `rel` ("" for the folder itself), sorted by name; undefined when this kind
   * of folder cannot be listed (a plain HTTP URL).
   */
  list(rel: string, signal?: AbortSignal): Promise<readonly FolderEntry[] | undefined>;
  /** What is at `rel`, or undefined when nothing is. */
  stat(rel: string, signal?: AbortSignal): Promise<EntryStat | undefined>;
  /** Open a file for positional reads. */
  open(rel: string, signal?: AbortSignal): Promise<ByteSource>;
}

/** Refuse a folder-relative name that is empty, absolute, or climbs out with `..`. */
export function checkRelative(rel: string, where: string, what = "file"): string {
  if (rel.length === 0 || rel.includes("\0")) throw new FormatError(where, `names an invalid ${what} ${JSON.stringify(rel)}`);
  if (rel.startsWith("/") || /^[A-Za-z]:[\\/]/.test(rel) || rel.startsWith("\\")) {
    throw new FormatError(where, `names ${what} ${JSON.stringify(rel)} by absolute path; ${what}s must lie inside the folder`);
  }
  const parts: string[] = [];
  for (const part of rel.split(/[\\/]/)) {
    if (part === "" || part === ".") continue;
    if (part === "..") throw new FormatError(where, `names ${what} ${JSON.stringify(rel)}, which lies outside the folder`);
    parts.push(part);
  }
  if (parts.length === 0) throw new FormatError(where, `names an invalid ${what} ${JSON.stringify(rel)}`);
  return parts.join("/");
}

/** Every folder that holds one of `files` (folder-relative, `/`-separated), "" (the folder itself) included. */
export function foldersOf(files: Iterable<string>): Set<string> {
  const out = new Set<string>([""]);
  for (const rel of files) {
    const parts = rel.split("/");
    for (let i = 1; i < parts.length; i++) out.add(parts.slice(0, i).join("/"));
  }
  return out;
}

/**
 * The entries directly inside `rel` of a folder known by its files' names alone (in memory, a Hub repo's
 * listing): each name there, a folder where more of a path lies below it. Sorted by name, as
 * `Folder.list` promises.
 */
export function entriesIn(files: Iterable<string>, rel: string): FolderEntry[] {
  const prefix = rel === "" ? "" : `${rel}/`;
  const seen = new Map<string, FolderEntry>();
  for (const file of files) {
    if (!file.startsWith(prefix)) continue;
    const rest = file.slice(prefix.length);
    const slash = rest.indexOf("/");
    const name = slash < 0 ? rest : rest.slice(0, slash);
    seen.set(name, { name, kind: slash < 0 ? "file" : "folder" });
  }
  return [...seen.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

const UTF8 = new TextDecoder("utf-8", { fatal: true });

/**
 * A small file read whole, exactly as many bytes as the source's size (so a limit holds even for a file
 * that grows meanwhile), and decoded as strict UTF-8.
 */
export async function readText(folder: Folder, rel: string, limit: number, signal?: AbortSignal): Promise<string> {
  const source = await folder.open(rel, signal);
  const name = folder.describe(rel);
  try {
    if (source.size > limit) throw new FormatError(name, `is ${source.size} bytes, more than the ${limit}-byte limit for this file`);
    const bytes = new Uint8Array(source.size);
    await source.read(bytes, 0, signal);
    try {
      return UTF8.decode(bytes);
    } catch {
      throw new FormatError(name, "is not valid UTF-8");
    }
  } finally {
    source.close();
  }
}

/** A folder of in-memory files: tests, and a browser holding a checkpoint it was handed. */
export class MemoryFolder implements Folder {
  private readonly files = new Map<string, Uint8Array>();

  constructor(
    files: Iterable<[string, Uint8Array]> | Readonly<Record<string, Uint8Array>> = [],
    readonly name = "<memory>",
  ) {
    const entries = Symbol.iterator in files ? (files as Iterable<[string, Uint8Array]>) : Object.entries(files);
    for (const [rel, bytes] of entries) this.files.set(checkRelative(rel, name), bytes);
  }

  describe(rel: string): string {
    return `${this.name}/${rel}`;
  }

  private folders(): Set<string> {
    return foldersOf(this.files.keys());
  }

  async list(rel: string, signal?: AbortSignal): Promise<FolderEntry[]> {
    throwIfAborted(signal);
    const entries = entriesIn(this.files.keys(), rel);
    if (entries.length === 0 && !this.folders().has(rel)) throw new InputError(`${this.describe(rel)}: no such folder`);
    return entries;
  }

  async stat(rel: string, signal?: AbortSignal): Promise<EntryStat | undefined> {
    throwIfAborted(signal);
    const bytes = this.files.get(rel);
    if (bytes) return { kind: "file", size: bytes.byteLength };
    return this.folders().has(rel) ? { kind: "folder", size: 0 } : undefined;
  }

  async open(rel: string, signal?: AbortSignal): Promise<ByteSource> {
    throwIfAborted(signal);
    const bytes = this.files.get(rel);
    if (!bytes) throw new FormatError(this.describe(rel), "cannot open: no such file");
    return new MemorySource(bytes, this.describe(rel));
  }
}
