import { type ModelConfig, parseModelConfig, truncationEdits } from "../adapters/config.js";
import type { ExpertActivation, ExpertParallel } from "../adapters/experts.js";
import { NemotronOmniStateDictAdapter } from "../adapters/nemotron-omni.js";
import { NemotronV3StateDictAdapter, resolveDType } from "../adapters/nemotron-v3.js";
import { parseExpertKey } from "../adapters/expert-keys.js";
import { type Diagnostic, type Plan, type PlannedTensor, inputTensor } from "../adapters/plan.js";
import { compileKeyRegex } from "../adapters/key-regex.js";
import { ConversionError, InputError, UsageError } from "../errors.js";
import { type Checkpoint, type ConfigFile, parseConfigText } from "../safetensors/checkpoint.js";
import { readText } from "../io/folder.js";
import { referenceOrder } from "../safetensors/encode.js";
import { type JsonEdit, editJson } from "../safetensors/json-edit.js";
import { type Quantization, SCHEME_NAMES, detectQuantization, hasNvfp4 } from "../quant/detect.js";
import { HF_QUANT_CONFIG, dequantizedHeaders, quantConfigEdits, quantizedError, withScales } from "../quant/plan.js";
import { type DType, isFloat } from "../tensor/dtype.js";
import { type TensorInfo, byteLength } from "../tensor/tensor.js";
import { checkConsistency, requireConsistent } from "./consistency.js";
import { type Layout, checkLayoutName, layoutName, requireLayout } from "./layout.js";

export interface ConvertOptions {
  readonly to: Layout;
  /** dtype of merged experts (to native). */
  readonly dtype?: string;
  readonly ep?: ExpertParallel;
  /** Keep only the first N language-model layers (to native). */
  readonly numLayers?: number;
  /** Python-style regex of keys to drop (to HF). */
  readonly exclude?: string;
  /** Per-expert LoRA keys instead of ParamWrapper (to HF). */
  readonly v4Compatible?: boolean;
  readonly expertActivation?: ExpertActivation;
  /**
   * Read a quantized HF checkpoint's FP8 weights as bf16 (`(f32(w) × scale)` rounded to nearest even) and
   * leave its scales and quantization config out; without it a quantized checkpoint is refused.
   */
  readonly dequantize?: boolean;
  /**
   * The output is matched to the release it came from afterwards (`--base`): an HF source is then a
   * conversion of its own (the release's buffers, dtypes and shards), not "already in the layout".
   */
  readonly againstRelease?: boolean;
}

/** What a dequantizing conversion did, for its summary. */
export interface Dequantization {
  /** Weights read as bf16, per scheme name. */
  readonly weights: Readonly<Record<string, number>>;
  /** Scales, input_scale, k_scale/v_scale: tensors left out. */
  readonly droppedTensors: number;
  /** Where a `quantization_config` was removed from config.json. */
  readonly configRemoved: readonly string[];
}

export interface ConversionPlan {
  readonly source: Layout;
  readonly target: Layout;
  readonly config: ModelConfig;
  /** Output tensors in the order they are written. */
  readonly tensors: readonly PlannedTensor[];
  /** Things the rules did that a user should hear about (unknown keys, dropped scales). */
  readonly warnings: readonly Diagnostic[];
  /**
   * config.json for the output when it must change (`--num-layers` cuts it): the input's text with only
   * the changed values edited. Undefined when the input's file is copied byte for byte.
   */
  readonly outputConfig: ConfigFile | undefined;
  /** Files of the source that do not belong in the output (a dequantized copy has no hf_quant_config.json). */
  readonly droppedFiles?: readonly string[];
  /** Set when the conversion dequantizes. */
  readonly dequantized?: Dequantization;
  readonly inputBytes: number;
  readonly outputBytes: number;
}

/** Diagnostics that mean config and tensors disagree: fatal for a whole-checkpoint conversion. */
const FATAL: ReadonlySet<string> = new Set(["expert-out-of-range", "grouped-shape-mismatch"]);

/** What planning needs of a checkpoint: its headers and how to name it in messages. */
export interface PlanInput {
  readonly headers: ReadonlyMap<string, TensorInfo>;
  readonly where: string;
  /** `hf_quant_config.json` of the folder, parsed, when it has one (ModelOpt's description of a quantized export). */
  readonly hfQuantConfig?: unknown;
}

export function planInput(ckpt: Checkpoint, hfQuantConfig?: unknown): PlanInput {
  return { headers: ckpt.tensors, where: ckpt.where, ...(hfQuantConfig !== undefined ? { hfQuantConfig } : {}) };
}

/** `hf_quant_config.json` beside config.json is small; anything past this is not one. */
const MAX_QUANT_CONFIG_BYTES = 16_000_000;

/**
 * Every routing bias (`….gate.e_score_correction_bias`) in float32, as the reference writes it when it saves
 * an HF checkpoint: a bf16 bias mis-routes tokens. Its Omni wrapper forgets this (SPEC §2); no HF
 * checkpoint omni-ckpt writes does.
 */
export function routingBiasInF32<T extends PlannedTensor>(tensors: readonly T[]): T[] {
  return tensors.map((t) => (t.name.endsWith("e_score_correction_bias") && isFloat(t.dtype) && t.dtype !== "F32" ? { ...t, dtype: "F32" as const } : t));
}

/**
 * The dtype that holds every routed-expert weight of an HF checkpoint exactly once grouped: theirs when they
 * agree, else float32 (which holds bf16, f16 and FP8 values exactly). Undefined when there are none, or
 * when one is of a dtype no grouped expert tensor can take.
 */
export function losslessExpertDType(tensors: Iterable<TensorInfo & { readonly name: string }>): DType | undefined {
  const seen = new Set<DType>();
  for (const t of tensors) if (parseExpertKey(t.name)?.kind === "expert-weight") seen.add(t.dtype);
  if (seen.size === 0) return undefined;
  if (seen.size === 1) {
    const only = [...seen][0]!;
    return only === "BF16" || only === "F16" || only === "F32" ? only : undefined;
  }
  return [...seen].every((d) => d === "BF16" || d === "F16" || d === "F32") ? "F32" : undefined;
}

/** A checkpoint's plan input with its `hf_quant_config.json` read, as whole-checkpoint operations need it. */
export async function loadPlanInput(ckpt: Checkpoint, signal?: AbortSignal): Promise<PlanInput> {
  const folder = ckpt.folder;
  if (folder === undefined || (await folder.stat(HF_QUANT_CONFIG, signal))?.kind !== "file") return planInput(ckpt);
  return planInput(ckpt, parseConfigText(await readText(folder, HF_QUANT_CONFIG, MAX_QUANT_CONFIG_BYTES, signal), folder.describe(HF_QUANT_CONFIG)).values);
}

function checkOptions(o: ConvertOptions, config: ModelConfig): void {
  const toNativeOnly: [boolean, string][] = [
    [o.ep !== undefined, "--ep-rank/--ep-size"],
    [o.numLayers !== undefined, "--num-layers"],
    [o.dtype !== undefined, "--dtype"],
  ];
  const toHfOnly: [boolean, string][] = [
    [o.exclude !== undefined, "--exclude"],
    [o.v4Compatible === true, "--v4-compatible"],
  ];
  for (const [given, flag] of o.to === "hf" ? toNativeOnly : toHfOnly) {
    if (given) throw new UsageError(`${flag} applies only to --to ${o.to === "hf" ? "native" : "hf"}`);
  }
  if (o.numLayers !== undefined && (!Number.isSafeInteger(o.numLayers) || o.numLayers < 1)) {
    throw new UsageError(`--num-layers must be a positive integer, got ${o.numLayers}`);
  }
  if (o.ep !== undefined) {
    if (!Number.isSafeInteger(o.ep.size) || o.ep.size < 1) throw new UsageError(`--ep-size must be a positive integer, got ${o.ep.size}`);
    if (!Number.isSafeInteger(o.ep.rank) || o.ep.rank < 0 || o.ep.rank >= o.ep.size) {
      throw new UsageError(`--ep-rank must be in [0, ${o.ep.size}), got ${o.ep.rank}`);
    }
    if (config.llm.nRoutedExperts === undefined) throw new UsageError("--ep-rank/--ep-size given, but the model has no routed experts");
    if (o.ep.size > config.llm.nRoutedExperts) {
      throw new UsageError(`--ep-size ${o.ep.size} is larger than the model's ${config.llm.nRoutedExperts} experts`);
    }
  }
  if (o.dtype !== undefined) resolveDType(o.dtype);
}

/** config.json edited in its own text: cut to fewer layers, its quantization config removed. */
function editedConfig(input: ConfigFile, edits: readonly JsonEdit[]): ConfigFile | undefined {
  if (edits.length === 0) return undefined;
  return { file: input.file, text: editJson(input.text, edits, { nonFinite: true }), values: input.values };
}

/**
 * Quantization is looked for before anything is planned (SPEC §7): a quantized checkpoint is refused,
 * or with `dequantize` seen as the bf16 checkpoint it stands for.
 */
function resolveQuantization(input: PlanInput, configFile: ConfigFile, dequantize: boolean): { headers: ReadonlyMap<string, TensorInfo>; quant?: Quantization } {
  const quant = detectQuantization(input.headers, configFile.values, input.hfQuantConfig);
  if (!quant) {
    if (dequantize) throw new UsageError(`--dequantize given, but ${input.where} is not quantized`);
    return { headers: input.headers };
  }
  if (!dequantize || hasNvfp4(quant) || quant.unsupported.length > 0) throw quantizedError(quant, input.where);
  return { headers: dequantizedHeaders(input.headers, quant), quant };
}

/**
 * Everything about a conversion that can be known from headers and config: the layouts, the checks, and
 * each output tensor's recipe, in write order. Reads no tensor data.
 */
export function planConversion(input: PlanInput, configFile: ConfigFile, options: ConvertOptions): ConversionPlan {
  checkLayoutName(options.to);
  const { where } = input;
  const { headers, quant } = resolveQuantization(input, configFile, options.dequantize === true);
  const source = requireLayout(headers.keys(), where);
  // Dequantizing into the same layout, or matching an HF export to its release, is a conversion of its own.
  const sameLayout = source === options.to;
  if (sameLayout && !quant && options.againstRelease !== true) throw new InputError(`${where}: is already in the ${layoutName(source)} layout`);
  if (sameLayout && options.v4Compatible === true) throw new UsageError(`--v4-compatible applies to a native source; ${where} is already in the HF layout`);
  const configPath = configFile.file;
  const config = parseModelConfig(configFile.values, configPath);
  checkOptions(options, config);

  requireConsistent(checkConsistency(config, source, headers), configPath);

  const llm = options.numLayers !== undefined ? { ...config.llm, numHiddenLayers: options.numLayers } : config.llm;
  const adapterOptions = {
    ...(options.dtype !== undefined ? { dtype: options.dtype } : {}),
    ...(options.expertActivation !== undefined ? { expertActivation: options.expertActivation } : {}),
  };
  const planner =
    config.kind === "omni"
      ? new NemotronOmniStateDictAdapter({ kind: "omni", llm }, adapterOptions)
      : new NemotronV3StateDictAdapter(llm, adapterOptions);
  let plan: Plan;
  try {
    if (sameLayout) plan = samePlan(headers, options.exclude);
    else if (options.to === "native") plan = planner.planFromHf(headers, options.ep ? { ep: options.ep } : {});
    else {
      plan = planner.planToHf(headers, {
        ...(options.exclude !== undefined ? { excludeKeyRegex: options.exclude } : {}),
        v4Compatible: options.v4Compatible ?? false,
      });
    }
  } catch (e) {
    // The adapters name tensors; the user also needs to know which checkpoint.
    if (e instanceof ConversionError) throw new ConversionError(`${where}: ${e.message}`);
    throw e;
  }
  const fatal = plan.diagnostics.find((d) => FATAL.has(d.code));
  if (fatal) throw new ConversionError(`${where}: ${fatal.message}`);

  let tensors = plan.tensors;
  if (options.to === "hf") tensors = routingBiasInF32(tensors);
  if (quant) tensors = withScales(tensors, quant);
  tensors = referenceOrder(tensors);
  const truncate = options.numLayers !== undefined && options.numLayers < config.llm.numHiddenLayers;
  const edits = [...(truncate ? truncationEdits(configFile.values, config, options.numLayers!) : []), ...(quant ? quantConfigEdits(quant) : [])];
  return {
    source,
    target: options.to,
    config,
    tensors,
    warnings: plan.diagnostics.filter((d) => !FATAL.has(d.code) && d.code !== "layer-dropped"),
    outputConfig: editedConfig(configFile, edits),
    droppedFiles: quant && input.hfQuantConfig !== undefined ? [HF_QUANT_CONFIG] : [],
    ...(quant ? { dequantized: dequantization(quant, tensors) } : {}),
    inputBytes: [...input.headers.values()].reduce((n, t) => n + byteLength(t), 0),
    outputBytes: tensors.reduce((n, t) => n + byteLength(t), 0),
  };
}

/** An HF checkpoint into the HF layout (dequantized, or matched to its release): every tensor as it is (but for `--exclude`). */
function samePlan(headers: ReadonlyMap<string, TensorInfo>, exclude: string | undefined): Plan {
  const re = exclude === undefined ? undefined : compileKeyRegex(exclude);
  return { tensors: [...headers].filter(([name]) => !re?.test(name)).map(([name, info]) => inputTensor(name, info)), diagnostics: [] };
}

/** What was dequantized: the quantized weights the output is built from (not those `--num-layers` or `--ep-*` leave out). */
function dequantization(q: Quantization, tensors: readonly PlannedTensor[]): Dequantization {
  const read = new Set<string>();
  for (const t of tensors) for (const p of t.pieces) if (p.scale) read.add(p.src);
  const weights: Record<string, number> = {};
  for (const name of read) {
    const scheme = SCHEME_NAMES[q.weights.get(name)!.scheme];
    weights[scheme] = (weights[scheme] ?? 0) + 1;
  }
  return { weights, droppedTensors: q.extras.size, configRemoved: q.declarations.flatMap((d) => (d.path ? [d.where] : [])) };
}
