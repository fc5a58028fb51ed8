import * as fs from "node:fs";
import * as path from "node:path";
import { serialize } from "../../src/safetensors/encode.js";
import type { Tensor } from "../../src/tensor/tensor.js";
import { seededRandom } from "./random.js";

/*
 * Synthetic LoRA adapters as NeMo Automodel saves them (SPEC §8), written from a base checkpoint's HF names
 * with this file's own, deliberately plain naming rules; PEFT's matching rules re-implemented from its
 * source (notes/peft.md §1) to check what an export's adapter_config.json makes PEFT do; and the float64
 * reference merge that stands in for PyTorch.
 */

export const PEFT = "base_model.model.";

/** The native (Automodel) name of an HF module, spelled out here independently of the library's rules. */
export function nativeModule(hf: string): string {
  if (hf === "mlp1.1") return "vision_projector.linear1";
  if (hf === "mlp1.3") return "vision_projector.linear2";
  if (hf.startsWith("language_model.backbone.")) return `language_model.model.${hf.slice("language_model.backbone.".length)}`;
  return hf;
}

export interface SynthModule {
  /** HF module name. */
  readonly hf: string;
  readonly native: string;
  readonly rank: number;
  /** "experts": the routed experts of one MoE layer (`…mixer.experts`), grouped. */
  readonly kind: "dense" | "experts";
}

export interface SynthAdapterOptions {
  readonly rank?: number;
  /** Routed experts' rank (Automodel's moe_rank_scaling gives them dim // num_experts_per_tok). */
  readonly expertRank?: number;
  readonly alpha?: number;
  readonly seed?: number;
  /** LoRA on routed experts (default true). */
  readonly experts?: boolean;
  /** Include the MTP layers' modules (default false: the release has no MTP). */
  readonly mtp?: boolean;
  readonly dtype?: "BF16" | "F32";
}

export interface SynthAdapter {
  readonly files: Map<string, Uint8Array>;
  readonly modules: readonly SynthModule[];
  readonly tensors: ReadonlyMap<string, Tensor>;
  readonly alpha: number;
  readonly rank: number;
}

/** Which base weights a synthetic adapter adapts: every family Automodel's `*_proj` and projector patterns reach. */
const DENSE = [
  /^language_model\.(backbone|mtp)\.layers\.\d+\.mixer\.(in_proj|out_proj|q_proj|k_proj|v_proj|o_proj|up_proj|down_proj)\.weight$/,
  /^language_model\.(backbone|mtp)\.layers\.\d+\.mixer\.shared_experts\.(up_proj|down_proj)\.weight$/,
  /^mlp1\.[13]\.weight$/,
  /^sound_projection\.linear[12]\.weight$/,
  /^language_model\.lm_head\.weight$/,
];

function randomTensor(shape: number[], dtype: "BF16" | "F32", next: () => number): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Uint8Array(n * (dtype === "F32" ? 4 : 2));
  const v = new DataView(data.buffer);
  for (let i = 0; i < n; i++) {
    // Magnitudes 2^-9 .. 2^-2, random sign and mantissa: bfloat16 values either way.
    const bits = ((next() * 256) & 0x7f) | (((118 + Math.floor(next() * 8)) & 0xff) << 7) | (next() < 0.5 ? 0x8000 : 0);
    if (dtype === "F32") v.setUint32(i * 4, bits << 16, true);
    else v.setUint16(i * 2, bits, true);
  }
  return { dtype, shape, data };
}

/** An Automodel-style adapter for a base whose HF tensors are `base` (name → shape). */
export function automodelAdapter(base: ReadonlyMap<string, readonly number[]>, options: SynthAdapterOptions = {}): SynthAdapter {
  const rank = options.rank ?? 4;
  const expertRank = options.expertRank ?? 2;
  const alpha = options.alpha ?? 8;
  const dtype = options.dtype ?? "BF16";
  const next = seededRandom(options.seed ?? 1);
  const tensors = new Map<string, Tensor>();
  const modules: SynthModule[] = [];
  const experts = new Map<string, { E: number; H: number; I: number }>();
  for (const [name, shape] of base) {
    if (!options.mtp && name.startsWith("language_model.mtp.")) continue;
    const m = /^(.*\.mixer\.experts)\.(\d+)\.(up_proj|down_proj)\.weight$/.exec(name);
    if (m) {
      const g = experts.get(m[1]!) ?? { E: 0, H: 0, I: 0 };
      g.E = Math.max(g.E, Number(m[2]) + 1);
      if (m[3] === "up_proj") [g.I, g.H] = shape as [number, number];
      experts.set(m[1]!, g);
      continue;
    }
    if (!DENSE.some((re) => re.test(name))) continue;
    const hf = name.slice(0, -".weight".length);
    const native = nativeModule(hf);
    const [out, inn] = shape as [number, number];
    tensors.set(`${PEFT}${native}.lora_A.weight`, randomTensor([rank, inn], dtype, next));
    tensors.set(`${PEFT}${native}.lora_B.weight`, randomTensor([out, rank], dtype, next));
    modules.push({ hf, native, rank, kind: "dense" });
  }
  if (options.experts ?? true) {
    for (const [hf, g] of experts) {
      const native = nativeModule(hf);
      const r = expertRank;
      tensors.set(`${PEFT}${native}.lora_gate_and_up_A`, randomTensor([g.E, g.H, r], dtype, next));
      tensors.set(`${PEFT}${native}.lora_gate_and_up_B`, randomTensor([g.E, r, g.I], dtype, next));
      tensors.set(`${PEFT}${native}.lora_down_A`, randomTensor([g.E, g.I, r], dtype, next));
      tensors.set(`${PEFT}${native}.lora_down_B`, randomTensor([g.E, r, g.H], dtype, next));
      modules.push({ hf, native, rank: r, kind: "experts" });
    }
  }
  const config = {
    base_model_name_or_path: "nvidia/Nemotron-3-Nano-Omni-30B-A3B-Reasoning-BF16",
    bias: "none",
    lora_alpha: alpha,
    peft_type: "LORA",
    r: rank,
    target_modules: modules.map((m) => m.native).sort(),
    ...(modules.some((m) => m.kind === "experts") ? { target_parameters: ["mixer.experts.up_proj", "mixer.experts.down_proj"] } : {}),
    task_type: "CAUSAL_LM",
    use_dora: false,
  };
  const automodel = {
    dropout: 0.0,
    dropout_position: "post",
    exclude_modules: [],
    lora_A_init: "xavier",
    lora_dtype: null,
    match_all_linear: false,
    moe_rank_scaling: expertRank !== rank,
    target_modules: ["*.in_proj", "*.out_proj", "*_proj", "*.experts", "vision_projector.*", "sound_projection.*", "*lm_head"],
    use_dora: false,
    use_memory_efficient_lora: true,
    use_triton: false,
  };
  const files = new Map<string, Uint8Array>([
    ["adapter_model.safetensors", serialize(tensors)],
    ["adapter_config.json", new TextEncoder().encode(JSON.stringify(config, null, 2))],
    ["automodel_peft_config.json", new TextEncoder().encode(JSON.stringify(automodel, null, 2))],
  ]);
  return { files, modules, tensors, alpha, rank };
}

export function writeFolder(dir: string, files: ReadonlyMap<string, Uint8Array>): string {
  fs.mkdirSync(dir, { recursive: true });
  for (const [rel, bytes] of files) fs.writeFileSync(path.join(dir, rel), bytes);
  return dir;
}

/*
 * PEFT's rules, from its source (peft/tuners/tuners_utils.py `check_target_module_exists`,
 * `_inject_parameters`, peft/utils/other.py `get_pattern_key`), for the list forms an export writes.
 */

/** `key in target_modules or any(key.endswith(f".{t}") for t in target_modules)`. */
export function peftTargets(list: readonly string[], key: string): boolean {
  return list.includes(key) || list.some((t) => key.endsWith(`.${t}`));
}

/** `get_pattern_key`: the first pattern key (in the file's order) with `re.match(rf"(.*\.)?({key})$", name)`. */
export function peftPatternKey(keys: readonly string[], name: string): string | undefined {
  return keys.find((k) => new RegExp(`^(?:(.*\\.)?(${k})$)`).test(name));
}

/** The rank PEFT gives `name` from an adapter_config: rank_pattern's first match, else r. */
export function peftRank(config: { r: number; rank_pattern?: Record<string, number> }, name: string): number {
  const pattern = config.rank_pattern ?? {};
  const k = peftPatternKey(Object.keys(pattern), name);
  return k === undefined ? config.r : pattern[k]!;
}

/*
 * The reference merge: products and sums in float64, rounded to float32, then PyTorch's steps: `* scale` in
 * float32, `.to(W.dtype)`, and W's own addition (float32 add, rounded to W's dtype).
 */

const cvt = new DataView(new ArrayBuffer(4));

export function f32FromBits(bits: number): number {
  cvt.setUint32(0, bits >>> 0, true);
  return cvt.getFloat32(0, true);
}

export function bitsOfF32(x: number): number {
  cvt.setFloat32(0, x, true);
  return cvt.getUint32(0, true);
}

/** float32 → bfloat16 bits, round to nearest even, NaN → 0x7fc0. */
export function toBf16(x: number): number {
  if (Number.isNaN(x)) return 0x7fc0;
  const b = bitsOfF32(x);
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

/** Element values of a float tensor (BF16 or F32) as numbers. */
export function values(t: Tensor): Float64Array {
  const v = new DataView(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  const n = t.data.byteLength / (t.dtype === "F32" ? 4 : 2);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = t.dtype === "F32" ? v.getFloat32(i * 4, true) : f32FromBits(v.getUint16(i * 2, true) << 16);
  return out;
}

/**
 * W' bit patterns for W (BF16 or F32) [out, in] plus the delta of `b` [out, r] · `a` [r, in] (row-major
 * float64 views of their values) at `scale`.
 */
export function referenceMerge(w: Tensor, a: (k: number, j: number) => number, b: (i: number, k: number) => number, rank: number, scale: number): number[] {
  const [out, inn] = w.shape as [number, number];
  const wv = values(w);
  const s = Math.fround(scale);
  const res: number[] = [];
  for (let i = 0; i < out; i++) {
    for (let j = 0; j < inn; j++) {
      let sum = 0;
      for (let k = 0; k < rank; k++) sum += b(i, k) * a(k, j);
      const delta = Math.fround(Math.fround(sum) * s);
      if (w.dtype === "F32") res.push(bitsOfF32(Math.fround(wv[i * inn + j]! + delta)));
      else res.push(toBf16(Math.fround(wv[i * inn + j]! + f32FromBits(toBf16(delta) << 16))));
    }
  }
  return res;
}

/** Element bit patterns of a BF16 or F32 tensor. */
export function elementBits(t: Tensor): number[] {
  const v = new DataView(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  const item = t.dtype === "F32" ? 4 : 2;
  return Array.from({ length: t.data.byteLength / item }, (_, i) => (item === 4 ? v.getUint32(i * 4, true) : v.getUint16(i * 2, true)));
}

/** How far two bit patterns of one float dtype (BF16 or F32) are apart, in units in the last place. */
export function ulps(a: number, b: number, dtype: "BF16" | "F32"): number {
  const sign = dtype === "F32" ? 0x80000000 : 0x8000;
  const ordered = (x: number): number => ((x & sign) !== 0 ? -(x & (sign - 1)) : x & (sign - 1));
  return Math.abs(ordered(a >>> 0) - ordered(b >>> 0));
}
