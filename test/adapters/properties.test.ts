import { describe, expect, it } from "vitest";
import { expertRange } from "../../src/adapters/experts.js";
import { NemotronOmniStateDictAdapter } from "../../src/adapters/nemotron-omni.js";
import type { DType } from "../../src/tensor/dtype.js";
import { itemSize } from "../../src/tensor/dtype.js";
import type { Tensor } from "../../src/tensor/tensor.js";
import { type Random, compareTensors, seededRandom } from "../helpers/fixtures.js";
import { omniConfig, randomTensor } from "../helpers/state-dicts.js";

/*
 * Round trips and expert parallelism over random small models. Each case is drawn from its own seed, and
 * the seed is in every failure message, so a failing case replays on its own. The adapter's expert dtype
 * equals the input dtype, so no rule casts anything but the Mamba parameters, which are float32 already:
 * every conversion must come back byte for byte, whatever the bytes (NaN payloads included).
 */

const CASES = 150;
const EP_CASES = 100;
const LM = "language_model.";

interface Model {
  readonly seed: number;
  readonly E: number;
  readonly H: number;
  readonly I: number;
  readonly R: number;
  readonly dtype: "BF16" | "F16" | "F32";
  readonly gated: boolean;
  /** M Mamba, E MoE, * attention. */
  readonly pattern: string;
  readonly mtp: readonly ("moe" | "attention")[];
  readonly lora: "none" | "per-expert" | "paramwrapper";
}

function drawModel(seed: number): Model {
  const r = seededRandom(seed);
  const layers = 1 + r.int(5);
  let pattern = "";
  for (let i = 0; i < layers; i++) pattern += r.pick(["M", "E", "*"]);
  if (!pattern.includes("E")) pattern = `${pattern.slice(0, -1)}E`;
  return {
    seed,
    E: 1 + r.int(9),
    H: 1 + r.int(7),
    I: 1 + r.int(7),
    R: 1 + r.int(3),
    dtype: r.pick(["BF16", "F16", "F32"] as const),
    gated: r.int(3) === 0,
    pattern,
    mtp: Array.from({ length: r.int(3) }, () => r.pick(["moe", "attention"] as const)),
    lora: r.pick(["none", "per-expert", "paramwrapper"] as const),
  };
}

const describeModel = (m: Model): string =>
  `seed ${m.seed}: E=${m.E} H=${m.H} I=${m.I} r=${m.R} ${m.dtype} ${m.gated ? "swiglu" : "relu2"} pattern ${m.pattern} mtp [${m.mtp.join(",")}] lora ${m.lora}`;

function adapterFor(m: Model): NemotronOmniStateDictAdapter {
  return new NemotronOmniStateDictAdapter(
    omniConfig({ num_hidden_layers: m.pattern.length, n_routed_experts: m.E, moe_intermediate_size: m.I, hidden_size: m.H }),
    { dtype: m.dtype, expertActivation: m.gated ? "swiglu" : "relu2" },
  );
}

/** An HF-layout Omni state dict for the model. */
function hfStateDict(m: Model, r: Random): Map<string, Tensor> {
  const sd = new Map<string, Tensor>();
  const { E, H, I, R, dtype } = m;
  const add = (name: string, shape: number[], d: DType = dtype): void => {
    sd.set(name, randomTensor(d, shape, r));
  };
  add("vision_model.radio_model.model.blocks.0.attn.qkv.weight", [3 * H, H]);
  add("vision_model.radio_model.input_conditioner.norm_mean", [3, 1, 1], "F32");
  add("mlp1.0.weight", [4]);
  add("mlp1.1.weight", [5, 4]);
  add("mlp1.3.weight", [H, 5]);
  add("sound_encoder.encoder.layers.0.conv.norm.running_mean", [2], "F32");
  add("sound_encoder.encoder.layers.0.conv.norm.num_batches_tracked", [], "I64");
  add("sound_projection.linear1.weight", [3, 2]);
  add(`${LM}backbone.embeddings.weight`, [7, H]);

  const moe = (p: string, lora: boolean): void => {
    add(`${p}mixer.gate.weight`, [E, H]);
    add(`${p}mixer.gate.e_score_correction_bias`, [E], "F32");
    add(`${p}mixer.shared_experts.up_proj.weight`, [2, H]);
    add(`${p}mixer.shared_experts.down_proj.weight`, [H, 2]);
    for (let e = 0; e < E; e++) {
      if (m.gated) add(`${p}mixer.experts.${e}.gate_proj.weight`, [I, H]);
      add(`${p}mixer.experts.${e}.up_proj.weight`, [I, H]);
      add(`${p}mixer.experts.${e}.down_proj.weight`, [H, I]);
    }
    if (!lora) return;
    const x = `${p}mixer.experts`;
    if (m.lora === "per-expert") {
      for (let e = 0; e < E; e++) {
        add(`${x}.${e}.up_proj.lora_A.weight`, [R, H]);
        // A gated layer shares lora_A between gate and up: the native form holds it once.
        if (m.gated) sd.set(`${x}.${e}.gate_proj.lora_A.weight`, sd.get(`${x}.${e}.up_proj.lora_A.weight`)!);
        if (m.gated) add(`${x}.${e}.gate_proj.lora_B.weight`, [I, R]);
        add(`${x}.${e}.up_proj.lora_B.weight`, [I, R]);
        add(`${x}.${e}.down_proj.lora_A.weight`, [R, I]);
        add(`${x}.${e}.down_proj.lora_B.weight`, [H, R]);
      }
    } else if (m.lora === "paramwrapper") {
      add(`${x}.lora_A.weight`, [R * E, H]);
      add(`${x}.lora_B.weight`, [I, R * E]);
      add(`${x}.base_layer.lora_A.weight`, [R * E, m.gated ? 2 * I : I]);
      add(`${x}.base_layer.lora_B.weight`, [H, R * E]);
    }
  };
  const attention = (p: string): void => {
    add(`${p}mixer.q_proj.weight`, [2 * H, H]);
    add(`${p}mixer.o_proj.weight`, [H, 2 * H]);
    if (m.lora !== "none") {
      add(`${p}mixer.q_proj.lora_A.weight`, [R, H]);
      add(`${p}mixer.q_proj.lora_B.weight`, [2 * H, R]);
    }
  };
  let firstMoe = true;
  [...m.pattern].forEach((kind, i) => {
    const p = `${LM}backbone.layers.${i}.`;
    add(`${p}norm.weight`, [H]);
    if (kind === "M") {
      for (const n of ["A_log", "D", "dt_bias"]) add(`${p}mixer.${n}`, [2], "F32");
      add(`${p}mixer.in_proj.weight`, [3, H]);
      add(`${p}mixer.conv1d.bias`, [3]);
    } else if (kind === "E") {
      moe(p, firstMoe);
      firstMoe = false;
    } else attention(p);
  });
  add(`${LM}backbone.norm_f.weight`, [H]);
  add(`${LM}lm_head.weight`, [7, H]);
  m.mtp.forEach((kind, j) => {
    const p = `${LM}mtp.layers.${j}.`;
    add(`${p}norm.weight`, [H]);
    if (j === 0) add(`${p}eh_proj.weight`, [H, 2 * H]);
    if (kind === "moe") moe(p, true);
    else attention(p);
  });
  return sd;
}

/** A native-layout Omni state dict for the model. */
function nativeStateDict(m: Model, r: Random): Map<string, Tensor> {
  const sd = new Map<string, Tensor>();
  const { E, H, I, R, dtype } = m;
  const U = m.gated ? 2 * I : I;
  const add = (name: string, shape: number[], d: DType = dtype): void => {
    sd.set(name, randomTensor(d, shape, r));
  };
  add("vision_model.radio_model.model.patch_generator.pos_embed", [1, 4, H]);
  add("vision_projector.norm.weight", [4]);
  add("vision_projector.linear1.weight", [5, 4]);
  add("vision_projector.linear2.weight", [H, 5]);
  add("sound_encoder.layers.0.conv.norm.num_batches_tracked", [], "I64");
  add("sound_encoder.layers.0.feed_forward1.linear1.weight", [4, 2]);
  add("sound_projection.norm.weight", [2]);
  add(`${LM}model.embed_tokens.weight`, [7, H]);
  const moe = (p: string): void => {
    add(`${p}mixer.gate.weight`, [E, H]);
    add(`${p}mixer.gate.e_score_correction_bias`, [E], "F32");
    add(`${p}mixer.experts.gate_and_up_projs`, [E, H, U]);
    add(`${p}mixer.experts.down_projs`, [E, I, H]);
    if (m.lora !== "none") {
      add(`${p}mixer.experts.lora_gate_and_up_A`, [E, H, R]);
      add(`${p}mixer.experts.lora_gate_and_up_B`, [E, R, U]);
      add(`${p}mixer.experts.lora_down_A`, [E, I, R]);
      add(`${p}mixer.experts.lora_down_B`, [E, R, H]);
    }
  };
  [...m.pattern].forEach((kind, i) => {
    const p = `${LM}model.layers.${i}.`;
    add(`${p}norm.weight`, [H]);
    if (kind === "M") for (const n of ["A_log", "D", "dt_bias"]) add(`${p}mixer._fp32_params.${n}`, [2], "F32");
    else if (kind === "E") moe(p);
    else add(`${p}mixer.q_proj.weight`, [2 * H, H]);
  });
  add(`${LM}model.norm.weight`, [H]);
  add(`${LM}lm_head.weight`, [7, H]);
  m.mtp.forEach((kind, j) => {
    const p = `${LM}mtp.layers.${j}.`;
    add(`${p}enorm.weight`, [H]);
    if (kind === "moe") moe(p);
    else add(`${p}mixer.k_proj.weight`, [H, H]);
  });
  return sd;
}

/** SPEC §3, written out again: the first E mod size ranks hold one expert more. */
function specRange(E: number, rank: number, size: number): [number, number] {
  const per = Math.floor(E / size);
  const rem = E % size;
  const start = rank < rem ? rank * (per + 1) : rank * per + rem;
  return [start, start + per + (rank < rem ? 1 : 0)];
}

const isGrouped = (k: string): boolean => k.endsWith(".mixer.experts.gate_and_up_projs") || k.endsWith(".mixer.experts.down_projs");

const sameBytes = (a: Uint8Array, b: Uint8Array): boolean => Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.byteLength), Buffer.from(b.buffer, b.byteOffset, b.byteLength)) === 0;

/** Rows `[start, end)` of a tensor along axis 0, as bytes. */
function rowBytes(t: Tensor, start: number, end: number): Uint8Array {
  const row = t.shape.slice(1).reduce((a, b) => a * b, 1) * itemSize(t.dtype);
  return t.data.subarray(start * row, end * row);
}

describe("HF → native → HF is the identity", () => {
  it(`${CASES} random models, both LoRA forms, byte for byte`, () => {
    const forms = new Set<string>();
    for (let n = 0; n < CASES; n++) {
      const m = drawModel(1000 + n);
      forms.add(m.lora);
      const hf = hfStateDict(m, seededRandom(m.seed * 7 + 1));
      const adapter = adapterFor(m);
      const native = adapter.fromHf(hf);

      // The native layout is what SPEC §2 says it is.
      for (const [i, kind] of [...m.pattern].entries()) {
        const p = `${LM}model.layers.${i}.mixer.`;
        if (kind === "E") {
          expect(native.get(`${p}experts.gate_and_up_projs`)?.shape, describeModel(m)).toEqual([m.E, m.H, m.gated ? 2 * m.I : m.I]);
          expect(native.get(`${p}experts.down_projs`)?.shape, describeModel(m)).toEqual([m.E, m.I, m.H]);
        }
        if (kind === "M") expect(native.get(`${p}_fp32_params.A_log`)?.dtype, describeModel(m)).toBe("F32");
      }
      expect([...native.keys()].filter((k) => /\.experts\.\d+\./.test(k)), describeModel(m)).toEqual([]);

      const back = adapter.toHf(native, { v4Compatible: m.lora === "per-expert" });
      expect(compareTensors(back, hf), describeModel(m)).toEqual([]);
    }
    expect([...forms].sort()).toEqual(["none", "paramwrapper", "per-expert"]);
  });
});

describe("native → HF → native is the identity", () => {
  it(`${CASES} random models, ParamWrapper and per-expert HF forms, byte for byte`, () => {
    for (let n = 0; n < CASES; n++) {
      const m = drawModel(5000 + n);
      const native = nativeStateDict(m, seededRandom(m.seed * 7 + 3));
      const adapter = adapterFor(m);
      const v4Compatible = n % 2 === 0;
      const hf = adapter.toHf(native, { v4Compatible });
      for (const k of hf.keys()) expect(k.startsWith(`${LM}model.`) || k.includes("_fp32_params"), `${describeModel(m)}: ${k}`).toBe(false);
      expect(compareTensors(adapter.fromHf(hf), native), `${describeModel(m)} v4Compatible=${v4Compatible}`).toEqual([]);
    }
  });
});

describe("expert parallelism (SPEC §3)", () => {
  it(`for every EP size 1–5, the ranks' slices in rank order are the full grouped tensor, every expert once (${EP_CASES} models)`, () => {
    let emptyRanks = 0;
    for (let n = 0; n < EP_CASES; n++) {
      const m = { ...drawModel(9000 + n), lora: "none" as const };
      const hf = hfStateDict(m, seededRandom(m.seed * 7 + 5));
      const adapter = adapterFor(m);
      const full = adapter.fromHf(hf);
      const grouped = [...full.keys()].filter(isGrouped);
      expect(grouped.length, describeModel(m)).toBe(2 * ([...m.pattern].filter((c) => c === "E").length + m.mtp.filter((k) => k === "moe").length));

      const problems: string[] = [];
      for (let size = 1; size <= 5; size++) {
        const where = `${describeModel(m)}, EP size ${size}`;
        const covered = new Map<string, Uint8Array[]>(grouped.map((k) => [k, []]));
        let next = 0;
        for (let rank = 0; rank < size; rank++) {
          const [start, end] = specRange(m.E, rank, size);
          if (start !== next) problems.push(`${where}: rank ${rank} starts at ${start}, rank ${rank - 1} ended at ${next}`);
          next = end;
          const part = adapter.fromHf(hf, { ep: { rank, size } });
          for (const [k, t] of part) {
            // Everything but the grouped experts is the same on every rank.
            if (!isGrouped(k) && !sameBytes(t.data, full.get(k)!.data)) problems.push(`${where}, rank ${rank}: ${k} differs`);
          }
          if (start === end) {
            emptyRanks++;
            // A rank with no experts gets no grouped tensor at all.
            const extra = [...part.keys()].filter(isGrouped);
            if (extra.length > 0) problems.push(`${where}, rank ${rank} has no experts but holds ${extra.join(", ")}`);
            continue;
          }
          for (const k of grouped) {
            const t = part.get(k);
            const f = full.get(k)!;
            if (!t || t.dtype !== f.dtype || t.shape.join() !== [end - start, ...f.shape.slice(1)].join()) {
              problems.push(`${where}, rank ${rank}: ${k} is ${t ? `${t.dtype}[${t.shape.join(", ")}]` : "missing"}`);
              continue;
            }
            covered.get(k)!.push(t.data);
            // This rank's rows are exactly experts [start, end) of the full tensor.
            if (!sameBytes(t.data, rowBytes(f, start, end))) problems.push(`${where}, rank ${rank}: ${k} is not experts ${start}–${end - 1}`);
          }
        }
        if (next !== m.E) problems.push(`${where}: the ranks cover ${next} of ${m.E} experts`);
        for (const [k, parts] of covered) {
          if (!sameBytes(Buffer.concat(parts), full.get(k)!.data)) problems.push(`${where}: ${k}, concatenated over the ranks, is not the full tensor`);
        }
      }
      expect(problems).toEqual([]);
    }
    // E < size happens, so ranks without experts were exercised.
    expect(emptyRanks).toBeGreaterThan(0);
  });

  it("expertRange follows SPEC §3 for every E ≤ 20 and size ≤ 8 (10 experts over 4 ranks: 3, 3, 2, 2)", () => {
    for (let E = 1; E <= 20; E++) {
      for (let size = 1; size <= 8; size++) {
        for (let rank = 0; rank < size; rank++) expect(expertRange(E, { rank, size }), `E=${E} rank ${rank} of ${size}`).toEqual(specRange(E, rank, size));
      }
    }
    expect([0, 1, 2, 3].map((rank) => expertRange(10, { rank, size: 4 }))).toEqual([
      [0, 3],
      [3, 6],
      [6, 8],
      [8, 10],
    ]);
    expect(expertRange(10)).toEqual([0, 10]);
  });
});
