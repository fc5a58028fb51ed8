import { describe, expect, it } from "vitest";
import { parseModelConfig } from "../../src/adapters/config.js";
import { checkConsistency, requireConsistent } from "../../src/convert/consistency.js";
import { FormatError } from "../../src/errors.js";
import type { TensorInfo } from "../../src/tensor/tensor.js";

const config = (llm: Record<string, unknown>) => parseModelConfig({ llm_config: llm });
const base = { hidden_size: 8, n_routed_experts: 2, moe_intermediate_size: 4, hybrid_override_pattern: "ME", num_hidden_layers: 2 };
const bf16 = (...shape: number[]): TensorInfo => ({ dtype: "BF16", shape });

function hfHeaders(experts = 2, inter = 4, hidden = 8): Map<string, TensorInfo> {
  const m = new Map<string, TensorInfo>([
    ["language_model.backbone.embeddings.weight", bf16(16, hidden)],
    ["language_model.backbone.layers.0.mixer.in_proj.weight", bf16(4, hidden)],
    ["language_model.backbone.layers.1.mixer.gate.weight", bf16(experts, hidden)],
  ]);
  for (let e = 0; e < experts; e++) {
    m.set(`language_model.backbone.layers.1.mixer.experts.${e}.up_proj.weight`, bf16(inter, hidden));
    m.set(`language_model.backbone.layers.1.mixer.experts.${e}.down_proj.weight`, bf16(hidden, inter));
  }
  return m;
}

describe("config against tensors", () => {
  it("finds nothing wrong in a checkpoint that matches its config", () => {
    expect(checkConsistency(config(base), "hf", hfHeaders())).toEqual({ problems: [] });
  });

  it("names each disagreement: expert count, widths, layer count, a dense config with experts", () => {
    expect(checkConsistency(config({ ...base, n_routed_experts: 1 }), "hf", hfHeaders()).problems).toEqual([
      "n_routed_experts is 1, but the checkpoint has expert 1 (language_model.backbone.layers.1.mixer.experts.1.up_proj.weight)",
      "n_routed_experts is 1, but the checkpoint has expert 1 (language_model.backbone.layers.1.mixer.experts.1.down_proj.weight)",
    ]);
    expect(checkConsistency(config({ ...base, moe_intermediate_size: 5 }), "hf", hfHeaders()).problems[0]).toBe(
      "moe_intermediate_size is 5, but language_model.backbone.layers.1.mixer.experts.0.up_proj.weight is [4, 8]",
    );
    expect(checkConsistency(config({ ...base, hidden_size: 6 }), "hf", hfHeaders()).problems[0]).toBe(
      "hidden_size is 6, but language_model.backbone.layers.1.mixer.experts.0.up_proj.weight is [4, 8]",
    );
    expect(checkConsistency(config({ ...base, num_hidden_layers: 1 }), "hf", hfHeaders()).problems).toEqual([
      "num_hidden_layers is 1, but the checkpoint has tensors past it (language_model.backbone.layers.1.mixer.gate.weight)",
    ]);
    expect(checkConsistency(config({ hidden_size: 8, hybrid_override_pattern: "ME", num_hidden_layers: 2 }), "hf", hfHeaders()).problems).toEqual([
      "has no n_routed_experts (a dense model), but the checkpoint has MoE expert tensors (language_model.backbone.layers.1.mixer.experts.0.up_proj.weight)",
    ]);
  });

  it("reads grouped native tensors: fewer experts is an expert-parallel slice, more is an error", () => {
    const native = (n: number): Map<string, TensorInfo> =>
      new Map([
        ["language_model.model.embed_tokens.weight", bf16(16, 8)],
        ["language_model.model.layers.0.mixer.in_proj.weight", bf16(4, 8)],
        ["language_model.model.layers.1.mixer.experts.gate_and_up_projs", bf16(n, 8, 4)],
        ["language_model.model.layers.1.mixer.experts.down_projs", bf16(n, 4, 8)],
      ]);
    expect(checkConsistency(config(base), "native", native(2))).toEqual({ problems: [] });
    expect(checkConsistency(config(base), "native", native(1))).toEqual({ problems: [], epSliceExperts: 1 });
    expect(checkConsistency(config(base), "native", native(3)).problems[0]).toBe(
      "n_routed_experts is 2, but language_model.model.layers.1.mixer.experts.gate_and_up_projs groups 3 experts",
    );
  });

  it("requireConsistent refuses with the first disagreement and how many more", () => {
    expect(() => requireConsistent({ problems: ["a", "b", "c"] }, "ckpt/config.json")).toThrow(
      new FormatError("ckpt/config.json", "disagrees with the tensors: a (and 2 more disagreements)"),
    );
    expect(() => requireConsistent({ problems: [] }, "x")).not.toThrow();
  });
});
