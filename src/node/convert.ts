import { type FolderConversion, type WriteOptions, checkBaseOptions, checkShardSize, conversionSummary, prepareConversion, writeConversion } from "../convert/convert.js";
import type { ConvertOptions } from "../convert/planner.js";
import type { Checkpoint } from "../safetensors/checkpoint.js";
import { BufferPool } from "../convert/buffer-pool.js";
import { InputError } from "../errors.js";
import { convertSavedCheckpoint, isShardedSave } from "./consolidate.js";
import { LocalOutput } from "./local-output.js";
import { OutputFolder } from "./output-folder.js";
import { type SourceOptions, openSource } from "./sources.js";
import { startWriteThread } from "./write-thread.js";

export interface ConvertRequest extends ConvertOptions, WriteOptions, SourceOptions {
  /** A checkpoint folder, a Hugging Face cache snapshot, or a repo id (`ORG/NAME[@REV]`) in the cache. */
  readonly src: string;
  readonly dst: string;
  readonly force?: boolean;
  /**
   * The release SRC was trained from (folder, cache snapshot or repo id), for `--to hf`: the output takes
   * its static buffers, dtypes and shards and is audited against it (see `src/convert/base.ts`).
   */
  readonly base?: string;
  /** Leftovers of interrupted runs removed or restored, and what is worth knowing about an HTTP source, as they are found. */
  readonly onNote?: (note: string) => void;
}

/** What a conversion reports: what it read and wrote (`FolderConversion`), where, and what it found on the way. */
export interface ConvertSummary extends FolderConversion {
  readonly src: string;
  readonly dst: string;
  /** Leftovers of interrupted runs removed or restored, and what could not be done after the commit. */
  readonly notes: readonly string[];
  readonly seconds: number;
}

/**
 * Convert a checkpoint into a local folder, streaming tensor by tensor into a temporary sibling of DST
 * that is renamed into place only when complete and verified. SRC is only ever read. Aborting through
 * `signal` removes the temporary folder and rejects with an `AbortError`.
 */
export async function convertCheckpoint(req: ConvertRequest): Promise<ConvertSummary> {
  const started = performance.now();
  // Before the destination is touched, like every other refusal of the request itself.
  checkShardSize(req.maxShardSize);
  checkBaseOptions(req, req.base !== undefined);
  // Its ~30 ms start-up overlaps the planning below instead of delaying the first write.
  startWriteThread(new BufferPool().memory);
  // A sharded training save (NeMo Automodel's model/ folder) converts straight from its rank files.
  if (await isShardedSave(req.src)) return convertSavedCheckpoint(req, started);
  const { checkpoint, source } = await openSource(req.src, req);
  let release: Checkpoint | undefined;
  try {
    if (source.folder === undefined) throw new InputError(`${req.src}: convert needs a checkpoint folder (with config.json), not a single file`);
    let releaseDir: string | undefined;
    if (req.base !== undefined) {
      const opened = await openSource(req.base, req);
      release = opened.checkpoint;
      releaseDir = opened.source.localDir;
    }
    const { base: baseName, ...options } = req;
    const prepared = await prepareConversion(checkpoint, { ...options, ...(release ? { base: release, baseName: baseName! } : {}) }, req.signal);
    // Neither SRC nor the release it is exported against may be replaced or written into.
    const sources = [source.localDir, releaseDir].filter((d): d is string => d !== undefined);
    const out = OutputFolder.prepare(req.dst, {
      ...(sources.length > 0 ? { source: sources } : {}),
      ...(req.force ? { force: true } : {}),
      ...(req.onNote ? { onNote: req.onNote } : {}),
    });
    try {
      const written = await writeConversion(prepared, new LocalOutput(out.tmp, req.dst), req);
      out.commit();
      return { src: req.src, dst: req.dst, ...conversionSummary(prepared, written), notes: out.notes, seconds: (performance.now() - started) / 1000 };
    } catch (e) {
      throw out.fail(e);
    }
  } finally {
    release?.close();
    checkpoint.close();
  }
}
