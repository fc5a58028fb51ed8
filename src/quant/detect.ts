import type { PieceScale } from "../adapters/plan.js";
import { type Component, componentOf } from "../convert/components.js";
import { type DType, itemSize, isFloat } from "../tensor/dtype.js";
import { type TensorInfo, formatShape } from "../tensor/tensor.js";
import { isFloat8 } from "./float8.js";

/**
 * Recognising a quantized checkpoint (SPEC §7) from its tensors first and its config second: NVIDIA's
 * releases and third-party exports disagree with their own configs often enough that a tensor's dtype
 * and the scales beside it are the evidence; `quantization_config` (at the top of config.json or inside
 * `llm_config`/`text_config`) and `hf_quant_config.json` name the scheme and its block size, and an
 * algorithm nothing here can undo is refused from them.
 */

export type QuantScheme = "modelopt-fp8" | "block-fp8" | "nvfp4";

export const SCHEME_NAMES: Readonly<Record<QuantScheme, string>> = {
  "modelopt-fp8": "ModelOpt FP8",
  "block-fp8": "block FP8",
  nvfp4: "NVFP4",
};

export interface QuantizedWeight {
  readonly name: string;
  readonly scheme: QuantScheme;
  /** As stored: F8_E4M3 / F8_E5M2 codes, or NVFP4's packed U8 pairs. */
  readonly dtype: DType;
  /** The shape of its values: NVFP4's packed `[out, in/2]` bytes hold `[out, in]`. */
  readonly shape: readonly number[];
  /** How its FP8 codes are scaled; undefined for NVFP4, which is not dequantized. */
  readonly scale?: PieceScale;
}

/** A quantization named in a config file. */
export interface QuantDeclaration {
  /** Where, for messages: `config.json quantization_config`, `hf_quant_config.json`, … */
  readonly where: string;
  /** Its path in config.json (to remove it from a dequantized copy); undefined for hf_quant_config.json. */
  readonly path?: readonly string[];
  readonly method?: string;
  readonly algo?: string;
  readonly blockSize?: readonly [number, number];
}

/** What a tensor that only serves quantization is, by the last part of its name. */
export type ExtraRole = "weight_scale" | "weight_scale_inv" | "weight_scale_2" | "input_scale" | "k_scale" | "v_scale" | "k_bias" | "v_bias" | "pre_quant_scale";

const EXTRA_ROLES: ReadonlySet<string> = new Set<ExtraRole>([
  "weight_scale",
  "weight_scale_inv",
  "weight_scale_2",
  "input_scale",
  "k_scale",
  "v_scale",
  "k_bias",
  "v_bias",
  "pre_quant_scale",
]);

export interface Quantization {
  /** Quantized weights by name, in the checkpoint's order. */
  readonly weights: ReadonlyMap<string, QuantizedWeight>;
  /** Tensors that only serve the quantization (scales, input_scale, k_scale/v_scale): none is in a dequantized output. */
  readonly extras: ReadonlyMap<string, ExtraRole>;
  readonly declarations: readonly QuantDeclaration[];
  /** What stands in the way of dequantizing, one sentence each; empty when `convert --dequantize` can. */
  readonly unsupported: readonly string[];
}

/** The block size block FP8 uses unless its config says otherwise (DeepSeek-V3, transformers' FP8 config). */
export const DEFAULT_FP8_BLOCK: readonly [number, number] = [128, 128];

/** Algorithms each method may name that omni-ckpt knows (NVFP4 only to recognise and refuse it). */
const MODELOPT_ALGOS: ReadonlySet<string> = new Set(["FP8", "FP8_PER_CHANNEL_PER_TOKEN", "NVFP4", "MIXED_PRECISION"]);

type Raw = Record<string, unknown>;
const isObject = (v: unknown): v is Raw => typeof v === "object" && v !== null && !Array.isArray(v);

function declarationOf(raw: Raw, where: string, path?: readonly string[]): QuantDeclaration {
  const str = (k: string): string | undefined => (typeof raw[k] === "string" ? (raw[k] as string) : undefined);
  const b = raw["weight_block_size"];
  const blockSize =
    Array.isArray(b) && b.length === 2 && b.every((x) => Number.isSafeInteger(x) && (x as number) > 0) ? ([b[0], b[1]] as [number, number]) : undefined;
  const method = str("quant_method");
  const algo = str("quant_algo");
  return { where, ...(path ? { path } : {}), ...(method !== undefined ? { method } : {}), ...(algo !== undefined ? { algo } : {}), ...(blockSize ? { blockSize } : {}) };
}

/** Every quantization a checkpoint's config.json and hf_quant_config.json declare. */
export function quantDeclarations(config: Raw, hfQuantConfig?: unknown): QuantDeclaration[] {
  const out: QuantDeclaration[] = [];
  if (isObject(config["quantization_config"])) out.push(declarationOf(config["quantization_config"], "config.json quantization_config", ["quantization_config"]));
  for (const nested of ["llm_config", "text_config"]) {
    const c = config[nested];
    if (isObject(c) && isObject(c["quantization_config"])) {
      out.push(declarationOf(c["quantization_config"], `config.json ${nested}.quantization_config`, [nested, "quantization_config"]));
    }
  }
  if (isObject(hfQuantConfig)) {
    const q = isObject(hfQuantConfig["quantization"]) ? hfQuantConfig["quantization"] : hfQuantConfig;
    const producer = isObject(hfQuantConfig["producer"]) && typeof hfQuantConfig["producer"]["name"] === "string" ? hfQuantConfig["producer"]["name"] : undefined;
    const d = declarationOf(q, "hf_quant_config.json");
    out.push(d.method === undefined && producer !== undefined ? { ...d, method: producer } : d);
  }
  return out;
}

/** A declared method or algorithm that omni-ckpt cannot read, as a sentence; undefined when it can. */
function unsupportedDeclaration(d: QuantDeclaration): string | undefined {
  const method = d.method?.toLowerCase();
  if (method === "modelopt") {
    if (d.algo !== undefined && !MODELOPT_ALGOS.has(d.algo)) return `${d.where} names quant_algo ${JSON.stringify(d.algo)}, which omni-ckpt cannot dequantize`;
    return undefined;
  }
  if (method === "fp8" || method === undefined) return undefined;
  return `${d.where} names quant_method ${JSON.stringify(d.method)}, which omni-ckpt cannot dequantize`;
}

/** The last part of a tensor's name when it is one a quantization adds. */
function extraRole(name: string): ExtraRole | undefined {
  const tail = name.slice(name.lastIndexOf(".") + 1);
  return EXTRA_ROLES.has(tail) ? (tail as ExtraRole) : undefined;
}

/** A scale multiplies values in float32; a wider one would make PyTorch compute in float64. */
const scaleDType = (d: DType): boolean => isFloat(d) && itemSize(d) >= 2 && itemSize(d) <= 4;

const isScalar = (shape: readonly number[]): boolean => shape.length === 0 || (shape.length === 1 && shape[0] === 1);

/** How an FP8 weight's scale tensor spreads over it, or why it does not fit. */
function fp8Scale(
  name: string,
  w: TensorInfo,
  scaleName: string,
  s: TensorInfo,
  scheme: QuantScheme,
  block: readonly [number, number],
): PieceScale | string {
  if (!scaleDType(s.dtype)) return `${scaleName} is ${s.dtype}; a scale must be F32, BF16 or F16`;
  const cols = w.shape.length === 0 ? 1 : w.shape[w.shape.length - 1]!;
  if (isScalar(s.shape)) return { src: scaleName, layout: "tensor", cols };
  const fits = `${scaleName} ${formatShape(s.shape)} does not fit ${name} ${formatShape(w.shape)}`;
  if (w.shape.length !== 2) return `${fits}: only matrices are scaled per row or block`;
  const [out, inner] = w.shape as [number, number];
  if (scheme === "modelopt-fp8") {
    const perRow = (s.shape.length === 1 && s.shape[0] === out) || (s.shape.length === 2 && s.shape[0] === out && s.shape[1] === 1);
    return perRow ? { src: scaleName, layout: "row", cols } : `${fits} (expected a scalar, [${out}] or [${out}, 1])`;
  }
  const want = [Math.ceil(out / block[0]), Math.ceil(inner / block[1])];
  const ok = s.shape.length === 2 && s.shape[0] === want[0] && s.shape[1] === want[1];
  return ok ? { src: scaleName, layout: "block", cols, block: [block[0], block[1]] } : `${fits} (expected ${formatShape(want)} for ${block[0]}×${block[1]} blocks)`;
}

/**
 * The quantization of a checkpoint, from its headers and configs; undefined when there is none: no
 * quantized dtype, no tensor a quantization adds, no config declaring one.
 */
export function detectQuantization(headers: ReadonlyMap<string, TensorInfo>, config: Raw, hfQuantConfig?: unknown): Quantization | undefined {
  const declarations = quantDeclarations(config, hfQuantConfig);
  const weights = new Map<string, QuantizedWeight>();
  const extras = new Map<string, ExtraRole>();
  const unsupported: string[] = [];
  for (const d of declarations) {
    const why = unsupportedDeclaration(d);
    if (why) unsupported.push(why);
  }
  const block = declarations.find((d) => d.blockSize)?.blockSize ?? DEFAULT_FP8_BLOCK;

  for (const [name, info] of headers) {
    const role = extraRole(name);
    if (role) {
      extras.set(name, role);
      if (role === "pre_quant_scale") unsupported.push(`${name} is an activation pre-scale (AWQ / SmoothQuant), which cannot be dropped without changing the model`);
      continue;
    }
    if (isFloat8(info.dtype)) {
      const inv = headers.get(`${name}_scale_inv`);
      const plain = headers.get(`${name}_scale`);
      const scheme: QuantScheme = inv ? "block-fp8" : "modelopt-fp8";
      const scaleName = inv ? `${name}_scale_inv` : `${name}_scale`;
      const s = inv ?? plain;
      if (!s) {
        unsupported.push(`${name} is ${info.dtype} with no scale beside it (${name}_scale or ${name}_scale_inv)`);
        weights.set(name, { name, scheme, dtype: info.dtype, shape: info.shape });
        continue;
      }
      const scale = fp8Scale(name, info, scaleName, s, scheme, block);
      if (typeof scale === "string") unsupported.push(scale);
      weights.set(name, { name, scheme, dtype: info.dtype, shape: info.shape, ...(typeof scale === "string" ? {} : { scale }) });
      continue;
    }
    const packedScale = headers.get(`${name}_scale`);
    if (info.dtype === "U8" && packedScale !== undefined && isFloat8(packedScale.dtype)) {
      const shape = info.shape.length > 0 ? [...info.shape.slice(0, -1), 2 * info.shape[info.shape.length - 1]!] : info.shape;
      weights.set(name, { name, scheme: "nvfp4", dtype: info.dtype, shape });
    }
  }
  // A weight scale beside a weight that is not quantized: whatever it scales, copying the weight alone is wrong.
  for (const [name, role] of extras) {
    if (role !== "weight_scale" && role !== "weight_scale_inv" && role !== "weight_scale_2") continue;
    const weight = name.slice(0, name.length - role.length + "weight".length);
    if (!weights.has(weight)) {
      const w = headers.get(weight);
      unsupported.push(w ? `${name} sits beside ${weight}, which is ${w.dtype}, not quantized` : `${name} scales ${weight}, which the checkpoint does not have`);
    }
  }
  const nvfp4 = [...weights.values()].filter((w) => w.scheme === "nvfp4").length;
  if (nvfp4 > 0) unsupported.unshift(`${nvfp4} ${nvfp4 === 1 ? "weight is" : "weights are"} NVFP4 (packed U8 pairs with F8_E4M3 block scales), which omni-ckpt does not dequantize`);
  if (weights.size === 0 && extras.size === 0 && declarations.length === 0) return undefined;
  return { weights, extras, declarations, unsupported };
}

/** The logical shape of a tensor: NVFP4's packed bytes hold two values each along the last axis. */
export function logicalShape(name: string, info: TensorInfo, headers: ReadonlyMap<string, TensorInfo>): readonly number[] {
  const scale = headers.get(`${name}_scale`);
  if (info.dtype !== "U8" || info.shape.length === 0 || scale === undefined || !isFloat8(scale.dtype)) return info.shape;
  return [...info.shape.slice(0, -1), 2 * info.shape[info.shape.length - 1]!];
}

/** Whether any weight uses NVFP4, which omni-ckpt recognises but does not dequantize. */
export function hasNvfp4(q: Quantization): boolean {
  for (const w of q.weights.values()) if (w.scheme === "nvfp4") return true;
  return false;
}

/** Quantized weights per scheme, in the checkpoint's order. */
export function weightsByScheme(q: Quantization): Map<QuantScheme, QuantizedWeight[]> {
  const out = new Map<QuantScheme, QuantizedWeight[]>();
  for (const w of q.weights.values()) {
    const list = out.get(w.scheme) ?? [];
    list.push(w);
    out.set(w.scheme, list);
  }
  return out;
}

/** One scheme's part of a checkpoint, for `inspect`. */
export interface SchemeSummary {
  readonly scheme: QuantScheme;
  readonly name: string;
  readonly weights: number;
  readonly dtypes: Readonly<Partial<Record<DType, number>>>;
  /** How many weights are scaled per tensor, per row, per block. */
  readonly scales: Readonly<Partial<Record<PieceScale["layout"], number>>>;
  readonly components: Readonly<Partial<Record<Component, number>>>;
  readonly first: string;
}

export interface QuantSummary {
  readonly schemes: readonly SchemeSummary[];
  /** Tensors that only serve the quantization, per kind. */
  readonly extras: Readonly<Partial<Record<ExtraRole, number>>>;
  readonly declarations: readonly { readonly where: string; readonly method?: string; readonly algo?: string }[];
  /** Whether `convert --dequantize` can read it; otherwise the first reason why not. */
  readonly dequantizable: boolean;
  readonly problem?: string;
}

export function summarizeQuantization(q: Quantization): QuantSummary {
  const schemes: SchemeSummary[] = [];
  for (const [scheme, list] of weightsByScheme(q)) {
    const dtypes: Partial<Record<DType, number>> = {};
    const scales: Partial<Record<PieceScale["layout"], number>> = {};
    const components: Partial<Record<Component, number>> = {};
    for (const w of list) {
      dtypes[w.dtype] = (dtypes[w.dtype] ?? 0) + 1;
      if (w.scale) scales[w.scale.layout] = (scales[w.scale.layout] ?? 0) + 1;
      const c = componentOf(w.name);
      components[c] = (components[c] ?? 0) + 1;
    }
    schemes.push({ scheme, name: SCHEME_NAMES[scheme], weights: list.length, dtypes, scales, components, first: list[0]!.name });
  }
  const extras: Partial<Record<ExtraRole, number>> = {};
  for (const role of q.extras.values()) extras[role] = (extras[role] ?? 0) + 1;
  const declarations = q.declarations.map((d) => ({ where: d.where, ...(d.method !== undefined ? { method: d.method } : {}), ...(d.algo !== undefined ? { algo: d.algo } : {}) }));
  return { schemes, extras, declarations, dequantizable: q.unsupported.length === 0, ...(q.unsupported[0] !== undefined ? { problem: q.unsupported[0] } : {}) };
}
