import { parseModelConfig } from "../adapters/config.js";
import { checkConsistency, requireConsistent } from "../convert/consistency.js";
import { layoutName, requireLayout } from "../convert/layout.js";
import { InputError } from "../errors.js";
import type { Checkpoint, ConfigFile } from "../safetensors/checkpoint.js";
import type { TensorInfo } from "../tensor/tensor.js";
import type { BaseModel } from "./read.js";

/**
 * Why a base checkpoint is quantized, or undefined when it is not (SPEC §7): `quantization_config` in
 * config.json or its language-model config, FP8 weights, or packed U8 weights beside scale tensors. A
 * LoRA delta added to FP8 codes or packed FP4 nibbles would be garbage. One function, so the full
 * detection of `src/quant/` can take its place.
 */
export function quantizationOf(config: Record<string, unknown>, headers: ReadonlyMap<string, TensorInfo>): string | undefined {
  for (const [where, c] of [
    ["config.json", config],
    ["llm_config", config["llm_config"]],
    ["text_config", config["text_config"]],
  ] as const) {
    if (c !== null && typeof c === "object" && !Array.isArray(c) && (c as Record<string, unknown>)["quantization_config"] !== undefined) {
      const q = (c as Record<string, unknown>)["quantization_config"];
      const method = q !== null && typeof q === "object" ? (q as Record<string, unknown>)["quant_method"] : undefined;
      return `it has quantization_config in ${where}${typeof method === "string" ? ` (quant_method ${JSON.stringify(method)})` : ""}`;
    }
  }
  const scales = [...headers.keys()].some((n) => /(^|\.)weight_scale(_inv|_2)?$/.test(n));
  for (const [name, t] of headers) {
    if (t.dtype === "F8_E4M3" || t.dtype === "F8_E5M2") return `${JSON.stringify(name)} is ${t.dtype}`;
    if (t.dtype === "U8" && scales && name.endsWith(".weight")) return `${JSON.stringify(name)} is packed U8 beside weight scales`;
  }
  return undefined;
}

/**
 * The base a merge (or a checked export) works against: an HF-layout checkpoint whose config and tensors
 * agree, and that is not quantized.
 */
export function baseModel(checkpoint: Checkpoint, config: ConfigFile): BaseModel {
  const where = checkpoint.where;
  const layout = requireLayout(checkpoint.tensors.keys(), where);
  if (layout !== "hf") throw new InputError(`${where}: is in the ${layoutName(layout)} layout; the base must be the Hugging Face release (convert it with convert --to hf first)`);
  const quantized = quantizationOf(config.values, checkpoint.tensors);
  if (quantized) {
    throw new InputError(`${where}: is a quantized checkpoint (${quantized}); a LoRA delta cannot be added to quantized weights: merge into the BF16 release`);
  }
  const model = parseModelConfig(config.values, config.file);
  requireConsistent(checkConsistency(model, "hf", checkpoint.tensors), config.file);
  return { where, config: model, headers: checkpoint.tensors };
}
