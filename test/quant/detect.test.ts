import { describe, expect, it } from "vitest";
import { detectQuantization, logicalShape, summarizeQuantization } from "../../src/quant/detect.js";
import { dequantizedHeaders, quantConfigEdits, quantizedError } from "../../src/quant/plan.js";
import type { DType } from "../../src/tensor/dtype.js";
import type { TensorInfo } from "../../src/tensor/tensor.js";

const W = "language_model.backbone.layers.0.mixer.in_proj";
const E = "language_model.backbone.layers.1.mixer.experts.0.up_proj";
const headers = (entries: [string, DType, number[]][]): Map<string, TensorInfo> => new Map(entries.map(([n, dtype, shape]) => [n, { dtype, shape }]));
const bf16 = headers([
  [`${W}.weight`, "BF16", [200, 64]],
  ["language_model.backbone.norm_f.weight", "BF16", [64]],
]);

describe("detectQuantization", () => {
  it("finds nothing in a bf16 checkpoint with a plain config", () => {
    expect(detectQuantization(bf16, { llm_config: {} })).toBeUndefined();
  });

  it("ModelOpt FP8: a scalar weight_scale is per tensor, [out] and [out, 1] per row; input_scale and k/v scales are extras", () => {
    for (const [shape, layout] of [[[], "tensor"], [[1], "tensor"], [[200], "row"], [[200, 1], "row"]] as const) {
      const q = detectQuantization(
        headers([
          [`${W}.weight`, "F8_E4M3", [200, 64]],
          [`${W}.weight_scale`, "F32", [...shape]],
          [`${W}.input_scale`, "F32", []],
          ["language_model.backbone.layers.2.mixer.k_proj.k_scale", "F32", []],
        ]),
        {},
      )!;
      expect(q.unsupported).toEqual([]);
      expect(q.weights.get(`${W}.weight`)).toEqual({ name: `${W}.weight`, scheme: "modelopt-fp8", dtype: "F8_E4M3", shape: [200, 64], scale: { src: `${W}.weight_scale`, layout, cols: 64 } });
      expect([...q.extras]).toEqual([
        [`${W}.weight_scale`, "weight_scale"],
        [`${W}.input_scale`, "input_scale"],
        ["language_model.backbone.layers.2.mixer.k_proj.k_scale", "k_scale"],
      ]);
    }
  });

  it("block FP8: weight_scale_inv of ceil(out/128) × ceil(in/128) blocks, or the block size the config names", () => {
    const h = (scale: number[]) => headers([[`${W}.weight`, "F8_E4M3", [200, 300]], [`${W}.weight_scale_inv`, "F32", scale]]);
    expect(detectQuantization(h([2, 3]), {})!.weights.get(`${W}.weight`)!.scale).toEqual({ src: `${W}.weight_scale_inv`, layout: "block", cols: 300, block: [128, 128] });
    const config = { quantization_config: { quant_method: "fp8", weight_block_size: [64, 100] } };
    expect(detectQuantization(h([4, 3]), config)!.weights.get(`${W}.weight`)!.scale).toEqual({ src: `${W}.weight_scale_inv`, layout: "block", cols: 300, block: [64, 100] });
    expect(detectQuantization(h([2, 2]), {})!.unsupported).toEqual([
      `${W}.weight_scale_inv [2, 2] does not fit ${W}.weight [200, 300] (expected [2, 3] for 128×128 blocks)`,
    ]);
  });

  it("says why it cannot dequantize: no scale, a scale that fits no layout, a scale beside an unquantized weight, AWQ pre-scales, unknown algorithms", () => {
    const cases: [Map<string, TensorInfo>, Record<string, unknown>, string][] = [
      [headers([[`${W}.weight`, "F8_E5M2", [4, 4]]]), {}, `${W}.weight is F8_E5M2 with no scale beside it (${W}.weight_scale or ${W}.weight_scale_inv)`],
      [headers([[`${W}.weight`, "F8_E4M3", [4, 4]], [`${W}.weight_scale`, "F32", [4, 4]]]), {}, `${W}.weight_scale [4, 4] does not fit ${W}.weight [4, 4] (expected a scalar, [4] or [4, 1])`],
      [headers([[`${W}.weight`, "F8_E4M3", [4, 4]], [`${W}.weight_scale`, "F64", []]]), {}, `${W}.weight_scale is F64; a scale must be F32, BF16 or F16`],
      [headers([[`${W}.weight`, "BF16", [4, 4]], [`${W}.weight_scale`, "F32", []]]), {}, `${W}.weight_scale sits beside ${W}.weight, which is BF16, not quantized`],
      [headers([[`${W}.weight`, "F8_E4M3", [4, 4]], [`${W}.weight_scale`, "F32", []], [`${W}.pre_quant_scale`, "BF16", [4]]]), {}, `${W}.pre_quant_scale is an activation pre-scale (AWQ / SmoothQuant), which cannot be dropped without changing the model`],
      [bf16, { quantization_config: { quant_method: "gptq", bits: 4 } }, 'config.json quantization_config names quant_method "gptq", which omni-ckpt cannot dequantize'],
      [bf16, { llm_config: { quantization_config: { quant_method: "modelopt", quant_algo: "W4A16_AWQ" } } }, 'config.json llm_config.quantization_config names quant_algo "W4A16_AWQ", which omni-ckpt cannot dequantize'],
    ];
    for (const [h, config, why] of cases) expect(detectQuantization(h, config)!.unsupported).toEqual([why]);
  });

  it("refuses what it cannot dequantize with the first reason and how many more", () => {
    const q = detectQuantization(headers([[`${W}.weight`, "F8_E4M3", [4, 4]], [`${E}.weight`, "F8_E4M3", [4, 4]]]), {})!;
    expect(quantizedError(q, "ckpt").message).toBe(
      `ckpt: is quantized in a way omni-ckpt cannot dequantize: ${W}.weight is F8_E4M3 with no scale beside it (${W}.weight_scale or ${W}.weight_scale_inv) (and 1 more problem)`,
    );
  });

  it("NVFP4: packed U8 [out, in/2] with an F8_E4M3 weight_scale [out, in/16] holds [out, in] values, and is refused", () => {
    const h = headers([
      [`${E}.weight`, "U8", [12, 8]],
      [`${E}.weight_scale`, "F8_E4M3", [12, 1]],
      [`${E}.weight_scale_2`, "F32", []],
      [`${E}.input_scale`, "F32", []],
    ]);
    const q = detectQuantization(h, {}, { producer: { name: "modelopt" }, quantization: { quant_algo: "NVFP4" } })!;
    expect(q.weights.get(`${E}.weight`)).toEqual({ name: `${E}.weight`, scheme: "nvfp4", dtype: "U8", shape: [12, 16] });
    expect(logicalShape(`${E}.weight`, h.get(`${E}.weight`)!, h)).toEqual([12, 16]);
    expect(logicalShape(`${E}.weight_scale`, h.get(`${E}.weight_scale`)!, h)).toEqual([12, 1]);
    expect(q.declarations).toEqual([{ where: "hf_quant_config.json", method: "modelopt", algo: "NVFP4" }]);
    expect(q.unsupported).toEqual(["1 weight is NVFP4 (packed U8 pairs with F8_E4M3 block scales), which omni-ckpt does not dequantize"]);
    expect(quantizedError(q, "ckpt").message).toBe(
      `ckpt: is quantized as NVFP4 (1 NVFP4 weight, first ${E}.weight), which omni-ckpt does not support; convert the BF16 release instead`,
    );
    const s = summarizeQuantization(q);
    expect(s.schemes).toEqual([{ scheme: "nvfp4", name: "NVFP4", weights: 1, dtypes: { U8: 1 }, scales: {}, components: { "language model": 1 }, first: `${E}.weight` }]);
    expect(s.dequantizable).toBe(false);
  });

  it("finds every quantization_config (top level, llm_config, text_config) and edits each out of config.json", () => {
    const config = { quantization_config: { quant_method: "modelopt", quant_algo: "FP8" }, llm_config: { quantization_config: { quant_method: "modelopt", quant_algo: "FP8" } } };
    const q = detectQuantization(bf16, config)!;
    expect(q.declarations.map((d) => d.where)).toEqual(["config.json quantization_config", "config.json llm_config.quantization_config"]);
    expect(quantConfigEdits(q)).toEqual([
      { path: ["quantization_config"], remove: true },
      { path: ["llm_config", "quantization_config"], remove: true },
    ]);
    expect(quantizedError(q, "ckpt").message).toBe(
      "ckpt: holds no quantized weight, but config.json quantization_config says it is quantized; use convert --dequantize to write it without the quantization's config and tensors",
    );
  });

  it("names the schemes and the first quantized tensor when refusing FP8, and the dequantized view is the bf16 checkpoint", () => {
    const h = headers([
      ["vision_model.radio_model.model.blocks.0.attn.qkv.weight", "BF16", [24, 8]],
      [`${W}.weight`, "F8_E4M3", [200, 64]],
      [`${W}.weight_scale`, "F32", []],
      [`${W}.input_scale`, "F32", []],
      [`${E}.weight`, "F8_E4M3", [12, 16]],
      [`${E}.weight_scale_inv`, "F32", [1, 1]],
    ]);
    const q = detectQuantization(h, {})!;
    expect(quantizedError(q, "ckpt").message).toBe(
      `ckpt: is quantized (ModelOpt FP8: 1 F8_E4M3 weight, block FP8: 1 F8_E4M3 weight, first ${W}.weight); converted as is, its FP8 codes would be taken for values: use convert --dequantize to write bf16 weights`,
    );
    expect([...dequantizedHeaders(h, q)]).toEqual([
      ["vision_model.radio_model.model.blocks.0.attn.qkv.weight", { dtype: "BF16", shape: [24, 8] }],
      [`${W}.weight`, { dtype: "BF16", shape: [200, 64] }],
      [`${E}.weight`, { dtype: "BF16", shape: [12, 16] }],
    ]);
  });
});
