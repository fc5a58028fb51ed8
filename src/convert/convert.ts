import type { Diagnostic } from "../adapters/plan.js";
import { convertSavedFolder, shardedSaveIn } from "../consolidate/convert.js";
import { InputError, UsageError } from "../errors.js";
import type { Folder } from "../io/folder.js";
import type { OutputStore } from "../io/output.js";
import { Checkpoint, type ConfigFile } from "../safetensors/checkpoint.js";
import { type AuxFiles, SKIP_CONFIG, listAuxFiles } from "./aux-files.js";
import { type BaseAudit, type BaseExport, exportBytes, planAgainstRelease } from "./base.js";
import { checkpointSource } from "./checkpoint-source.js";
import type { Layout } from "./layout.js";
import { type ConversionPlan, type ConvertOptions, type Dequantization, loadPlanInput, planConversion } from "./planner.js";
import { type WriteOptions, type WrittenCheckpoint, writePlanned } from "./write.js";

export type { ConvertCallbacks, WriteOptions, WrittenCheckpoint } from "./write.js";

/** A conversion planned from a checkpoint's headers and config, and the other files it will copy. */
export interface PreparedConversion {
  readonly checkpoint: Checkpoint;
  readonly config: ConfigFile;
  readonly plan: ConversionPlan;
  readonly aux: AuxFiles;
  /** With `base`: the release exported against, and the output matched to it. */
  readonly base?: { readonly release: Checkpoint; readonly export: BaseExport };
}

/** An HF export checked against the release it came from (`convert --to hf --base RELEASE`). */
export interface BaseOptions {
  /** The original HF checkpoint: its static buffers, dtypes and shards (see `src/convert/base.ts`). */
  readonly base?: Checkpoint;
  /** How to name it in messages and the audit (default: its folder's name). */
  readonly baseName?: string;
}

/** `--base` decides the shards; a shard size besides it is a contradiction. */
export function checkBaseOptions(options: { maxShardSize?: number; to?: string }, base: boolean): void {
  if (!base) return;
  if (options.to !== "hf") throw new UsageError("--base applies only to --to hf");
  if (options.maxShardSize !== undefined) throw new UsageError("--max-shard-size cannot be used with --base: the output's shards are the release's");
}

/** Refuse a shard size that is not a positive whole number of bytes, before anything else is done. */
export function checkShardSize(maxShardSize: number | undefined): void {
  if (maxShardSize !== undefined && !(Number.isSafeInteger(maxShardSize) && maxShardSize > 0)) {
    throw new UsageError(`the largest shard must be a positive whole number of bytes, got ${maxShardSize}`);
  }
}

/**
 * Plan a whole conversion from an open checkpoint: headers and config only, and every other file of the
 * folder checked (so a bad one fails before the first byte is written).
 */
export async function prepareConversion(checkpoint: Checkpoint, options: ConvertOptions & BaseOptions, signal?: AbortSignal): Promise<PreparedConversion> {
  if (checkpoint.folder === undefined) {
    throw new InputError(`${checkpoint.where}: convert needs a checkpoint folder (with config.json), not a single file`);
  }
  checkBaseOptions({ to: options.to }, options.base !== undefined);
  const config = await checkpoint.readConfig(signal);
  let plan = planConversion(await loadPlanInput(checkpoint, signal), config, { ...options, againstRelease: options.base !== undefined });
  let base: PreparedConversion["base"];
  if (options.base) {
    const matched = await planAgainstRelease(plan.tensors, checkpoint.tensors, checkpoint.where, options.base, options.baseName ?? options.base.where, signal);
    plan = { ...plan, tensors: matched.tensors, outputBytes: exportBytes(matched) };
    base = { release: options.base, export: matched };
  }
  const skip = new Set([...(plan.outputConfig ? SKIP_CONFIG : []), ...(plan.droppedFiles ?? [])]);
  const aux = await listAuxFiles(checkpoint.folder, checkpoint.weightFiles, { ...(skip.size > 0 ? { skip } : {}), ...(signal ? { signal } : {}) });
  return { checkpoint, config, plan, aux, ...(base ? { base } : {}) };
}

/**
 * Write a prepared conversion into an output, streaming tensor by tensor: shards, index, the config
 * (edited in place when the plan changes it) and every other file of the source, unchanged.
 */
export async function writeConversion(prepared: PreparedConversion, out: OutputStore, options: WriteOptions = {}): Promise<WrittenCheckpoint> {
  const { checkpoint, plan, aux, base } = prepared;
  checkBaseOptions({ to: plan.target, ...(options.maxShardSize !== undefined ? { maxShardSize: options.maxShardSize } : {}) }, base !== undefined);
  options.onPlan?.(plan);
  const source = base ? base.export.source(checkpointSource(checkpoint.tensors), checkpointSource(base.release.tensors)) : checkpointSource(checkpoint.tensors);
  return writePlanned(plan, source, { folder: checkpoint.folder!, aux }, out, { ...options, ...(base ? { shards: base.export.shards } : {}) });
}

export interface FolderConversion {
  readonly from: Layout;
  readonly to: Layout;
  readonly tensorsIn: number;
  readonly tensorsOut: number;
  readonly bytesIn: number;
  readonly bytesOut: number;
  readonly files: readonly string[];
  readonly auxFiles: readonly string[];
  readonly skippedFiles: readonly string[];
  /** Files of the source left out on purpose (a dequantized copy's hf_quant_config.json). */
  readonly droppedFiles: readonly string[];
  /** False when the source folder could not be listed, so no file besides the weights was copied. */
  readonly auxListed: boolean;
  readonly configChanged: boolean;
  /** Set when quantized weights were read as bf16 (`dequantize`). */
  readonly dequantized?: Dequantization;
  /** Set for an export against its release (`base`): what the audit found. */
  readonly base?: BaseAudit;
  readonly warnings: readonly Diagnostic[];
}

/** What a finished conversion reports, from its plan and what it wrote. */
export function conversionSummary(prepared: PreparedConversion, written: WrittenCheckpoint): FolderConversion {
  const { plan, aux, checkpoint } = prepared;
  return {
    from: plan.source,
    to: plan.target,
    tensorsIn: checkpoint.tensors.size,
    tensorsOut: plan.tensors.length,
    bytesIn: plan.inputBytes,
    bytesOut: plan.outputBytes,
    files: written.files,
    auxFiles: written.auxFiles,
    skippedFiles: aux.skipped,
    droppedFiles: plan.droppedFiles ?? [],
    auxListed: aux.listable,
    configChanged: plan.outputConfig !== undefined,
    ...(plan.dequantized ? { dequantized: plan.dequantized } : {}),
    ...(prepared.base ? { base: prepared.base.export.audit } : {}),
    warnings: plan.warnings,
  };
}

/**
 * Convert the checkpoint of any folder into any output: the whole operation for a caller that has both
 * (a browser holding files in memory, a test). On a local disk, `convertCheckpoint` of the Node entry adds
 * the output folder's guarantees around it.
 */
export async function convertFolder(
  source: Folder,
  out: OutputStore,
  options: ConvertOptions & WriteOptions & { readonly base?: Folder },
): Promise<FolderConversion> {
  checkShardSize(options.maxShardSize);
  checkBaseOptions(options, options.base !== undefined);
  // A sharded training save converts straight from its rank files.
  const saved = await shardedSaveIn(source, options.signal);
  if (saved !== undefined) return convertSavedFolder(source, saved, out, options);
  const open = options.signal ? { signal: options.signal } : {};
  const checkpoint = await Checkpoint.open(source, open);
  let release: Checkpoint | undefined;
  try {
    if (options.base) release = await Checkpoint.open(options.base, open);
    const { base: _folder, ...rest } = options;
    const prepared = await prepareConversion(checkpoint, { ...rest, ...(release ? { base: release } : {}) }, options.signal);
    return conversionSummary(prepared, await writeConversion(prepared, out, options));
  } finally {
    release?.close();
    checkpoint.close();
  }
}
