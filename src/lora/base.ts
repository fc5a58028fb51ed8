import { parseModelConfig } from "../adapters/config.js";
import { checkConsistency, requireConsistent } from "../convert/consistency.js";
import { layoutName, requireLayout } from "../convert/layout.js";
import { InputError } from "../errors.js";
import type { Checkpoint, ConfigFile } from "../safetensors/checkpoint.js";
import { detectQuantization } from "../quant/detect.js";
import { describeQuantized } from "../quant/plan.js";
import type { TensorInfo } from "../tensor/tensor.js";
import type { BaseModel } from "./read.js";

/**
 * Why a base checkpoint is quantized, or undefined when it is not (SPEC §7, by `src/quant/`'s detection:
 * FP8 or packed NVFP4 weights, their scales, `quantization_config`, `hf_quant_config.json`). A LoRA delta
 * added to FP8 codes or packed FP4 nibbles would be garbage.
 */
export function quantizationOf(config: Record<string, unknown>, headers: ReadonlyMap<string, TensorInfo>, hfQuantConfig?: unknown): string | undefined {
  const q = detectQuantization(headers, config, hfQuantConfig);
  return q ? describeQuantized(q) : undefined;
}

/**
 * The base a merge (or a checked export) works against: an HF-layout checkpoint whose config and tensors
 * agree, and that is not quantized.
 */
export function baseModel(checkpoint: Checkpoint, config: ConfigFile, hfQuantConfig?: unknown): BaseModel {
  const where = checkpoint.where;
  const layout = requireLayout(checkpoint.tensors.keys(), where);
  if (layout !== "hf") throw new InputError(`${where}: is in the ${layoutName(layout)} layout; the base must be the Hugging Face release (convert it with convert --to hf first)`);
  const quantized = quantizationOf(config.values, checkpoint.tensors, hfQuantConfig);
  if (quantized) {
    throw new InputError(`${where}: is quantized (${quantized}); a LoRA delta cannot be added to quantized weights: merge into the BF16 release`);
  }
  const model = parseModelConfig(config.values, config.file);
  requireConsistent(checkConsistency(model, "hf", checkpoint.tensors), config.file);
  return { where, config: model, headers: checkpoint.tensors };
}
