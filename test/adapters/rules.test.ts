import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { NemotronOmniStateDictAdapter } from "../../src/adapters/nemotron-omni.js";
import { NemotronV3StateDictAdapter } from "../../src/adapters/nemotron-v3.js";
import type { DType } from "../../src/tensor/dtype.js";
import type { Tensor } from "../../src/tensor/tensor.js";
import { type Random, seededRandom } from "../helpers/fixtures.js";
import {
  bf16ToF32,
  bitsOf,
  elementHex,
  exactCast,
  exactSmallFloats,
  expectSameDict,
  expectTensor,
  f16ToF32,
  f32ToBf16,
  gather,
  mapBits,
  omniConfig,
  randomTensor,
  recordingLogger,
  tensorOfBits,
} from "../helpers/state-dicts.js";

/*
 * One focused test per conversion rule of SPEC §1–§3. Shapes are tiny and never square (H = 3 ≠ I = 2,
 * r = 2 ≠ E = 3), so a missing or extra transpose changes the shape or the bytes. Expected tensors are
 * built element by element with `gather`, not with the view code the adapters run on.
 */

const E = 3;
const H = 3;
const I = 2;
const R = 2;
const LM = "language_model.";
const EXPERTS = `${LM}backbone.layers.1.mixer.experts`;
const NATIVE_EXPERTS = `${LM}model.layers.1.mixer.experts`;

const config = (llm: Record<string, unknown> = {}): Record<string, unknown> =>
  omniConfig({ num_hidden_layers: 0, n_routed_experts: E, moe_intermediate_size: I, hidden_size: H, ...llm });
const denseConfig = (llm: Record<string, unknown> = {}): Record<string, unknown> =>
  omniConfig({ num_hidden_layers: 0, hidden_size: H, ...llm });

/** `[E, b, a]`: expert e's matrix `[a, b]` transposed, stacked in expert order. */
const stackTransposed = (list: readonly Tensor[]): Tensor =>
  gather([list.length, list[0]!.shape[1]!, list[0]!.shape[0]!], ([e, x, y]) => [list[e!]!, [y!, x!]]);

/** `[E, H, 2I]`: per expert `cat(gateᵀ, upᵀ)` along the last axis. */
const stackGated = (gates: readonly Tensor[], ups: readonly Tensor[]): Tensor =>
  gather([gates.length, H, 2 * I], ([e, h, j]) => (j! < I ? [gates[e!]!, [j!, h!]] : [ups[e!]!, [j! - I, h!]]));

interface HfExperts {
  sd: Map<string, Tensor>;
  up: Tensor[];
  down: Tensor[];
  gate: Tensor[];
}

/** Per-expert HF weights of one layer: up `[I, H]`, down `[H, I]` (and gate `[I, H]` when asked). */
function hfExperts(r: Random, base: string, dtype: DType, options: { gate?: boolean; n?: number } = {}): HfExperts {
  const out: HfExperts = { sd: new Map(), up: [], down: [], gate: [] };
  for (let e = 0; e < (options.n ?? E); e++) {
    const up = randomTensor(dtype, [I, H], r);
    const down = randomTensor(dtype, [H, I], r);
    out.up.push(up);
    out.down.push(down);
    if (options.gate) {
      const gate = randomTensor(dtype, [I, H], r);
      out.gate.push(gate);
      out.sd.set(`${base}.${e}.gate_proj.weight`, gate);
    }
    out.sd.set(`${base}.${e}.up_proj.weight`, up);
    out.sd.set(`${base}.${e}.down_proj.weight`, down);
  }
  return out;
}

/** Nothing may reach the console: warnings go to the logger the caller passes, or nowhere. */
let consoleSpies: ReturnType<typeof vi.spyOn>[] = [];
beforeEach(() => {
  consoleSpies = (["log", "info", "warn", "error", "debug"] as const).map((m) => vi.spyOn(console, m));
  consoleSpies.push(vi.spyOn(process.stderr, "write"));
});
afterEach(() => {
  for (const s of consoleSpies) {
    expect(s, "the adapters must print nothing").not.toHaveBeenCalled();
    s.mockRestore();
  }
});

describe("top-level routing (SPEC §1)", () => {
  it("HF → native routes every component, keeps unknown keys and reports them to the logger only", () => {
    const r = seededRandom(101);
    const t = (shape: number[]): Tensor => randomTensor("BF16", shape, r);
    const hf = new Map<string, Tensor>([
      ["vision_model.radio_model.model.blocks.0.attn.qkv.weight", t([6, 2])],
      ["mlp1.0.weight", t([8])],
      ["mlp1.1.weight", t([4, 8])],
      ["mlp1.2.weight", t([4])],
      ["mlp1.3.weight", t([3, 4])],
      ["sound_encoder.encoder.subsampling.linear.weight", t([2, 2])],
      ["sound_encoder.encoder.layers.0.conv.norm.num_batches_tracked", randomTensor("I64", [], r)],
      ["sound_encoder.norm.weight", t([2])],
      ["sound_projection.linear1.weight", t([2, 2])],
      ["language_model.lm_head.weight", t([5, 3])],
      ["language_model.backbone.norm_f.weight", t([3])],
      ["decoder.extra.weight", t([2])],
      ["language_modelX.weight", t([2])],
    ]);
    const expected: [string, string][] = [
      ["vision_model.radio_model.model.blocks.0.attn.qkv.weight", "vision_model.radio_model.model.blocks.0.attn.qkv.weight"],
      ["mlp1.0.weight", "vision_projector.norm.weight"],
      ["mlp1.1.weight", "vision_projector.linear1.weight"],
      ["mlp1.2.weight", "mlp1.2.weight"],
      ["mlp1.3.weight", "vision_projector.linear2.weight"],
      ["sound_encoder.encoder.subsampling.linear.weight", "sound_encoder.subsampling.linear.weight"],
      ["sound_encoder.encoder.layers.0.conv.norm.num_batches_tracked", "sound_encoder.layers.0.conv.norm.num_batches_tracked"],
      // Only `sound_encoder.encoder.` is the sound encoder; anything else under `sound_encoder.` is unknown.
      ["sound_encoder.norm.weight", "sound_encoder.norm.weight"],
      ["sound_projection.linear1.weight", "sound_projection.linear1.weight"],
      ["language_model.lm_head.weight", "language_model.lm_head.weight"],
      ["language_model.backbone.norm_f.weight", "language_model.model.norm.weight"],
      ["decoder.extra.weight", "decoder.extra.weight"],
      ["language_modelX.weight", "language_modelX.weight"],
    ];
    const { logger, warnings } = recordingLogger();
    const out = new NemotronOmniStateDictAdapter(config(), { logger }).fromHf(hf);
    expect([...out.keys()].sort()).toEqual(expected.map(([, n]) => n).sort());
    for (const [h, n] of expected) expectTensor(out.get(n), hf.get(h)!);
    expect(warnings.map((w) => w.message)).toEqual([
      "unknown vision projector key mlp1.2.weight; kept as is",
      "unknown key sound_encoder.norm.weight; kept as is",
      "unknown key decoder.extra.weight; kept as is",
      "unknown key language_modelX.weight; kept as is",
    ]);
    expect(warnings.map((w) => w.diagnostic)).toEqual([
      { code: "unknown-key", message: "unknown vision projector key mlp1.2.weight; kept as is", key: "mlp1.2.weight" },
      { code: "unknown-key", message: "unknown key sound_encoder.norm.weight; kept as is", key: "sound_encoder.norm.weight" },
      { code: "unknown-key", message: "unknown key decoder.extra.weight; kept as is", key: "decoder.extra.weight" },
      { code: "unknown-key", message: "unknown key language_modelX.weight; kept as is", key: "language_modelX.weight" },
    ]);
  });

  it("the same warnings are in the plan's diagnostics, and without a logger nothing is reported anywhere", () => {
    const hf = new Map<string, Tensor>([
      ["mlp1.2.weight", randomTensor("BF16", [2], seededRandom(1))],
      ["language_model.lm_head.weight", randomTensor("BF16", [2], seededRandom(2))],
    ]);
    const plan = new NemotronOmniStateDictAdapter(config()).planFromHf(hf);
    expect(plan.diagnostics).toEqual([{ code: "unknown-key", message: "unknown vision projector key mlp1.2.weight; kept as is", key: "mlp1.2.weight" }]);
    expect(plan.tensors.map((t) => t.name)).toEqual(["mlp1.2.weight", "language_model.lm_head.weight"]);
  });

  it("native → HF is the inverse: projector names, the sound encoder's `encoder.`, the language model", () => {
    const r = seededRandom(102);
    const t = (shape: number[]): Tensor => randomTensor("F16", shape, r);
    const native = new Map<string, Tensor>([
      ["vision_model.radio_model.input_conditioner.norm_mean", randomTensor("F32", [3, 1, 1], r)],
      ["vision_projector.norm.weight", t([8])],
      ["vision_projector.linear1.weight", t([4, 8])],
      ["vision_projector.linear2.weight", t([3, 4])],
      ["vision_projector.act.weight", t([2])],
      ["sound_encoder.layers.0.self_attn.q_proj.weight", t([2, 2])],
      ["sound_projection.norm.weight", t([2])],
      ["language_model.model.norm.weight", t([3])],
      ["language_model.model.embed_tokens.weight", t([5, 3])],
      ["language_model.lm_head.weight", t([5, 3])],
    ]);
    const expected: [string, string][] = [
      ["vision_model.radio_model.input_conditioner.norm_mean", "vision_model.radio_model.input_conditioner.norm_mean"],
      ["vision_projector.norm.weight", "mlp1.0.weight"],
      ["vision_projector.linear1.weight", "mlp1.1.weight"],
      ["vision_projector.linear2.weight", "mlp1.3.weight"],
      ["vision_projector.act.weight", "vision_projector.act.weight"],
      ["sound_encoder.layers.0.self_attn.q_proj.weight", "sound_encoder.encoder.layers.0.self_attn.q_proj.weight"],
      ["sound_projection.norm.weight", "sound_projection.norm.weight"],
      ["language_model.model.norm.weight", "language_model.backbone.norm_f.weight"],
      ["language_model.model.embed_tokens.weight", "language_model.backbone.embeddings.weight"],
      ["language_model.lm_head.weight", "language_model.lm_head.weight"],
    ];
    const { logger, warnings } = recordingLogger();
    const adapter = new NemotronOmniStateDictAdapter(config(), { logger });
    const hf = adapter.toHf(native);
    expect([...hf.keys()].sort()).toEqual(expected.map(([, h]) => h).sort());
    for (const [n, h] of expected) expectTensor(hf.get(h), native.get(n)!);
    expect(warnings).toEqual([]);
    // And back: only the unknown projector key is reported (it is not an HF name either).
    expectSameDict(adapter.fromHf(hf), native);
    expect(warnings.map((w) => w.message)).toEqual(["unknown key vision_projector.act.weight; kept as is"]);
  });
});

describe("NemotronV3 key renames (SPEC §2.3)", () => {
  const renames: [string, string][] = [
    ["backbone.embeddings.weight", "model.embed_tokens.weight"],
    ["backbone.norm_f.weight", "model.norm.weight"],
    ["backbone.layers.0.norm.weight", "model.layers.0.norm.weight"],
    ["backbone.layers.2.mixer.q_proj.weight", "model.layers.2.mixer.q_proj.weight"],
    ["lm_head.weight", "lm_head.weight"],
    // Only whole keys are the final norm and the embeddings; a layer's own `norm_f` is just renamed with it.
    ["backbone.layers.0.norm_f.weight", "model.layers.0.norm_f.weight"],
    // Only a leading `backbone.` is renamed.
    ["encoder.backbone.layers.0.weight", "encoder.backbone.layers.0.weight"],
  ];

  it("backbone → model, norm_f → norm, embeddings → embed_tokens, and back", () => {
    const r = seededRandom(201);
    const hf = new Map(renames.map(([h]) => [h, randomTensor("BF16", [2, 1], r)] as const));
    const adapter = new NemotronV3StateDictAdapter({ num_hidden_layers: 0, hidden_size: H });
    const native = adapter.fromHf(hf);
    expect([...native.keys()]).toEqual(renames.map(([, n]) => n));
    for (const [h, n] of renames) expectTensor(native.get(n), hf.get(h)!);
    expectSameDict(adapter.toHf(native), hf);
  });

  // Only `backbone.`-prefixed keys are renamed (SPEC §2.3, and the current reference's _hf_key_to_native):
  // an HF checkpoint already spelled `model.` keeps norm_f / embeddings as they are.
  it("an HF key model.norm_f.weight / model.embeddings.weight keeps its name, as in the reference", () => {
    const r = seededRandom(205);
    const hf = new Map<string, Tensor>([
      ["model.norm_f.weight", randomTensor("BF16", [H], r)],
      ["model.embeddings.weight", randomTensor("BF16", [4, H], r)],
    ]);
    const native = new NemotronV3StateDictAdapter({ num_hidden_layers: 0 }).fromHf(hf);
    expect([...native.keys()]).toEqual(["model.norm_f.weight", "model.embeddings.weight"]);
  });

  it("an outer PEFT `base_model.model.` is kept in front: base_model.model.backbone. → base_model.model.model.", () => {
    const r = seededRandom(202);
    const pairs: [string, string][] = [
      ["base_model.model.backbone.layers.2.mixer.q_proj.lora_A.weight", "base_model.model.model.layers.2.mixer.q_proj.lora_A.weight"],
      ["base_model.model.backbone.norm_f.weight", "base_model.model.model.norm.weight"],
      ["base_model.model.backbone.embeddings.weight", "base_model.model.model.embed_tokens.weight"],
      ["base_model.model.lm_head.weight", "base_model.model.lm_head.weight"],
    ];
    const hf = new Map(pairs.map(([h]) => [h, randomTensor("F32", [2], r)] as const));
    const native = new NemotronV3StateDictAdapter({ num_hidden_layers: 0 }).fromHf(hf);
    expect([...native.keys()]).toEqual(pairs.map(([, n]) => n));
    for (const [h, n] of pairs) expectTensor(native.get(n), hf.get(h)!);
  });

  // The reference's native → HF renames only a leading `model.` (_native_key_to_hf), so a PEFT adapter's
  // `base_model.model.model.…` keys keep that prefix on the way back; bit-identical output means the same.
  it("base_model.model.model.… keys come back unchanged from native → HF, as the reference does", () => {
    const hf = new Map<string, Tensor>([
      ["base_model.model.backbone.layers.2.mixer.q_proj.lora_A.weight", randomTensor("BF16", [2, 3], seededRandom(203))],
      ["base_model.model.backbone.norm_f.weight", randomTensor("BF16", [3], seededRandom(204))],
    ]);
    const adapter = new NemotronV3StateDictAdapter({ num_hidden_layers: 0 });
    expect([...adapter.toHf(adapter.fromHf(hf)).keys()]).toEqual([
      "base_model.model.model.layers.2.mixer.q_proj.lora_A.weight",
      "base_model.model.model.norm.weight",
    ]);
  });
});

describe("num_hidden_layers truncation (SPEC §2.1)", () => {
  it("drops layers at or past num_hidden_layers before any expert rule, keeps MTP layers and reports each drop", () => {
    const r = seededRandom(301);
    const t = (): Tensor => randomTensor("BF16", [H], r);
    const layer1 = hfExperts(r, EXPERTS, "BF16");
    const hf = new Map<string, Tensor>([
      ["language_model.backbone.layers.0.norm.weight", t()],
      ["language_model.backbone.layers.1.norm.weight", t()],
      ...layer1.sd,
      ["language_model.backbone.layers.2.norm.weight", t()],
      // Layer 2 has one expert of three: no missing-expert error, because the layer is dropped first.
      ["language_model.backbone.layers.2.mixer.experts.0.up_proj.weight", randomTensor("BF16", [I, H], r)],
      ["language_model.backbone.layers.10.norm.weight", t()],
      ["language_model.model.layers.5.norm.weight", t()],
      ["language_model.mtp.layers.0.norm.weight", t()],
      ["language_model.mtp.layers.5.norm.weight", t()],
      ["language_model.backbone.norm_f.weight", t()],
    ]);
    const { logger, warnings } = recordingLogger();
    const out = new NemotronOmniStateDictAdapter(config({ num_hidden_layers: 2 }), { logger, dtype: "bf16" }).fromHf(hf);
    expect([...out.keys()].sort()).toEqual(
      [
        "language_model.model.layers.0.norm.weight",
        "language_model.model.layers.1.norm.weight",
        `${NATIVE_EXPERTS}.gate_and_up_projs`,
        `${NATIVE_EXPERTS}.down_projs`,
        "language_model.mtp.layers.0.norm.weight",
        "language_model.mtp.layers.5.norm.weight",
        "language_model.model.norm.weight",
      ].sort(),
    );
    expectTensor(out.get("language_model.mtp.layers.5.norm.weight"), hf.get("language_model.mtp.layers.5.norm.weight")!);
    expectTensor(out.get(`${NATIVE_EXPERTS}.gate_and_up_projs`), stackTransposed(layer1.up));
    expect(warnings.map((w) => w.diagnostic.code)).toEqual(["layer-dropped", "layer-dropped", "layer-dropped", "layer-dropped"]);
    expect(warnings.map((w) => w.message)).toEqual([
      "language_model.backbone.layers.2.norm.weight: layer 2 is at or past num_hidden_layers=2; dropped",
      "language_model.backbone.layers.2.mixer.experts.0.up_proj.weight: layer 2 is at or past num_hidden_layers=2; dropped",
      "language_model.backbone.layers.10.norm.weight: layer 10 is at or past num_hidden_layers=2; dropped",
      "language_model.model.layers.5.norm.weight: layer 5 is at or past num_hidden_layers=2; dropped",
    ]);
  });

  it("num_hidden_layers 0 keeps every layer", () => {
    const r = seededRandom(302);
    const hf = new Map<string, Tensor>([
      ["language_model.backbone.layers.0.norm.weight", randomTensor("BF16", [H], r)],
      ["language_model.backbone.layers.99.norm.weight", randomTensor("BF16", [H], r)],
    ]);
    const out = new NemotronOmniStateDictAdapter(config({ num_hidden_layers: 0 })).fromHf(hf);
    expect([...out.keys()]).toEqual(["language_model.model.layers.0.norm.weight", "language_model.model.layers.99.norm.weight"]);
  });
});

describe("Mamba float32 parameters (SPEC §2.4)", () => {
  // Edge cases of each format: ±0, ±1, ±inf, the largest finite, subnormals, NaNs (bf16 only: its
  // widening is a plain shift that keeps every payload).
  const BF16_EDGES = [0x0000, 0x8000, 0x3f80, 0xbf80, 0x7f80, 0xff80, 0x7f7f, 0xff7f, 0x0001, 0x807f, 0x0080, 0x7fc0, 0x7f81, 0xffff];
  const F16_EDGES = [0x0000, 0x8000, 0x3c00, 0xbc00, 0x7c00, 0xfc00, 0x7bff, 0xfbff, 0x0001, 0x8001, 0x03ff, 0x0400, 0x3555, 0xc000];

  it("HF → native: A_log, D, dt_bias move under _fp32_params and widen exactly to float32; ints stay as they are", () => {
    const r = seededRandom(401);
    const aLog = tensorOfBits("BF16", [BF16_EDGES.length], BF16_EDGES);
    const d = tensorOfBits("F16", [F16_EDGES.length], F16_EDGES);
    const dtBias = randomTensor("F32", [4], r);
    const intD = randomTensor("I32", [4], r);
    const intALog = randomTensor("I64", [2], r);
    const conv = randomTensor("BF16", [4], r);
    const mtpDt = tensorOfBits("BF16", [3], [0x3f80, 0x8000, 0x7f80]);
    const hf = new Map<string, Tensor>([
      ["language_model.backbone.layers.0.mixer.A_log", aLog],
      ["language_model.backbone.layers.0.mixer.D", d],
      ["language_model.backbone.layers.0.mixer.dt_bias", dtBias],
      ["language_model.backbone.layers.0.mixer.conv1d.bias", conv],
      ["language_model.backbone.layers.3.mixer.D", intD],
      ["language_model.backbone.layers.3.mixer.A_log", intALog],
      ["language_model.mtp.layers.0.mixer.dt_bias", mtpDt],
    ]);
    const out = new NemotronOmniStateDictAdapter(config()).fromHf(hf);
    expect([...out.keys()]).toEqual([
      "language_model.model.layers.0.mixer._fp32_params.A_log",
      "language_model.model.layers.0.mixer._fp32_params.D",
      "language_model.model.layers.0.mixer._fp32_params.dt_bias",
      "language_model.model.layers.0.mixer.conv1d.bias",
      "language_model.model.layers.3.mixer._fp32_params.D",
      "language_model.model.layers.3.mixer._fp32_params.A_log",
      "language_model.mtp.layers.0.mixer._fp32_params.dt_bias",
    ]);
    expectTensor(out.get("language_model.model.layers.0.mixer._fp32_params.A_log"), mapBits(aLog, "F32", bf16ToF32));
    expectTensor(out.get("language_model.model.layers.0.mixer._fp32_params.D"), mapBits(d, "F32", f16ToF32));
    expectTensor(out.get("language_model.model.layers.0.mixer._fp32_params.dt_bias"), dtBias);
    expectTensor(out.get("language_model.model.layers.0.mixer.conv1d.bias"), conv);
    expectTensor(out.get("language_model.model.layers.3.mixer._fp32_params.D"), intD);
    expectTensor(out.get("language_model.model.layers.3.mixer._fp32_params.A_log"), intALog);
    expectTensor(out.get("language_model.mtp.layers.0.mixer._fp32_params.dt_bias"), mapBits(mtpDt, "F32", bf16ToF32));
    // A few values spelled out, so the expectation does not rest on the helpers alone.
    expect(bitsOf(out.get("language_model.model.layers.0.mixer._fp32_params.A_log")!).slice(0, 5)).toEqual([
      0x00000000, 0x80000000, 0x3f800000, 0xbf800000, 0x7f800000,
    ]);
    expect(bitsOf(out.get("language_model.model.layers.0.mixer._fp32_params.D")!).slice(8, 12)).toEqual([
      0x33800000, 0xb3800000, 0x387fc000, 0x38800000,
    ]);
  });

  it("a float16 NaN stays a NaN", () => {
    const d = tensorOfBits("F16", [2], [0x7e00, 0xfc01]);
    const out = new NemotronOmniStateDictAdapter(config()).fromHf(new Map([["language_model.backbone.layers.0.mixer.D", d]]));
    const f = new Float32Array(out.get("language_model.model.layers.0.mixer._fp32_params.D")!.data.slice().buffer);
    expect([Number.isNaN(f[0]), Number.isNaN(f[1])]).toEqual([true, true]);
  });

  it("native → HF: _fp32_params is stripped and the values are emitted as float32, exactly widened", () => {
    const r = seededRandom(402);
    const aLog = tensorOfBits("BF16", [BF16_EDGES.length], BF16_EDGES);
    const d = tensorOfBits("F16", [F16_EDGES.length], F16_EDGES);
    const dtBias = randomTensor("F32", [5], r);
    const plainALog = randomTensor("BF16", [4], r);
    const intD = randomTensor("I64", [3], r);
    const mtpD = randomTensor("BF16", [4], r);
    const native = new Map<string, Tensor>([
      ["language_model.model.layers.0.mixer._fp32_params.A_log", aLog],
      ["language_model.model.layers.0.mixer._fp32_params.D", d],
      ["language_model.model.layers.0.mixer._fp32_params.dt_bias", dtBias],
      ["language_model.model.layers.2.mixer.A_log", plainALog],
      ["language_model.model.layers.3.mixer._fp32_params.D", intD],
      ["language_model.mtp.layers.0.mixer._fp32_params.D", mtpD],
    ]);
    const hf = new NemotronOmniStateDictAdapter(config()).toHf(native);
    expect([...hf.keys()]).toEqual([
      "language_model.backbone.layers.0.mixer.A_log",
      "language_model.backbone.layers.0.mixer.D",
      "language_model.backbone.layers.0.mixer.dt_bias",
      "language_model.backbone.layers.2.mixer.A_log",
      "language_model.backbone.layers.3.mixer.D",
      "language_model.mtp.layers.0.mixer.D",
    ]);
    expectTensor(hf.get("language_model.backbone.layers.0.mixer.A_log"), mapBits(aLog, "F32", bf16ToF32));
    expectTensor(hf.get("language_model.backbone.layers.0.mixer.D"), mapBits(d, "F32", f16ToF32));
    expectTensor(hf.get("language_model.backbone.layers.0.mixer.dt_bias"), dtBias);
    expectTensor(hf.get("language_model.backbone.layers.2.mixer.A_log"), mapBits(plainALog, "F32", bf16ToF32));
    expectTensor(hf.get("language_model.backbone.layers.3.mixer.D"), intD);
    expectTensor(hf.get("language_model.mtp.layers.0.mixer.D"), mapBits(mtpD, "F32", bf16ToF32));
  });
});

describe("MoE expert merge (SPEC §2.5)", () => {
  const NON_GATED_CASES: { option: string | undefined; target: "BF16" | "F16" | "F32" }[] = [
    { option: undefined, target: "BF16" },
    { option: "bf16", target: "BF16" },
    { option: "bfloat16", target: "BF16" },
    { option: "F16", target: "F16" },
    { option: "float16", target: "F16" },
    { option: "fp32", target: "F32" },
    { option: "F32", target: "F32" },
  ];

  for (const input of ["F32", "BF16", "F16"] as const) {
    for (const { option, target } of NON_GATED_CASES) {
      it(`relu2: ${input} experts, dtype option ${option ?? "(default)"} → [E,H,I] of up_projᵀ and [E,I,H] of down_projᵀ in ${target}`, () => {
        const r = seededRandom(501);
        const upF32 = Array.from({ length: E }, () => exactSmallFloats([I, H], r));
        const downF32 = Array.from({ length: E }, () => exactSmallFloats([H, I], r));
        const entries: [string, Tensor][] = [];
        for (let e = 0; e < E; e++) {
          entries.push([`${EXPERTS}.${e}.up_proj.weight`, exactCast(upF32[e]!, input)]);
          entries.push([`${EXPERTS}.${e}.down_proj.weight`, exactCast(downF32[e]!, input)]);
        }
        // Input order must not matter: experts are stacked in expert order.
        const hf = new Map(r.shuffle(entries));
        const adapter = new NemotronOmniStateDictAdapter(config(), option === undefined ? {} : { dtype: option });
        const out = adapter.fromHf(hf);
        expect([...out.keys()].sort()).toEqual([`${NATIVE_EXPERTS}.down_projs`, `${NATIVE_EXPERTS}.gate_and_up_projs`]);
        const gateAndUp = out.get(`${NATIVE_EXPERTS}.gate_and_up_projs`)!;
        const down = out.get(`${NATIVE_EXPERTS}.down_projs`)!;
        expect(gateAndUp.shape).toEqual([E, H, I]);
        expect(down.shape).toEqual([E, I, H]);
        expectTensor(gateAndUp, exactCast(stackTransposed(upF32), target));
        expectTensor(down, exactCast(stackTransposed(downF32), target));
      });
    }
  }

  it("float32 → bfloat16 rounds to nearest even, bit for bit (ties, overflow to inf, -0, subnormals)", () => {
    const r = seededRandom(502);
    const edges = [0x3f808000, 0x3f818000, 0x3f808001, 0x7f7fffff, 0xff7fffff, 0x80000000, 0x00000001, 0x807fffff];
    const randomFinite = (): number => {
      for (;;) {
        const x = r.u32();
        if ((x & 0x7f800000) !== 0x7f800000) return x;
      }
    };
    const up = Array.from({ length: E }, (_, e) =>
      tensorOfBits("F32", [I, H], Array.from({ length: I * H }, (_, k) => (e === 0 ? edges[k] ?? randomFinite() : randomFinite()))),
    );
    const down = Array.from({ length: E }, () => tensorOfBits("F32", [H, I], Array.from({ length: I * H }, randomFinite)));
    const hf = new Map<string, Tensor>();
    up.forEach((t, e) => hf.set(`${EXPERTS}.${e}.up_proj.weight`, t));
    down.forEach((t, e) => hf.set(`${EXPERTS}.${e}.down_proj.weight`, t));
    const out = new NemotronOmniStateDictAdapter(config()).fromHf(hf);
    expectTensor(out.get(`${NATIVE_EXPERTS}.gate_and_up_projs`), mapBits(stackTransposed(up), "BF16", f32ToBf16));
    expectTensor(out.get(`${NATIVE_EXPERTS}.down_projs`), mapBits(stackTransposed(down), "BF16", f32ToBf16));
    // Expert 0's up_proj [I, H] row-major is edges[0..5]; gate_and_up[0] is its transpose [H, I].
    expect(bitsOf(out.get(`${NATIVE_EXPERTS}.gate_and_up_projs`)!).slice(0, H * I)).toEqual([0x3f80, 0x7f80, 0x3f82, 0xff80, 0x3f81, 0x8000]);
  });

  it("integer experts are stacked but never cast", () => {
    const r = seededRandom(503);
    const ex = hfExperts(r, EXPERTS, "I32");
    const out = new NemotronOmniStateDictAdapter(config(), { dtype: "bf16" }).fromHf(ex.sd);
    expectTensor(out.get(`${NATIVE_EXPERTS}.gate_and_up_projs`), stackTransposed(ex.up));
    expectTensor(out.get(`${NATIVE_EXPERTS}.down_projs`), stackTransposed(ex.down));
  });

  it("native → HF splits per expert, transposing back, in the grouped tensor's dtype", () => {
    const r = seededRandom(504);
    const gateAndUp = randomTensor("BF16", [E, H, I], r);
    const down = randomTensor("BF16", [E, I, H], r);
    const hf = new NemotronOmniStateDictAdapter(config(), { dtype: "f32" }).toHf(
      new Map([
        [`${NATIVE_EXPERTS}.gate_and_up_projs`, gateAndUp],
        [`${NATIVE_EXPERTS}.down_projs`, down],
      ]),
    );
    const expected = new Map<string, Tensor>();
    for (let e = 0; e < E; e++) {
      expected.set(`${EXPERTS}.${e}.up_proj.weight`, gather([I, H], ([i, h]) => [gateAndUp, [e, h!, i!]]));
      expected.set(`${EXPERTS}.${e}.down_proj.weight`, gather([H, I], ([h, i]) => [down, [e, i!, h!]]));
    }
    expect([...hf.keys()]).toEqual([...Array.from({ length: E }, (_, e) => `${EXPERTS}.${e}.up_proj.weight`), ...Array.from({ length: E }, (_, e) => `${EXPERTS}.${e}.down_proj.weight`)]);
    expectSameDict(hf, expected);
  });

  it("relu2 ignores gate_proj (reported as dropped) and never emits one", () => {
    const r = seededRandom(505);
    const ex = hfExperts(r, EXPERTS, "F32", { gate: true });
    const { logger, warnings } = recordingLogger();
    const adapter = new NemotronOmniStateDictAdapter(config(), { logger, dtype: "f32" });
    const out = adapter.fromHf(ex.sd);
    expectTensor(out.get(`${NATIVE_EXPERTS}.gate_and_up_projs`), stackTransposed(ex.up));
    expect(warnings.map((w) => w.message)).toEqual(
      Array.from({ length: E }, (_, e) => `${EXPERTS}.${e}.gate_proj.weight: gate_proj is unused by non-gated (relu2) experts; dropped`),
    );
    expect(warnings.every((w) => w.diagnostic.code === "dropped")).toBe(true);
    const back = adapter.toHf(out);
    expect([...back.keys()].filter((k) => k.includes("gate_proj"))).toEqual([]);
    expectSameDict(back, new Map([...ex.sd].filter(([k]) => !k.includes("gate_proj"))));
  });

  it("a gated activation (swiglu) builds [E,H,2I] = cat(gateᵀ, upᵀ) and splits it back", () => {
    const r = seededRandom(506);
    const ex = hfExperts(r, EXPERTS, "F32", { gate: true });
    const adapter = new NemotronOmniStateDictAdapter(config(), { expertActivation: "swiglu", dtype: "f32" });
    const out = adapter.fromHf(ex.sd);
    const gateAndUp = out.get(`${NATIVE_EXPERTS}.gate_and_up_projs`)!;
    expect(gateAndUp.shape).toEqual([E, H, 2 * I]);
    expectTensor(gateAndUp, stackGated(ex.gate, ex.up));
    // Spelled out once: gate_and_up[2, 1, I + 1] is up_proj of expert 2 at [1, 1]; [2, 1, 0] is gate_proj[0, 1].
    expect(elementHex(gateAndUp, [2, 1, I + 1])).toBe(elementHex(ex.up[2]!, [1, 1]));
    expect(elementHex(gateAndUp, [2, 1, 0])).toBe(elementHex(ex.gate[2]!, [0, 1]));
    expectTensor(out.get(`${NATIVE_EXPERTS}.down_projs`), stackTransposed(ex.down));
    expectSameDict(adapter.toHf(out), ex.sd);
  });

  it("experts outside the config's range are dropped with a warning", () => {
    const r = seededRandom(507);
    const ex = hfExperts(r, EXPERTS, "BF16");
    ex.sd.set(`${EXPERTS}.7.up_proj.weight`, randomTensor("BF16", [I, H], r));
    const { logger, warnings } = recordingLogger();
    const out = new NemotronOmniStateDictAdapter(config(), { logger }).fromHf(ex.sd);
    expectTensor(out.get(`${NATIVE_EXPERTS}.gate_and_up_projs`), stackTransposed(ex.up));
    expect(warnings.map((w) => [w.diagnostic.code, w.message])).toEqual([
      ["expert-out-of-range", `${EXPERTS}.7.up_proj.weight: expert 7 is outside the config's 3 experts; dropped`],
    ]);
  });

  it("a down_projs whose axis 1 is not moe_intermediate_size passes through unsplit, with a warning", () => {
    const r = seededRandom(508);
    const odd = randomTensor("BF16", [E, I + 1, H], r);
    const { logger, warnings } = recordingLogger();
    const hf = new NemotronOmniStateDictAdapter(config(), { logger }).toHf(new Map([[`${NATIVE_EXPERTS}.down_projs`, odd]]));
    expect([...hf.keys()]).toEqual([`${EXPERTS}.down_projs`]);
    expectTensor(hf.get(`${EXPERTS}.down_projs`), odd);
    expect(warnings.map((w) => [w.diagnostic.code, w.message])).toEqual([
      [
        "grouped-shape-mismatch",
        `${NATIVE_EXPERTS}.down_projs: down_projs [3, 3, 3] does not have moe_intermediate_size 2 on axis 1; passed through unsplit, as the reference does`,
      ],
    ]);
  });

  it("toHf keeps a bfloat16 routing bias in bfloat16 (the reference's in-memory behaviour)", () => {
    const bias = randomTensor("BF16", [E], seededRandom(509));
    const hf = new NemotronOmniStateDictAdapter(config()).toHf(new Map([[`${LM}model.layers.1.mixer.gate.e_score_correction_bias`, bias]]));
    expectTensor(hf.get(`${LM}backbone.layers.1.mixer.gate.e_score_correction_bias`), bias);
  });
});

describe("FP8 scales and dense configs (SPEC §2.5, §5)", () => {
  const scales = [
    "language_model.backbone.layers.0.mixer.in_proj.weight_scale_inv",
    "language_model.backbone.layers.1.mixer.experts.0.up_proj.weight_scale_inv",
    "language_model.mtp.layers.0.mixer.q_proj.weight_scale_inv",
  ];

  it("`_scale_inv` keys are dropped (and reported) when the config has experts", () => {
    const r = seededRandom(601);
    const weight = randomTensor("BF16", [2, H], r);
    // An FP8 checkpoint has a scale beside each expert weight (a scale alone would count as an expert
    // weight for the missing-expert check, whose pattern, like the reference's, is not anchored at the end).
    const ex = hfExperts(r, EXPERTS, "BF16");
    const hf = new Map<string, Tensor>([
      ["language_model.backbone.layers.0.mixer.in_proj.weight", weight],
      ...scales.map((k) => [k, randomTensor("F32", [1], r)] as [string, Tensor]),
      ...ex.sd,
    ]);
    const { logger, warnings } = recordingLogger();
    const out = new NemotronOmniStateDictAdapter(config(), { logger }).fromHf(hf);
    expect([...out.keys()]).toEqual([
      "language_model.model.layers.0.mixer.in_proj.weight",
      `${NATIVE_EXPERTS}.gate_and_up_projs`,
      `${NATIVE_EXPERTS}.down_projs`,
    ]);
    expectTensor(out.get("language_model.model.layers.0.mixer.in_proj.weight"), weight);
    expectTensor(out.get(`${NATIVE_EXPERTS}.gate_and_up_projs`), stackTransposed(ex.up));
    expect(warnings.map((w) => [w.diagnostic.code, w.message])).toEqual(scales.map((k) => ["dropped", `${k}: FP8 scale dropped`]));
  });

  it("`_scale_inv` keys are kept for a dense config, as the reference does", () => {
    const r = seededRandom(602);
    const hf = new Map(scales.map((k) => [k, randomTensor("F32", [1], r)] as [string, Tensor]));
    const out = new NemotronOmniStateDictAdapter(denseConfig()).fromHf(hf);
    expect([...out.keys()]).toEqual([
      "language_model.model.layers.0.mixer.in_proj.weight_scale_inv",
      "language_model.model.layers.1.mixer.experts.0.up_proj.weight_scale_inv",
      "language_model.mtp.layers.0.mixer.q_proj.weight_scale_inv",
    ]);
    scales.forEach((k, n) => expectTensor([...out.values()][n], hf.get(k)!));
  });

  it("a dense config (no n_routed_experts) applies no expert rule in either direction and casts nothing", () => {
    const r = seededRandom(603);
    const ex = hfExperts(r, EXPERTS, "BF16");
    const hf = new Map<string, Tensor>([
      ["language_model.backbone.layers.1.mixer.up_proj.weight", randomTensor("BF16", [4, H], r)],
      ["language_model.backbone.layers.1.mixer.down_proj.weight", randomTensor("BF16", [H, 4], r)],
      ...ex.sd,
    ]);
    const adapter = new NemotronOmniStateDictAdapter(denseConfig(), { dtype: "f32" });
    const native = adapter.fromHf(hf);
    expect([...native.keys()]).toEqual([...hf.keys()].map((k) => k.replace("language_model.backbone.", "language_model.model.")));
    for (const [k, t] of hf) expectTensor(native.get(k.replace("language_model.backbone.", "language_model.model.")), t);
    expectSameDict(adapter.toHf(native), hf);
    // A grouped tensor is just another tensor to a dense model.
    const grouped = randomTensor("BF16", [E, H, I], r);
    const back = adapter.toHf(new Map([[`${NATIVE_EXPERTS}.gate_and_up_projs`, grouped]]));
    expect([...back.keys()]).toEqual([`${EXPERTS}.gate_and_up_projs`]);
    expectTensor(back.get(`${EXPERTS}.gate_and_up_projs`), grouped);
  });
});

describe("MTP layers (SPEC §2.6)", () => {
  it("mtp.* experts are merged and split under the mtp. prefix, never renamed to model./backbone.", () => {
    const r = seededRandom(701);
    const backbone = hfExperts(r, EXPERTS, "BF16");
    const mtp = hfExperts(r, `${LM}mtp.layers.1.mixer.experts`, "BF16");
    const hf = new Map<string, Tensor>([
      [`${LM}mtp.layers.0.eh_proj.weight`, randomTensor("BF16", [H, 2 * H], r)],
      [`${LM}mtp.layers.0.norm.weight`, randomTensor("BF16", [H], r)],
      [`${LM}mtp.layers.1.mixer.gate.weight`, randomTensor("BF16", [E, H], r)],
      [`${LM}mtp.layers.1.final_layernorm.weight`, randomTensor("BF16", [H], r)],
      ...mtp.sd,
      ...backbone.sd,
    ]);
    const adapter = new NemotronOmniStateDictAdapter(config(), { dtype: "bf16" });
    const native = adapter.fromHf(hf);
    expect([...native.keys()].sort()).toEqual(
      [
        `${LM}mtp.layers.0.eh_proj.weight`,
        `${LM}mtp.layers.0.norm.weight`,
        `${LM}mtp.layers.1.mixer.gate.weight`,
        `${LM}mtp.layers.1.final_layernorm.weight`,
        `${LM}mtp.layers.1.mixer.experts.gate_and_up_projs`,
        `${LM}mtp.layers.1.mixer.experts.down_projs`,
        `${NATIVE_EXPERTS}.gate_and_up_projs`,
        `${NATIVE_EXPERTS}.down_projs`,
      ].sort(),
    );
    expectTensor(native.get(`${LM}mtp.layers.1.mixer.experts.gate_and_up_projs`), stackTransposed(mtp.up));
    expectTensor(native.get(`${LM}mtp.layers.1.mixer.experts.down_projs`), stackTransposed(mtp.down));
    expectTensor(native.get(`${NATIVE_EXPERTS}.gate_and_up_projs`), stackTransposed(backbone.up));
    const back = adapter.toHf(native);
    expect([...back.keys()].filter((k) => k.startsWith(`${LM}mtp.`)).every((k) => !k.includes("backbone") && !k.includes(".model."))).toBe(true);
    expectSameDict(back, hf);
  });

  it("the NemotronV3 adapter on its own handles mtp.* the same way", () => {
    const r = seededRandom(702);
    const mtp = hfExperts(r, "mtp.layers.0.mixer.experts", "F16");
    const adapter = new NemotronV3StateDictAdapter({ num_hidden_layers: 1, n_routed_experts: E, moe_intermediate_size: I }, { dtype: "f16" });
    const native = adapter.fromHf(mtp.sd);
    expect([...native.keys()]).toEqual(["mtp.layers.0.mixer.experts.gate_and_up_projs", "mtp.layers.0.mixer.experts.down_projs"]);
    expectTensor(native.get("mtp.layers.0.mixer.experts.down_projs"), stackTransposed(mtp.down));
    expectSameDict(adapter.toHf(native), mtp.sd);
  });
});

describe("expert LoRA (SPEC §2.7)", () => {
  interface PerExpertLora {
    sd: Map<string, Tensor>;
    upA: Tensor[];
    upB: Tensor[];
    downA: Tensor[];
    downB: Tensor[];
  }

  /** PEFT per-expert LoRA: up lora_A [r, H], lora_B [I, r]; down lora_A [r, I], lora_B [H, r]. */
  function perExpertLora(r: Random, base: string, dtype: DType, experts: readonly number[] = [0, 1, 2]): PerExpertLora {
    const out: PerExpertLora = { sd: new Map(), upA: [], upB: [], downA: [], downB: [] };
    for (const e of experts) {
      const t = { upA: randomTensor(dtype, [R, H], r), upB: randomTensor(dtype, [I, R], r), downA: randomTensor(dtype, [R, I], r), downB: randomTensor(dtype, [H, R], r) };
      out.upA.push(t.upA);
      out.upB.push(t.upB);
      out.downA.push(t.downA);
      out.downB.push(t.downB);
      out.sd.set(`${base}.${e}.up_proj.lora_A.weight`, t.upA);
      out.sd.set(`${base}.${e}.up_proj.lora_B.weight`, t.upB);
      out.sd.set(`${base}.${e}.down_proj.lora_A.weight`, t.downA);
      out.sd.set(`${base}.${e}.down_proj.lora_B.weight`, t.downB);
    }
    return out;
  }

  it("per-expert PEFT keys → lora_gate_and_up_A [E,H,r], _B [E,r,I], lora_down_A [E,I,r], _B [E,r,H], uncast; back with v4Compatible", () => {
    const r = seededRandom(801);
    const lora = perExpertLora(r, EXPERTS, "BF16");
    const adapter = new NemotronOmniStateDictAdapter(config(), { dtype: "f32" });
    const native = adapter.fromHf(lora.sd);
    expect([...native.keys()].sort()).toEqual(
      ["lora_down_A", "lora_down_B", "lora_gate_and_up_A", "lora_gate_and_up_B"].map((s) => `${NATIVE_EXPERTS}.${s}`),
    );
    expectTensor(native.get(`${NATIVE_EXPERTS}.lora_gate_and_up_A`), stackTransposed(lora.upA));
    expectTensor(native.get(`${NATIVE_EXPERTS}.lora_gate_and_up_B`), stackTransposed(lora.upB));
    expectTensor(native.get(`${NATIVE_EXPERTS}.lora_down_A`), stackTransposed(lora.downA));
    expectTensor(native.get(`${NATIVE_EXPERTS}.lora_down_B`), stackTransposed(lora.downB));
    expect(native.get(`${NATIVE_EXPERTS}.lora_gate_and_up_A`)!.shape).toEqual([E, H, R]);
    expect(native.get(`${NATIVE_EXPERTS}.lora_gate_and_up_B`)!.shape).toEqual([E, R, I]);
    expect(native.get(`${NATIVE_EXPERTS}.lora_down_A`)!.shape).toEqual([E, I, R]);
    expect(native.get(`${NATIVE_EXPERTS}.lora_down_B`)!.shape).toEqual([E, R, H]);
    expectSameDict(adapter.toHf(native, { v4Compatible: true }), lora.sd);
  });

  it("gated per-expert LoRA: A is shared by gate and up, B is cat(gateᵀ, upᵀ)", () => {
    const r = seededRandom(802);
    const sd = new Map<string, Tensor>();
    const a: Tensor[] = [];
    const gateB: Tensor[] = [];
    const upB: Tensor[] = [];
    for (let e = 0; e < E; e++) {
      a.push(randomTensor("F32", [R, H], r));
      gateB.push(randomTensor("F32", [I, R], r));
      upB.push(randomTensor("F32", [I, R], r));
      sd.set(`${EXPERTS}.${e}.gate_proj.lora_A.weight`, a[e]!);
      sd.set(`${EXPERTS}.${e}.up_proj.lora_A.weight`, a[e]!);
      sd.set(`${EXPERTS}.${e}.gate_proj.lora_B.weight`, gateB[e]!);
      sd.set(`${EXPERTS}.${e}.up_proj.lora_B.weight`, upB[e]!);
    }
    const adapter = new NemotronOmniStateDictAdapter(config(), { expertActivation: "swiglu" });
    const native = adapter.fromHf(sd);
    expectTensor(native.get(`${NATIVE_EXPERTS}.lora_gate_and_up_A`), stackTransposed(a));
    expectTensor(
      native.get(`${NATIVE_EXPERTS}.lora_gate_and_up_B`),
      gather([E, R, 2 * I], ([e, k, j]) => (j! < I ? [gateB[e!]!, [j!, k!]] : [upB[e!]!, [j! - I, k!]])),
    );
    expectSameDict(adapter.toHf(native, { v4Compatible: true }), sd);
  });

  it("ParamWrapper keys ⇄ grouped native LoRA, element by element (the expert axis folded into the rank axis)", () => {
    const r = seededRandom(803);
    const pwA = randomTensor("BF16", [R * E, H], r); // experts.lora_A.weight
    const pwB = randomTensor("BF16", [I, R * E], r); // experts.lora_B.weight
    const baseA = randomTensor("BF16", [R * E, I], r); // experts.base_layer.lora_A.weight
    const baseB = randomTensor("BF16", [H, R * E], r); // experts.base_layer.lora_B.weight
    const hf = new Map<string, Tensor>([
      [`${EXPERTS}.lora_A.weight`, pwA],
      [`${EXPERTS}.lora_B.weight`, pwB],
      [`${EXPERTS}.base_layer.lora_A.weight`, baseA],
      [`${EXPERTS}.base_layer.lora_B.weight`, baseB],
    ]);
    const adapter = new NemotronOmniStateDictAdapter(config());
    const native = adapter.fromHf(hf);
    expect([...native.keys()].sort()).toEqual(
      ["lora_down_A", "lora_down_B", "lora_gate_and_up_A", "lora_gate_and_up_B"].map((s) => `${NATIVE_EXPERTS}.${s}`),
    );
    const downA = native.get(`${NATIVE_EXPERTS}.lora_down_A`)!;
    // lora_B.weight [I, r·E]: column ri·E + e holds lora_down_A[e, i, ri].
    expectTensor(downA, gather([E, I, R], ([e, i, k]) => [pwB, [i!, k! * E + e!]]));
    expect(elementHex(downA, [2, 1, 1])).toBe(elementHex(pwB, [1, 1 * E + 2]));
    // lora_A.weight [r·E, H]: row e·r + ri holds lora_down_B[e, ri, :].
    expectTensor(native.get(`${NATIVE_EXPERTS}.lora_down_B`), gather([E, R, H], ([e, k, h]) => [pwA, [e! * R + k!, h!]]));
    // base_layer.lora_A.weight [r·E, I]: row e·r + ri holds lora_gate_and_up_B[e, ri, :].
    expectTensor(native.get(`${NATIVE_EXPERTS}.lora_gate_and_up_B`), gather([E, R, I], ([e, k, i]) => [baseA, [e! * R + k!, i!]]));
    // base_layer.lora_B.weight [H, r·E]: column ri·E + e holds lora_gate_and_up_A[e, h, ri].
    expectTensor(native.get(`${NATIVE_EXPERTS}.lora_gate_and_up_A`), gather([E, H, R], ([e, h, k]) => [baseB, [h!, k! * E + e!]]));
    // ParamWrapper is the default HF form.
    expectSameDict(adapter.toHf(native), hf);
  });

  it("per-expert → native → ParamWrapper agrees with the two mappings composed", () => {
    const r = seededRandom(804);
    const lora = perExpertLora(r, EXPERTS, "F16");
    const adapter = new NemotronOmniStateDictAdapter(config());
    const pw = adapter.toHf(adapter.fromHf(lora.sd));
    expect([...pw.keys()].sort()).toEqual(
      ["base_layer.lora_A.weight", "base_layer.lora_B.weight", "lora_A.weight", "lora_B.weight"].map((s) => `${EXPERTS}.${s}`),
    );
    // lora_A.weight row e·r + k = down_proj.lora_B of expert e, transposed: [h, k] → [k, h].
    expectTensor(pw.get(`${EXPERTS}.lora_A.weight`), gather([R * E, H], ([row, h]) => [lora.downB[Math.floor(row! / R)]!, [h!, row! % R]]));
    // lora_B.weight [I, r·E] column k·E + e = down_proj.lora_A of expert e at [k, i].
    expectTensor(pw.get(`${EXPERTS}.lora_B.weight`), gather([I, R * E], ([i, c]) => [lora.downA[c! % E]!, [Math.floor(c! / E), i!]]));
    expectTensor(pw.get(`${EXPERTS}.base_layer.lora_A.weight`), gather([R * E, I], ([row, i]) => [lora.upB[Math.floor(row! / R)]!, [i!, row! % R]]));
    expectTensor(pw.get(`${EXPERTS}.base_layer.lora_B.weight`), gather([H, R * E], ([h, c]) => [lora.upA[c! % E]!, [Math.floor(c! / E), h!]]));
  });

  it("an incomplete per-expert LoRA group stays per expert (renamed), complete groups are still grouped", () => {
    const r = seededRandom(805);
    const complete = perExpertLora(r, EXPERTS, "BF16");
    const sd = new Map([...complete.sd].filter(([k]) => !(k.includes(".up_proj.lora_A.") && k.includes("experts.2."))));
    const { logger, warnings } = recordingLogger();
    const out = new NemotronOmniStateDictAdapter(config(), { logger }).fromHf(sd);
    expect([...out.keys()].sort()).toEqual(
      [
        `${NATIVE_EXPERTS}.0.up_proj.lora_A.weight`,
        `${NATIVE_EXPERTS}.1.up_proj.lora_A.weight`,
        `${NATIVE_EXPERTS}.lora_gate_and_up_B`,
        `${NATIVE_EXPERTS}.lora_down_A`,
        `${NATIVE_EXPERTS}.lora_down_B`,
      ].sort(),
    );
    expectTensor(out.get(`${NATIVE_EXPERTS}.1.up_proj.lora_A.weight`), complete.upA[1]!);
    expectTensor(out.get(`${NATIVE_EXPERTS}.lora_down_A`), stackTransposed(complete.downA));
    expect(warnings.map((w) => [w.diagnostic.code, w.message])).toEqual([
      ["lora-incomplete", "LoRA up_proj.lora_A of layer 1 has 2 of 3 experts; kept per expert"],
    ]);
  });

  it("a LoRA adapter's base_model.model.backbone. prefix becomes base_model.model.model. on the grouped keys", () => {
    const r = seededRandom(806);
    const lora = perExpertLora(r, "base_model.model.backbone.layers.4.mixer.experts", "BF16");
    const out = new NemotronV3StateDictAdapter({ num_hidden_layers: 0, n_routed_experts: E, moe_intermediate_size: I }).fromHf(lora.sd);
    expect([...out.keys()].sort()).toEqual(
      ["lora_down_A", "lora_down_B", "lora_gate_and_up_A", "lora_gate_and_up_B"].map((s) => `base_model.model.model.layers.4.mixer.experts.${s}`),
    );
    expectTensor(out.get("base_model.model.model.layers.4.mixer.experts.lora_down_B"), stackTransposed(lora.downB));
  });
});

describe("exclude regex (SPEC §1, Python re.match)", () => {
  function nativeDict(): { native: Map<string, Tensor>; gateAndUp: Tensor } {
    const r = seededRandom(901);
    const gateAndUp = randomTensor("BF16", [E, H, I], r);
    const native = new Map<string, Tensor>([
      ["vision_model.radio_model.model.patch_generator.pos_embed", randomTensor("BF16", [1, 4, 2], r)],
      ["vision_projector.norm.weight", randomTensor("BF16", [8], r)],
      [`${LM}model.layers.1.norm.weight`, randomTensor("BF16", [H], r)],
      [`${NATIVE_EXPERTS}.gate_and_up_projs`, gateAndUp],
      [`${NATIVE_EXPERTS}.down_projs`, randomTensor("BF16", [E, I, H], r)],
      [`${LM}model.layers.10.norm.weight`, randomTensor("BF16", [H], r)],
      [`${LM}model.norm.weight`, randomTensor("BF16", [H], r)],
      [`${LM}lm_head.weight`, randomTensor("BF16", [4, H], r)],
    ]);
    return { native, gateAndUp };
  }
  const ALL_HF = [
    "vision_model.radio_model.model.patch_generator.pos_embed",
    "mlp1.0.weight",
    `${LM}backbone.layers.1.norm.weight`,
    ...Array.from({ length: E }, (_, e) => `${EXPERTS}.${e}.up_proj.weight`),
    ...Array.from({ length: E }, (_, e) => `${EXPERTS}.${e}.down_proj.weight`),
    `${LM}backbone.layers.10.norm.weight`,
    `${LM}backbone.norm_f.weight`,
    `${LM}lm_head.weight`,
  ];
  const hfKeys = (regex: string | RegExp | undefined): string[] => {
    const adapter = new NemotronOmniStateDictAdapter(config());
    const options = regex === undefined ? {} : { excludeKeyRegex: regex };
    return [...adapter.toHf(nativeDict().native, options).keys()];
  };

  it("without a regex every key converts", () => {
    expect(hfKeys(undefined)).toEqual(ALL_HF);
  });

  const cases: { regex: string | RegExp; why: string; excluded: (k: string) => boolean }[] = [
    {
      regex: "backbone\\.layers\\.1\\.",
      why: "second pass: the V3 HF keys, before language_model. is re-added",
      excluded: (k) => k.startsWith(`${LM}backbone.layers.1.`),
    },
    { regex: "language_model\\.", why: "first pass: the full native key", excluded: (k) => k.startsWith(LM) },
    { regex: "language_model\\.backbone\\.", why: "matches neither the native key nor the HF key without its prefix", excluded: () => false },
    { regex: "layers\\.1\\.", why: "re.match anchors at the start", excluded: () => false },
    { regex: ".*layers\\.1\\.", why: "first pass on language_model.model.layers.1.…", excluded: (k) => k.includes(".layers.1.") },
    { regex: "language_model\\.model\\.layers\\.1\\.mixer\\.experts\\.down_projs", why: "a grouped native key", excluded: (k) => k.includes(".down_proj.") },
    { regex: ".*experts\\.0\\.", why: "second pass sees the per-expert HF keys", excluded: (k) => k.includes("experts.0.") },
    { regex: "vision_projector\\.norm", why: "non-LLM keys are tested on their native name", excluded: (k) => k === "mlp1.0.weight" },
    { regex: "mlp1\\.0", why: "…and only on it", excluded: () => false },
    {
      regex: "(?P<root>backbone)\\.layers\\.(?P<n>1)\\.mixer\\.experts\\.(?P=n)\\.",
      why: "(?P<name>…) and (?P=name) are translated",
      excluded: (k) => k.startsWith(`${EXPERTS}.1.`),
    },
    { regex: "(?i)BACKBONE\\.LAYERS\\.1\\.", why: "a leading inline flag", excluded: (k) => k.startsWith(`${LM}backbone.layers.1.`) },
    { regex: /BACKBONE\.LAYERS\.10\./i, why: "a RegExp keeps its flags and is anchored", excluded: (k) => k.startsWith(`${LM}backbone.layers.10.`) },
    { regex: /layers\.10\./, why: "a RegExp is anchored too", excluded: () => false },
    { regex: "\\Abackbone\\.norm_f\\.weight\\Z", why: "\\A and \\Z", excluded: (k) => k === `${LM}backbone.norm_f.weight` },
  ];
  for (const c of cases) {
    it(`${String(c.regex)}: ${c.why}`, () => {
      expect(hfKeys(c.regex)).toEqual(ALL_HF.filter((k) => !c.excluded(k)));
    });
  }

  it("the remaining tensors are intact", () => {
    const { native, gateAndUp } = nativeDict();
    const hf = new NemotronOmniStateDictAdapter(config()).toHf(native, { excludeKeyRegex: ".*experts\\.[02]\\." });
    expectTensor(hf.get(`${EXPERTS}.1.up_proj.weight`), gather([I, H], ([i, h]) => [gateAndUp, [1, h!, i!]]));
    expectTensor(hf.get("mlp1.0.weight"), native.get("vision_projector.norm.weight")!);
  });

  describe("convertSingleTensorToHf tests the HF names it produces", () => {
    const { native, gateAndUp } = nativeDict();
    const key = `${NATIVE_EXPERTS}.gate_and_up_projs`;
    const up = (e: number): [string, Tensor] => [`${EXPERTS}.${e}.up_proj.weight`, gather([I, H], ([i, h]) => [gateAndUp, [e, h!, i!]])];
    const convert = (fqn: string, regex?: string): [string, Tensor][] =>
      new NemotronOmniStateDictAdapter(config()).convertSingleTensorToHf(fqn, native.get(fqn)!, regex === undefined ? {} : { excludeKeyRegex: regex });
    const expectPairs = (actual: [string, Tensor][], expected: [string, Tensor][]): void => {
      expect(actual.map(([k]) => k)).toEqual(expected.map(([k]) => k));
      actual.forEach(([, t], n) => expectTensor(t, expected[n]![1]));
    };

    it("no regex: every expert", () => expectPairs(convert(key), [up(0), up(1), up(2)]));
    it("a full HF name (with language_model.)", () => expectPairs(convert(key, "language_model\\.backbone\\.layers\\.1\\.mixer\\.experts\\.[02]\\."), [up(1)]));
    it("the V3 HF name (without language_model.)", () => expectPairs(convert(key, "backbone\\.layers\\.1\\.mixer\\.experts\\.0\\."), [up(1), up(2)]));
    it("never the native name", () => expectPairs(convert(key, "language_model\\.model\\."), [up(0), up(1), up(2)]));
    it("a non-LLM key: HF name excluded", () => expectPairs(convert("vision_projector.norm.weight", "mlp1\\.0"), []));
    it("a non-LLM key: native name not tested", () =>
      expectPairs(convert("vision_projector.norm.weight", "vision_projector"), [["mlp1.0.weight", native.get("vision_projector.norm.weight")!]]));

    it("NemotronV3 on its own: split, rename and Mamba upcast, then the regex on the HF names", () => {
      const v3 = new NemotronV3StateDictAdapter({ num_hidden_layers: 0, n_routed_experts: E, moe_intermediate_size: I });
      const aLog = tensorOfBits("BF16", [2], [0x3f80, 0xc000]);
      const out = v3.convertSingleTensorToHf("model.layers.0.mixer._fp32_params.A_log", aLog);
      expectPairs(out, [["backbone.layers.0.mixer.A_log", tensorOfBits("F32", [2], [0x3f800000, 0xc0000000])]]);
      expect(v3.convertSingleTensorToHf("model.layers.0.mixer._fp32_params.A_log", aLog, { excludeKeyRegex: "backbone\\.layers\\.0\\.mixer\\.A_log" })).toEqual([]);
      expect(v3.convertSingleTensorToHf("model.layers.0.mixer._fp32_params.A_log", aLog, { excludeKeyRegex: "model\\." })).toHaveLength(1);
      expect(v3.convertSingleTensorToHf("model.layers.1.mixer.experts.gate_and_up_projs", gateAndUp).map(([k]) => k)).toEqual(
        Array.from({ length: E }, (_, e) => `backbone.layers.1.mixer.experts.${e}.up_proj.weight`),
      );
    });
  });
});

describe("`__proto__` and other Object.prototype names are ordinary keys", () => {
  const NAMES: [string, string][] = [
    ["__proto__", "__proto__"],
    ["constructor", "constructor"],
    ["language_model.__proto__", "language_model.__proto__"],
    ["language_model.backbone.layers.0.mixer.__proto__", "language_model.model.layers.0.mixer.__proto__"],
    ["language_model.backbone.layers.0.mixer.hasOwnProperty", "language_model.model.layers.0.mixer.hasOwnProperty"],
  ];
  const tensors = (): Tensor[] => {
    const r = seededRandom(1001);
    return NAMES.map(() => randomTensor("BF16", [2], r));
  };

  it("in a Map state dict, both ways", () => {
    const ts = tensors();
    const hf = new Map(NAMES.map(([h], n) => [h, ts[n]!] as const));
    const { logger, warnings } = recordingLogger();
    const adapter = new NemotronOmniStateDictAdapter(config(), { logger });
    const native = adapter.fromHf(hf);
    expect([...native.keys()]).toEqual(NAMES.map(([, n]) => n));
    NAMES.forEach(([, n], k) => expectTensor(native.get(n), ts[k]!));
    expect(warnings.map((w) => w.message)).toEqual(["unknown key __proto__; kept as is", "unknown key constructor; kept as is"]);
    expectSameDict(adapter.toHf(native), hf);
  });

  it("in a plain-object state dict (own `__proto__` property), both ways", () => {
    const ts = tensors();
    const hf = Object.fromEntries(NAMES.map(([h], n) => [h, ts[n]!] as const)) as Record<string, Tensor>;
    expect(Object.keys(hf)).toEqual(NAMES.map(([h]) => h));
    const adapter = new NemotronOmniStateDictAdapter(config());
    const native = adapter.fromHf(hf);
    expect([...native.keys()]).toEqual(NAMES.map(([, n]) => n));
    NAMES.forEach(([, n], k) => expectTensor(native.get(n), ts[k]!));
    const back = adapter.toHf(Object.fromEntries(native) as Record<string, Tensor>);
    expectSameDict(back, new Map(NAMES.map(([h], n) => [h, ts[n]!] as const)));
    expect(Object.getPrototypeOf(hf)).toBe(Object.prototype);
  });
});
