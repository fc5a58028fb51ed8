import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { type Folder, MemoryFolder } from "../../src/io/folder.js";
import { MemoryOutput } from "../../src/io/output.js";
import { exportAdapterFolder } from "../../src/lora/export-files.js";
import { mergeFolders } from "../../src/lora/merge.js";
import { baseModel } from "../../src/lora/base.js";
import { LocalFolder } from "../../src/node/local-folder.js";
import { Checkpoint } from "../../src/safetensors/checkpoint.js";
import { SafetensorsFile } from "../../src/safetensors/file.js";
import type { Tensor } from "../../src/tensor/tensor.js";
import { compareTensors, loraDir } from "../helpers/fixtures.js";
import { PEFT, elementBits, peftRank, peftTargets, referenceMerge, ulps, values } from "../helpers/lora.js";

/*
 * The reference case: an adapter saved by NeMo Automodel for a tiny Omni base, its export made with the
 * reference adapter's per-expert `to_hf`, and the base merged by PyTorch (test/fixtures/lora/README.md).
 */

const fixture = path.join(loraDir, "tiny-experts-rank2");
const folder = (rel: string): LocalFolder => new LocalFolder(path.join(fixture, rel));

function tensorsOf(bytes: Uint8Array, name = "<memory>"): Map<string, Tensor> {
  const f = SafetensorsFile.fromBytes(bytes, name);
  return new Map([...f.tensors.keys()].map((n) => [n, f.readTensorSync(n)]));
}

function fileTensors(file: string): Map<string, Tensor> {
  return tensorsOf(new Uint8Array(fs.readFileSync(file)), file);
}

async function exported(options: Parameters<typeof exportAdapterFolder>[2] = {}, from: Folder = folder("adapter")): Promise<MemoryOutput> {
  const out = new MemoryOutput("export");
  await exportAdapterFolder(from, out, options);
  return out;
}

async function merged(adapter: Folder, options: Parameters<typeof mergeFolders>[3] = {}): Promise<Map<string, Tensor>> {
  const out = new MemoryOutput("merged");
  await mergeFolders(folder("base"), adapter, out, options);
  return tensorsOf(out.files.get("model.safetensors")!);
}

async function baseOf(): Promise<Parameters<typeof exportAdapterFolder>[2]> {
  const ckpt = await Checkpoint.open(folder("base"));
  const base = baseModel(ckpt, await ckpt.readConfig());
  ckpt.close();
  return { base };
}

describe("the LoRA fixture (tiny-experts-rank2)", () => {
  it("exports to exactly the expected tensors (names, dtypes, shapes, bytes), byte for byte the same file", async () => {
    const out = await exported();
    const expected = path.join(fixture, "expected-export/adapter_model.safetensors");
    expect(compareTensors(tensorsOf(out.files.get("adapter_model.safetensors")!), fileTensors(expected))).toEqual([]);
    expect(Buffer.from(out.files.get("adapter_model.safetensors")!).equals(fs.readFileSync(expected))).toBe(true);
  });

  it("writes an adapter_config.json PEFT places and scales as Automodel trained it, everything else kept", async () => {
    const out = await exported();
    const config = JSON.parse(new TextDecoder().decode(out.files.get("adapter_config.json")!)) as Record<string, unknown> & { r: number; lora_alpha: number; target_modules: string[]; rank_pattern?: Record<string, number> };
    const input = JSON.parse(fs.readFileSync(path.join(fixture, "adapter/adapter_config.json"), "utf8")) as Record<string, unknown>;
    for (const [k, v] of Object.entries(input)) {
      if (k === "target_modules" || k === "target_parameters") continue;
      expect(config[k], k).toEqual(v);
    }
    expect(config["target_parameters"]).toBeUndefined();
    const base = fileTensors(path.join(fixture, "base/model.safetensors"));
    const lora = tensorsOf(out.files.get("adapter_model.safetensors")!);
    const adapted = new Map<string, number>();
    for (const [k, t] of lora) if (k.endsWith(".lora_A.weight")) adapted.set(k.slice(PEFT.length, -".lora_A.weight".length), t.shape[0]!);
    // Every module the export names is a module of the base, and PEFT targets exactly those.
    const modules = [...base.keys()].filter((k) => k.endsWith(".weight")).map((k) => k.slice(0, -".weight".length));
    for (const m of adapted.keys()) expect(modules, m).toContain(m);
    expect(new Set(config.target_modules)).toEqual(new Set(adapted.keys()));
    expect(modules.filter((m) => peftTargets(config.target_modules, m)).sort()).toEqual([...adapted.keys()].sort());
    // PEFT's rank is each module's own (experts 2, dense 4), so its scale alpha / r is Automodel's.
    for (const [m, rank] of adapted) expect(peftRank(config, m), m).toBe(rank);
    expect(peftRank(config, "language_model.backbone.layers.1.mixer.experts.3.down_proj")).toBe(2);
    expect(peftRank(config, "language_model.backbone.layers.1.mixer.shared_experts.down_proj")).toBe(4);
    expect(fs.readFileSync(path.join(fixture, "adapter/automodel_peft_config.json")).equals(Buffer.from(out.files.get("automodel_peft_config.json")!))).toBe(true);
  });

  it("merges within the documented bound (≤ 1 ulp in ≤ 1 element in 10,000) of PyTorch's own merge and of the float64 reference", async () => {
    const got = await merged(folder("adapter"));
    const want = fileTensors(path.join(fixture, "expected-merged/model.safetensors"));
    const base = fileTensors(path.join(fixture, "base/model.safetensors"));
    const lora = tensorsOf((await exported()).files.get("adapter_model.safetensors")!);
    expect([...got.keys()].sort()).toEqual([...want.keys()].sort());
    let elements = 0;
    let differ = 0;
    let referenceDiffer = 0;
    for (const [name, w] of want) {
      const g = got.get(name)!;
      expect([g.dtype, g.shape], name).toEqual([w.dtype, w.shape]);
      const module = name.slice(0, -".weight".length);
      const a = lora.get(`${PEFT}${module}.lora_A.weight`);
      if (!a) {
        expect(Buffer.from(g.data).equals(Buffer.from(base.get(name)!.data)), `${name} is not adapted and stays as it was`).toBe(true);
        continue;
      }
      const b = lora.get(`${PEFT}${module}.lora_B.weight`)!;
      const rank = a.shape[0]!;
      const av = values(a);
      const bv = values(b);
      const inn = a.shape[1]!;
      const ref = referenceMerge(base.get(name)!, (k, j) => av[k * inn + j]!, (i, k) => bv[i * rank + k]!, rank, 8 / rank);
      const gb = elementBits(g);
      const wb = elementBits(w);
      gb.forEach((bits, i) => {
        elements++;
        if (bits !== wb[i]) {
          differ++;
          expect(ulps(bits, wb[i]!, "BF16"), `${name}[${i}]`).toBeLessThanOrEqual(1);
        }
        if (bits !== ref[i]) {
          referenceDiffer++;
          expect(ulps(bits, ref[i]!, "BF16"), `${name}[${i}] against the float64 reference`).toBeLessThanOrEqual(1);
        }
      });
    }
    expect(elements).toBeGreaterThan(5000);
    expect(differ).toBeLessThanOrEqual(Math.max(1, Math.floor(elements / 10_000)));
    expect(referenceDiffer).toBeLessThanOrEqual(Math.max(1, Math.floor(elements / 10_000)));
  });

  it("merges its own HF exports (per expert and fused) to the same bytes as the Automodel adapter", async () => {
    const direct = await merged(folder("adapter"));
    for (const experts of ["per-expert", "fused"] as const) {
      const out = await exported({ experts, ...(await baseOf()) });
      const again = await merged(new MemoryFolder(out.files, `export-${experts}`));
      expect(compareTensors(again, direct), experts).toEqual([]);
    }
  });

  it("comes back from either HF form to Automodel's tensors and config (export --to native)", async () => {
    const original = fileTensors(path.join(fixture, "adapter/adapter_model.safetensors"));
    const originalConfig = fs.readFileSync(path.join(fixture, "adapter/adapter_config.json"), "utf8");
    for (const experts of ["per-expert", "fused"] as const) {
      const hf = await exported({ experts });
      const back = await exported({ to: "native", ...(await baseOf()) }, new MemoryFolder(hf.files, `export-${experts}`));
      expect(compareTensors(tensorsOf(back.files.get("adapter_model.safetensors")!), original), experts).toEqual([]);
      expect(new TextDecoder().decode(back.files.get("adapter_config.json")!), experts).toBe(originalConfig);
    }
  });

  it("merges into the native layout as convert --to native lays out the merged release", async () => {
    const out = new MemoryOutput("merged-native");
    const summary = await mergeFolders(folder("base"), folder("adapter"), out, { to: "native" });
    expect(summary.to).toBe("native");
    const native = tensorsOf(out.files.get("model.safetensors")!);
    const viaHf = new MemoryOutput("merged");
    await mergeFolders(folder("base"), folder("adapter"), viaHf, {});
    const { convertFolder } = await import("../../src/convert/convert.js");
    const converted = new MemoryOutput("converted");
    await convertFolder(new MemoryFolder(viaHf.files, "merged"), converted, { to: "native" });
    expect(compareTensors(native, tensorsOf(converted.files.get("model.safetensors")!))).toEqual([]);
  });
});
