import { FormatError, throwIfAborted } from "../errors.js";
import type { Folder } from "../io/folder.js";
import type { OutputStore } from "../io/output.js";
import { CONFIG_FILE } from "../safetensors/shard-plan.js";

export interface AuxFiles {
  /** Folder-relative paths, parents before children: folders to create and files to copy. */
  readonly entries: readonly { readonly rel: string; readonly dir: boolean }[];
  /** Weight files of another checkpoint lying in the folder, which are not part of this one. */
  readonly skipped: readonly string[];
  /** False when the folder cannot be listed (a plain HTTP URL): then only config.json is copied. */
  readonly listable: boolean;
}

/** Top-level weight files that belong to no checkpoint we read would be stale in the output. */
const STRAY_WEIGHTS = /^[^/]*\.safetensors(\.index\.json)?$/;

/** Copies go through memory this many bytes at a time. */
const COPY_CHUNK = 8 * 1024 * 1024;

/**
 * Every file of a checkpoint folder that is not its weights (tokenizer, processor, chat template, custom
 * code, sub-folders), checked before any byte is written: anything that is neither a file nor a folder
 * (a FIFO, a device) is refused rather than read, and the folder's own rules (a local disk's symlinks)
 * apply to each.
 */
export async function listAuxFiles(
  folder: Folder,
  weightFiles: ReadonlySet<string>,
  options: { skip?: ReadonlySet<string>; signal?: AbortSignal } = {},
): Promise<AuxFiles> {
  const entries: { rel: string; dir: boolean }[] = [];
  const skipped: string[] = [];
  const visited = new Set<string>();
  const walk = async (rel: string): Promise<boolean> => {
    const list = await folder.list(rel, options.signal);
    if (list === undefined) return false;
    for (const entry of list) {
      const child = rel === "" ? entry.name : `${rel}/${entry.name}`;
      if (weightFiles.has(child) || options.skip?.has(child)) continue;
      if (rel === "" && STRAY_WEIGHTS.test(entry.name)) {
        skipped.push(child);
        continue;
      }
      if (entry.kind === "folder") {
        if (entry.id !== undefined) {
          if (visited.has(entry.id)) continue;
          visited.add(entry.id);
        }
        entries.push({ rel: child, dir: true });
        await walk(child);
      } else if (entry.kind === "file") entries.push({ rel: child, dir: false });
      else throw new FormatError(folder.describe(child), `is ${entry.detail ?? "not a regular file"}, not a regular file; refusing to copy it`);
    }
    return true;
  };
  const listable = await walk("");
  // A folder that cannot be listed (a plain URL) still has the config.json the conversion read.
  if (!listable && !weightFiles.has(CONFIG_FILE) && !options.skip?.has(CONFIG_FILE)) entries.push({ rel: CONFIG_FILE, dir: false });
  return { entries, skipped, listable };
}

/** The config a conversion writes itself (changed) is not copied. */
export const SKIP_CONFIG: ReadonlySet<string> = new Set([CONFIG_FILE]);

/** Copy the listed files unchanged into the output. Returns the files copied. */
export async function copyAuxFiles(folder: Folder, out: OutputStore, aux: AuxFiles, signal?: AbortSignal): Promise<string[]> {
  const copied: string[] = [];
  for (const e of aux.entries) {
    throwIfAborted(signal);
    if (e.dir) {
      await out.mkdir(e.rel);
      continue;
    }
    if (!(await out.copyFrom?.(folder, e.rel))) await copyThroughMemory(folder, out, e.rel, signal);
    copied.push(e.rel);
  }
  return copied;
}

async function copyThroughMemory(folder: Folder, out: OutputStore, rel: string, signal?: AbortSignal): Promise<void> {
  const source = await folder.open(rel, signal);
  try {
    const file = await out.create(rel, source.size);
    try {
      const buf = new Uint8Array(Math.min(COPY_CHUNK, Math.max(source.size, 1)));
      for (let at = 0; at < source.size; at += buf.byteLength) {
        const part = buf.subarray(0, Math.min(buf.byteLength, source.size - at));
        await source.read(part, at, signal);
        await file.write(at, part);
      }
      await file.finish();
    } catch (e) {
      file.abandon();
      throw e;
    }
  } finally {
    source.close();
  }
}
