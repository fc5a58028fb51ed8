import { describe, expect, it } from "vitest";
import { convertFolder } from "../../src/convert/convert.js";
import { DTYPE_MAPPING } from "../../src/consolidate/names.js";
import { MemoryFolder } from "../../src/io/folder.js";
import { MemoryOutput } from "../../src/io/output.js";
import { AbortError } from "../../src/errors.js";
import { compareTensors } from "../helpers/fixtures.js";
import { type Files, consolidateFiles, memoryHf, memorySave, metadataText, setMetadata, tensorsOf, underModel } from "../helpers/saves.js";

/**
 * `convert --to native` straight from a sharded save equals consolidating first and converting the result,
 * bit for bit, whatever the sharding and the casts on the way.
 */

async function native(folder: MemoryFolder, options: Parameters<typeof convertFolder>[2]): Promise<Files> {
  const out = new MemoryOutput("native");
  await convertFolder(folder, out, options);
  return out.files;
}

async function sameBothWays(files: Files, options: Parameters<typeof convertFolder>[2], consolidate = {}): Promise<void> {
  const direct = await native(new MemoryFolder(underModel(files), "ckpt"), options);
  const { out } = await consolidateFiles(files, consolidate);
  const via = await native(new MemoryFolder(out, "consolidated"), options);
  expect(compareTensors(tensorsOf(direct), tensorsOf(via))).toEqual([]);
  expect([...direct.keys()].sort()).toEqual([...via.keys()].sort());
}

describe("convert --to native of a sharded save", () => {
  it.each([
    ["row pieces", { world: 3 }, { to: "native" as const }],
    ["column pieces", { world: 4, ep: 2 }, { to: "native" as const }],
    ["column pieces, experts in float32", { world: 4, ep: 2 }, { to: "native" as const, dtype: "f32" }],
    ["an expert-parallel slice, layers cut", { world: 6, ep: 3 }, { to: "native" as const, ep: { rank: 1, size: 3 }, numLayers: 4 }],
  ])("%s", async (_what, save, options) => {
    await sameBothWays(await memorySave(await memoryHf({ preset: "small", seed: 21 }), save), options);
  });

  it("float32 master weights restored to bf16, then cast again by a rule: rounded twice, as consolidating first would", async () => {
    const files = await memorySave(await memoryHf({ preset: "small", seed: 22 }), { world: 4, ep: 2, trainDType: "F32", dtypeMapping: "all" });
    // Say the base model had its Mamba parameters in bf16: restored to bf16, then upcast to float32 by the rule.
    setMetadata(files, DTYPE_MAPPING, metadataText(files, DTYPE_MAPPING).replace(/("[^"]*\.mixer\.(?:A_log|D|dt_bias)"): "F32"/g, '$1: "BF16"'));
    expect(metadataText(files, DTYPE_MAPPING)).toMatch(/\.A_log": "BF16"/);
    await sameBothWays(files, { to: "native" });
    // Experts restored to bf16, then grouped in float16: two roundings again.
    await sameBothWays(files, { to: "native", dtype: "f16" });
  });

  it("experts the dtype mapping lacks take their layer's mapped dtype, so a float32-master save converts", async () => {
    const files = await memorySave(await memoryHf({ preset: "small", seed: 23 }), { world: 4, ep: 2, trainDType: "F32" });
    await sameBothWays(files, { to: "native" }, { uniformExpertDTypes: true });
    // Consolidated exactly as Automodel does, the same save cannot be converted at all.
    const { out } = await consolidateFiles(files);
    await expect(native(new MemoryFolder(out, "consolidated"), { to: "native" })).rejects.toThrow(/experts of one layer must match/);
  });

  it("a broken save is refused by convert as by consolidate", async () => {
    const files = await memorySave(await memoryHf({ preset: "tiny" }), { world: 2 });
    files.delete("shard-00002-model-00001-of-00001.safetensors");
    await expect(native(new MemoryFolder(underModel(files), "ckpt"), { to: "native" })).rejects.toThrow(
      /^ckpt\/model\/shard-00002-model-00001-of-00001\.safetensors: may be missing: \d+ tensors whose shape the config gives come out short .* \(and \d+ more problems; omni-ckpt inspect ckpt\/model lists them\)$/,
    );
  });

  it("is cancelled through its signal as any conversion is, mid-stream or after the last tensor", async () => {
    const files = underModel(await memorySave(await memoryHf({ preset: "small", seed: 24 }), { world: 3 }));
    for (const when of ["first", "last"] as const) {
      const controller = new AbortController();
      const out = new MemoryOutput("native");
      let total = 0;
      const run = convertFolder(new MemoryFolder(files, "ckpt"), out, {
        to: "native",
        signal: controller.signal,
        onPlan: (plan) => {
          total = plan.tensors.length;
        },
        // After the last tensor is the final check before the config and the other files are written.
        onProgress: (_bytes, done) => {
          if (when === "first" ? done >= 1 : done === total) controller.abort();
        },
      });
      await expect(run).rejects.toThrow(AbortError);
      expect(total).toBeGreaterThan(1);
      expect(out.files.has("config.json")).toBe(false);
    }
  });
});
