import { describe, expect, it } from "vitest";
import { planConversion } from "../../src/convert/planner.js";
import { ConversionError, InputError, UsageError } from "../../src/errors.js";
import { type ConfigFile, parseConfigText } from "../../src/safetensors/checkpoint.js";
import type { TensorInfo } from "../../src/tensor/tensor.js";

/**
 * planConversion on headers and a config alone: the checks a whole-checkpoint conversion makes before any
 * byte is read, and what it decides besides the adapter rules (routing bias in float32, write order, the
 * edited config).
 */
const CONFIG = `{
  "llm_config": {
    "hidden_size": 8,
    "hybrid_override_pattern": "ME*",
    "moe_intermediate_size": 4,
    "n_routed_experts": 2,
    "num_hidden_layers": 3,
    "time_step_limit": [0.0, Infinity]
  }
}
`;
const config = (text = CONFIG): ConfigFile => parseConfigText(text, "ckpt/config.json");
const t = (dtype: TensorInfo["dtype"], ...shape: number[]): TensorInfo => ({ dtype, shape });

function hf(): Map<string, TensorInfo> {
  const m = new Map<string, TensorInfo>([
    ["language_model.backbone.embeddings.weight", t("BF16", 16, 8)],
    ["language_model.backbone.layers.0.mixer.A_log", t("BF16", 2)],
    ["language_model.backbone.layers.1.mixer.gate.weight", t("BF16", 2, 8)],
    ["language_model.backbone.layers.1.mixer.gate.e_score_correction_bias", t("BF16", 2)],
    ["language_model.backbone.layers.2.mixer.q_proj.weight", t("BF16", 8, 8)],
    ["mlp1.1.weight", t("BF16", 8, 8)],
  ]);
  for (let e = 0; e < 2; e++) {
    m.set(`language_model.backbone.layers.1.mixer.experts.${e}.up_proj.weight`, t("BF16", 4, 8));
    m.set(`language_model.backbone.layers.1.mixer.experts.${e}.down_proj.weight`, t("BF16", 8, 4));
  }
  return m;
}
const input = (headers = hf()) => ({ headers, where: "ckpt" });

describe("planConversion", () => {
  it("plans HF → native in the reference serializer's order, counting bytes in and out", () => {
    const plan = planConversion(input(), config(), { to: "native" });
    expect([plan.source, plan.target]).toEqual(["hf", "native"]);
    expect(plan.tensors.map((x) => x.name)).toEqual([
      // F32 first (the Mamba holder is upcast), then BF16, each by name as UTF-8 bytes.
      "language_model.model.layers.0.mixer._fp32_params.A_log",
      "language_model.model.embed_tokens.weight",
      "language_model.model.layers.1.mixer.experts.down_projs",
      "language_model.model.layers.1.mixer.experts.gate_and_up_projs",
      "language_model.model.layers.1.mixer.gate.e_score_correction_bias",
      "language_model.model.layers.1.mixer.gate.weight",
      "language_model.model.layers.2.mixer.q_proj.weight",
      "vision_projector.linear1.weight",
    ]);
    expect(plan.inputBytes).toBe(16 * 8 * 2 + 2 * 2 + 16 * 2 + 2 * 2 + 64 * 2 + 64 * 2 + 4 * 32 * 2);
    expect(plan.outputBytes).toBe(plan.inputBytes + 2 * 2);
    expect(plan.outputConfig).toBeUndefined();
    expect(plan.warnings).toEqual([]);
  });

  it("writes the routing bias as float32 when going to HF, as the reference does at save time", () => {
    const native = planConversion(input(), config(), { to: "native" });
    const back = planConversion({ headers: new Map(native.tensors.map((x) => [x.name, { dtype: x.dtype, shape: x.shape }])), where: "n" }, config(), { to: "hf" });
    expect(back.tensors.find((x) => x.name.endsWith("e_score_correction_bias"))?.dtype).toBe("F32");
    expect(back.tensors.find((x) => x.name.endsWith("A_log"))?.dtype).toBe("F32");
  });

  it("cuts the config in its own text for --num-layers, and only then", () => {
    const plan = planConversion(input(), config(), { to: "native", numLayers: 2 });
    expect(plan.outputConfig?.text).toBe(CONFIG.replace('"ME*"', '"ME"').replace('"num_hidden_layers": 3', '"num_hidden_layers": 2'));
    expect(plan.tensors.some((x) => x.name.includes("layers.2."))).toBe(false);
    expect(planConversion(input(), config(), { to: "native", numLayers: 3 }).outputConfig).toBeUndefined();
  });

  it("refuses what does not apply, before planning anything", () => {
    expect(() => planConversion(input(), config(), { to: "hf" })).toThrow(new InputError("ckpt: is already in the Hugging Face (HF) layout"));
    expect(() => planConversion(input(), config(), { to: "native", exclude: "x" })).toThrow(new UsageError("--exclude applies only to --to hf"));
    expect(() => planConversion(input(), config(), { to: "native", numLayers: 0 })).toThrow(new UsageError("--num-layers must be a positive integer, got 0"));
    expect(() => planConversion(input(), config(), { to: "native", ep: { rank: 0, size: 3 } })).toThrow(new UsageError("--ep-size 3 is larger than the model's 2 experts"));
    expect(() => planConversion(input(), config(), { to: "native", dtype: "int8" })).toThrow(new UsageError('unsupported expert dtype "int8": use bf16, f16 or f32'));
  });

  it("refuses a checkpoint its config contradicts, and experts the rules cannot place", () => {
    const headers = hf();
    headers.delete("language_model.backbone.layers.1.mixer.experts.1.down_proj.weight");
    expect(() => planConversion(input(headers), config(), { to: "native" })).toThrow(ConversionError);
    expect(() => planConversion(input(headers), config(), { to: "native" })).toThrow(
      "ckpt: expert weights missing from checkpoint: 1/4 required weights not found in MoE layers [1]; first missing: language_model.backbone.layers.1.mixer.experts.1.down_proj.weight",
    );
    const wide = hf();
    wide.set("language_model.backbone.layers.1.mixer.experts.0.up_proj.weight", t("BF16", 5, 8));
    expect(() => planConversion(input(wide), config(), { to: "native" })).toThrow(
      "ckpt/config.json: disagrees with the tensors: moe_intermediate_size is 4, but language_model.backbone.layers.1.mixer.experts.0.up_proj.weight is [5, 8]",
    );
  });

  it("passes unknown keys through with a warning, as the reference does", () => {
    const headers = hf();
    headers.set("mystery.weight", t("BF16", 1));
    const plan = planConversion(input(headers), config(), { to: "native" });
    expect(plan.tensors.some((x) => x.name === "mystery.weight")).toBe(true);
    expect(plan.warnings).toEqual([{ code: "unknown-key", message: "unknown key mystery.weight; kept as is", key: "mystery.weight" }]);
  });
});
