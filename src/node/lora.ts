import { BufferPool } from "../convert/buffer-pool.js";
import { InputError } from "../errors.js";
import type { Folder } from "../io/folder.js";
import type { Layout } from "../convert/layout.js";
import type { Checkpoint } from "../safetensors/checkpoint.js";
import { baseModel } from "../lora/base.js";
import { type ExportOptions, type ExportPlan, type ExpertExport } from "../lora/export.js";
import { prepareExport, writeExport } from "../lora/export-files.js";
import { openAdapter } from "../lora/files.js";
import { type MergeOptions, type MergeSummary, type PreparedMerge, mergeSummary, prepareMerge, writeMerge } from "../lora/merge.js";
import type { BaseModel } from "../lora/read.js";
import { LocalOutput } from "./local-output.js";
import { OutputFolder } from "./output-folder.js";
import { type SourceOptions, openSource, resolveSource } from "./sources.js";
import { deltaThreadFor } from "./delta-thread.js";
import { startWriteThread } from "./write-thread.js";

/** `lora export` and `lora merge` by paths, into output folders that appear only when complete. */

interface Common extends SourceOptions {
  readonly dst: string;
  readonly force?: boolean;
  readonly signal?: AbortSignal;
  readonly onProgress?: (bytes: number, tensors: number) => void;
  /** Leftovers of interrupted runs removed or restored, and what is worth knowing about an HTTP source, as they are found. */
  readonly onNote?: (note: string) => void;
}

export interface LoraExportRequest extends ExportOptions, Common {
  /** An adapter folder (or a Hugging Face cache snapshot / repo id holding one). */
  readonly adapter: string;
  /** The release the adapter was trained on: names and widths are checked against it. */
  readonly base?: string;
  readonly onPlan?: (plan: ExportPlan) => void;
}

export interface LoraExportSummary {
  readonly adapter: string;
  readonly dst: string;
  readonly from: "automodel" | "hf";
  readonly to: Layout;
  readonly experts: ExpertExport | undefined;
  readonly tensorsIn: number;
  readonly tensorsOut: number;
  readonly bytesOut: number;
  readonly modules: number;
  readonly expertModules: number;
  readonly dropped: { readonly modules: number; readonly tensors: number } | undefined;
  readonly replaced: number;
  readonly checkedAgainst: string | undefined;
  readonly files: readonly string[];
  readonly auxFiles: readonly string[];
  readonly warnings: readonly string[];
  readonly notes: readonly string[];
  readonly seconds: number;
}

function adapterFolder(spec: string, options: SourceOptions): { folder: Folder; localDir: string | undefined } {
  const source = resolveSource(spec, options);
  if (source.folder === undefined) throw new InputError(`${spec}: is a file; an adapter is a folder with adapter_model.safetensors and adapter_config.json`);
  return { folder: source.folder, localDir: source.localDir };
}

async function openBase(spec: string, options: SourceOptions & { signal?: AbortSignal }): Promise<{ checkpoint: Checkpoint; localDir: string | undefined }> {
  const { checkpoint, source } = await openSource(spec, options);
  if (source.folder === undefined) {
    checkpoint.close();
    throw new InputError(`${spec}: is a file; the base must be a checkpoint folder (with config.json)`);
  }
  return { checkpoint, localDir: source.localDir };
}

function outputFolder(req: Common, sources: (string | undefined)[]): OutputFolder {
  return OutputFolder.prepare(req.dst, {
    source: sources.filter((s): s is string => s !== undefined),
    ...(req.force ? { force: true } : {}),
    ...(req.onNote ? { onNote: req.onNote } : {}),
  });
}

/** Export an adapter to the other side's names (Automodel → PEFT on the HF release, or back). */
export async function exportLoraAdapter(req: LoraExportRequest): Promise<LoraExportSummary> {
  const started = performance.now();
  const { folder, localDir } = adapterFolder(req.adapter, req);
  let base: BaseModel | undefined;
  let baseDir: string | undefined;
  if (req.base !== undefined) {
    const opened = await openBase(req.base, req);
    try {
      base = baseModel(opened.checkpoint, await opened.checkpoint.readConfig(req.signal));
      baseDir = opened.localDir;
    } finally {
      // Only its headers and config are needed.
      opened.checkpoint.close();
    }
  }
  const adapter = await openAdapter(folder, req.signal);
  try {
    const prepared = await prepareExport(adapter, {
      ...(req.to !== undefined ? { to: req.to } : {}),
      ...(req.experts !== undefined ? { experts: req.experts } : {}),
      ...(base ? { base } : {}),
    });
    const out = outputFolder(req, [localDir, baseDir]);
    try {
      const written = await writeExport(prepared, new LocalOutput(out.tmp, req.dst), req);
      out.commit();
      const { plan, set } = prepared;
      return {
        adapter: req.adapter,
        dst: req.dst,
        from: set.source,
        to: plan.to,
        experts: plan.experts,
        tensorsIn: adapter.weights.tensors.size,
        tensorsOut: plan.tensors.length,
        bytesOut: plan.bytes,
        modules: plan.modules,
        expertModules: plan.expertModules,
        dropped: plan.dropped,
        replaced: plan.replacements,
        checkedAgainst: req.base,
        files: written.files,
        auxFiles: written.auxFiles,
        warnings: set.warnings,
        notes: out.notes,
        seconds: (performance.now() - started) / 1000,
      };
    } catch (e) {
      throw out.fail(e);
    }
  } finally {
    adapter.close();
  }
}

export interface LoraMergeRequest extends MergeOptions, Common {
  /** Compute half of the deltas on a second thread (default true). */
  readonly helperThread?: boolean;
  /** The HF release: a folder, a cache snapshot or a repo id. */
  readonly base: string;
  readonly adapter: string;
  readonly onPlan?: (prepared: PreparedMerge) => void;
}

export interface LoraMergeSummary extends MergeSummary {
  readonly base: string;
  readonly adapterPath: string;
  readonly dst: string;
  readonly notes: readonly string[];
  readonly seconds: number;
}

/**
 * Merge an adapter into its base, streaming shard by shard into a temporary sibling of DST that is renamed
 * into place only when complete. BASE and ADAPTER are only ever read.
 */
export async function mergeLoraAdapter(req: LoraMergeRequest): Promise<LoraMergeSummary> {
  const started = performance.now();
  const memory = new BufferPool().memory;
  startWriteThread(memory);
  const helper = req.helperThread === false ? undefined : deltaThreadFor(memory);
  const { folder, localDir } = adapterFolder(req.adapter, req);
  const { checkpoint, localDir: baseDir } = await openBase(req.base, req);
  try {
    const adapter = await openAdapter(folder, req.signal);
    try {
      const prepared = await prepareMerge(checkpoint, adapter, req, req.signal);
      const out = outputFolder(req, [baseDir, localDir]);
      try {
        const written = await writeMerge(prepared, new LocalOutput(out.tmp, req.dst), { ...req, ...(helper ? { helper } : {}) });
        out.commit();
        return {
          ...mergeSummary(prepared, written),
          base: req.base,
          adapterPath: req.adapter,
          dst: req.dst,
          notes: out.notes,
          seconds: (performance.now() - started) / 1000,
        };
      } catch (e) {
        throw out.fail(e);
      }
    } finally {
      adapter.close();
    }
  } finally {
    checkpoint.close();
  }
}
