import * as fs from "node:fs";
import * as path from "node:path";
import { FormatError } from "../errors.js";
import { CONFIG_FILE, requireInside } from "../safetensors/checkpoint.js";
import { describeIoError, fileKind } from "../safetensors/source.js";
import { WriteError } from "../safetensors/writer.js";
import { fsyncPath } from "./output-folder.js";

export interface AuxFiles {
  /** Folder-relative paths, parents before children: folders to create and files to copy. */
  readonly entries: readonly { readonly rel: string; readonly dir: boolean }[];
  /** Weight files of another checkpoint lying in the folder, which are not part of this one. */
  readonly skipped: readonly string[];
}

/** Top-level weight files that belong to no checkpoint we read would be stale in the output. */
const STRAY_WEIGHTS = /^[^/]*\.safetensors(\.index\.json)?$/;

/**
 * Every file of a checkpoint folder that is not its weights (tokenizer, processor, chat template, custom
 * code, sub-folders), checked before any byte is written: FIFOs, sockets and devices are refused rather
 * than read, and symlinks may not lead out of the folder unless allowed.
 */
export function listAuxFiles(
  srcDir: string,
  weightFiles: ReadonlySet<string>,
  options: { followSymlinks?: boolean; skipConfig?: boolean } = {},
): AuxFiles {
  const entries: { rel: string; dir: boolean }[] = [];
  const skipped: string[] = [];
  const visited = new Set<string>([fs.realpathSync(srcDir)]);

  // An unreadable folder or entry is a problem of the input, told as such, not an internal error.
  const readable = <T>(p: string, f: () => T): T => {
    try {
      return f();
    } catch (e) {
      throw new FormatError(p, `cannot be read: ${describeIoError(e)}`);
    }
  };
  const walk = (rel: string): void => {
    const dir = path.join(srcDir, rel);
    for (const name of readable(dir, () => fs.readdirSync(dir)).sort()) {
      const relPath = rel ? path.join(rel, name) : name;
      if (weightFiles.has(relPath)) continue;
      if (options.skipConfig && relPath === CONFIG_FILE) continue;
      if (!rel && STRAY_WEIGHTS.test(name)) {
        skipped.push(relPath);
        continue;
      }
      const full = path.join(srcDir, relPath);
      let st = readable(full, () => fs.lstatSync(full));
      if (st.isSymbolicLink()) {
        let real: string;
        try {
          real = fs.realpathSync(full);
        } catch (e) {
          throw new FormatError(full, `is a broken symlink: ${describeIoError(e)}`);
        }
        requireInside(srcDir, full, options, real);
        st = readable(full, () => fs.statSync(full));
        if (st.isDirectory()) {
          if (visited.has(real)) continue;
          visited.add(real);
        }
      }
      if (st.isDirectory()) {
        entries.push({ rel: relPath, dir: true });
        walk(relPath);
      } else if (st.isFile()) entries.push({ rel: relPath, dir: false });
      else throw new FormatError(full, `is ${fileKind(st)}, not a regular file; refusing to copy it`);
    }
  };
  walk("");
  return { entries, skipped };
}

/** Copy the listed files unchanged, each synced to disk. Returns the files copied. */
export function copyAuxFiles(srcDir: string, dstDir: string, aux: AuxFiles): string[] {
  const copied: string[] = [];
  for (const e of aux.entries) {
    const to = path.join(dstDir, e.rel);
    const from = path.join(srcDir, e.rel);
    try {
      if (e.dir) {
        fs.mkdirSync(to);
        continue;
      }
      fs.copyFileSync(from, to, fs.constants.COPYFILE_EXCL);
      fsyncPath(to);
    } catch (e) {
      throw new WriteError(`${to}: copy from ${from} failed: ${describeIoError(e)}`);
    }
    copied.push(e.rel);
  }
  return copied;
}
