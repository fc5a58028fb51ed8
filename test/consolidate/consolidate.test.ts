import { describe, expect, it } from "vitest";
import { describeShardedSave } from "../../src/consolidate/describe.js";
import { assignFiles } from "../../src/consolidate/parts.js";
import { restoredDType } from "../../src/consolidate/plan.js";
import { locateShardedSave, openShardedSave } from "../../src/consolidate/save.js";
import { MemoryFolder } from "../../src/io/folder.js";
import { SafetensorsFile } from "../../src/safetensors/file.js";
import { castInto } from "../../src/tensor/cast.js";
import type { Tensor } from "../../src/tensor/tensor.js";
import { compareTensors } from "../helpers/fixtures.js";
import { type Files, consolidateFiles, memoryHf, memorySave, tensorsOf, underModel } from "../helpers/saves.js";

/** Rank files of a save, and how many pieces of each kind they hold. */
function pieceKinds(files: Files): { ranks: number; empty: number; column: number; scalar: number } {
  let ranks = 0;
  let empty = 0;
  let column = 0;
  let scalar = 0;
  for (const [rel, bytes] of files) {
    if (!rel.startsWith("shard-")) continue;
    ranks++;
    const f = SafetensorsFile.fromBytes(bytes, rel);
    const info = JSON.parse(f.header.metadata!.get("DCP_SHARDING_INFO")!) as Record<string, { saved_offsets: number[] }>;
    for (const e of f.header.entries) {
      if (e.shape.includes(0)) empty++;
      if (e.shape.length === 0) scalar++;
      if (info[e.name]!.saved_offsets.slice(1).some((o) => o > 0)) column++;
    }
  }
  return { ranks, empty, column, scalar };
}

const castTensor = (t: Tensor, to: "F32" | "BF16"): Tensor => {
  const n = t.shape.reduce((a, b) => a * b, 1);
  const data = new Uint8Array(n * (to === "F32" ? 4 : 2));
  castInto(t.data, t.dtype, data, to, n);
  return { dtype: to, shape: t.shape, data };
};

describe("consolidating our own sharded saves gives back the HF checkpoint they were made from", () => {
  const cases: [string, Parameters<typeof memoryHf>[0], Parameters<typeof memorySave>[1]][] = [
    ["tiny, W=2: row pieces, experts whole in blocks", { preset: "tiny", seed: 1 }, { world: 2 }],
    ["tiny, W=4 = ep_shard 2 × ep 2: column pieces", { preset: "tiny", seed: 2 }, { world: 4, ep: 2 }],
    ["small, W=3: uneven splits, many output files", { preset: "small", seed: 3, maxShardSize: 100_000 }, { world: 3 }],
    ["small, W=8 = 2 × ep 4: empty pieces everywhere", { preset: "small", seed: 4 }, { world: 8, ep: 4 }],
    ["small, W=6 = 3 × ep 2: uneven column pieces", { preset: "small", seed: 5, maxShardSize: 300_000 }, { world: 6, ep: 2 }],
    ["tiny, W=1", { preset: "tiny", seed: 6 }, { world: 1 }],
  ];
  for (const [name, synth, save] of cases) {
    it(name, async () => {
      const hf = await memoryHf(synth);
      const files = await memorySave(hf, save);
      const kinds = pieceKinds(files);
      expect(kinds.ranks).toBe(save.world);
      expect(kinds.scalar).toBeGreaterThan(0); // num_batches_tracked, I64 0-d
      if ((save.ep ?? 1) > 1) expect(kinds.column).toBeGreaterThan(0);
      if (save.world >= 3) expect(kinds.empty).toBeGreaterThan(0);
      const { out, plan } = await consolidateFiles(files);
      const original = tensorsOf(await filesOfHf(hf));
      expect(compareTensors(tensorsOf(out), original)).toEqual([]);
      // The output's files follow the HF checkpoint's index, named as Automodel's consolidator names them.
      const shards = [...out.keys()].filter((f) => f.endsWith(".safetensors")).sort();
      const hfShards = [...(await filesOfHf(hf)).keys()].filter((f) => f.endsWith(".safetensors")).sort();
      expect(shards).toEqual(hfShards.length === 1 ? ["model-00001-of-00001.safetensors"] : hfShards);
      expect(plan.files.map((f) => f.file)).toEqual(shards);
      // Index: every tensor, sorted the HF way, with the data bytes' total.
      const index = JSON.parse(new TextDecoder().decode(out.get("model.safetensors.index.json"))) as { metadata: { total_size: number }; weight_map: Record<string, string> };
      expect(Object.keys(index.weight_map)).toEqual([...original.keys()].sort());
      expect(index.metadata.total_size).toBe([...original.values()].reduce((n, t) => n + t.data.byteLength, 0));
      // Every .hf_metadata file but the two mappings: the HF folder's files besides its weights.
      const others = (files: Files): string[] => [...files.keys()].filter((f) => !f.endsWith(".safetensors") && f !== "model.safetensors.index.json").sort();
      expect(others(out)).toEqual(others(await filesOfHf(hf)));
      expect(others(out)).toContain("config.json");
    });
  }

  it("tensors inside each output file keep the mapping's order (sorted names), as Automodel writes them", async () => {
    const files = await memorySave(await memoryHf({ preset: "tiny", maxShardSize: 20_000 }), { world: 3 });
    const { out } = await consolidateFiles(files);
    for (const [rel, bytes] of out) {
      if (!rel.endsWith(".safetensors")) continue;
      const names = SafetensorsFile.fromBytes(bytes, rel).header.entries.map((e) => e.name);
      expect(names).toEqual([...names].sort());
    }
  });

  it("a single-file HF checkpoint: the mapping is cut by size, as Automodel does without an index", async () => {
    const hf = await memoryHf({ preset: "small" });
    const files = await memorySave(hf, { world: 2, maxFileSize: 300_000 });
    const { out } = await consolidateFiles(files);
    expect([...out.keys()].filter((f) => f.endsWith(".safetensors")).sort()).toEqual([1, 2, 3, 4].map((i) => `model-0000${i}-of-00004.safetensors`));
    expect(compareTensors(tensorsOf(out), tensorsOf(await filesOfHf(hf)))).toEqual([]);
  });

  it("float32 master weights: restored to the base model's dtypes; experts the mapping lacks stay float32 (as Automodel) unless asked", async () => {
    const hf = await memoryHf({ preset: "small", seed: 7 });
    const original = tensorsOf(await filesOfHf(hf));
    const files = await memorySave(hf, { world: 4, ep: 2, trainDType: "F32" });
    const exact = await consolidateFiles(files);
    const got = tensorsOf(exact.out);
    const mixed: string[] = [];
    const expected = new Map(original);
    for (const [name, t] of got) {
      const o = original.get(name)!;
      if (t.dtype === o.dtype) continue;
      // Not in rank 0's dtype mapping: written as saved, the exact float32 widening of the original.
      expect(name).toMatch(/\.experts\.[4-7]\./);
      expected.set(name, castTensor(o, "F32"));
      mixed.push(name);
    }
    expect(compareTensors(got, expected)).toEqual([]);
    expect(mixed.length).toBeGreaterThan(0);
    expect(exact.plan.mixedExperts).toContain("language_model.backbone.layers.1 up_proj: BF16, F32");
    const uniform = await consolidateFiles(files, { uniformExpertDTypes: true });
    expect(compareTensors(tensorsOf(uniform.out), original)).toEqual([]);
    expect(uniform.plan.mixedExperts).toEqual([]);
  });

  it("bf16 training state of float32 buffers: widened back to float32 (the values stay bf16-rounded)", async () => {
    const hf = await memoryHf({ preset: "tiny", seed: 8 });
    const original = tensorsOf(await filesOfHf(hf));
    const { out, plan } = await consolidateFiles(await memorySave(hf, { world: 2, trainDType: "BF16" }));
    const expected = new Map([...original].map(([name, o]) => [name, o.dtype === "F32" ? castTensor(castTensor(o, "BF16"), "F32") : o]));
    expect(compareTensors(tensorsOf(out), expected)).toEqual([]);
    expect(plan.restored).toBe([...original.values()].filter((o) => o.dtype === "F32").length);
  });

  it("without a dtype mapping every tensor keeps its saved dtype", async () => {
    const hf = await memoryHf({ preset: "tiny" });
    const { out } = await consolidateFiles(await memorySave(hf, { world: 2, trainDType: "F32", dtypeMapping: "none" }));
    expect([...tensorsOf(out).values()].every((t) => t.dtype === "F32" || t.dtype === "I64")).toBe(true);
  });

  it("the checkpoint folder above model/ is found as well as model/ itself", async () => {
    const files = await memorySave(await memoryHf({ preset: "tiny" }), { world: 2 });
    expect(await locateShardedSave(new MemoryFolder(underModel(files), "ckpt"))).toBe("model");
    expect(await locateShardedSave(new MemoryFolder(files, "model"))).toBe("");
    expect(await locateShardedSave(await memoryHf({ preset: "tiny" }))).toBeUndefined();
  });

  it("describes a save: ranks, pieces, what it would write", async () => {
    const files = await memorySave(await memoryHf({ preset: "tiny", maxShardSize: 20_000 }), { world: 4, ep: 2 });
    const folder = new MemoryFolder(files, "model");
    const save = await openShardedSave(folder, "");
    const r = describeShardedSave(save);
    expect(r.ranks.map((k) => k.file)).toEqual([1, 2, 3, 4].map((n) => `shard-0000${n}-model-00001-of-00001.safetensors`));
    // With ep_shard 2 every per-expert weight is in column pieces.
    expect(r.columnSplit).toBe([...save.tensors.keys()].filter((n) => /\.experts\.\d+\.(up|down)_proj\.weight$/.test(n)).length);
    expect(r.columnSplit).toBeGreaterThan(0);
    expect(r.problems).toEqual([]);
    expect(r.consolidate?.files.length).toBe(r.mapping?.files);
    // Every tensor with an axis is one or the other (a 0-d counter has none to come out short on).
    const scalars = [...save.tensors.values()].filter((t) => t.pieces[0]!.entry.shape.length === 0).length;
    expect(r.configChecked.tensors + r.configChecked.unchecked + scalars).toBe(r.tensors);
    expect(r.configChecked.uncheckedPatterns).toContain("vision_model.radio_model.model.blocks.N.mlp.fc1.weight");
  });
});

describe("output dtypes, as SPEC §9 says", () => {
  it.each([
    ["F32", "BF16", "BF16"],
    ["BF16", "F32", "F32"],
    ["F32", undefined, "F32"],
    ["F32", "F8_E4M3", "F32"],
    ["I64", "F32", "I64"],
    ["F16", "F64", "F64"],
    ["F32", "I8", "F32"],
  ] as const)("saved %s, mapping %s → %s", (saved, mapped, out) => {
    expect(restoredDType(saved, mapped)).toBe(out);
  });
});

describe("splitting the output files among parts", () => {
  const file = (index: number, bytes: number) => ({ file: `f${index}`, index, tensors: [], bytes });
  it("gives each part a disjoint set of files, balanced by bytes, every file to someone", () => {
    const files = [file(1, 100), file(2, 90), file(3, 60), file(4, 50), file(5, 40), file(6, 10)];
    const parts = assignFiles(files, 3);
    expect(parts).toEqual([["f1", "f6"], ["f2", "f5"], ["f3", "f4"]]);
    expect(parts.map((p) => p.reduce((n, f) => n + files.find((x) => x.file === f)!.bytes, 0))).toEqual([110, 130, 110]);
    expect(assignFiles(files, 1)).toEqual([files.map((f) => f.file)]);
    expect(assignFiles(files.slice(0, 2), 4)).toEqual([["f1"], ["f2"], [], []]);
  });
});

async function filesOfHf(hf: MemoryFolder): Promise<Files> {
  const { filesOf } = await import("../helpers/saves.js");
  return filesOf(hf);
}
