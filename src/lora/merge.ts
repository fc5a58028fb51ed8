import { parseExpertKey } from "../adapters/expert-keys.js";
import { type PlannedTensor, inputTensor, viewOf } from "../adapters/plan.js";
import { type AuxFiles, copyAuxFiles, listAuxFiles } from "../convert/aux-files.js";
import { BufferPool } from "../convert/buffer-pool.js";
import { checkpointSource, prefixedUnion } from "../convert/checkpoint-source.js";
import { checkShardSize } from "../convert/convert.js";
import { type Layout, checkLayoutName } from "../convert/layout.js";
import { loadPlanInput, planConversion, routingBiasInF32 } from "../convert/planner.js";
import { streamTensors } from "../convert/stream.js";
import { ConversionError, InputError } from "../errors.js";
import type { Folder } from "../io/folder.js";
import type { OutputStore } from "../io/output.js";
import { Checkpoint, readIndex } from "../safetensors/checkpoint.js";
import { referenceOrder } from "../safetensors/encode.js";
import { type ShardPlan, SINGLE_FILE, planShards, shardsFromGroups } from "../safetensors/shard-plan.js";
import { DEFAULT_MAX_SHARD_SIZE } from "../safetensors/shard-size.js";
import { ShardedWriter } from "../safetensors/sharded-writer.js";
import type { DType } from "../tensor/dtype.js";
import { byteLength, sameShape } from "../tensor/tensor.js";
import { transpose } from "../tensor/view.js";
import type { MergeDType } from "../tensor/wasm/matmul.js";
import { baseModel } from "./base.js";
import { DeltaApplier, type DeltaHelper, type DeltaRegion } from "./delta.js";
import { fileSource } from "./export-files.js";
import { type AdapterFolder, openAdapter } from "./files.js";
import { type LoraModule, type LoraSet, readLora } from "./read.js";

/**
 * `lora merge`: the base checkpoint streamed chunk by chunk as `convert` streams it, each adapted weight
 * getting `W + ((B @ A) * scale).to(W.dtype)` (SPEC §8) as its chunk passes, `modules_to_save` weights
 * read from the adapter instead of the base. The output is the base's tensors in the base's shards (or
 * cut by size), or with `to: "native"` the merged model converted to the native layout on the way.
 */

export interface MergeOptions {
  /** "hf" (the default): the merged release; "native": the merged model in Automodel's layout. */
  readonly to?: Layout;
  /** Cut shards by size (in reference order) instead of keeping the base's; always by size for native. */
  readonly maxShardSize?: number;
}

export interface PreparedMerge {
  readonly base: Checkpoint;
  readonly set: LoraSet;
  readonly to: Layout;
  /** Output tensors in write order, and the shards they go to. */
  readonly tensors: readonly PlannedTensor[];
  readonly shards: readonly ShardPlan[];
  readonly regions: readonly DeltaRegion[];
  readonly aux: AuxFiles;
  readonly warnings: readonly string[];
  readonly outputBytes: number;
}

/** Names under which a merge's tensor source serves the adapter's tensors beside the base's. */
const ADAPTER_TENSOR = "\u0000adapter\u0000";

/** The base's shards as they are: the same files, holding the same tensors in the same order. */
async function baseShards(base: Checkpoint, byName: ReadonlyMap<string, PlannedTensor>): Promise<ShardPlan[] | undefined> {
  const folder = base.folder!;
  let fileOf: (first: string) => string | undefined;
  if (base.files.length === 1 && base.weightFiles.has(SINGLE_FILE)) fileOf = () => SINGLE_FILE;
  else {
    const index = await readIndex(folder);
    fileOf = (first) => index.get(first);
  }
  const groups = new Map<string, PlannedTensor[]>();
  for (const f of base.files) {
    const entries = f.header.entries;
    if (entries.length === 0) return undefined;
    const rel = fileOf(entries[0]!.name);
    // A shard in a sub-folder would need its folder made first; such a base is cut by size instead.
    if (rel === undefined || rel.includes("/")) return undefined;
    groups.set(rel, entries.map((e) => byName.get(e.name)!));
  }
  return shardsFromGroups(groups);
}

/** The dtype of the base's routed expert weights, which the native grouped tensors keep (so no cast follows the merge). */
function expertDType(base: Checkpoint): DType | undefined {
  for (const [name, t] of base.tensors) if (parseExpertKey(name)?.kind === "expert-weight") return t.dtype;
  return undefined;
}

/**
 * Where each adapted weight lands in the output: its plan piece there reads the whole base weight, as it
 * is (HF) or transposed (a native grouped expert tensor), into a contiguous block.
 */
function deltaRegions(tensors: readonly PlannedTensor[], set: LoraSet, headers: Checkpoint["tensors"]): DeltaRegion[] {
  const byWeight = new Map<string, LoraModule>(set.modules.map((m) => [`${m.name}.weight`, m]));
  const placed = new Map<string, number>();
  const regions: DeltaRegion[] = [];
  const f32 = (t: PlannedTensor, transposed: boolean): PlannedTensor => viewOf(t, "", transposed ? (v) => transpose(v, 0, 1) : (v) => v, "F32");
  for (const t of tensors) {
    for (const p of t.pieces) {
      const m = byWeight.get(p.src);
      if (!m) continue;
      placed.set(p.src, (placed.get(p.src) ?? 0) + 1);
      const w = headers.get(p.src)!;
      const [out, inn] = w.shape as [number, number];
      const s = p.srcView;
      const d = p.dstView;
      const rowMajor = (v: typeof s, rows: number, cols: number): boolean =>
        sameShape(v.shape, [rows, cols]) && (rows === 1 || v.strides[0] === cols) && (cols === 1 || v.strides[1] === 1);
      let transposed: boolean;
      if (s.offset === 0 && rowMajor(s, out, inn) && rowMajor(d, out, inn)) transposed = false;
      else if (s.offset === 0 && sameShape(s.shape, [inn, out]) && (inn === 1 || s.strides[0] === 1) && (out === 1 || s.strides[1] === inn) && rowMajor(d, inn, out)) transposed = true;
      else throw new Error(`internal: ${t.name} reads ${p.src} in a way the merge cannot follow`);
      if (t.dtype !== w.dtype) {
        throw new ConversionError(`${set.adapter.where}: ${p.src} (${w.dtype}) would be written as ${t.dtype} in ${t.name}; the merge adds in the weight's own dtype`);
      }
      regions.push({
        tensor: t.name,
        offset: d.offset,
        rows: transposed ? inn : out,
        cols: transposed ? out : inn,
        rank: m.rank,
        scale: m.scale,
        dtype: t.dtype as MergeDType,
        left: transposed ? f32(m.a, true) : f32(m.b, false),
        right: transposed ? f32(m.b, true) : f32(m.a, false),
      });
    }
  }
  for (const m of set.modules) {
    const n = placed.get(`${m.name}.weight`) ?? 0;
    if (n !== 1) {
      throw new ConversionError(
        `${set.adapter.weights.name}: tensor ${JSON.stringify(m.keys[0])}: ${m.name}.weight is ${n === 0 ? "not written" : `read ${n} times`} in the output, so its LoRA cannot be merged exactly once`,
      );
    }
  }
  return regions;
}

/** Plan a merge from the base's headers and config and the adapter's headers; reads no tensor data. */
export async function prepareMerge(base: Checkpoint, adapter: AdapterFolder, options: MergeOptions = {}, signal?: AbortSignal): Promise<PreparedMerge> {
  checkShardSize(options.maxShardSize);
  if (base.folder === undefined) throw new InputError(`${base.where}: a merge needs a checkpoint folder (with config.json), not a single file`);
  for (const name of base.tensors.keys()) {
    if (name.startsWith(ADAPTER_TENSOR)) throw new InputError(`${base.where}: tensor ${JSON.stringify(name)} has a name omni-ckpt reserves for the adapter's tensors`);
  }
  const config = await base.readConfig(signal);
  const input = await loadPlanInput(base, signal);
  const model = baseModel(base, config, input.hfQuantConfig);
  const set = readLora(adapter, model);
  const to = checkLayoutName(options.to ?? "hf");
  const warnings = [...set.warnings];

  let tensors: PlannedTensor[];
  // The base as it is, but for a routing bias a buggy export left in bf16: as convert --to hf does.
  if (to === "hf") tensors = routingBiasInF32([...base.tensors.values()].map((t) => inputTensor(t.name, t)));
  else {
    const dtype = expertDType(base);
    const plan = planConversion(input, config, { to: "native", ...(dtype !== undefined ? { dtype } : {}) });
    tensors = [...plan.tensors];
    warnings.push(...plan.warnings.map((w) => w.message));
  }
  // modules_to_save: the adapter's weight takes the base weight's place wherever the output reads it.
  const replaced = new Map(set.replacements.map((r) => [r.weight, r.key]));
  if (replaced.size > 0) {
    tensors = tensors.map((t) =>
      t.pieces.some((p) => replaced.has(p.src)) ? { ...t, pieces: t.pieces.map((p) => (replaced.has(p.src) ? { ...p, src: ADAPTER_TENSOR + replaced.get(p.src)! } : p)) } : t,
    );
  }
  const regions = deltaRegions(tensors, set, base.tensors);

  let shards: ShardPlan[] | undefined;
  if (to === "hf" && options.maxShardSize === undefined) shards = await baseShards(base, new Map(tensors.map((t) => [t.name, t])));
  if (shards) tensors = shards.flatMap((s) => s.tensors as PlannedTensor[]);
  else {
    tensors = referenceOrder(tensors);
    shards = planShards(tensors, options.maxShardSize ?? DEFAULT_MAX_SHARD_SIZE);
  }
  const aux = await listAuxFiles(base.folder, base.weightFiles, signal ? { signal } : {});
  return { base, set, to, tensors, shards, regions, aux, warnings, outputBytes: tensors.reduce((n, t) => n + byteLength(t), 0) };
}

export interface MergeWriteOptions {
  readonly signal?: AbortSignal;
  /** Computes half of each chunk's deltas at the same time (a thread on another core). */
  readonly helper?: DeltaHelper;
  readonly onPlan?: (prepared: PreparedMerge) => void;
  readonly onProgress?: (bytes: number, tensors: number) => void;
}

/** Write a prepared merge into an output: shards (index last), then the base's other files unchanged. */
export async function writeMerge(prepared: PreparedMerge, out: OutputStore, options: MergeWriteOptions = {}): Promise<{ files: string[]; auxFiles: string[] }> {
  const { base, set, tensors, shards, regions, aux } = prepared;
  options.onPlan?.(prepared);
  const pool = new BufferPool();
  const adapterSource = fileSource(set.adapter.weights);
  const applier = new DeltaApplier(regions, adapterSource, pool, options.helper);
  const writer = await ShardedWriter.fromPlans(out, shards);
  try {
    let bytesDone = 0;
    let tensorsDone = 0;
    await streamTensors(tensors, prefixedUnion(checkpointSource(base.tensors), ADAPTER_TENSOR, adapterSource), writer, {
      pool,
      transform: applier.transform,
      ...(options.signal ? { signal: options.signal } : {}),
      onProgress: (bytes, completed) => {
        bytesDone += bytes;
        tensorsDone += completed;
        options.onProgress?.(bytesDone, tensorsDone);
      },
    });
    if (applier.pending !== 0) throw new Error(`internal: ${applier.pending} LoRA deltas were not applied`);
    const files = await writer.finish();
    const auxFiles = await copyAuxFiles(base.folder!, out, aux, options.signal);
    return { files, auxFiles };
  } catch (e) {
    writer.abandon();
    throw e;
  } finally {
    applier.release();
  }
}

export interface MergeSummary {
  /** What the adapter was: Automodel's native names or PEFT's on the HF release. */
  readonly adapter: "automodel" | "hf";
  readonly to: Layout;
  readonly tensorsIn: number;
  readonly tensorsOut: number;
  readonly bytesOut: number;
  /** LoRA modules merged (each routed expert's projection counts once), and of them routed experts. */
  readonly modules: number;
  readonly expertModules: number;
  /** Weights replaced by the adapter's `modules_to_save`. */
  readonly replaced: number;
  readonly files: readonly string[];
  readonly auxFiles: readonly string[];
  readonly skippedFiles: readonly string[];
  readonly auxListed: boolean;
  readonly warnings: readonly string[];
}

export function mergeSummary(prepared: PreparedMerge, written: { files: readonly string[]; auxFiles: readonly string[] }): MergeSummary {
  const { set } = prepared;
  return {
    adapter: set.source,
    to: prepared.to,
    tensorsIn: prepared.base.tensors.size,
    tensorsOut: prepared.tensors.length,
    bytesOut: prepared.outputBytes,
    modules: set.modules.length,
    expertModules: set.modules.filter((m) => m.expert).length,
    replaced: set.replacements.length,
    files: written.files,
    auxFiles: written.auxFiles,
    skippedFiles: prepared.aux.skipped,
    auxListed: prepared.aux.listable,
    warnings: prepared.warnings,
  };
}

/** Merge the adapter of one folder into the checkpoint of another, into any output (a browser, a test). */
export async function mergeFolders(baseFolder: Folder, adapterFolder: Folder, out: OutputStore, options: MergeOptions & MergeWriteOptions = {}): Promise<MergeSummary> {
  const base = await Checkpoint.open(baseFolder, options.signal ? { signal: options.signal } : {});
  try {
    const adapter = await openAdapter(adapterFolder, options.signal);
    try {
      const prepared = await prepareMerge(base, adapter, options, options.signal);
      return mergeSummary(prepared, await writeMerge(prepared, out, options));
    } finally {
      adapter.close();
    }
  } finally {
    base.close();
  }
}
