import { type PlannedTensor, inputTensor } from "../adapters/plan.js";
import { ConversionError, InputError } from "../errors.js";
import { type Checkpoint, readIndex } from "../safetensors/checkpoint.js";
import type { DeclaredTensor } from "../safetensors/encode.js";
import { SINGLE_FILE, type ShardPlan, shardsFromGroups } from "../safetensors/shard-plan.js";
import { detectQuantization } from "../quant/detect.js";
import { describeQuantized } from "../quant/plan.js";
import { type DType, isFloat } from "../tensor/dtype.js";
import { type TensorInfo, byteLength, formatShape, sameShape } from "../tensor/tensor.js";
import { prefixedUnion } from "./checkpoint-source.js";
import { requireLayout } from "./layout.js";
import type { TensorSource } from "./stream.js";

/**
 * `convert --to hf --base RELEASE`: an HF export that is a drop-in replacement for the release it was
 * trained from. The model NeMo Automodel trains has no copy of four static buffers of the release (SPEC
 * §6); they are taken from RELEASE byte for byte, and nothing else ever is: a trained weight missing from
 * SRC is an error. Every floating tensor is written in the release's dtype (widened exactly, narrowed to
 * nearest even), into the release's shards, and the result is audited against the release, tensor by
 * tensor (names, shapes, dtypes), before a byte is written.
 */

/** The release's static buffers that a model trained in NeMo Automodel does not hold. */
export const RELEASE_BUFFERS: readonly string[] = [
  "sound_encoder.encoder.feature_extractor.featurizer.fb",
  "sound_encoder.encoder.feature_extractor.featurizer.window",
  "vision_model.radio_model.input_conditioner.norm_mean",
  "vision_model.radio_model.input_conditioner.norm_std",
];

/** Input names of tensors read from the release (no tensor name starts with a NUL). */
const FROM_RELEASE = "\u0000release:";

export interface BaseAudit {
  /** How the release was named. */
  readonly release: string;
  readonly releaseTensors: number;
  /** Release tensors the output holds, under the same name, shape and dtype: all of them, or the export fails. */
  readonly present: number;
  /** Tensors copied from the release because SRC lacks them: only ever the static buffers. */
  readonly taken: readonly string[];
  /** Tensors written in the release's dtype rather than SRC's, counted by that dtype. */
  readonly retyped: Readonly<Partial<Record<DType, number>>>;
  /** The same, tensor by tensor. */
  readonly retypedTensors: readonly { readonly name: string; readonly from: DType; readonly to: DType }[];
  /** The output's shard files, as the release names them. */
  readonly files: readonly string[];
}

export interface BaseExport {
  /** The output's tensors, in write order: shard by shard, each in the release's order. */
  readonly tensors: readonly PlannedTensor[];
  readonly shards: readonly ShardPlan[];
  readonly audit: BaseAudit;
  /** Reads SRC's tensors as the plan names them, and the release's under their own internal names. */
  source(src: TensorSource, release: TensorSource): TensorSource;
}

/** The release's weight map: tensor → shard file, for a single-file release all in model.safetensors. */
async function releaseFiles(release: Checkpoint, signal?: AbortSignal): Promise<Map<string, string>> {
  if (!release.sharded) return new Map([...release.tensors.keys()].map((n) => [n, SINGLE_FILE]));
  return readIndex(release.folder!, signal);
}

/** Refuse a release that cannot be exported against: not a folder, not in the HF layout, quantized. */
function checkRelease(release: Checkpoint): void {
  if (release.folder === undefined) throw new InputError(`${release.where}: --base needs the release's checkpoint folder, not a single file`);
  const layout = requireLayout(release.tensors.keys(), release.where);
  if (layout !== "hf") throw new InputError(`${release.where}: --base needs the release in the Hugging Face (HF) layout, but it is native`);
  const quant = detectQuantization(release.tensors, {});
  if (quant) throw new InputError(`${release.where}: is quantized (${describeQuantized(quant)}); --base needs the release in bf16, as the export is written in its dtypes`);
}

function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

/**
 * The export's tensors matched to the release: names, shapes and dtypes audited, the static buffers SRC
 * lacks taken from the release, every floating tensor cast to the release's dtype, shards as the release's.
 * Fails, naming what does not match, before anything is written.
 */
export async function planAgainstRelease(
  tensors: readonly PlannedTensor[],
  srcHeaders: ReadonlyMap<string, TensorInfo>,
  where: string,
  release: Checkpoint,
  releaseName = release.where,
  signal?: AbortSignal,
): Promise<BaseExport> {
  checkRelease(release);
  const files = await releaseFiles(release, signal);
  const planned = new Map(tensors.map((t) => [t.name, t]));
  const missing: string[] = [];
  const shapes: string[] = [];
  const dtypes: string[] = [];
  const taken: string[] = [];
  const retypedTensors: { name: string; from: DType; to: DType }[] = [];
  const out = new Map<string, PlannedTensor>();
  for (const r of release.tensors.values()) {
    const t = planned.get(r.name);
    if (!t) {
      if (RELEASE_BUFFERS.includes(r.name)) {
        taken.push(r.name);
        const copy = inputTensor(FROM_RELEASE + r.name, r);
        out.set(r.name, { ...copy, name: r.name });
      } else missing.push(r.name);
      continue;
    }
    if (!sameShape(t.shape, r.shape)) {
      shapes.push(`${r.name} is ${formatShape(t.shape)} in the export, ${formatShape(r.shape)} in the release`);
      continue;
    }
    // What SRC held: the dtype of the inputs the tensor is built from (a rule may already have widened
    // it); a dequantized weight's values are bf16 whatever its codes' dtype.
    const first = t.pieces[0];
    const from = first ? (first.scale ? "BF16" : (srcHeaders.get(first.src)?.dtype ?? t.dtype)) : t.dtype;
    if (t.dtype !== r.dtype && !(isFloat(t.dtype) && isFloat(r.dtype))) {
      dtypes.push(`${r.name} is ${t.dtype} in the export, ${r.dtype} in the release`);
      continue;
    }
    if (from !== r.dtype && isFloat(from) && isFloat(r.dtype)) retypedTensors.push({ name: r.name, from, to: r.dtype });
    out.set(r.name, t.dtype === r.dtype ? t : { ...t, dtype: r.dtype });
  }
  const extra = tensors.filter((t) => !release.tensors.has(t.name)).map((t) => t.name);
  const problems: string[] = [];
  if (missing.length > 0) {
    problems.push(
      `the export lacks ${plural(missing.length, "tensor")} of the release (first: ${missing[0]}); only the release's static buffers ` +
        `(${RELEASE_BUFFERS.map((n) => n.slice(n.lastIndexOf(".") + 1)).join(", ")}) are ever taken from it, never a trained weight`,
    );
  }
  if (extra.length > 0) problems.push(`the export has ${plural(extra.length, "tensor")} the release does not (first: ${extra[0]})`);
  if (shapes.length > 0) problems.push(`${plural(shapes.length, "tensor")} of another shape (first: ${shapes[0]})`);
  if (dtypes.length > 0) problems.push(`${plural(dtypes.length, "tensor")} of a dtype that cannot be cast (first: ${dtypes[0]})`);
  if (problems.length > 0) throw new ConversionError(`${where}: does not match the release ${releaseName}: ${problems.join("; ")}`);

  // Shards as the release's: its file names, its tensor-to-file assignment, each file in its own order.
  const groups = new Map<string, DeclaredTensor[]>();
  const byFile = [...release.tensors.values()].sort((a, b) => {
    const fa = files.get(a.name)!;
    const fb = files.get(b.name)!;
    return fa < fb ? -1 : fa > fb ? 1 : a.entry.begin - b.entry.begin;
  });
  const ordered: PlannedTensor[] = [];
  for (const r of byFile) {
    const file = files.get(r.name)!;
    const list = groups.get(file) ?? [];
    list.push({ name: r.name, dtype: r.dtype, shape: r.shape });
    groups.set(file, list);
    ordered.push(out.get(r.name)!);
  }
  const retyped: Partial<Record<DType, number>> = {};
  for (const r of retypedTensors) retyped[r.to] = (retyped[r.to] ?? 0) + 1;
  const audit: BaseAudit = {
    release: releaseName,
    releaseTensors: release.tensors.size,
    present: release.tensors.size,
    taken,
    retyped,
    retypedTensors,
    files: [...groups.keys()],
  };
  return {
    tensors: ordered,
    shards: shardsFromGroups(groups),
    audit,
    source: (src, rel) => prefixedUnion(src, FROM_RELEASE, rel),
  };
}

/** Total data bytes of the export. */
export function exportBytes(b: BaseExport): number {
  return b.tensors.reduce((n, t) => n + byteLength(t), 0);
}
