import { describe, expect, it } from "vitest";
import { parseLlmConfig, parseModelConfig, truncationEdits } from "../../src/adapters/config.js";
import { FormatError } from "../../src/errors.js";

describe("language-model configs as their writers spell them", () => {
  it("reads the layer pattern from hybrid_override_pattern, or from layers_block_type in either spelling", () => {
    expect(parseLlmConfig({ hybrid_override_pattern: "ME*-", num_hidden_layers: 4 })).toMatchObject({
      hybridOverridePattern: "ME*-",
      patternSource: "hybrid_override_pattern",
      numHiddenLayers: 4,
    });
    // transformers 5: no pattern, no layer count; the list's length is the count.
    expect(parseLlmConfig({ layers_block_type: ["linear_attention", "moe", "full_attention", "mlp"] })).toMatchObject({
      hybridOverridePattern: "ME*-",
      patternSource: "layers_block_type",
      numHiddenLayers: 4,
    });
    expect(parseLlmConfig({ layers_block_type: ["mamba", "moe", "attention"] }).hybridOverridePattern).toBe("ME*");
  });

  it("refuses a pattern and a block list that disagree, and block types it does not know", () => {
    expect(() => parseLlmConfig({ hybrid_override_pattern: "ME", layers_block_type: ["moe", "mamba"] }, "c")).toThrow(
      new FormatError("c", "hybrid_override_pattern ME and layers_block_type (EM) describe different layers"),
    );
    expect(() => parseLlmConfig({ layers_block_type: ["mamba", "conv"] }, "c")).toThrow(
      new FormatError("c", 'layers_block_type[1] is "conv"; expected one of mamba, linear_attention, moe, attention, full_attention, mlp'),
    );
  });

  it("a layer count below the pattern's length truncates, as the reference does", () => {
    expect(parseLlmConfig({ hybrid_override_pattern: "ME*ME", num_hidden_layers: 3 })).toMatchObject({ numHiddenLayers: 3, hybridOverridePattern: "ME*ME" });
  });

  it("takes the language model from llm_config or text_config, and refuses both at once", () => {
    const llm = { n_routed_experts: 4, moe_intermediate_size: 8, hybrid_override_pattern: "E" };
    expect(parseModelConfig({ llm_config: llm })).toMatchObject({ kind: "omni", llmKey: "llm_config", llm: { nRoutedExperts: 4 } });
    expect(parseModelConfig({ text_config: llm })).toMatchObject({ kind: "omni", llmKey: "text_config", llm: { nRoutedExperts: 4 } });
    expect(() => parseModelConfig({ llm_config: llm, text_config: llm }, "config.json")).toThrow(
      new FormatError("config.json", "has both llm_config and text_config; it is unclear which describes the language model"),
    );
    expect(parseModelConfig({ model_type: "nemotron_h", layers_block_type: ["moe"], n_routed_experts: 2, moe_intermediate_size: 4 })).toMatchObject({
      kind: "nemotron_h",
      llm: { numHiddenLayers: 1 },
    });
  });

  it("cuts only the fields the config has, where it has them", () => {
    const omni = { text_config: { layers_block_type: ["mamba", "moe", "attention"] } };
    expect(truncationEdits(omni, parseModelConfig(omni), 2)).toEqual([{ path: ["text_config", "layers_block_type"], keep: 2 }]);
    const bare = { model_type: "nemotron_h", num_hidden_layers: 3, hybrid_override_pattern: "ME*" };
    expect(truncationEdits(bare, parseModelConfig(bare), 1)).toEqual([
      { path: ["num_hidden_layers"], value: 1 },
      { path: ["hybrid_override_pattern"], value: "M" },
    ]);
  });
});
