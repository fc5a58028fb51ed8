import * as fs from "node:fs";
import * as path from "node:path";
import { FormatError } from "../errors.js";
import { CONFIG_FILE } from "../safetensors/checkpoint.js";
import { describeIoError, fileKind } from "../safetensors/source.js";
import { WriteError } from "../safetensors/writer.js";

export interface AuxCopyResult {
  /** Folder-relative paths copied. */
  readonly copied: string[];
  /** Weight files of another checkpoint lying in the folder, which are not part of this one. */
  readonly skipped: string[];
}

/** Top-level weight files that belong to no checkpoint we read would be stale in the output. */
const STRAY_WEIGHTS = /^[^/]*\.safetensors(\.index\.json)?$/;

/**
 * Copy every file of a checkpoint folder that is not its weights (tokenizer, processor, chat template,
 * custom code, sub-folders) unchanged. FIFOs, sockets and devices are refused rather than read, and
 * symlinks may not lead out of the folder unless allowed.
 */
export function copyAuxFiles(
  srcDir: string,
  dstDir: string,
  weightFiles: ReadonlySet<string>,
  options: { followSymlinks?: boolean; skipConfig?: boolean } = {},
): AuxCopyResult {
  const result: AuxCopyResult = { copied: [], skipped: [] };
  const root = fs.realpathSync(srcDir);
  const visited = new Set<string>([root]);

  const walk = (rel: string): void => {
    const dir = path.join(srcDir, rel);
    for (const name of fs.readdirSync(dir).sort()) {
      const relPath = rel ? path.join(rel, name) : name;
      if (weightFiles.has(relPath)) continue;
      if (options.skipConfig && relPath === CONFIG_FILE) continue;
      if (!rel && STRAY_WEIGHTS.test(name)) {
        result.skipped.push(relPath);
        continue;
      }
      const full = path.join(srcDir, relPath);
      let st = fs.lstatSync(full);
      if (st.isSymbolicLink()) {
        let real: string;
        try {
          real = fs.realpathSync(full);
        } catch (e) {
          throw new FormatError(full, `is a broken symlink: ${describeIoError(e)}`);
        }
        if (!options.followSymlinks && !(real === root || real.startsWith(root + path.sep))) {
          throw new FormatError(full, `is a symlink leading outside the checkpoint folder (to ${real}); pass --follow-symlinks to allow it`);
        }
        st = fs.statSync(full);
        if (st.isDirectory()) {
          if (visited.has(real)) continue;
          visited.add(real);
        }
      }
      const out = path.join(dstDir, relPath);
      if (st.isDirectory()) {
        fs.mkdirSync(out);
        walk(relPath);
      } else if (st.isFile()) {
        copyDurably(full, out);
        result.copied.push(relPath);
      } else {
        throw new FormatError(full, `is ${fileKind(st)}, not a regular file; refusing to copy it`);
      }
    }
  };
  walk("");
  return result;
}

function copyDurably(from: string, to: string): void {
  try {
    fs.copyFileSync(from, to, fs.constants.COPYFILE_EXCL);
    const fd = fs.openSync(to, "r");
    try {
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  } catch (e) {
    throw new WriteError(`${to}: copy from ${from} failed: ${describeIoError(e)}`);
  }
}
