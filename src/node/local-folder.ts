import * as fs from "node:fs";
import * as path from "node:path";
import { FormatError, InputError, throwIfAborted } from "../errors.js";
import type { ByteSource } from "../io/byte-source.js";
import type { EntryStat, Folder, FolderEntry } from "../io/folder.js";
import { FileSource, describeIoError, fileKind, readFailure } from "./file-source.js";
import { within } from "./paths.js";

export interface LocalFolderOptions {
  /**
   * Let files be symlinks that lead anywhere. Off by default: an index or a config pointing at arbitrary
   * files would read them (and echo their first bytes in errors).
   */
  readonly followSymlinks?: boolean;
}

/**
 * The blobs folder of a Hugging Face cache snapshot (`…/models--ORG--NAME/snapshots/REV/` links every file
 * to `../../blobs/HASH`), when `root` is such a snapshot: links into it are the cache's own layout, not a
 * way out of the folder.
 */
export function cacheBlobsOf(root: string): string | undefined {
  const snapshots = path.dirname(root);
  const repo = path.dirname(snapshots);
  if (path.basename(snapshots) !== "snapshots" || !/^(models|datasets|spaces)--.+--.+$/.test(path.basename(repo))) return undefined;
  return path.join(repo, "blobs");
}

function entryKind(st: fs.Stats): Pick<FolderEntry, "kind" | "detail"> {
  if (st.isFile()) return { kind: "file" };
  if (st.isDirectory()) return { kind: "folder" };
  return { kind: "other", detail: fileKind(st) };
}

/**
 * A checkpoint folder on a local disk, and the local disk's rules: no symlink may lead out of it (except
 * into its own Hugging Face cache blobs, or anywhere with `followSymlinks`), a broken symlink is an error
 * rather than an absence, and files open without blocking so a FIFO cannot hang the tool.
 */
export class LocalFolder implements Folder {
  /** The folder with every symlink resolved. */
  readonly root: string;
  /** Where links may lead besides the folder itself. */
  readonly allowed: readonly string[];

  constructor(
    /** The folder as the user named it, for messages. */
    readonly dir: string,
    private readonly options: LocalFolderOptions = {},
  ) {
    let st: fs.Stats;
    try {
      st = fs.statSync(dir);
    } catch (e) {
      throw new InputError(`${dir}: cannot open checkpoint: ${describeIoError(e)}`);
    }
    if (!st.isDirectory()) throw new InputError(`${dir}: is ${fileKind(st)}, not a checkpoint folder`);
    this.root = fs.realpathSync(dir);
    // The blobs folder may itself be a link (a cache whose blobs were moved to a bigger disk): links into
    // it are compared with where it really is. Found from the path as named and as resolved.
    const blobs = new Set<string>();
    for (const at of [path.resolve(dir), this.root]) {
      const b = cacheBlobsOf(at);
      if (b === undefined) continue;
      try {
        blobs.add(fs.realpathSync(b));
      } catch {
        blobs.add(b);
      }
    }
    this.allowed = [this.root, ...blobs];
  }

  get name(): string {
    return this.dir;
  }

  describe(rel: string): string {
    return rel === "" ? this.dir : path.join(this.dir, rel);
  }

  private full(rel: string): string {
    return rel === "" ? this.dir : path.join(this.dir, ...rel.split("/"));
  }

  /** Refuse a symlink whose target (`real`) lies outside the folder and its cache blobs. */
  private requireInside(rel: string, real: string): void {
    if (this.options.followSymlinks || this.allowed.some((root) => within(real, root))) return;
    throw new FormatError(this.describe(rel), `is a symlink leading outside the checkpoint folder (to ${real}); pass --follow-symlinks to allow it`);
  }

  /**
   * What `rel` is, following a symlink once it is known to stay inside; undefined when nothing is there.
   * A link to nowhere is an error, not an absence: the file the user meant is missing.
   */
  private statFull(rel: string): fs.Stats | undefined {
    const full = this.full(rel);
    let st: fs.Stats;
    try {
      st = fs.lstatSync(full);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT" || (e as NodeJS.ErrnoException).code === "ENOTDIR") return undefined;
      throw readFailure(this.describe(rel), "cannot be read", e);
    }
    // A symlinked parent folder counts as much as a symlinked file.
    let real: string;
    try {
      real = fs.realpathSync(full);
    } catch (e) {
      throw new FormatError(this.describe(rel), `cannot be opened: ${describeIoError(e)} (a broken symlink?)`);
    }
    if (real !== path.join(this.root, ...rel.split("/").filter(Boolean)) || st.isSymbolicLink()) this.requireInside(rel, real);
    if (!st.isSymbolicLink()) return st;
    try {
      return fs.statSync(full);
    } catch (e) {
      throw new FormatError(this.describe(rel), `cannot be opened: ${describeIoError(e)} (a broken symlink?)`);
    }
  }

  async stat(rel: string, signal?: AbortSignal): Promise<EntryStat | undefined> {
    throwIfAborted(signal);
    return this.statSync(rel);
  }

  statSync(rel: string): EntryStat | undefined {
    const st = this.statFull(rel);
    return st ? { ...entryKind(st), size: st.size } : undefined;
  }

  async list(rel: string, signal?: AbortSignal): Promise<FolderEntry[]> {
    throwIfAborted(signal);
    return this.listSync(rel);
  }

  listSync(rel: string): FolderEntry[] {
    const dir = this.full(rel);
    let names: string[];
    try {
      names = fs.readdirSync(dir);
    } catch (e) {
      throw new FormatError(this.describe(rel), `cannot be read: ${describeIoError(e)}`);
    }
    return names.sort().map((name) => {
      const child = rel === "" ? name : `${rel}/${name}`;
      const st = this.statFull(child);
      if (!st) throw new FormatError(this.describe(child), "vanished while the folder was listed");
      const kind = entryKind(st);
      return kind.kind === "folder" ? { name, ...kind, id: fs.realpathSync(this.full(child)) } : { name, ...kind };
    });
  }

  async open(rel: string, signal?: AbortSignal): Promise<ByteSource> {
    throwIfAborted(signal);
    return this.openSync(rel);
  }

  openSync(rel: string): FileSource {
    this.statFull(rel);
    return new FileSource(this.full(rel), this.describe(rel));
  }
}
