import type { PlannedTensor } from "../adapters/plan.js";
import { InputError } from "../errors.js";
import type { JsonEdit } from "../safetensors/json-edit.js";
import type { TensorInfo } from "../tensor/tensor.js";
import { type Quantization, SCHEME_NAMES, weightsByScheme } from "./detect.js";

/** ModelOpt's own description of its export, beside config.json; a dequantized copy leaves it out. */
export const HF_QUANT_CONFIG = "hf_quant_config.json";

function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

/**
 * Why a quantized checkpoint is not converted as asked, as one error naming the scheme, the first
 * quantized tensor, and what to do: a conversion that cast FP8 codes to bf16 as if they were values
 * would write weights wrong by their scale factors, silently (SPEC §7).
 */
export function quantizedError(q: Quantization, where: string): InputError {
  const by = weightsByScheme(q);
  const nvfp4 = by.get("nvfp4");
  if (nvfp4) {
    return new InputError(
      `${where}: is quantized as NVFP4 (${plural(nvfp4.length, "NVFP4 weight")}, first ${nvfp4[0]!.name}), which omni-ckpt does not support; convert the BF16 release instead`,
    );
  }
  if (q.unsupported.length > 0) {
    const more = q.unsupported.length > 1 ? ` (and ${plural(q.unsupported.length - 1, "more problem")})` : "";
    return new InputError(`${where}: is quantized in a way omni-ckpt cannot dequantize: ${q.unsupported[0]}${more}`);
  }
  if (q.weights.size === 0) {
    const evidence = q.declarations[0]?.where ?? `${q.extras.keys().next().value} and other quantization tensors`;
    return new InputError(`${where}: holds no quantized weight, but ${evidence} says it is quantized; use convert --dequantize to write it without the quantization's config and tensors`);
  }
  return new InputError(
    `${where}: is quantized (${describeQuantized(q)}); converted as is, its FP8 codes would be taken for values: use convert --dequantize to write bf16 weights`,
  );
}

/** `ModelOpt FP8: 80 F8_E4M3 weights, first …`: the schemes, their weights' counts and dtypes, the first quantized tensor. */
export function describeQuantized(q: Quantization): string {
  const parts = [...weightsByScheme(q)].map(([scheme, list]) => {
    const dtypes = [...new Set(list.map((w) => w.dtype))].join("/");
    return `${SCHEME_NAMES[scheme]}: ${plural(list.length, `${dtypes} weight`)}`;
  });
  const first = q.weights.values().next().value;
  return first ? `${parts.join(", ")}, first ${first.name}` : `no quantized weight; ${q.declarations[0]?.where ?? "its tensors"} say so`;
}

/**
 * The checkpoint as the conversion rules see it once dequantized: each quantized weight a bf16 tensor of
 * its shape, and no tensor that only served the quantization.
 */
export function dequantizedHeaders(headers: ReadonlyMap<string, TensorInfo>, q: Quantization): Map<string, TensorInfo> {
  const out = new Map<string, TensorInfo>();
  for (const [name, info] of headers) {
    if (q.extras.has(name)) continue;
    const w = q.weights.get(name);
    out.set(name, w ? { dtype: "BF16", shape: w.shape } : info);
  }
  return out;
}

/** The pieces that read a quantized weight learn its scales: the executors then dequantize as they cast. */
export function withScales(tensors: readonly PlannedTensor[], q: Quantization): PlannedTensor[] {
  return tensors.map((t) => {
    if (!t.pieces.some((p) => q.weights.has(p.src))) return t;
    return {
      ...t,
      pieces: t.pieces.map((p) => {
        const scale = q.weights.get(p.src)?.scale;
        if (scale === undefined) return p;
        return { ...p, scale };
      }),
    };
  });
}

/** Edits of config.json that remove every `quantization_config` (the rest of the text stays as written). */
export function quantConfigEdits(q: Quantization): JsonEdit[] {
  return q.declarations.flatMap((d) => (d.path ? [{ path: [...d.path], remove: true as const }] : []));
}
