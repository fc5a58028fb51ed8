import { describe, expect, it } from "vitest";
import { expertKeyLayout, expertLoraKey, expertWeightKey, parseExpertKey } from "../../src/adapters/expert-keys.js";

describe("the expert key grammar", () => {
  it("parses every expert form, keeping the prefix verbatim", () => {
    expect(parseExpertKey("backbone.layers.3.mixer.experts.12.up_proj.weight")).toEqual({
      prefix: "backbone.",
      layer: "3",
      kind: "expert-weight",
      expert: 12,
      proj: "up_proj",
      rest: "",
    });
    expect(parseExpertKey("base_model.model.model.layers.1.mixer.experts.0.down_proj.lora_B.weight")).toEqual({
      prefix: "base_model.model.model.",
      layer: "1",
      kind: "expert-lora",
      expert: 0,
      proj: "down_proj",
      half: "lora_B",
    });
    expect(parseExpertKey("model.layers.4.mixer.experts.base_layer.lora_A.weight")).toMatchObject({ kind: "param-wrapper", part: "base_layer.lora_A.weight", prefix: "model." });
    expect(parseExpertKey("mtp.layers.1.mixer.experts.lora_A.weight")).toMatchObject({ kind: "param-wrapper", part: "lora_A.weight", prefix: "mtp." });
    expect(parseExpertKey("language_model.model.layers.9.mixer.experts.gate_and_up_projs")).toMatchObject({ kind: "grouped", weight: "gate_and_up_projs", layer: "9" });
    expect(parseExpertKey("model.layers.9.mixer.experts.lora_down_B")).toMatchObject({ kind: "grouped-lora", lora: "lora_down_B" });
    // Like the reference's unanchored pattern, text after `.weight` is kept for the rules to judge.
    expect(parseExpertKey("backbone.layers.1.mixer.experts.2.up_proj.weight_scale_inv")).toMatchObject({ kind: "expert-weight", rest: "_scale_inv" });
  });

  it("is not fooled by lookalikes", () => {
    for (const key of [
      "backbone.layers.1.mixer.shared_experts.up_proj.weight",
      "backbone.layers.1.mixer.experts.up_proj.weight",
      "backbone.layers.x.mixer.experts.0.up_proj.weight",
      "backbone.layers.1.mixer.experts.0.gate.weight",
      "backbone.layers.1.mixer.experts.lora_C.weight",
      "backbone.layers.1.mixer.experts.down_projs.weight",
      "mixer.experts.0.up_proj.weight",
    ]) {
      expect(parseExpertKey(key), key).toBeUndefined();
    }
  });

  it("builds the keys it parses, and tells the layout of each form", () => {
    const w = expertWeightKey("backbone.", "2", 5, "down_proj");
    expect(w).toBe("backbone.layers.2.mixer.experts.5.down_proj.weight");
    expect(parseExpertKey(w)).toMatchObject({ kind: "expert-weight", expert: 5, proj: "down_proj", layer: "2" });
    const l = expertLoraKey("x.", "0", 1, "up_proj", "lora_A");
    expect(parseExpertKey(l)).toMatchObject({ kind: "expert-lora", prefix: "x.", expert: 1, half: "lora_A" });
    expect(expertKeyLayout(parseExpertKey(w)!)).toBe("hf");
    expect(expertKeyLayout(parseExpertKey("model.layers.1.mixer.experts.down_projs")!)).toBe("native");
    expect(expertKeyLayout(parseExpertKey("model.layers.1.mixer.experts.lora_A.weight")!)).toBe("hf");
  });
});
