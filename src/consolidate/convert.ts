import { SKIP_CONFIG } from "../convert/aux-files.js";
import { checkpointSource } from "../convert/checkpoint-source.js";
import type { FolderConversion } from "../convert/convert.js";
import { type WriteOptions, type WrittenCheckpoint, writePlanned } from "../convert/write.js";
import { type ConversionPlan, type ConvertOptions, planConversion } from "../convert/planner.js";
import type { TensorSource } from "../convert/stream.js";
import { InputError } from "../errors.js";
import type { Folder } from "../io/folder.js";
import type { OutputStore } from "../io/output.js";
import type { ConfigFile } from "../safetensors/checkpoint.js";
import { INDEX_FILE, SINGLE_FILE } from "../safetensors/shard-plan.js";
import type { DType } from "../tensor/dtype.js";
import type { AssembledTensor } from "./assemble.js";
import { type PieceSource, type RestoredPiece, composeTensor, restoringSource } from "./compose.js";
import { type ConsolidationPlan, planConsolidation } from "./plan.js";
import { type ShardedSave, locateShardedSave, openShardedSave } from "./save.js";
import { type MetadataFiles, listMetadataFiles } from "./write.js";

/**
 * `convert --to native` of a sharded training save, in one pass and with no intermediate checkpoint: the
 * conversion is planned on the tensors consolidation would write (names, restored dtypes, full shapes),
 * then every piece of that plan is split into reads of the saved pieces it covers. The output equals
 * consolidating and then converting, bit for bit.
 *
 * One rule goes past a plain consolidation: experts the dtype mapping lacks take the dtype the mapping
 * gives their layer's other experts (`uniformExpertDTypes`). Automodel writes that mapping from rank 0's
 * experts only, so after float32-master training an exact consolidation gives one layer's experts mixed
 * dtypes (SPEC §9), which cannot be grouped into one tensor; the base model had one dtype per layer.
 */

export interface PreparedSavedConversion {
  readonly save: ShardedSave;
  readonly consolidation: ConsolidationPlan;
  readonly config: ConfigFile;
  /** The conversion, its tensors reading the saved pieces. */
  readonly plan: ConversionPlan;
  readonly source: TensorSource;
  readonly metadata: MetadataFiles;
}

/** Where a folder's sharded save is ("" or "model"), unless the folder is an ordinary checkpoint. */
export async function shardedSaveIn(folder: Folder, signal?: AbortSignal): Promise<string | undefined> {
  if ((await folder.stat(INDEX_FILE, signal)) || (await folder.stat(SINGLE_FILE, signal))) return undefined;
  return locateShardedSave(folder, signal);
}

export async function prepareSavedConversion(save: ShardedSave, options: ConvertOptions): Promise<PreparedSavedConversion> {
  if (options.to === "hf") {
    throw new InputError(`${save.where}: a sharded training save already has Hugging Face (HF) names; omni-ckpt consolidate assembles it into an HF checkpoint`);
  }
  const consolidation = planConsolidation(save, { uniformExpertDTypes: true });
  const config = save.metadata.config!;
  const assembled = new Map<string, AssembledTensor>(consolidation.assembly.tensors.map((t) => [t.name, t]));
  const restoredDType = new Map<string, DType>(consolidation.tensors.map((t) => [t.name, t.dtype]));
  const headers = new Map(consolidation.tensors.map((t) => [t.name, { dtype: t.dtype, shape: t.shape }]));
  const planned = planConversion({ headers, where: save.where }, config, options);

  const restored = new Map<string, RestoredPiece>();
  const sourceOf: PieceSource = (piece, t, outDType) => {
    const dtype = restoredDType.get(t.name)!;
    // A second cast after the restoring one rounds again; with one cast (or none) the saved bytes do.
    if (dtype === t.dtype || dtype === outDType) return piece.key;
    const key = `${piece.key}@${dtype}`;
    if (!restored.has(key)) restored.set(key, { of: piece.key, saved: t.dtype, info: { dtype, shape: piece.entry.shape } });
    return key;
  };
  const tensors = planned.tensors.map((t) => composeTensor(t, assembled, sourceOf));
  const source = restoringSource(checkpointSource(consolidation.sources), restored);
  const metadata = await listMetadataFiles(save, planned.outputConfig ? { skip: SKIP_CONFIG } : {});
  return { save, consolidation, config, plan: { ...planned, tensors }, source, metadata };
}

/** Stream a prepared conversion into `out`: shards cut by size, index, config, the metadata files. */
export async function writeSavedConversion(prepared: PreparedSavedConversion, out: OutputStore, options: WriteOptions = {}): Promise<WrittenCheckpoint> {
  const { plan, source, metadata } = prepared;
  options.onPlan?.(plan);
  return writePlanned(plan, source, { folder: metadata.folder, aux: metadata.files }, out, options);
}

/** What a finished conversion of a save reports, in the shape `convert` reports any conversion. */
export function savedConversionSummary(prepared: PreparedSavedConversion, written: WrittenCheckpoint): FolderConversion {
  const { plan, consolidation } = prepared;
  return {
    from: plan.source,
    to: plan.target,
    tensorsIn: consolidation.tensors.length,
    tensorsOut: plan.tensors.length,
    bytesIn: plan.inputBytes,
    bytesOut: plan.outputBytes,
    files: written.files,
    auxFiles: written.auxFiles,
    skippedFiles: [],
    droppedFiles: [],
    auxListed: true,
    configChanged: plan.outputConfig !== undefined,
    warnings: plan.warnings,
  };
}

/** `convertFolder` for a folder holding a sharded save at `rel`. */
export async function convertSavedFolder(source: Folder, rel: string, out: OutputStore, options: ConvertOptions & WriteOptions): Promise<FolderConversion> {
  const save = await openShardedSave(source, rel, options.signal);
  try {
    const prepared = await prepareSavedConversion(save, options);
    return savedConversionSummary(prepared, await writeSavedConversion(prepared, out, options));
  } finally {
    save.close();
  }
}
