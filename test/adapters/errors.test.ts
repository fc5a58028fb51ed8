import { describe, expect, it } from "vitest";
import { expertRange } from "../../src/adapters/experts.js";
import { NemotronOmniStateDictAdapter } from "../../src/adapters/nemotron-omni.js";
import { NemotronV3StateDictAdapter } from "../../src/adapters/nemotron-v3.js";
import { ConversionError, FormatError, InputError, UsageError } from "../../src/errors.js";
import type { DType } from "../../src/tensor/dtype.js";
import type { Tensor } from "../../src/tensor/tensor.js";
import { type Random, seededRandom } from "../helpers/fixtures.js";
import { omniConfig, randomTensor } from "../helpers/state-dicts.js";

/*
 * Every error the adapters raise on purpose, each with its whole message: what is wrong, with the user's
 * own tensor names and the numbers involved.
 */

const H = 3;
const I = 2;
const LM = "language_model.";
const EXPERTS = `${LM}backbone.layers.1.mixer.experts`;
const NATIVE_EXPERTS = `${LM}model.layers.1.mixer.experts`;

const config = (experts: number, llm: Record<string, unknown> = {}): Record<string, unknown> =>
  omniConfig({ num_hidden_layers: 0, n_routed_experts: experts, moe_intermediate_size: I, hidden_size: H, ...llm });

/** The whole message, literally. */
const exactly = (message: string): RegExp => new RegExp(`^${message.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}$`);

/** Run `f`, expect it to throw an instance of `type` whose message matches `message`; return the error. */
function thrown(f: () => unknown, type: new (...args: never[]) => Error, message: RegExp): Error {
  let error: unknown;
  try {
    f();
  } catch (e) {
    error = e;
  }
  expect(error, "expected an error").toBeInstanceOf(type);
  expect((error as Error).message).toMatch(message);
  return error as Error;
}

function experts(r: Random, base: string, n: number, options: { dtype?: DType; skip?: string[]; gate?: boolean } = {}): Map<string, Tensor> {
  const sd = new Map<string, Tensor>();
  const dtype = options.dtype ?? "BF16";
  for (let e = 0; e < n; e++) {
    const projs: [string, number[]][] = [
      ...(options.gate ? ([["gate_proj", [I, H]]] as [string, number[]][]) : []),
      ["up_proj", [I, H]],
      ["down_proj", [H, I]],
    ];
    for (const [proj, shape] of projs) {
      const key = `${base}.${e}.${proj}.weight`;
      if (!options.skip?.includes(`${e}.${proj}`)) sd.set(key, randomTensor(dtype, shape, r));
    }
  }
  return sd;
}

describe("missing experts (SPEC §3)", () => {
  it("names how many of how many are missing, the MoE layers, and the first missing keys as the file spells them", () => {
    const hf = experts(seededRandom(1), EXPERTS, 4, { skip: ["2.down_proj", "3.up_proj"] });
    const e = thrown(
      () => new NemotronOmniStateDictAdapter(config(4)).fromHf(hf),
      ConversionError,
      exactly(
        `expert weights missing from checkpoint: 2/8 required weights not found in MoE layers [1]; first missing: ` +
          `${EXPERTS}.2.down_proj.weight, ${EXPERTS}.3.up_proj.weight`,
      ),
    );
    expect(e).toBeInstanceOf(InputError);
  });

  it("with EP, only this rank's experts are required, and the message says which rank and experts", () => {
    const hf = experts(seededRandom(2), EXPERTS, 4, { skip: ["2.down_proj", "3.up_proj"] });
    const adapter = new NemotronOmniStateDictAdapter(config(4));
    thrown(
      () => adapter.fromHf(hf, { ep: { rank: 1, size: 2 } }),
      ConversionError,
      exactly(
        `expert weights missing from checkpoint (rank 1 of 2, experts 2–3): 2/4 required weights not found in MoE layers [1]; ` +
          `first missing: ${EXPERTS}.2.down_proj.weight, ${EXPERTS}.3.up_proj.weight`,
      ),
    );
    // Rank 0 needs experts 0 and 1 only, which are all there.
    const rank0 = adapter.fromHf(hf, { ep: { rank: 0, size: 2 } });
    expect(rank0.get(`${NATIVE_EXPERTS}.gate_and_up_projs`)!.shape).toEqual([2, H, I]);
  });

  it("lists at most five keys and says how many more, over every MoE layer (layers sorted)", () => {
    const r = seededRandom(3);
    const hf = new Map([
      ...experts(r, `${LM}backbone.layers.3.mixer.experts`, 1),
      ...experts(r, EXPERTS, 1),
    ]);
    thrown(
      () => new NemotronOmniStateDictAdapter(config(8)).fromHf(hf),
      ConversionError,
      exactly(
        `expert weights missing from checkpoint: 28/32 required weights not found in MoE layers [1, 3]; first missing: ` +
          `${LM}backbone.layers.3.mixer.experts.1.up_proj.weight, ${LM}backbone.layers.3.mixer.experts.1.down_proj.weight, ` +
          `${LM}backbone.layers.3.mixer.experts.2.up_proj.weight, ${LM}backbone.layers.3.mixer.experts.2.down_proj.weight, ` +
          `${LM}backbone.layers.3.mixer.experts.3.up_proj.weight (and 23 more)`,
      ),
    );
  });

  it("a gated activation requires gate_proj too", () => {
    const hf = experts(seededRandom(4), EXPERTS, 2);
    thrown(
      () => new NemotronOmniStateDictAdapter(config(2), { expertActivation: "swiglu" }).fromHf(hf),
      ConversionError,
      exactly(
        `expert weights missing from checkpoint: 2/6 required weights not found in MoE layers [1]; first missing: ` +
          `${EXPERTS}.0.gate_proj.weight, ${EXPERTS}.1.gate_proj.weight`,
      ),
    );
  });

  it("MTP experts are checked and named under mtp.", () => {
    const hf = experts(seededRandom(5), `${LM}mtp.layers.1.mixer.experts`, 2, { skip: ["1.up_proj"] });
    thrown(
      () => new NemotronOmniStateDictAdapter(config(2)).fromHf(hf),
      ConversionError,
      exactly(`expert weights missing from checkpoint: 1/4 required weights not found in MoE layers [1]; first missing: ${LM}mtp.layers.1.mixer.experts.1.up_proj.weight`),
    );
  });

  it("the NemotronV3 adapter on its own names the backbone keys", () => {
    const hf = experts(seededRandom(6), "backbone.layers.7.mixer.experts", 2, { skip: ["0.down_proj"] });
    thrown(
      () => new NemotronV3StateDictAdapter({ n_routed_experts: 2, moe_intermediate_size: I }).fromHf(hf, { ep: { rank: 0, size: 2 } }),
      ConversionError,
      exactly(
        "expert weights missing from checkpoint (rank 0 of 2, experts 0–0): 1/2 required weights not found in MoE layers [7]; " +
          "first missing: backbone.layers.7.mixer.experts.0.down_proj.weight",
      ),
    );
  });
});

describe("experts of one layer that do not fit together", () => {
  it("different shapes", () => {
    const hf = experts(seededRandom(11), EXPERTS, 3);
    hf.set(`${EXPERTS}.1.up_proj.weight`, randomTensor("BF16", [I + 1, H], seededRandom(12)));
    thrown(
      () => new NemotronOmniStateDictAdapter(config(3)).fromHf(hf),
      ConversionError,
      exactly(
        `layer 1 up_proj experts: "${EXPERTS}.1.up_proj.weight" is BF16[3, 3] but "${EXPERTS}.0.up_proj.weight" is BF16[2, 3]; ` +
          `experts of one layer must match`,
      ),
    );
  });

  it("different dtypes", () => {
    const hf = experts(seededRandom(13), EXPERTS, 3);
    hf.set(`${EXPERTS}.2.down_proj.weight`, randomTensor("F16", [H, I], seededRandom(14)));
    thrown(
      () => new NemotronOmniStateDictAdapter(config(3)).fromHf(hf),
      ConversionError,
      exactly(
        `layer 1 down_proj experts: "${EXPERTS}.2.down_proj.weight" is F16[3, 2] but "${EXPERTS}.0.down_proj.weight" is BF16[3, 2]; ` +
          `experts of one layer must match`,
      ),
    );
  });

  it("gate and up of a gated layer must match each other", () => {
    const hf = experts(seededRandom(15), EXPERTS, 2, { gate: true });
    hf.set(`${EXPERTS}.0.up_proj.weight`, randomTensor("F32", [I, H], seededRandom(16)));
    thrown(
      () => new NemotronOmniStateDictAdapter(config(2), { expertActivation: "swiglu" }).fromHf(hf),
      ConversionError,
      exactly(
        `layer 1 gate_proj/up_proj experts: "${EXPERTS}.0.up_proj.weight" is F32[2, 3] but "${EXPERTS}.0.gate_proj.weight" is BF16[2, 3]; ` +
          `experts of one layer must match`,
      ),
    );
  });

  it("an expert weight that is not a matrix", () => {
    const hf = experts(seededRandom(17), EXPERTS, 2);
    hf.set(`${EXPERTS}.0.up_proj.weight`, randomTensor("BF16", [I, H, 1], seededRandom(18)));
    thrown(
      () => new NemotronOmniStateDictAdapter(config(2)).fromHf(hf),
      ConversionError,
      exactly(`"${EXPERTS}.0.up_proj.weight": layer 1 up_proj experts must be a matrix, found shape [2, 3, 1]`),
    );
  });

  it("per-expert LoRA of different shapes", () => {
    const r = seededRandom(19);
    const hf = new Map<string, Tensor>([
      [`${EXPERTS}.0.down_proj.lora_A.weight`, randomTensor("BF16", [2, I], r)],
      [`${EXPERTS}.1.down_proj.lora_A.weight`, randomTensor("BF16", [3, I], r)],
    ]);
    thrown(
      () => new NemotronOmniStateDictAdapter(config(2)).fromHf(hf),
      ConversionError,
      exactly(
        `layer 1 LoRA down_proj.lora_A: "${EXPERTS}.1.down_proj.lora_A.weight" is BF16[3, 2] but "${EXPERTS}.0.down_proj.lora_A.weight" is BF16[2, 2]; ` +
          `experts of one layer must match`,
      ),
    );
  });

  it("a layer index spelled two ways leaves one spelling without all its experts", () => {
    const r = seededRandom(20);
    const hf = new Map([...experts(r, EXPERTS, 3), [`${LM}backbone.layers.01.mixer.experts.0.up_proj.weight`, randomTensor("BF16", [I, H], r)]]);
    thrown(
      () => new NemotronOmniStateDictAdapter(config(3)).fromHf(hf),
      ConversionError,
      exactly(`${LM}backbone.layers.01.mixer.experts.gate_and_up_projs: 1 of 3 experts present`),
    );
  });
});

describe("grouped tensors that cannot be split (native → HF)", () => {
  it("a first axis smaller than the expert count: an expert-parallel slice", () => {
    const r = seededRandom(21);
    const adapter = new NemotronOmniStateDictAdapter(config(3));
    for (const [suffix, shape] of [
      ["gate_and_up_projs", [2, H, I]],
      ["down_projs", [2, I, H]],
    ] as const) {
      thrown(
        () => adapter.toHf(new Map([[`${NATIVE_EXPERTS}.${suffix}`, randomTensor("BF16", shape, r)]])),
        ConversionError,
        exactly(`"${NATIVE_EXPERTS}.${suffix}": holds 2 experts on axis 0 but the config has 3 (an expert-parallel slice cannot be converted to HF on its own)`),
      );
    }
    // The per-expert LoRA form splits per expert too.
    thrown(
      () => adapter.toHf(new Map([[`${NATIVE_EXPERTS}.lora_down_A`, randomTensor("BF16", [1, I, 2], r)]]), { v4Compatible: true }),
      ConversionError,
      exactly(`"${NATIVE_EXPERTS}.lora_down_A": holds 1 experts on axis 0 but the config has 3 (an expert-parallel slice cannot be converted to HF on its own)`),
    );
  });

  // The reference folds whatever it gets into the rank axis; a slice would read back as a different rank
  // with scrambled experts, so the ParamWrapper form refuses it like every other split does.
  it("the ParamWrapper LoRA form refuses an expert-parallel slice too", () => {
    thrown(
      () => new NemotronOmniStateDictAdapter(config(3)).toHf(new Map([[`${NATIVE_EXPERTS}.lora_down_A`, randomTensor("BF16", [2, I, 3], seededRandom(25))]])),
      ConversionError,
      exactly(`"${NATIVE_EXPERTS}.lora_down_A": holds 2 experts on axis 0 but the config has 3 (an expert-parallel slice cannot be converted to HF on its own)`),
    );
  });

  it("a first axis larger than the expert count (no EP hint)", () => {
    thrown(
      () => new NemotronOmniStateDictAdapter(config(3)).toHf(new Map([[`${NATIVE_EXPERTS}.gate_and_up_projs`, randomTensor("BF16", [4, H, I], seededRandom(22))]])),
      ConversionError,
      exactly(`"${NATIVE_EXPERTS}.gate_and_up_projs": holds 4 experts on axis 0 but the config has 3`),
    );
  });

  it("a grouped tensor that is not 3-d", () => {
    const r = seededRandom(23);
    const adapter = new NemotronOmniStateDictAdapter(config(3));
    thrown(
      () => adapter.toHf(new Map([[`${NATIVE_EXPERTS}.gate_and_up_projs`, randomTensor("BF16", [3, H], r)]])),
      ConversionError,
      exactly(`"${NATIVE_EXPERTS}.gate_and_up_projs": grouped expert tensor must be 3-d, found [3, 3]`),
    );
    thrown(
      () => adapter.toHf(new Map([[`${NATIVE_EXPERTS}.lora_down_A`, randomTensor("BF16", [3, I], r)]])),
      ConversionError,
      exactly(`"${NATIVE_EXPERTS}.lora_down_A": grouped LoRA tensor must be 3-d, found [3, 2]`),
    );
    thrown(
      () => adapter.toHf(new Map([[`${NATIVE_EXPERTS}.lora_down_A`, randomTensor("BF16", [3, I, 2, 1], r)]]), { v4Compatible: true }),
      ConversionError,
      exactly(`"${NATIVE_EXPERTS}.lora_down_A": grouped expert tensor must be 3-d, found [3, 2, 2, 1]`),
    );
  });

  it("a gated grouped tensor whose last axis is not 2 × moe_intermediate_size", () => {
    thrown(
      () =>
        new NemotronOmniStateDictAdapter(config(3), { expertActivation: "swiglu" }).toHf(
          new Map([[`${NATIVE_EXPERTS}.gate_and_up_projs`, randomTensor("BF16", [3, H, 3], seededRandom(24))]]),
        ),
      ConversionError,
      exactly(`"${NATIVE_EXPERTS}.gate_and_up_projs": gated experts need 2 × moe_intermediate_size = 4 columns, found 3`),
    );
    // Its LoRA B, split per expert for PEFT v4, is cut into the same halves and refused the same way.
    thrown(
      () =>
        new NemotronOmniStateDictAdapter(config(3), { expertActivation: "swiglu" }).toHf(
          new Map([[`${NATIVE_EXPERTS}.lora_gate_and_up_B`, randomTensor("BF16", [3, 2, 3], seededRandom(25))]]),
          { v4Compatible: true },
        ),
      ConversionError,
      exactly(`"${NATIVE_EXPERTS}.lora_gate_and_up_B": gated experts need 2 × moe_intermediate_size = 4 columns, found 3`),
    );
  });
});

describe("ParamWrapper LoRA that cannot hold the experts (HF → native)", () => {
  const cases: [string, number[], number][] = [
    ["lora_A.weight", [7, H], 7],
    ["lora_B.weight", [I, 7], 7],
    ["base_layer.lora_A.weight", [4, I], 4],
    ["base_layer.lora_B.weight", [H, 5], 5],
  ];
  for (const [suffix, shape, folded] of cases) {
    it(`${suffix} ${JSON.stringify(shape)}: the folded axis is not a multiple of E`, () => {
      thrown(
        () => new NemotronOmniStateDictAdapter(config(3)).fromHf(new Map([[`${EXPERTS}.${suffix}`, randomTensor("BF16", shape, seededRandom(31))]])),
        ConversionError,
        exactly(`"${EXPERTS}.${suffix}": ParamWrapper LoRA [${shape.join(", ")}] cannot hold 3 experts (${folded} is not a multiple of 3)`),
      );
    });
  }

  it("a ParamWrapper weight that is not a matrix", () => {
    thrown(
      () => new NemotronOmniStateDictAdapter(config(3)).fromHf(new Map([[`${EXPERTS}.lora_A.weight`, randomTensor("BF16", [6], seededRandom(32))]])),
      ConversionError,
      exactly(`"${EXPERTS}.lora_A.weight": a ParamWrapper LoRA weight must be a matrix, found shape [6]`),
    );
  });
});

describe("two inputs that would become one output", () => {
  const t = (n: number): Tensor => randomTensor("BF16", [H], seededRandom(40 + n));

  it("HF → native: the final norm under both spellings", () => {
    const hf = new Map([
      [`${LM}backbone.norm_f.weight`, t(1)],
      [`${LM}model.norm.weight`, t(2)],
    ]);
    thrown(
      () => new NemotronOmniStateDictAdapter(config(3)).fromHf(hf),
      ConversionError,
      exactly(`tensors "${LM}backbone.norm_f.weight" and "${LM}model.norm.weight" would both become "model.norm.weight"`),
    );
  });

  it("HF → native: a projector key and its native name", () => {
    const hf = new Map([
      ["mlp1.0.weight", t(3)],
      ["vision_projector.norm.weight", t(4)],
    ]);
    thrown(
      () => new NemotronOmniStateDictAdapter(config(3)).fromHf(hf),
      ConversionError,
      exactly(`tensors "mlp1.0.weight" and "vision_projector.norm.weight" would both become "vision_projector.norm.weight"`),
    );
  });

  it("HF → native: a Mamba parameter with and without _fp32_params", () => {
    const hf = new Map([
      [`${LM}backbone.layers.0.mixer.D`, t(5)],
      [`${LM}backbone.layers.0.mixer._fp32_params.D`, t(6)],
    ]);
    thrown(
      () => new NemotronOmniStateDictAdapter(config(3)).fromHf(hf),
      ConversionError,
      exactly(`tensors "${LM}backbone.layers.0.mixer.D" and "${LM}backbone.layers.0.mixer._fp32_params.D" would both become "model.layers.0.mixer._fp32_params.D"`),
    );
  });

  it("HF → native: a grouped tensor already in the file and the one merged from per-expert weights", () => {
    const r = seededRandom(47);
    const hf = new Map([[`${EXPERTS}.gate_and_up_projs`, randomTensor("BF16", [3, H, I], r)], ...experts(r, EXPERTS, 3)]);
    thrown(
      () => new NemotronOmniStateDictAdapter(config(3)).fromHf(hf),
      ConversionError,
      exactly(`tensors "${EXPERTS}.gate_and_up_projs" and "${EXPERTS}.0.up_proj.weight" would both become "model.layers.1.mixer.experts.gate_and_up_projs"`),
    );
  });

  it("HF → native: expert LoRA in both the per-expert and the ParamWrapper form", () => {
    const r = seededRandom(48);
    const hf = new Map<string, Tensor>([
      [`${EXPERTS}.0.down_proj.lora_A.weight`, randomTensor("BF16", [2, I], r)],
      [`${EXPERTS}.1.down_proj.lora_A.weight`, randomTensor("BF16", [2, I], r)],
      [`${EXPERTS}.lora_B.weight`, randomTensor("BF16", [I, 4], r)],
    ]);
    thrown(
      () => new NemotronOmniStateDictAdapter(config(2)).fromHf(hf),
      ConversionError,
      exactly(`tensors "${EXPERTS}.0.down_proj.lora_A.weight" and "${EXPERTS}.lora_B.weight" would both become "model.layers.1.mixer.experts.lora_down_A"`),
    );
  });

  it("native → HF: a projector name and its HF name", () => {
    const native = new Map([
      ["vision_projector.norm.weight", t(7)],
      ["mlp1.0.weight", t(8)],
    ]);
    thrown(
      () => new NemotronOmniStateDictAdapter(config(3)).toHf(native),
      ConversionError,
      exactly(`tensors "vision_projector.norm.weight" and "mlp1.0.weight" would both become "mlp1.0.weight"`),
    );
  });

  it("native → HF: a grouped tensor and a per-expert weight it splits into", () => {
    const r = seededRandom(49);
    const native = new Map([
      [`${NATIVE_EXPERTS}.gate_and_up_projs`, randomTensor("BF16", [3, H, I], r)],
      [`${EXPERTS}.0.up_proj.weight`, randomTensor("BF16", [I, H], r)],
    ]);
    thrown(
      () => new NemotronOmniStateDictAdapter(config(3)).toHf(native),
      ConversionError,
      exactly(`tensors "${NATIVE_EXPERTS}.gate_and_up_projs" and "${EXPERTS}.0.up_proj.weight" would both become "backbone.layers.1.mixer.experts.0.up_proj.weight"`),
    );
  });

  it("native → HF: a Mamba parameter with and without _fp32_params", () => {
    const native = new Map([
      ["model.layers.0.mixer._fp32_params.D", t(9)],
      ["model.layers.0.mixer.D", t(10)],
    ]);
    thrown(
      () => new NemotronV3StateDictAdapter({ num_hidden_layers: 0 }).toHf(native),
      ConversionError,
      exactly(`tensors "model.layers.0.mixer._fp32_params.D" and "model.layers.0.mixer.D" would both become "backbone.layers.0.mixer.D"`),
    );
  });
});

describe("invalid expert parallelism", () => {
  const hf = experts(seededRandom(51), EXPERTS, 3);
  const cases: [{ rank: number; size: number }, string][] = [
    [{ rank: 3, size: 3 }, "expert-parallel rank must be in [0, 3), got 3"],
    [{ rank: 5, size: 2 }, "expert-parallel rank must be in [0, 2), got 5"],
    [{ rank: -1, size: 2 }, "expert-parallel rank must be in [0, 2), got -1"],
    [{ rank: 0.5, size: 2 }, "expert-parallel rank must be in [0, 2), got 0.5"],
    [{ rank: 0, size: 0 }, "expert-parallel size must be ≥ 1, got 0"],
    [{ rank: 0, size: -2 }, "expert-parallel size must be ≥ 1, got -2"],
    [{ rank: 0, size: 1.5 }, "expert-parallel size must be ≥ 1, got 1.5"],
    [{ rank: 0, size: Number.NaN }, "expert-parallel size must be ≥ 1, got NaN"],
  ];
  for (const [ep, message] of cases) {
    it(`rank ${ep.rank} of ${ep.size}`, () => {
      thrown(() => new NemotronOmniStateDictAdapter(config(3)).fromHf(hf, { ep }), UsageError, exactly(message));
      // Even when the state dict holds no expert at all.
      thrown(() => new NemotronOmniStateDictAdapter(config(3)).fromHf(new Map(), { ep }), UsageError, exactly(message));
      thrown(() => expertRange(3, ep), UsageError, exactly(message));
    });
  }
});

describe("invalid options and configs", () => {
  for (const dtype of ["int8", "F64", "I32", "F8_E4M3", "fp64", ""]) {
    it(`dtype ${JSON.stringify(dtype)}`, () => {
      const message = exactly(`unsupported expert dtype ${JSON.stringify(dtype)}: use bf16, f16 or f32`);
      thrown(() => new NemotronOmniStateDictAdapter(config(3), { dtype }), UsageError, message);
      thrown(() => new NemotronV3StateDictAdapter({ n_routed_experts: 3, moe_intermediate_size: I }, { dtype }), UsageError, message);
    });
  }

  it("an unknown expert activation", () => {
    thrown(
      () => new NemotronOmniStateDictAdapter(config(3), { expertActivation: "gelu" as never }),
      UsageError,
      exactly('unknown expert activation "gelu"'),
    );
  });

  it("configs the rules cannot use", () => {
    thrown(
      () => new NemotronOmniStateDictAdapter(omniConfig({ n_routed_experts: 4 })),
      FormatError,
      exactly("config.json (llm_config): has n_routed_experts but no moe_intermediate_size"),
    );
    thrown(
      () => new NemotronOmniStateDictAdapter(omniConfig({ n_routed_experts: 0, moe_intermediate_size: 2 })),
      FormatError,
      exactly("config.json (llm_config): n_routed_experts must be an integer ≥ 1, found 0"),
    );
    thrown(
      () => new NemotronOmniStateDictAdapter({ model_type: "llama" }),
      FormatError,
      exactly("config.json: has no llm_config: not a Nemotron Omni (or NemotronH) config"),
    );
  });
});

describe("invalid exclude regex", () => {
  const native = new Map([[`${LM}model.norm.weight`, randomTensor("BF16", [H], seededRandom(61))]]);
  const unterminated = /^invalid regex "\(\[a-": Invalid regular expression: .+/;

  it("a pattern JavaScript cannot compile", () => {
    const adapter = new NemotronOmniStateDictAdapter(config(3));
    thrown(() => adapter.toHf(native, { excludeKeyRegex: "([a-" }), UsageError, unterminated);
    thrown(() => adapter.toHf(new Map(), { excludeKeyRegex: "([a-" }), UsageError, unterminated);
    thrown(() => adapter.convertSingleTensorToHf(`${LM}model.norm.weight`, native.get(`${LM}model.norm.weight`)!, { excludeKeyRegex: "([a-" }), UsageError, unterminated);
    thrown(() => adapter.convertSingleTensorToHf("vision_model.x", native.get(`${LM}model.norm.weight`)!, { excludeKeyRegex: "([a-" }), UsageError, unterminated);
    thrown(
      () => new NemotronV3StateDictAdapter({ num_hidden_layers: 0 }).toHf(new Map([["model.norm.weight", native.get(`${LM}model.norm.weight`)!]]), { excludeKeyRegex: "([a-" }),
      UsageError,
      unterminated,
    );
  });

  it("a Python inline flag JavaScript has no equivalent for", () => {
    thrown(
      () => new NemotronOmniStateDictAdapter(config(3)).toHf(native, { excludeKeyRegex: "(?x)model" }),
      UsageError,
      exactly('invalid regex "(?x)model": inline flag (?x) is not supported'),
    );
  });
});

describe("an expert index spelled twice", () => {
  it("experts.1. and experts.01. are the same expert", () => {
    const r = seededRandom(71);
    const hf = new Map([...experts(r, EXPERTS, 3), [`${EXPERTS}.01.up_proj.weight`, randomTensor("BF16", [I, H], r)]]);
    thrown(
      () => new NemotronOmniStateDictAdapter(config(3)).fromHf(hf),
      ConversionError,
      exactly(`${EXPERTS}.01.up_proj.weight: expert 1 of layer 1 appears twice (also as "${EXPERTS}.1.up_proj.weight")`),
    );
  });

  it("…in either order, and in MTP layers", () => {
    const r = seededRandom(72);
    const base = `${LM}mtp.layers.0.mixer.experts`;
    const hf = new Map([[`${base}.002.down_proj.weight`, randomTensor("BF16", [H, I], r)], ...experts(r, base, 3)]);
    thrown(
      () => new NemotronOmniStateDictAdapter(config(3)).fromHf(hf),
      ConversionError,
      exactly(`${base}.2.down_proj.weight: expert 2 of layer 0 appears twice (also as "${base}.002.down_proj.weight")`),
    );
  });

  it("per-expert LoRA too", () => {
    const r = seededRandom(73);
    const hf = new Map<string, Tensor>([
      [`${EXPERTS}.1.up_proj.lora_A.weight`, randomTensor("BF16", [2, H], r)],
      [`${EXPERTS}.01.up_proj.lora_A.weight`, randomTensor("BF16", [2, H], r)],
    ]);
    thrown(
      () => new NemotronOmniStateDictAdapter(config(3)).fromHf(hf),
      ConversionError,
      exactly(`"${EXPERTS}.01.up_proj.lora_A.weight": LoRA for expert 1 of layer 1 appears twice`),
    );
  });

  it("an expert index with leading zeros alone does not stand in for the expert (the check wants experts.1.)", () => {
    const r = seededRandom(74);
    const hf = new Map([...experts(r, EXPERTS, 2)].map(([k, v]) => [k.replace("experts.1.", "experts.001."), v] as [string, Tensor]));
    thrown(
      () => new NemotronOmniStateDictAdapter(config(2)).fromHf(hf),
      ConversionError,
      exactly(
        `expert weights missing from checkpoint: 2/4 required weights not found in MoE layers [1]; first missing: ` +
          `${EXPERTS}.1.up_proj.weight, ${EXPERTS}.1.down_proj.weight`,
      ),
    );
  });
});
