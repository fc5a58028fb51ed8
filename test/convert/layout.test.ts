import { describe, expect, it } from "vitest";
import { detectLayout, requireLayout } from "../../src/convert/layout.js";
import { InputError } from "../../src/errors.js";

describe("layout detection", () => {
  it("tells HF from native by names only one layout uses", () => {
    expect(detectLayout(["mlp1.1.weight"]).layout).toBe("hf");
    expect(detectLayout(["vision_projector.linear1.weight"]).layout).toBe("native");
    expect(detectLayout(["language_model.backbone.norm_f.weight"]).layout).toBe("hf");
    expect(detectLayout(["language_model.model.norm.weight"]).layout).toBe("native");
    expect(detectLayout(["sound_encoder.encoder.layers.0.conv.norm.weight"]).layout).toBe("hf");
    expect(detectLayout(["sound_encoder.layers.0.conv.norm.weight"]).layout).toBe("native");
    expect(detectLayout(["x.layers.1.mixer._fp32_params.A_log"]).layout).toBe("native");
    expect(detectLayout(["x.layers.1.mixer.A_log"]).layout).toBe("hf");
  });

  it("reads expert keys through the grammar: per-expert and ParamWrapper are HF, grouped are native", () => {
    expect(detectLayout(["layers.1.mixer.experts.0.up_proj.weight"]).layout).toBe("hf");
    expect(detectLayout(["layers.1.mixer.experts.base_layer.lora_B.weight"]).layout).toBe("hf");
    expect(detectLayout(["layers.1.mixer.experts.gate_and_up_projs"]).layout).toBe("native");
    expect(detectLayout(["layers.1.mixer.experts.lora_gate_and_up_A"]).layout).toBe("native");
    // PEFT-prefixed keys follow the same rule.
    expect(detectLayout(["base_model.model.layers.1.mixer.experts.3.down_proj.lora_A.weight"]).layout).toBe("hf");
  });

  it("is undecided for names of neither or of both, and requireLayout says which", () => {
    expect(detectLayout(["vision_model.radio_model.model.blocks.0.attn.qkv.weight"])).toEqual({ layout: undefined, example: {} });
    const both = detectLayout(["mlp1.0.weight", "vision_projector.norm.weight"]);
    expect(both).toEqual({ layout: undefined, example: { hf: "mlp1.0.weight", native: "vision_projector.norm.weight" } });
    expect(() => requireLayout(["mlp1.0.weight", "vision_projector.norm.weight"], "ckpt")).toThrow(
      new InputError("ckpt: mixes HF names (mlp1.0.weight) and native names (vision_projector.norm.weight); a checkpoint must be one layout"),
    );
    expect(() => requireLayout(["vision_model.x"], "ckpt")).toThrow(
      new InputError("ckpt: no tensor name tells whether this is an HF or a native Nemotron Omni checkpoint"),
    );
  });
});
