import { type ModelConfig, parseModelConfig, truncationEdits } from "../adapters/config.js";
import type { ExpertActivation, ExpertParallel } from "../adapters/experts.js";
import { NemotronOmniStateDictAdapter } from "../adapters/nemotron-omni.js";
import { NemotronV3StateDictAdapter, resolveDType } from "../adapters/nemotron-v3.js";
import type { Diagnostic, Plan, PlannedTensor } from "../adapters/plan.js";
import { ConversionError, InputError, UsageError } from "../errors.js";
import type { Checkpoint, ConfigFile } from "../safetensors/checkpoint.js";
import { referenceOrder } from "../safetensors/encode.js";
import { editJson } from "../safetensors/json-edit.js";
import { isFloat } from "../tensor/dtype.js";
import { type TensorInfo, byteLength } from "../tensor/tensor.js";
import { checkConsistency, requireConsistent } from "./consistency.js";
import { type Layout, layoutName, requireLayout } from "./layout.js";

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
  readonly inputBytes: number;
  readonly outputBytes: number;
}

/** Diagnostics that mean config and tensors disagree: fatal for a whole-checkpoint conversion. */
const FATAL: ReadonlySet<string> = new Set(["expert-out-of-range", "grouped-shape-mismatch"]);

/** What planning needs of a checkpoint: its headers and how to name it in messages. */
export interface PlanInput {
  readonly headers: ReadonlyMap<string, TensorInfo>;
  readonly where: string;
}

export function planInput(ckpt: Checkpoint): PlanInput {
  return { headers: ckpt.tensors, where: ckpt.where };
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

/** config.json for a model truncated to its first `n` layers, edited in its own text. */
function truncatedConfig(input: ConfigFile, config: ModelConfig, n: number): ConfigFile {
  const text = editJson(input.text, truncationEdits(input.values, config, n), { nonFinite: true });
  return { file: input.file, text, values: input.values };
}

/**
 * Everything about a conversion that can be known from headers and config: the layouts, the checks, and
 * each output tensor's recipe, in write order. Reads no tensor data.
 */
export function planConversion(input: PlanInput, configFile: ConfigFile, options: ConvertOptions): ConversionPlan {
  const { headers, where } = input;
  const source = requireLayout(headers.keys(), where);
  if (source === options.to) throw new InputError(`${where}: is already in the ${layoutName(source)} layout`);
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
    if (options.to === "native") plan = planner.planFromHf(headers, options.ep ? { ep: options.ep } : {});
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

  // The reference writes the routing bias in float32 when it saves an HF checkpoint; a bf16 bias
  // mis-routes tokens. Its Omni wrapper forgets this (SPEC §2), a whole-checkpoint export must not.
  let tensors = plan.tensors;
  if (options.to === "hf") {
    tensors = tensors.map((t) =>
      t.name.includes("e_score_correction_bias") && isFloat(t.dtype) && t.dtype !== "F32" ? { ...t, dtype: "F32" as const } : t,
    );
  }
  tensors = referenceOrder(tensors);
  const outputConfig =
    options.numLayers !== undefined && options.numLayers < config.llm.numHiddenLayers
      ? truncatedConfig(configFile, config, options.numLayers)
      : undefined;
  return {
    source,
    target: options.to,
    config,
    tensors,
    warnings: plan.diagnostics.filter((d) => !FATAL.has(d.code) && d.code !== "layer-dropped"),
    outputConfig,
    inputBytes: [...headers.values()].reduce((n, t) => n + byteLength(t), 0),
    outputBytes: tensors.reduce((n, t) => n + byteLength(t), 0),
  };
}
