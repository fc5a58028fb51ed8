import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { FormatError, InputError, UsageError } from "../../src/errors.js";
import { MemoryFolder } from "../../src/io/folder.js";
import { MemoryOutput } from "../../src/io/output.js";
import { LocalFolder } from "../../src/node/local-folder.js";
import { planSynth } from "../../src/synth/layout.js";
import { quantizeSynthPlan, writeQuantSynth } from "../../src/synth/quantize.js";
import { loraDir } from "../helpers/fixtures.js";
import { PEFT } from "../helpers/lora.js";
import { BASE, C, LM, T, W, adapterDir, baseVariant, exportError, hfExport, mergeError, refused, variant, withBase, zeros } from "../helpers/lora-fixture.js";

/* Every way an adapter or a base is refused, each with its exact message, naming the key or file. */

describe("refusals, each naming the key or file", () => {
  it("a key that no rule places", async () => {
    await refused(
      exportError(variant({ tensors: (t) => t.set(`${LM}.0.mixer.in_proj.lora_embedding_A`, t.get(`${LM}.0.mixer.in_proj.lora_A.weight`)!) })),
      FormatError,
      `${T(`${LM}.0.mixer.in_proj.lora_embedding_A`)}no rule places it: omni-ckpt knows LoRA lora_A/lora_B weights, Automodel's grouped expert LoRA and modules_to_save weights`,
    );
    await refused(
      exportError(variant({ tensors: (t) => t.set("language_model.model.layers.0.mixer.in_proj.lora_A.weight", t.get(`${LM}.0.mixer.in_proj.lora_A.weight`)!) })),
      FormatError,
      `${T("language_model.model.layers.0.mixer.in_proj.lora_A.weight")}does not start with "base_model.model.", so no rule places it (PEFT and Automodel save every adapter key under that prefix)`,
    );
    await refused(
      exportError(variant({ tensors: (t) => {
        t.set(`${PEFT}text_encoder.fc.lora_A.weight`, zeros([4, 8]));
        t.set(`${PEFT}text_encoder.fc.lora_B.weight`, zeros([8, 4]));
      } })),
      FormatError,
      `${T(`${PEFT}text_encoder.fc.lora_A.weight`)}no rule places it: text_encoder.fc is no module of the Omni model, whose native names start with language_model., vision_model., vision_projector., sound_encoder. and sound_projection.`,
    );
    await refused(
      exportError(variant({ tensors: (t) => t.set(`${PEFT}language_model.lm_head.weight`, zeros([64, 16])) })),
      FormatError,
      `${T(`${PEFT}language_model.lm_head.weight`)}no rule places it: it is not LoRA, and ${C} lists no modules_to_save entry for its module language_model.lm_head`,
    );
    await refused(
      exportError(variant({ tensors: (t) => {
        t.set(`${LM}.7.mixer.in_proj.lora_A.weight`, t.get(`${LM}.0.mixer.in_proj.lora_A.weight`)!);
        t.set(`${LM}.7.mixer.in_proj.lora_B.weight`, t.get(`${LM}.0.mixer.in_proj.lora_B.weight`)!);
      } }), await withBase()),
      FormatError,
      `${T(`${LM}.7.mixer.in_proj.lora_A.weight`)}its module language_model.backbone.layers.7.mixer.in_proj has no weight in ${BASE} (language_model.backbone.layers.7.mixer.in_proj.weight)`,
    );
    await refused(
      exportError(variant({ tensors: (t) => {
        t.set(`${PEFT}mlp1.1.lora_A.weight`, t.get(`${PEFT}vision_projector.linear1.lora_A.weight`)!);
        t.set(`${PEFT}mlp1.1.lora_B.weight`, t.get(`${PEFT}vision_projector.linear1.lora_B.weight`)!);
      } })),
      FormatError,
      `${W}: mixes Automodel's native names (${LM}.0.mixer.in_proj.lora_A.weight) and HF names (${PEFT}mlp1.1.lora_A.weight); an adapter uses one or the other`,
    );
  });

  it("a LoRA pair with mismatched ranks", async () => {
    await refused(
      exportError(variant({ tensors: (t) => t.set(`${LM}.0.mixer.in_proj.lora_B.weight`, zeros([68, 3])) })),
      FormatError,
      `${T(`${LM}.0.mixer.in_proj.lora_B.weight`)}LoRA B [68, 3] has rank 3, but its A "${LM}.0.mixer.in_proj.lora_A.weight" [4, 16] has rank 4`,
    );
    await refused(
      exportError(variant({ tensors: (t) => t.set(`${LM}.1.mixer.experts.lora_down_B`, zeros([4, 3, 16])) })),
      FormatError,
      `${T(`${LM}.1.mixer.experts.lora_down_B`)}[4, 3, 16] has rank 3, but "${LM}.1.mixer.experts.lora_down_A" [4, 12, 2] has rank 2`,
    );
  });

  it("a missing half of a pair", async () => {
    await refused(
      exportError(variant({ tensors: (t) => t.delete(`${LM}.2.mixer.q_proj.lora_B.weight`) })),
      FormatError,
      `${T(`${LM}.2.mixer.q_proj.lora_A.weight`)}has no matching lora_B (language_model.model.layers.2.mixer.q_proj): a LoRA pair needs both halves`,
    );
    await refused(
      exportError(variant({ tensors: (t) => t.delete(`${LM}.1.mixer.experts.lora_down_B`) })),
      FormatError,
      `${T(`${LM}.1.mixer.experts.lora_down_A`)}has no matching lora_down_B: a LoRA pair needs both halves`,
    );
  });

  it("DoRA, in the config or as a magnitude vector", async () => {
    await refused(
      exportError(variant({ config: (c) => { c["use_dora"] = true; } })),
      FormatError,
      `${C}: use_dora is true: DoRA adapters are not supported (their magnitude vectors rescale the merged weight; it is not a LoRA delta)`,
    );
    await refused(
      mergeError(variant({ tensors: (t) => t.set(`${LM}.0.mixer.in_proj.lora_magnitude_vector`, zeros([68])) })),
      FormatError,
      `${T(`${LM}.0.mixer.in_proj.lora_magnitude_vector`)}is a DoRA magnitude vector: DoRA adapters are not supported (the magnitude rescales the merged weight; it is not a LoRA delta)`,
    );
  });

  it("an adapter for a different model: widths or expert counts that disagree with the base", async () => {
    await refused(
      exportError(variant({ tensors: (t) => t.set(`${LM}.0.mixer.in_proj.lora_B.weight`, zeros([72, 4])) }), await withBase()),
      FormatError,
      `${T(`${LM}.0.mixer.in_proj.lora_A.weight`)}gives language_model.backbone.layers.0.mixer.in_proj.weight the shape [72, 16], but ${BASE} has [68, 16] (an adapter for a different model?)`,
    );
    const eightExperts = variant({ tensors: (t) => {
      for (const k of ["lora_down_A", "lora_down_B", "lora_gate_and_up_A", "lora_gate_and_up_B"]) {
        const x = t.get(`${LM}.1.mixer.experts.${k}`)!;
        t.set(`${LM}.1.mixer.experts.${k}`, zeros([8, x.shape[1]!, x.shape[2]!]));
      }
    } });
    await refused(
      mergeError(eightExperts),
      FormatError,
      `${T(`${LM}.1.mixer.experts.lora_gate_and_up_A`)}[8, 16, 2] holds 8 experts, but ${BASE}'s config has n_routed_experts 4 (an adapter for a different model?)`,
    );
  });

  it("a quantized base, and a base that is not the HF release", async () => {
    await refused(
      mergeError(adapterDir(), baseVariant({ config: (c) => { c["quantization_config"] = { quant_method: "modelopt", quant_algo: "FP8" }; } })),
      InputError,
      "base: is quantized (no quantized weight; config.json quantization_config say so); a LoRA delta cannot be added to quantized weights: merge into the BF16 release",
    );
    for (const quant of ["fp8", "fp8-block", "nvfp4"] as const) {
      const out = new MemoryOutput(quant);
      await writeQuantSynth(quantizeSynthPlan(planSynth({ preset: "tiny" }), quant), out);
      const e = await mergeError(adapterDir(), new MemoryFolder(out.files, quant));
      expect(e).toBeInstanceOf(InputError);
      expect(e.message, quant).toMatch(new RegExp(`^${quant}: is quantized \\((ModelOpt FP8|block FP8|NVFP4): .*\\); a LoRA delta cannot be added to quantized weights: merge into the BF16 release$`));
    }
    const native = path.join(loraDir, "../oracle/tiny-roundtrip-to-hf/input");
    await refused(
      mergeError(adapterDir(), new LocalFolder(native)),
      InputError,
      `${native}: is in the native (NeMo Automodel) layout; the base must be the Hugging Face release (convert it with convert --to hf first)`,
    );
  });

  it("a PEFT adapter whose config would not load its own tensors", async () => {
    await refused(
      mergeError(variant({ config: (c) => { c["target_modules"] = (c["target_modules"] as string[]).filter((m) => !m.endsWith("layers.2.mixer.q_proj")); } }, await hfExport())),
      FormatError,
      `${W}: tensor "${PEFT}language_model.backbone.layers.2.mixer.q_proj.lora_A.weight": its module language_model.backbone.layers.2.mixer.q_proj is not among ${C}'s target_modules, so PEFT would not load it`,
    );
    await refused(
      mergeError(variant({ config: (c) => { c["rank_pattern"] = {}; } }, await hfExport())),
      FormatError,
      `${W}: tensor "${PEFT}language_model.backbone.layers.1.mixer.experts.0.down_proj.lora_A.weight": has rank 2, but ${C} gives language_model.backbone.layers.1.mixer.experts.0.down_proj rank 4 (r or rank_pattern), so PEFT would refuse it`,
    );
  });

  it("what the native layout cannot hold: fused or per-expert experts without the base, missing experts, rsLoRA scales", async () => {
    await refused(
      exportError(new MemoryFolder(await hfExport({ experts: "fused" }), "adapter"), { to: "native" }),
      FormatError,
      `${W}: tensor "${PEFT}language_model.backbone.layers.1.mixer.experts.base_layer.lora_A.weight": is fused ParamWrapper expert LoRA, which folds the experts into its rows: give the base model so their number and widths come from its config`,
    );
    await refused(
      exportError(variant({ tensors: (t) => { for (const k of [...t.keys()]) if (k.includes("layers.4.mixer.experts.3.")) t.delete(k); } }, await hfExport()), { to: "native", ...(await withBase()) }),
      InputError,
      `${W}: language_model.backbone.layers.4.mixer.experts.*.down_proj has LoRA for 3 of 4 experts (none for expert 3: no ${PEFT}language_model.backbone.layers.4.mixer.experts.3.down_proj.lora_A.weight); Automodel's grouped form needs every expert`,
    );
    await refused(
      exportError(variant({ tensors: (t) => { for (const k of [...t.keys()]) if (k.includes("layers.4.mixer.experts.3.")) t.delete(k); } }, await hfExport()), { to: "native" }),
      InputError,
      `${W}: tensor "${PEFT}language_model.backbone.layers.1.mixer.experts.0.down_proj.lora_A.weight": is routed-expert LoRA per expert, which does not say how many experts each layer has, and Automodel's grouped form needs every one: give the base model (--base RELEASE) so the count comes from its config`,
    );
    await refused(
      exportError(variant({ config: (c) => { c["use_rslora"] = true; } }, await hfExport()), { to: "native" }),
      InputError,
      `${W}: tensor "${PEFT}language_model.backbone.layers.0.mixer.in_proj.lora_A.weight": PEFT scales module language_model.backbone.layers.0.mixer.in_proj by 4 (alpha 8, rank 4, rsLoRA), which Automodel cannot express: it scales every module by lora_alpha / its rank = 2`,
    );
  });

  it("MTP experts in the fused form", async () => {
    const withMtp = variant({ tensors: (t) => {
      for (const k of ["lora_down_A", "lora_down_B", "lora_gate_and_up_A", "lora_gate_and_up_B"]) t.set(`${PEFT}language_model.mtp.layers.1.mixer.experts.${k}`, t.get(`${LM}.1.mixer.experts.${k}`)!);
    } });
    await refused(
      exportError(withMtp, { experts: "fused" }),
      InputError,
      `${W}: tensor "${PEFT}language_model.mtp.layers.1.mixer.experts.lora_down_A": is LoRA on the routed experts of an MTP layer, which have no fused form (transformers 5 does not build the MTP layers); export with --experts per-expert`,
    );
  });

  it("other settings and folders it cannot honour", async () => {
    await refused(exportError(variant({ config: (c) => { c["peft_type"] = "IA3"; } })), FormatError, `${C}: peft_type is "IA3"; only LoRA adapters (peft_type "LORA") can be exported or merged`);
    await refused(exportError(variant({ config: (c) => { c["bias"] = "all"; } })), FormatError, `${C}: bias is "all": adapters that train biases are not supported, only bias "none"`);
    await refused(
      exportError(new MemoryFolder({ "adapter_config.json": new Uint8Array(2), "adapter_model.bin": new Uint8Array(1) }, "adapter")),
      InputError,
      "adapter: no adapter_model.safetensors in this folder (adapter_model.bin is a pickle, which omni-ckpt does not read: save the adapter with safe_serialization=True)",
    );
    await refused(exportError(new MemoryFolder(await hfExport(), "adapter"), {}), InputError, "adapter: is already a PEFT adapter under the HF release's names; nothing to export");
    await refused(exportError(new MemoryFolder(await hfExport(), "adapter"), { to: "native", experts: "fused" }), UsageError, "--experts applies only to an export to HF (--to hf)");
  });
});
