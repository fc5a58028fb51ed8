import { beforeAll, describe, expect, it } from "vitest";
import { DTYPE_MAPPING, FILE_INDEX_MAPPING } from "../../src/consolidate/names.js";
import { IncompleteSaveError } from "../../src/consolidate/plan.js";
import { SafetensorsFile } from "../../src/safetensors/file.js";
import { type Files, consolidateFiles, editRank, memoryHf, memorySave, metadataText, planFiles, problemsOf, rankHolding, setMetadata } from "../helpers/saves.js";

/**
 * A broken save for every refusal: each is refused before anything is written, with every problem on a
 * line of its own naming the file, the tensor and the offsets. The save is `tiny` on W=3 ranks, held in
 * memory as `ckpt/model/`.
 */

const RANK = (n: number): string => `shard-0000${n}-model-00001-of-00001.safetensors`;
const M = "ckpt/model";
const META = `${M}/.hf_metadata`;
const vis = "vision_model.radio_model.model.blocks.0.mlp.fc1.weight";
const emb = "language_model.backbone.embeddings.weight";

let base: Files;
beforeAll(async () => {
  base = await memorySave(await memoryHf({ preset: "tiny", seed: 11 }), { world: 3 });
});

/** How many tensors a rank file holds elements of (its non-empty pieces). */
function heldBy(rank: string): number {
  return SafetensorsFile.fromBytes(base.get(rank)!, rank).header.entries.filter((e) => !e.shape.includes(0)).length;
}

/** The problems of the save with `mutate` applied. */
async function problems(mutate: (f: Files) => void): Promise<string[]> {
  const f = new Map(base);
  mutate(f);
  return problemsOf(f);
}

const noPiece = (tensor: string, region: string, shape: string, missing: number, total: number): string =>
  `${M}: tensor "${tensor}": no piece holds elements ${region} of ${shape} (${missing} of ${total} elements are in no rank file)`;

describe("rank files", () => {
  it("a lost rank file in the middle: named, and every tensor that comes out short", async () => {
    const p = await problems((f) => f.delete(RANK(2)));
    expect(p[0]).toBe(`${M}/${RANK(2)}: is missing: rank files run from 1 to 3, and rank 1 wrote this one`);
    expect(p).toContain(noPiece(emb, "[22:44, 0:16]", "[64, 16]", 352, 1024));
    expect(p).toContain(noPiece(vis, "[11:22, 0:8]", "[32, 8]", 88, 256));
    // The missing file, then one line for every tensor it held rows of.
    expect(p.length).toBe(1 + heldBy(RANK(2)));
  });

  it("a lost last rank file: no hole in the numbering, but the config's shapes show the language model short", async () => {
    const p = await problems((f) => f.delete(RANK(3)));
    const short = p.filter((l) => l.endsWith("; a rank file may be missing")).length;
    expect(p[0]).toBe(
      `${M}/${RANK(3)}: may be missing: ${short} tensors whose shape the config gives come out short (the first, "language_model.backbone.embeddings.weight", ends at 44 of 64 on axis 0), as when the last rank's file is lost`,
    );
    expect(short).toBeGreaterThan(20);
    expect(p).toContain(
      `${M}: tensor "${emb}": no piece holds elements [44:64, 0:16] of [64, 16] (320 of 1024 elements are in no rank file): the pieces end at 44 on axis 0 but the config gives 64 (vocab_size 64, hidden_size 16); a rank file may be missing`,
    );
    expect(p).toContain(
      `${M}: tensor "language_model.backbone.layers.0.mixer.in_proj.weight": no piece holds elements [46:68, 0:16] of [68, 16] (352 of 1088 elements are in no rank file): the pieces end at 46 on axis 0 but the config gives 68 (2 × mamba_num_heads × mamba_head_dim + 2 × n_groups × ssm_state_size + mamba_num_heads 68, hidden_size 16); a rank file may be missing`,
    );
    expect(p).toContain(`${M}: tensor "mlp1.1.weight": no piece holds elements [16:24, 0:32] of [24, 32] (256 of 768 elements are in no rank file): the pieces end at 16 on axis 0 but the config gives 24 (projector_hidden_size 24, vit_hidden_size / downsample_ratio² 32); a rank file may be missing`);
    // What no config field sizes on its first axis (RADIO's MLP width) comes out short unseen (README).
    expect(p.some((l) => l.includes(`"${vis}"`))).toBe(false);
    expect(p).toContain(
      `${M}: tensor "vision_model.radio_model.model.blocks.0.attn.qkv.weight": no piece holds elements [16:24, 0:8] of [24, 8] (64 of 192 elements are in no rank file): the pieces end at 16 on axis 0 but the config gives 24 (3 × vision_config.hidden_size 24, vision_config.hidden_size 8); a rank file may be missing`,
    );
  });

  it("a rank file that is there but unreadable comes first, before the guess that the last one is lost", async () => {
    const p = await problems((f) => f.set(RANK(3), f.get(RANK(3))!.subarray(0, 6)));
    expect(p[0]).toMatch(new RegExp(`^${M}/${RANK(3).replace(/\./g, "\\.")}: `));
    expect(p[0]).not.toContain("may be missing");
    expect(p.findIndex((l) => l.includes(": may be missing: "))).not.toBe(0);
  });

  it.each([
    ["numbered 0", "shard-00000-model-00001-of-00001.safetensors", `${M}/shard-00000-model-00001-of-00001.safetensors: is numbered 0, but rank files are numbered from 1 (rank + 1)`],
    ["another .safetensors file", "model.safetensors", `${M}/model.safetensors: is not a rank file of a sharded save (shard-NNNNN-model-00001-of-00001.safetensors), and a consolidator would read it as one`],
    ["not model 1 of 1", "shard-00004-model-00001-of-00002.safetensors", `${M}/shard-00004-model-00001-of-00002.safetensors: names output file 1 of 2; Automodel's sharded saves always name 1 of 1`],
    ["a rank number twice", "shard-000001-model-00001-of-00001.safetensors", `${M}/${RANK(1)}: has the same rank number as shard-000001-model-00001-of-00001.safetensors`],
  ])("%s", async (_what, name, line) => {
    expect(await problems((f) => f.set(name, f.get(RANK(1))!))).toEqual([line]);
  });

  it("a truncated rank file", async () => {
    const p = await problems((f) => f.set(RANK(2), f.get(RANK(2))!.subarray(0, 100)));
    expect(p[0]).toMatch(new RegExp(`^${M}/${RANK(2)}: header length \\d+ runs past the end of the file \\(100 bytes\\)$`));
    expect(p.length).toBe(1 + heldBy(RANK(2)));
  });
});

describe("pieces", () => {
  it("a gap between pieces (a tensor the config does not size)", async () => {
    expect(await problems((f) => editRank(f, rankHolding(f, vis, [22, 0]), (_e, info) => void (info[vis] = { saved_offsets: [23, 0] })))).toEqual([
      noPiece(vis, "[22:23, 0:8]", "[33, 8]", 8, 264),
    ]);
  });

  it("overlapping pieces", async () => {
    expect(await problems((f) => editRank(f, rankHolding(f, vis, [11, 0]), (_e, info) => void (info[vis] = { saved_offsets: [10, 0] })))).toEqual([
      `${M}/${RANK(2)}: tensor "${vis}": piece at [10:21, 0:8] overlaps ${M}/${RANK(1)} at [0:11, 0:8]: both hold [10:11, 0:8]`,
    ]);
  });

  it("a piece outside the shape the config gives", async () => {
    expect(await problems((f) => editRank(f, rankHolding(f, emb, [44, 0]), (_e, info) => void (info[emb] = { saved_offsets: [45, 0] })))).toEqual([
      `${M}/${RANK(3)}: tensor "${emb}": piece at [45:65, 0:16] lies outside the tensor's shape [64, 16] (config: vocab_size 64, hidden_size 16)`,
    ]);
  });

  it("pieces of one tensor in two dtypes", async () => {
    expect(await problems((f) => editRank(f, rankHolding(f, emb, [22, 0]), (e) => void (e[emb]!.dtype = "F16")))).toEqual([
      `${M}/${RANK(2)}: tensor "${emb}": piece at [22:44, 0:16] is F16, but ${M}/${RANK(1)} at [0:22, 0:16] is BF16: one tensor has one dtype`,
    ]);
  });

  it("pieces of one tensor with different numbers of dimensions", async () => {
    const p = await problems((f) =>
      editRank(f, rankHolding(f, emb, [22, 0]), (e, info) => {
        e[emb]!.shape = [22 * 16];
        info[emb] = { saved_offsets: [22 * 16] };
      }),
    );
    expect(p).toEqual([`${M}/${RANK(2)}: tensor "${emb}": piece [352] has 1 dimension, but ${M}/${RANK(1)} at [0:22, 0:16] has 2`]);
  });

  it("FP8 pieces the base model had in bf16: restoring would cast codes without their scales", async () => {
    // RADIO's MLP bias, whose length no config field gives: saved as twice as many one-byte codes.
    const bias = "vision_model.radio_model.model.blocks.0.mlp.fc1.bias";
    const p = await problems((f) => {
      const ranks = [0, 11, 22].map((off) => [off, rankHolding(f, bias, [off])] as const);
      for (const [off, rank] of ranks) {
        editRank(f, rank, (e, info) => {
          e[bias]!.dtype = "F8_E4M3";
          e[bias]!.shape = [2 * e[bias]!.shape[0]!];
          info[bias] = { saved_offsets: [2 * off] };
        });
      }
    });
    expect(p).toEqual([`${M}: tensor "${bias}": is saved as F8_E4M3 and the base model had BF16: restoring would cast FP8 codes without their scales, giving wrong weights; refusing`]);
  });
});

describe("DCP_SHARDING_INFO", () => {
  const lost = noPiece(emb, "[22:44, 0:16]", "[64, 16]", 352, 1024);
  it.each([
    [
      "no __metadata__",
      (_e: unknown, _i: unknown, m: Record<string, string>) => {
        for (const k of Object.keys(m)) delete m[k];
      },
      `${M}/${RANK(2)}: has no __metadata__.DCP_SHARDING_INFO: not a rank file written by a DCP sharded save`,
    ],
    ["not JSON", (_e: unknown, _i: unknown, m: Record<string, string>) => void (m["DCP_SHARDING_INFO"] = "{not json"), `${M}/${RANK(2)}: __metadata__.DCP_SHARDING_INFO is not valid JSON: expected a string key in object at character 1`],
    [
      "a tensor twice",
      (_e: unknown, _i: unknown, m: Record<string, string>) => void (m["DCP_SHARDING_INFO"] = m["DCP_SHARDING_INFO"]!.replace("{", `{"${emb}": {"saved_offsets": [22, 0]}, `)),
      `${M}/${RANK(2)}: tensor "${emb}": appears twice in __metadata__.DCP_SHARDING_INFO`,
    ],
  ])("%s", async (_what, edit, line) => {
    const p = await problems((f) => editRank(f, RANK(2), edit as never));
    expect(p[0]).toBe(line);
    // The file's pieces are unusable: every tensor it held rows of has a hole.
    expect(p.length).toBe(1 + heldBy(RANK(2)));
  });

  it.each([
    ["an offset of 2^53 or more", (m: Record<string, string>) => (m["DCP_SHARDING_INFO"] = m["DCP_SHARDING_INFO"]!.replace(`"${emb}":{"saved_offsets":[22,0]}`, `"${emb}":{"saved_offsets":[9007199254740993,0]}`)), "saved_offsets[0] is the number 9007199254740993, not an exact non-negative integer"],
    ["offsets of the wrong length", (m: Record<string, string>) => (m["DCP_SHARDING_INFO"] = m["DCP_SHARDING_INFO"]!.replace(`"${emb}":{"saved_offsets":[22,0]}`, `"${emb}":{"saved_offsets":[22]}`)), "saved_offsets [22] has 1 entry, but the piece has 2 dimensions [22, 16]"],
    ["offsets that are not a list", (m: Record<string, string>) => (m["DCP_SHARDING_INFO"] = m["DCP_SHARDING_INFO"]!.replace(`"${emb}":{"saved_offsets":[22,0]}`, `"${emb}":{"saved_offsets":"22,0"}`)), "DCP_SHARDING_INFO entry has no saved_offsets list (found an object without one)"],
    ["no entry for a tensor of the file", (m: Record<string, string>) => (m["DCP_SHARDING_INFO"] = m["DCP_SHARDING_INFO"]!.replace(`"${emb}":{"saved_offsets":[22,0]},`, "")), "has no saved_offsets in __metadata__.DCP_SHARDING_INFO"],
  ])("%s", async (_what, edit, detail) => {
    const p = await problems((f) =>
      editRank(f, RANK(2), (_e, info, m) => {
        m["DCP_SHARDING_INFO"] = JSON.stringify(info);
        edit(m);
      }),
    );
    expect(p).toEqual([`${M}/${RANK(2)}: tensor "${emb}": ${detail}`, lost]);
  });

  it("an entry for a tensor the file does not hold", async () => {
    expect(await problems((f) => editRank(f, RANK(2), (_e, info) => void (info["no.such.tensor"] = { saved_offsets: [0] })))).toEqual([
      `${M}/${RANK(2)}: tensor "no.such.tensor": is in __metadata__.DCP_SHARDING_INFO but not in the file`,
    ]);
  });
});

describe(".hf_metadata", () => {
  const mapping = (edit: (text: string) => string) => (f: Files) => setMetadata(f, FILE_INDEX_MAPPING, edit(metadataText(f, FILE_INDEX_MAPPING)));
  it.each([
    ["a tensor the mapping lacks", mapping((t) => t.replace(`  "${emb}": 1,\n`, "")), [`${META}/${FILE_INDEX_MAPPING}: tensor "${emb}": is in the rank files (${M}/${RANK(1)}, …) but not in the mapping, so no output file is named for it`]],
    ["a tensor of the mapping in no rank file", mapping((t) => t.replace("{\n", `{\n  "language_model.backbone.layers.9.norm.weight": 1,\n`)), [`${META}/${FILE_INDEX_MAPPING}: tensor "language_model.backbone.layers.9.norm.weight": is listed for output file 1, but no rank file holds a piece of it`]],
    ["no mapping", (f: Files) => void f.delete(`.hf_metadata/${FILE_INDEX_MAPPING}`), [`${META}/${FILE_INDEX_MAPPING}: is missing: it says which output file each tensor goes to`]],
    ["a mapping that is not JSON", mapping(() => "{"), [`${META}/${FILE_INDEX_MAPPING}: is not valid JSON: expected a string key in object at character 1`]],
    ["a mapping that is not an object", mapping(() => "[]"), [`${META}/${FILE_INDEX_MAPPING}: is an array, not an object`]],
    ["a tensor twice in the mapping", mapping((t) => t.replace("{\n", `{\n  "${emb}": 1,\n`)), [`${META}/${FILE_INDEX_MAPPING}: tensor "${emb}": appears twice (JSON.parse would silently keep the last)`]],
    [
      "file index 0",
      mapping((t) => t.replace(`"${emb}": 1`, `"${emb}": 0`)),
      [
        `${META}/${FILE_INDEX_MAPPING}: tensor "${emb}": file index is the number 0, not an integer ≥ 1`,
        `${META}/${FILE_INDEX_MAPPING}: tensor "${emb}": is in the rank files (${M}/${RANK(1)}, …) but not in the mapping, so no output file is named for it`,
      ],
    ],
    [
      "a dtype that is not a safetensors dtype",
      (f: Files) => setMetadata(f, DTYPE_MAPPING, metadataText(f, DTYPE_MAPPING).replace(`"${emb}": "BF16"`, `"${emb}": "bfloat16"`)),
      [`${META}/${DTYPE_MAPPING}: tensor "${emb}": dtype is "bfloat16", not a safetensors dtype`],
    ],
    ["no config.json", (f: Files) => void f.delete(".hf_metadata/config.json"), [`${META}/config.json: is missing: the tensors' shapes are checked against the model config`]],
    ["a config of another model", (f: Files) => setMetadata(f, "config.json", "{}"), [`${META}/config.json: has no llm_config: not a Nemotron Omni (or NemotronH) config`]],
  ])("%s", async (_what, mutate, lines) => {
    expect(await problems(mutate)).toEqual(lines);
  });
});

describe("a tied lm_head", () => {
  const lmHead = "language_model.lm_head.weight";
  it("may be absent when the config ties it to the embeddings; otherwise it is missing", async () => {
    const hf = await memoryHf({ preset: "tiny" });
    const files = await memorySave(hf, { world: 2, omit: (n) => n === lmHead });
    const missing = [`${META}/${FILE_INDEX_MAPPING}: tensor "${lmHead}": is listed for output file 1, but no rank file holds a piece of it`];
    expect(await problemsOf(files)).toEqual(missing);
    // The language model's own false governs, whatever the Omni config's top level says.
    const untied = metadataText(files, "config.json");
    setMetadata(files, "config.json", untied.replace("{", '{\n  "tie_word_embeddings": true,'));
    expect(await problemsOf(files)).toEqual(missing);
    setMetadata(files, "config.json", untied.replace('"tie_word_embeddings": false', '"tie_word_embeddings": true'));
    const { out, plan } = await consolidateFiles(files);
    expect(plan.assembly.dropped).toEqual([lmHead]);
    const index = JSON.parse(new TextDecoder().decode(out.get("model.safetensors.index.json"))) as { weight_map: Record<string, string> };
    expect(index.weight_map[lmHead]).toBeUndefined();
  });
});

describe("the refusal itself", () => {
  it("is one error whose message is the first problem and how many more, listing every line", async () => {
    const f = new Map(base);
    f.delete(RANK(2));
    const e = await planFiles(f).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(IncompleteSaveError);
    const err = e as IncompleteSaveError;
    expect(err.message).toBe(`${M}/${RANK(2)}: is missing: rank files run from 1 to 3, and rank 1 wrote this one (and ${heldBy(RANK(2))} more problems; omni-ckpt inspect ${M} lists them)`);
    expect(err.lines.length).toBe(1 + heldBy(RANK(2)));
  });
});
