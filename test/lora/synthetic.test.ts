import { beforeAll, describe, expect, it } from "vitest";
import { type Folder, MemoryFolder } from "../../src/io/folder.js";
import { MemoryOutput } from "../../src/io/output.js";
import { baseModel } from "../../src/lora/base.js";
import { exportAdapterFolder } from "../../src/lora/export-files.js";
import { mergeFolders } from "../../src/lora/merge.js";
import { convertFolder } from "../../src/convert/convert.js";
import { Checkpoint } from "../../src/safetensors/checkpoint.js";
import { serialize } from "../../src/safetensors/encode.js";
import { SafetensorsFile } from "../../src/safetensors/file.js";
import { planSynth, writeSynth } from "../../src/synth/layout.js";
import type { Tensor } from "../../src/tensor/tensor.js";
import { compareTensors } from "../helpers/fixtures.js";
import { PEFT, type SynthAdapter, automodelAdapter, elementBits, peftRank, peftTargets, referenceMerge, ulps, values } from "../helpers/lora.js";

/*
 * Synthetic Automodel adapters (attention, Mamba in_proj/out_proj, MLP, shared experts, routed experts of
 * their own rank, projectors, lm_head) against the synthetic "small" base, whose key families follow the
 * real release: every exported name must be one of the base's, PEFT must target and rank exactly what
 * Automodel trained, the way back must restore the adapter, and merges must match the float64 reference.
 */

function tensorsOf(bytes: Uint8Array): Map<string, Tensor> {
  const f = SafetensorsFile.fromBytes(bytes);
  return new Map([...f.tensors.keys()].map((n) => [n, f.readTensorSync(n)]));
}

type Config = { r: number; lora_alpha: number; target_modules: string[]; target_parameters?: string[]; rank_pattern?: Record<string, number>; alpha_pattern?: Record<string, number>; use_rslora?: boolean };

const configOf = (files: ReadonlyMap<string, Uint8Array>): Config => JSON.parse(new TextDecoder().decode(files.get("adapter_config.json")!)) as Config;

let baseFolder: Folder;
let baseTensors: Map<string, Tensor>;
let baseShapes: Map<string, readonly number[]>;
let adapter: SynthAdapter;
let adapterFolder: Folder;

async function exportOf(from: Folder, options: Parameters<typeof exportAdapterFolder>[2] = {}): Promise<MemoryOutput> {
  const out = new MemoryOutput("export");
  await exportAdapterFolder(from, out, options);
  return out;
}

async function withBase(): Promise<{ base: ReturnType<typeof baseModel> }> {
  const ckpt = await Checkpoint.open(baseFolder);
  const base = baseModel(ckpt, await ckpt.readConfig());
  ckpt.close();
  return { base };
}

async function mergeOf(from: Folder, options: Parameters<typeof mergeFolders>[3] = {}): Promise<Map<string, Tensor>> {
  const out = new MemoryOutput("merged");
  await mergeFolders(baseFolder, from, out, options);
  const result = new Map<string, Tensor>();
  for (const [rel, bytes] of out.files) if (rel.endsWith(".safetensors")) for (const [k, t] of tensorsOf(bytes)) result.set(k, t);
  return result;
}

/** Routed experts per MoE layer of the base, from its tensors. */
function expertCount(): number {
  const ids = [...baseShapes.keys()].map((k) => /^language_model\.backbone\.layers\.\d+\.mixer\.experts\.(\d+)\./.exec(k)?.[1]).filter((x) => x !== undefined);
  return Math.max(...ids.map(Number)) + 1;
}

/** The base's modules, as PEFT names them: every `X.weight` of the base is a module `X`. */
function baseModules(): string[] {
  return [...baseShapes.keys()].filter((k) => k.endsWith(".weight")).map((k) => k.slice(0, -".weight".length));
}

beforeAll(async () => {
  const plan = planSynth({ preset: "small", seed: 3, maxShardSize: 400_000, mtp: true });
  const out = new MemoryOutput("small");
  await writeSynth(plan, out);
  baseFolder = new MemoryFolder(out.files, "small");
  baseTensors = new Map();
  for (const [rel, bytes] of out.files) if (rel.endsWith(".safetensors")) for (const [k, t] of tensorsOf(bytes)) baseTensors.set(k, t);
  baseShapes = new Map([...baseTensors].map(([k, t]) => [k, t.shape]));
  adapter = automodelAdapter(baseShapes, { rank: 8, expertRank: 4, alpha: 16, seed: 11, mtp: true });
  adapterFolder = new MemoryFolder(adapter.files, "adapter");
});

describe("synthetic Automodel adapters on the small base", () => {
  it("cover every key family the issue names", () => {
    const hf = adapter.modules.map((m) => m.hf);
    for (const re of [/mixer\.in_proj$/, /mixer\.out_proj$/, /mixer\.q_proj$/, /mixer\.o_proj$/, /shared_experts\.up_proj$/, /mixer\.experts$/, /^mlp1\.1$/, /^mlp1\.3$/, /^sound_projection\.linear1$/, /^language_model\.mtp\./]) {
      expect(hf.some((m) => re.test(m)), String(re)).toBe(true);
    }
  });

  it("per expert: every exported module is a module of the base, and PEFT targets and ranks exactly what was trained", async () => {
    const out = await exportOf(adapterFolder, await withBase());
    const config = configOf(out.files);
    const lora = tensorsOf(out.files.get("adapter_model.safetensors")!);
    const E = expertCount();
    const expected = new Map<string, number>();
    for (const m of adapter.modules) {
      if (m.kind === "dense") expected.set(m.hf, m.rank);
      else for (let e = 0; e < E; e++) for (const p of ["up_proj", "down_proj"]) expected.set(`${m.hf}.${e}.${p}`, m.rank);
    }
    const exported = new Map<string, number>();
    for (const [k, t] of lora) {
      expect(k.startsWith(PEFT), k).toBe(true);
      const half = /\.lora_([AB])\.weight$/.exec(k);
      expect(half, k).not.toBeNull();
      if (half![1] === "A") exported.set(k.slice(PEFT.length, -".lora_A.weight".length), t.shape[0]!);
    }
    expect(exported).toEqual(expected);
    const modules = baseModules();
    for (const m of exported.keys()) expect(modules, m).toContain(m);
    expect(modules.filter((m) => peftTargets(config.target_modules, m)).sort()).toEqual([...exported.keys()].sort());
    for (const [m, rank] of exported) {
      expect(peftRank(config, m), m).toBe(rank);
      // PEFT scales by alpha / r with r its rank: Automodel's alpha / own rank.
      expect(config.lora_alpha / peftRank(config, m)).toBe(16 / rank);
    }
    expect(config.target_parameters).toBeUndefined();
    expect(config.target_modules.some((m) => m.endsWith("mixer.experts"))).toBe(false);
  });

  it("fused: PEFT ≥ 0.19.1's ParamWrapper layout with target_parameters and a rank_pattern for them, and no experts module in target_modules", async () => {
    // The MTP layer's experts have no fused form: without them.
    const noMtp = automodelAdapter(baseShapes, { rank: 8, expertRank: 4, alpha: 16, seed: 11 });
    const out = await exportOf(new MemoryFolder(noMtp.files, "adapter"), { experts: "fused", ...(await withBase()) });
    const config = configOf(out.files);
    const lora = tensorsOf(out.files.get("adapter_model.safetensors")!);
    const experts = noMtp.modules.filter((m) => m.kind === "experts");
    expect(experts.length).toBeGreaterThan(1);
    expect(config.target_modules.some((m) => m.includes(".mixer.experts"))).toBe(false);
    const dense = noMtp.modules.filter((m) => m.kind === "dense").map((m) => m.hf);
    expect(baseModules().filter((m) => peftTargets(config.target_modules, m)).sort()).toEqual([...dense].sort());
    // The fused parameters of every MoE layer of the base, as the release's names and transformers 5's give them.
    const moeLayers = [...new Set([...baseShapes.keys()].map((k) => /^language_model\.backbone\.layers\.(\d+)\.mixer\.experts\./.exec(k)?.[1]).filter((x) => x !== undefined))];
    for (const prefix of ["language_model.backbone.", "model."]) {
      const params = moeLayers.flatMap((l) => ["up_proj", "down_proj"].map((p) => `${prefix}layers.${l}.mixer.experts.${p}`));
      const targeted = params.filter((p) => peftTargets(config.target_parameters!, p));
      expect(targeted.length, prefix).toBe(experts.length * 2);
      for (const p of targeted) expect(peftRank(config, p), p).toBe(4);
    }
    for (const m of dense) expect(peftRank(config, m), m).toBe(8);
    // SPEC §8: lora_A (E·r, in) row e·r + j is row j of expert e's A; lora_B (out, r·E) column j·E + e is column j of its B.
    const E = expertCount();
    const r = 4;
    for (const m of experts) {
      const t = noMtp.tensors;
      const dA = values(t.get(`${PEFT}${m.native}.lora_down_A`)!); // [E, I, r]
      const dB = values(t.get(`${PEFT}${m.native}.lora_down_B`)!); // [E, r, H]
      const uA = values(t.get(`${PEFT}${m.native}.lora_gate_and_up_A`)!); // [E, H, r]
      const uB = values(t.get(`${PEFT}${m.native}.lora_gate_and_up_B`)!); // [E, r, I]
      const fA = lora.get(`${PEFT}${m.hf}.lora_A.weight`)!;
      const fB = lora.get(`${PEFT}${m.hf}.lora_B.weight`)!;
      const bA = lora.get(`${PEFT}${m.hf}.base_layer.lora_A.weight`)!;
      const bB = lora.get(`${PEFT}${m.hf}.base_layer.lora_B.weight`)!;
      const [I, H] = baseShapes.get(`${m.hf}.0.up_proj.weight`)! as [number, number];
      expect([fA.shape, fB.shape, bA.shape, bB.shape]).toEqual([[E * r, I], [H, r * E], [E * r, H], [I, r * E]]);
      const [vfA, vfB, vbA, vbB] = [values(fA), values(fB), values(bA), values(bB)];
      let wrong = 0;
      for (let e = 0; e < E; e++) {
        for (let j = 0; j < r; j++) {
          for (let i = 0; i < I; i++) {
            if (vfA[(e * r + j) * I + i] !== dA[(e * I + i) * r + j]) wrong++;
            if (vbB[i * r * E + j * E + e] !== uB[(e * r + j) * I + i]) wrong++;
          }
          for (let h = 0; h < H; h++) {
            if (vfB[h * r * E + j * E + e] !== dB[(e * r + j) * H + h]) wrong++;
            if (vbA[(e * r + j) * H + h] !== uA[(e * H + h) * r + j]) wrong++;
          }
        }
      }
      expect(wrong, m.hf).toBe(0);
    }
  });

  it("drop: writes no routed-expert LoRA and says how many modules it left out", async () => {
    const out = new MemoryOutput("export");
    const r = await exportAdapterFolder(adapterFolder, out, { experts: "drop" });
    const experts = adapter.modules.filter((m) => m.kind === "experts").length;
    expect(r.plan.dropped).toEqual({ modules: experts * expertCount() * 2, tensors: experts * 4 });
    const lora = tensorsOf(out.files.get("adapter_model.safetensors")!);
    expect([...lora.keys()].some((k) => k.includes(".mixer.experts."))).toBe(false);
    expect(lora.size).toBe(adapter.modules.filter((m) => m.kind === "dense").length * 2);
  });

  it("comes back from the per-expert export to the Automodel adapter bit for bit (export --to native)", async () => {
    const hf = await exportOf(adapterFolder);
    const back = await exportOf(new MemoryFolder(hf.files, "hf"), { to: "native", ...(await withBase()) });
    expect(compareTensors(tensorsOf(back.files.get("adapter_model.safetensors")!), adapter.tensors)).toEqual([]);
  });

  it("merges every adapted weight within the bound of the float64 reference, routed experts per expert, and leaves the rest as it was", async () => {
    const merged = await mergeOf(adapterFolder);
    expect([...merged.keys()].sort()).toEqual([...baseTensors.keys()].sort());
    const adapted = new Map<string, { a: (k: number, j: number) => number; b: (i: number, k: number) => number; rank: number }>();
    for (const m of adapter.modules) {
      const t = (suffix: string): Float64Array => values(adapter.tensors.get(`${PEFT}${m.native}${suffix}`)!);
      if (m.kind === "dense") {
        const a = t(".lora_A.weight");
        const b = t(".lora_B.weight");
        const inn = baseShapes.get(`${m.hf}.weight`)![1]!;
        adapted.set(`${m.hf}.weight`, { a: (k, j) => a[k * inn + j]!, b: (i, k) => b[i * m.rank + k]!, rank: m.rank });
        continue;
      }
      // Per expert, in HF orientation: up A = gate_and_up_A[e]ᵀ, up B = gate_and_up_B[e]ᵀ; the same for down.
      const [uA, uB, dA, dB] = [t(".lora_gate_and_up_A"), t(".lora_gate_and_up_B"), t(".lora_down_A"), t(".lora_down_B")];
      const r = m.rank;
      const [I, H] = baseShapes.get(`${m.hf}.0.up_proj.weight`)! as [number, number];
      for (let e = 0; e < expertCount(); e++) {
        adapted.set(`${m.hf}.${e}.up_proj.weight`, { a: (k, h) => uA[(e * H + h) * r + k]!, b: (i, k) => uB[(e * r + k) * I + i]!, rank: r });
        adapted.set(`${m.hf}.${e}.down_proj.weight`, { a: (k, i) => dA[(e * I + i) * r + k]!, b: (h, k) => dB[(e * r + k) * H + h]!, rank: r });
      }
    }
    let elements = 0;
    let differ = 0;
    for (const [name, base] of baseTensors) {
      const got = merged.get(name)!;
      const m = adapted.get(name);
      if (!m) {
        expect(Buffer.from(got.data).equals(Buffer.from(base.data)), name).toBe(true);
        continue;
      }
      const ref = referenceMerge(base, m.a, m.b, m.rank, 16 / m.rank);
      elementBits(got).forEach((bits, i) => {
        elements++;
        if (bits !== ref[i]) {
          differ++;
          expect(ulps(bits, ref[i]!, "BF16"), `${name}[${i}]`).toBeLessThanOrEqual(1);
        }
      });
    }
    const expertLayers = adapter.modules.filter((m) => m.kind === "experts").length;
    expect(expertLayers).toBeGreaterThan(1);
    expect(adapted.size).toBe(adapter.modules.length - expertLayers + expertLayers * expertCount() * 2);
    expect(elements).toBeGreaterThan(100_000);
    expect(differ).toBeLessThanOrEqual(Math.max(1, Math.floor(elements / 10_000)));
  });

  it("merges into the native layout exactly as convert --to native lays out the merged checkpoint", async () => {
    const native = await mergeOf(adapterFolder, { to: "native" });
    const hf = new MemoryOutput("merged");
    await mergeFolders(baseFolder, adapterFolder, hf, {});
    const converted = new MemoryOutput("converted");
    await convertFolder(new MemoryFolder(hf.files, "merged"), converted, { to: "native" });
    const want = new Map<string, Tensor>();
    for (const [rel, bytes] of converted.files) if (rel.endsWith(".safetensors")) for (const [k, t] of tensorsOf(bytes)) want.set(k, t);
    expect(compareTensors(native, want)).toEqual([]);
  });

  it("keeps the base's shards, or cuts them by size when asked", async () => {
    const out = new MemoryOutput("merged");
    await mergeFolders(baseFolder, adapterFolder, out, {});
    const baseFiles = (await baseFolder.list(""))!.map((e) => e.name).filter((n) => n.endsWith(".safetensors") || n.endsWith(".index.json"));
    expect(baseFiles.length).toBeGreaterThan(2);
    expect([...out.files.keys()].filter((n) => n.endsWith(".safetensors") || n.endsWith(".index.json")).sort()).toEqual(baseFiles.sort());
    const bySize = new MemoryOutput("by-size");
    await mergeFolders(baseFolder, adapterFolder, bySize, { maxShardSize: 2_000_000 });
    expect([...bySize.files.keys()].filter((n) => n.endsWith(".safetensors")).length).toBeLessThan(baseFiles.length - 1);
  });
});

describe("a float32 base", () => {
  it("takes its deltas in float32, within float32 summation error of the float64 reference, in both layouts", async () => {
    const out = new MemoryOutput("tiny-f32");
    await writeSynth(planSynth({ preset: "tiny", seed: 8, dtype: "F32" }), out);
    const f32Base = new MemoryFolder(out.files, "tiny-f32");
    const tensors = new Map<string, Tensor>();
    for (const [rel, bytes] of out.files) if (rel.endsWith(".safetensors")) for (const [k, t] of tensorsOf(bytes)) tensors.set(k, t);
    const a = automodelAdapter(new Map([...tensors].map(([k, t]) => [k, t.shape])), { rank: 4, expertRank: 2, alpha: 8, seed: 21, dtype: "F32" });
    const merged = new MemoryOutput("merged");
    await mergeFolders(f32Base, new MemoryFolder(a.files, "adapter"), merged, {});
    const got = tensorsOf(merged.files.get("model.safetensors")!);
    const m = a.modules.find((x) => x.hf === "language_model.backbone.layers.0.mixer.in_proj")!;
    const av = values(a.tensors.get(`${PEFT}${m.native}.lora_A.weight`)!);
    const bv = values(a.tensors.get(`${PEFT}${m.native}.lora_B.weight`)!);
    const w = tensors.get(`${m.hf}.weight`)!;
    const inn = w.shape[1]!;
    const ref = referenceMerge(w, (k, j) => av[k * inn + j]!, (i, k) => bv[i * 4 + k]!, 4, 2);
    const bits = elementBits(got.get(`${m.hf}.weight`)!);
    expect(got.get(`${m.hf}.weight`)!.dtype).toBe("F32");
    // No rounding to bfloat16 hides the float32 product's last bit here, so the summation order shows in a
    // few elements, by an ulp or two of the sum where the delta outweighs W (a 1-ulp bound holds for bf16 W).
    let differ = 0;
    let worst = 0;
    bits.forEach((b, i) => {
      if (b !== ref[i]) differ++;
      worst = Math.max(worst, ulps(b, ref[i]!, "F32"));
    });
    expect(worst).toBeLessThanOrEqual(3);
    expect(differ / bits.length).toBeLessThan(0.05);
    // The native layout keeps the experts in float32, as merged, rather than casting them after the merge.
    const native = new MemoryOutput("native");
    await mergeFolders(f32Base, new MemoryFolder(a.files, "adapter"), native, { to: "native" });
    const nt = tensorsOf(native.files.get("model.safetensors")!);
    expect(nt.get("language_model.model.layers.1.mixer.experts.gate_and_up_projs")!.dtype).toBe("F32");
    const converted = new MemoryOutput("converted");
    await convertFolder(new MemoryFolder(merged.files, "merged"), converted, { to: "native", dtype: "f32" });
    expect(compareTensors(nt, tensorsOf(converted.files.get("model.safetensors")!))).toEqual([]);
  });
});

describe("PEFT adapters on the HF release: rsLoRA, alpha_pattern, modules_to_save", () => {
  /** The per-expert export of the synthetic adapter, with its config changed and tensors added. */
  async function hfAdapter(change: (config: Record<string, unknown>) => void, extra: [string, Tensor][] = []): Promise<MemoryFolder> {
    const out = await exportOf(adapterFolder);
    const files = new Map(out.files);
    const config = JSON.parse(new TextDecoder().decode(files.get("adapter_config.json")!)) as Record<string, unknown>;
    change(config);
    files.set("adapter_config.json", new TextEncoder().encode(JSON.stringify(config, null, 2)));
    if (extra.length > 0) files.set("adapter_model.safetensors", serialize([...tensorsOf(files.get("adapter_model.safetensors")!), ...extra]));
    return new MemoryFolder(files, "hf-adapter");
  }

  function checkModule(merged: Map<string, Tensor>, hf: string, scale: number): number {
    const m = adapter.modules.find((x) => x.hf === hf)!;
    const a = values(adapter.tensors.get(`${PEFT}${m.native}.lora_A.weight`)!);
    const b = values(adapter.tensors.get(`${PEFT}${m.native}.lora_B.weight`)!);
    const base = baseTensors.get(`${hf}.weight`)!;
    const inn = base.shape[1]!;
    const ref = referenceMerge(base, (k, j) => a[k * inn + j]!, (i, k) => b[i * m.rank + k]!, m.rank, scale);
    const got = elementBits(merged.get(`${hf}.weight`)!);
    let differ = 0;
    got.forEach((bits, i) => {
      if (bits !== ref[i]) {
        differ++;
        expect(ulps(bits, ref[i]!, "BF16")).toBeLessThanOrEqual(1);
      }
    });
    return differ;
  }

  it("use_rslora scales by alpha / √r, and alpha_pattern gives a module its own alpha (first matching key wins)", async () => {
    const inProj = "language_model.backbone.layers.0.mixer.in_proj";
    const folder = await hfAdapter((c) => {
      c["use_rslora"] = true;
      c["alpha_pattern"] = { "layers\\.0\\.mixer\\.in_proj": 4, "mixer\\.in_proj": 100 };
    });
    const merged = await mergeOf(folder);
    let differ = checkModule(merged, inProj, 4 / Math.sqrt(8));
    differ += checkModule(merged, "language_model.backbone.layers.2.mixer.in_proj", 100 / Math.sqrt(8));
    differ += checkModule(merged, "language_model.backbone.layers.3.mixer.q_proj", 16 / Math.sqrt(8));
    expect(differ).toBeLessThanOrEqual(2);
  });

  it("modules_to_save weights replace the base's, cast to its dtype; the native export renames them like any weight", async () => {
    const norm = new Float32Array(baseShapes.get("mlp1.0.weight")![0]!).fill(0.375);
    const replacement: Tensor = { dtype: "F32", shape: [norm.length], data: new Uint8Array(norm.buffer) };
    const folder = await hfAdapter((c) => {
      c["modules_to_save"] = ["mlp1.0"];
    }, [[`${PEFT}mlp1.0.weight`, replacement]]);
    const merged = await mergeOf(folder);
    const got = merged.get("mlp1.0.weight")!;
    expect(got.dtype).toBe("BF16");
    expect(new Set(elementBits(got))).toEqual(new Set([0x3ec0]));
    const back = await exportOf(folder, { to: "native", ...(await withBase()) });
    expect(tensorsOf(back.files.get("adapter_model.safetensors")!).has(`${PEFT}vision_projector.norm.weight`)).toBe(true);
    expect((JSON.parse(new TextDecoder().decode(back.files.get("adapter_config.json")!)) as { modules_to_save: string[] }).modules_to_save).toEqual(["vision_projector.norm"]);
  });
});
