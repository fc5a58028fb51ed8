import { type ModelConfig, parseModelConfig } from "../adapters/config.js";
import type { Checkpoint } from "../safetensors/checkpoint.js";
import { planShards } from "../safetensors/shard-plan.js";
import type { DType } from "../tensor/dtype.js";
import { byteLength, numel } from "../tensor/tensor.js";
import { COMPONENTS, type Component, componentOf } from "./components.js";
import { checkConsistency, requireConsistent } from "./consistency.js";
import { type Layout, detectLayout } from "./layout.js";
import { type QuantSummary, detectQuantization, logicalShape, summarizeQuantization } from "../quant/detect.js";
import { loadPlanInput, planConversion } from "./planner.js";

export interface ComponentStats {
  readonly component: Component;
  readonly tensors: number;
  readonly params: number;
  readonly bytes: number;
  /** Tensor count per dtype. */
  readonly dtypes: Readonly<Partial<Record<DType, number>>>;
}

export interface InspectReport {
  readonly location: string;
  readonly layout: Layout | undefined;
  readonly files: number;
  readonly tensors: number;
  readonly params: number;
  readonly bytes: number;
  readonly components: readonly ComponentStats[];
  readonly model?: {
    readonly kind: ModelConfig["kind"];
    readonly layers: number;
    readonly pattern?: string;
    readonly experts?: number;
    readonly expertWidth?: number;
    readonly hidden?: number;
    readonly mtpLayers?: number;
  };
  /** Experts per grouped tensor when this native checkpoint is one expert-parallel rank's slice. */
  readonly epSlice?: { readonly experts: number; readonly of: number };
  /** How the checkpoint is quantized, when it is (SPEC §7). */
  readonly quantization?: QuantSummary;
  /** What `convert` would write; `dequantize` when only `convert --dequantize` can convert it. */
  readonly convert?:
    | { readonly to: Layout; readonly tensors: number; readonly bytes: number; readonly files: number; readonly dequantize?: true }
    | { readonly to: Layout; readonly error: string };
}

/**
 * Tensors, parameters, bytes and dtypes per component. A parameter is a model weight's element: an NVFP4
 * weight packs two in a byte (its logical shape counts), and a quantized checkpoint's scales are none.
 */
function tally(ckpt: Checkpoint, extras?: ReadonlyMap<string, unknown>): { params: number; components: InspectReport["components"] } {
  const stats = new Map<Component, { tensors: number; params: number; bytes: number; dtypes: Partial<Record<DType, number>> }>();
  let params = 0;
  for (const t of ckpt.tensors.values()) {
    const c = componentOf(t.name);
    const s = stats.get(c) ?? { tensors: 0, params: 0, bytes: 0, dtypes: {} };
    const n = extras?.has(t.name) ? 0 : numel(logicalShape(t.name, t, ckpt.tensors));
    s.tensors++;
    s.params += n;
    s.bytes += byteLength(t);
    s.dtypes[t.dtype] = (s.dtypes[t.dtype] ?? 0) + 1;
    stats.set(c, s);
    params += n;
  }
  return { params, components: COMPONENTS.filter((c) => stats.has(c)).map((c) => ({ component: c, ...stats.get(c)! })) };
}

/**
 * Everything `inspect` shows, from headers and config.json alone: instant even on the 66 GB model. A folder
 * whose config.json is missing, broken or contradicted by the tensors is refused, as `convert` would.
 */
export async function describeCheckpoint(ckpt: Checkpoint, location = ckpt.where, signal?: AbortSignal): Promise<InspectReport> {
  const layout = detectLayout(ckpt.tensors.keys()).layout;
  const summary = (extras?: ReadonlyMap<string, unknown>) => {
    const { params, components } = tally(ckpt, extras);
    return { location, layout, files: ckpt.files.length, tensors: ckpt.tensors.size, params, bytes: ckpt.totalBytes, components };
  };
  // A lone file has no config, but its scales show in its own headers.
  if (ckpt.folder === undefined) return summary(detectQuantization(ckpt.tensors, {})?.extras);

  const configFile = await ckpt.readConfig(signal);
  const config: ModelConfig = parseModelConfig(configFile.values, configFile.file);
  const llm = config.llm;
  const model = {
    kind: config.kind,
    layers: llm.numHiddenLayers,
    ...(llm.hybridOverridePattern !== undefined ? { pattern: llm.hybridOverridePattern } : {}),
    ...(llm.nRoutedExperts !== undefined ? { experts: llm.nRoutedExperts } : {}),
    ...(llm.moeIntermediateSize !== undefined ? { expertWidth: llm.moeIntermediateSize } : {}),
    ...(llm.hiddenSize !== undefined ? { hidden: llm.hiddenSize } : {}),
    ...(llm.numNextnPredictLayers !== undefined ? { mtpLayers: llm.numNextnPredictLayers } : {}),
  };
  const input = await loadPlanInput(ckpt, signal);
  const quant = detectQuantization(input.headers, configFile.values, input.hfQuantConfig);
  const quantization = quant ? summarizeQuantization(quant) : undefined;
  const report = layout ? checkConsistency(config, layout, input.headers) : undefined;
  if (report) requireConsistent(report, configFile.file);
  const epSlice = report?.epSliceExperts !== undefined && llm.nRoutedExperts !== undefined ? { experts: report.epSliceExperts, of: llm.nRoutedExperts } : undefined;
  let convert: InspectReport["convert"];
  if (layout) {
    const to: Layout = layout === "hf" ? "native" : "hf";
    const dequantize = quantization?.dequantizable === true;
    try {
      const plan = planConversion(input, configFile, { to, ...(dequantize ? { dequantize } : {}) });
      convert = { to, tensors: plan.tensors.length, bytes: plan.outputBytes, files: planShards(plan.tensors).length, ...(dequantize ? { dequantize } : {}) };
    } catch (e) {
      // An expert-parallel slice is a valid checkpoint that cannot go to HF alone, and a quantization
      // omni-ckpt cannot undo is described above; anything else is broken.
      if (!epSlice && !quantization) throw e;
      convert = { to, error: (e as Error).message };
    }
  }
  return {
    ...summary(quant?.extras),
    model,
    ...(epSlice ? { epSlice } : {}),
    ...(quantization ? { quantization } : {}),
    ...(convert ? { convert } : {}),
  };
}
