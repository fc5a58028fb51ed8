import { UsageError } from "../errors.js";
import type { OutputStore } from "../io/output.js";
import { referenceOrder } from "../safetensors/encode.js";
import type { ShardPlan } from "../safetensors/shard-plan.js";
import type { DType } from "../tensor/dtype.js";
import { byteLength } from "../tensor/tensor.js";
import { type SynthPlan, type SynthProgress, type SynthTensor, synthBytes, synthOtherFiles, writeSynthWith } from "./layout.js";
import { SYNTH_QUANTS, type SynthQuant } from "./quant-kinds.js";

/**
 * Quantized versions of a synthetic checkpoint, shaped like NVIDIA's FP8 and NVFP4 releases (ModelOpt's
 * unified HF export) and like DeepSeek-style block FP8, for tests of the refusals and of `--dequantize`.
 * Which tensors are quantized follows NVIDIA's recipe for this family (hub-quant notes, 3(e)): the
 * language model's linear layers (routed and shared experts, Mamba in/out projections, MLPs); not the
 * vision and sound encoders, projectors, embeddings, lm_head, router, conv1d, norms, attention
 * projections or MTP. Attention layers get FP8 KV-cache scales. NVFP4 is mixed, as the release is:
 * routed experts NVFP4 (where their input width is a multiple of 16), the other linear layers FP8.
 */

export { type SynthQuant, SYNTH_QUANTS } from "./quant-kinds.js";

const LINEAR = /^language_model\.backbone\.layers\.\d+\.mixer\.(?:experts\.\d+\.(?:up|down)_proj|shared_experts\.(?:up|down)_proj|in_proj|out_proj|up_proj|down_proj)\.weight$/;
const ROUTED = /\.mixer\.experts\.\d+\.(?:up|down)_proj\.weight$/;
const KV = /^(language_model\.backbone\.layers\.\d+\.mixer\.)([kv])_proj\.weight$/;

/** How a quantized tensor's bytes are made. */
type Role = "fp8" | "scale" | "packed" | "block-scale";

export interface QuantSynthPlan {
  readonly quant: SynthQuant;
  /** The checkpoint as written: quantized tensors, their scales, and config.json with its quantization_config. */
  readonly plan: SynthPlan;
  readonly roles: ReadonlyMap<string, Role>;
  /** Files besides config.json and the stand-ins synth always writes (ModelOpt's hf_quant_config.json). */
  readonly extraFiles: readonly [string, Uint8Array][];
}

const MODELOPT = { name: "modelopt", version: "0.43.0" };
const FP8_ARGS = { dynamic: false, num_bits: 8, type: "float" };
const EXCLUDED = [
  "language_model.lm_head",
  "language_model.backbone.embeddings",
  "language_model.mtp*",
  "*mixer.gate*",
  "*mixer.conv1d*",
  "*q_proj*",
  "*k_proj*",
  "*v_proj*",
  "*o_proj*",
  "mlp1*",
  "sound_encoder*",
  "sound_projection*",
  "vision_model*",
];

/** The module a weight belongs to, as ModelOpt names layers: the weight's name without `.weight`. */
const moduleOf = (name: string): string => name.slice(0, -".weight".length);

export function quantizeSynthPlan(plan: SynthPlan, quant: SynthQuant): QuantSynthPlan {
  if (!SYNTH_QUANTS.includes(quant)) throw new UsageError(`unknown quantization ${JSON.stringify(quant)}: use ${SYNTH_QUANTS.join(", ")}`);
  const roles = new Map<string, Role>();
  const layers: Record<string, { quant_algo: string; group_size?: number }> = {};
  /** What each tensor of the plan becomes: itself, or its quantized version and the tensors beside it. */
  const replaced = new Map<string, SynthTensor[]>();
  let tensors: SynthTensor[] = [];
  const add = (name: string, dtype: DType, shape: readonly number[], role: Role): void => {
    tensors.push({ name, dtype, shape, kind: "weight" });
    roles.set(name, role);
  };
  for (const t of plan.tensors) {
    tensors = [];
    replaced.set(t.name, tensors);
    const kv = KV.exec(t.name);
    if (kv && quant !== "fp8-block") {
      tensors.push(t);
      add(`${kv[1]}${kv[2]}_proj.${kv[2]}_scale`, "F32", [], "scale");
      continue;
    }
    if (!LINEAR.test(t.name) || t.shape.length !== 2) {
      tensors.push(t);
      continue;
    }
    const [out, inner] = t.shape as [number, number];
    if (quant === "nvfp4" && ROUTED.test(t.name) && inner % 16 === 0) {
      add(t.name, "U8", [out, inner / 2], "packed");
      add(`${t.name}_scale`, "F8_E4M3", [out, inner / 16], "block-scale");
      add(`${t.name}_scale_2`, "F32", [], "scale");
      add(`${moduleOf(t.name)}.input_scale`, "F32", [], "scale");
      layers[moduleOf(t.name)] = { quant_algo: "NVFP4", group_size: 16 };
      continue;
    }
    add(t.name, "F8_E4M3", t.shape, "fp8");
    if (quant === "fp8-block") {
      add(`${t.name}_scale_inv`, "F32", [Math.ceil(out / 128), Math.ceil(inner / 128)], "scale");
      continue;
    }
    add(`${t.name}_scale`, "F32", [], "scale");
    add(`${moduleOf(t.name)}.input_scale`, "F32", [], "scale");
    layers[moduleOf(t.name)] = { quant_algo: "FP8" };
  }

  const encoder = new TextEncoder();
  const json = (v: unknown): Uint8Array => encoder.encode(`${JSON.stringify(v, null, 2)}\n`);
  let quantizationConfig: Record<string, unknown>;
  const extraFiles: [string, Uint8Array][] = [];
  if (quant === "fp8-block") {
    quantizationConfig = { activation_scheme: "dynamic", fmt: "e4m3", quant_method: "fp8", weight_block_size: [128, 128] };
  } else if (quant === "fp8") {
    quantizationConfig = {
      config_groups: { group_0: { input_activations: FP8_ARGS, weights: FP8_ARGS, targets: ["Linear"] } },
      ignore: EXCLUDED,
      quant_algo: "FP8",
      kv_cache_scheme: FP8_ARGS,
      producer: MODELOPT,
      quant_method: "modelopt",
    };
    extraFiles.push(["hf_quant_config.json", json({ producer: MODELOPT, quantization: { quant_algo: "FP8", kv_cache_quant_algo: "FP8", exclude_modules: EXCLUDED } })]);
  } else {
    quantizationConfig = { quant_algo: "MIXED_PRECISION", kv_cache_scheme: FP8_ARGS, producer: MODELOPT, quant_method: "modelopt", quantized_layers: layers };
    extraFiles.push(["hf_quant_config.json", json({ producer: MODELOPT, quantization: { quant_algo: "MIXED_PRECISION", kv_cache_quant_algo: "FP8", quantized_layers: layers } })]);
  }
  const config = { ...plan.config, quantization_config: quantizationConfig };
  // Each quantized weight stays in its shard, with the tensors beside it; each shard in the serializer's order.
  const all = plan.tensors.flatMap((t) => replaced.get(t.name)!);
  const shards: ShardPlan[] = plan.shards.map((shard) => {
    const list = referenceOrder(shard.tensors.flatMap((t) => replaced.get(t.name)!));
    return { file: shard.file, tensors: list, dataSize: list.reduce((n, t) => n + byteLength(t), 0) };
  });
  return { quant, plan: { ...plan, tensors: all, shards, config }, roles, extraFiles };
}

/** FNV-1a of the name mixed with the seed, so each tensor's bytes are independent of the others. */
function seedOf(seed: number, name: string): number {
  let h = 0x9e3779b9 ^ seed;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  return h >>> 0 || 1;
}

/** Deterministic bytes: FP8 codes of every finite value, positive scales around ModelOpt's amax/448. */
export function quantSynthBytes(q: QuantSynthPlan, t: SynthTensor): Uint8Array {
  const role = q.roles.get(t.name);
  if (role === undefined) return synthBytes(t, q.plan.seed);
  const n = t.shape.reduce((a, b) => a * b, 1);
  const bytes = new Uint8Array(new ArrayBuffer(byteLength(t)));
  let x = seedOf(q.plan.seed, t.name);
  const next = (): number => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
  if (role === "scale") {
    // Magnitudes in [2^-12, 2^-6): what amax / 448 gives for weights of order 0.01–1.
    const u = new Uint32Array(bytes.buffer);
    for (let i = 0; i < n; i++) {
      const r = next();
      u[i] = ((115 + (r % 6)) << 23) | (r & 0x7fffff);
    }
    return bytes;
  }
  for (let i = 0; i < n; i++) {
    const r = next() >>> 8;
    if (role === "block-scale") bytes[i] = 0x08 + (r % (0x7e - 0x08 + 1));
    else if (role === "packed") bytes[i] = r & 0xff;
    else bytes[i] = (r & 0x7f) === 0x7f ? r & 0xfe : r & 0xff;
  }
  return bytes;
}

/** config.json (with its quantization_config), the stand-ins synth always writes, and hf_quant_config.json. */
export function quantSynthOtherFiles(q: QuantSynthPlan): [string, Uint8Array][] {
  return [...synthOtherFiles(q.plan), ...q.extraFiles];
}

/** Write a quantized synthetic checkpoint into an output, tensor by tensor. Returns the files written. */
export async function writeQuantSynth(q: QuantSynthPlan, out: OutputStore, signal?: AbortSignal, onProgress?: SynthProgress): Promise<string[]> {
  return writeSynthWith(q.plan, (t) => quantSynthBytes(q, t), quantSynthOtherFiles(q), out, signal, onProgress);
}
