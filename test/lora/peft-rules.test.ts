import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { FormatError, InputError } from "../../src/errors.js";
import { MemoryFolder } from "../../src/io/folder.js";
import { MemoryOutput } from "../../src/io/output.js";
import { exportAdapterFolder } from "../../src/lora/export-files.js";
import { mergeFolders } from "../../src/lora/merge.js";
import { castInto } from "../../src/tensor/cast.js";
import type { DType } from "../../src/tensor/dtype.js";
import { type Tensor, makeTensor, numel } from "../../src/tensor/tensor.js";
import { compareTensors } from "../helpers/fixtures.js";
import { PEFT } from "../helpers/lora.js";
import { BASE, C, LM, T, W, adapterDir, base, baseVariant, exportError, files, fixture, hfExport, mergeError, refused, tensorsOf, variant, withBase, zeros } from "../helpers/lora-fixture.js";

/*
 * PEFT's own rules where an adapter leaves them to it: which wrapper a lone fused projection is, how
 * modules_to_save entries and layers_to_transform match, what "all-linear" covers; and what a merged HF
 * checkpoint must hold whatever the base held (a float32 routing bias).
 */

type Config = Record<string, unknown>;

function castTensor(t: Tensor, to: DType): Tensor {
  const out = makeTensor(to, t.shape);
  castInto(t.data, t.dtype, out.data, to, numel(t.shape));
  return out;
}

async function exported(from: MemoryFolder | ReturnType<typeof adapterDir>, options: Parameters<typeof exportAdapterFolder>[2] = {}): Promise<MemoryOutput> {
  const out = new MemoryOutput("export");
  await exportAdapterFolder(from, out, options);
  return out;
}

async function merged(adapter: MemoryFolder | ReturnType<typeof adapterDir>, from = base()): Promise<Map<string, Tensor>> {
  const out = new MemoryOutput("merged");
  await mergeFolders(from, adapter, out, {});
  return tensorsOf(out.files.get("model.safetensors")!);
}

const configOf = (out: MemoryOutput): Config => JSON.parse(new TextDecoder().decode(out.files.get("adapter_config.json")!)) as Config;

const dropDown = (t: Map<string, Tensor>): void => {
  for (const k of [...t.keys()]) if (/mixer\.experts\.lora_down_[AB]$/.test(k)) t.delete(k);
};
/** The fixture's Automodel adapter with LoRA on its routed experts' up projections only. */
const upOnly = (): MemoryFolder => variant({ tensors: dropDown });

describe("fused routed-expert LoRA on one projection only", () => {
  it("is PEFT's single ParamWrapper, unnested, and reads back as up_proj's", async () => {
    const out = await exported(upOnly(), { experts: "fused", ...(await withBase()) });
    const keys = [...tensorsOf(out.files.get("adapter_model.safetensors")!).keys()].filter((k) => k.includes(".mixer.experts."));
    expect(keys.sort()).toEqual([
      `${PEFT}language_model.backbone.layers.1.mixer.experts.lora_A.weight`,
      `${PEFT}language_model.backbone.layers.1.mixer.experts.lora_B.weight`,
      `${PEFT}language_model.backbone.layers.4.mixer.experts.lora_A.weight`,
      `${PEFT}language_model.backbone.layers.4.mixer.experts.lora_B.weight`,
    ]);
    expect(configOf(out)["target_parameters"]).toEqual(["layers.1.mixer.experts.up_proj", "layers.4.mixer.experts.up_proj"]);

    const hf = new MemoryFolder(out.files, "adapter");
    expect(compareTensors(await merged(hf), await merged(upOnly()))).toEqual([]);
    const back = await exported(hf, { to: "native", ...(await withBase()) });
    const original = tensorsOf(files(path.join(fixture, "adapter")).get("adapter_model.safetensors")!);
    dropDown(original);
    expect(compareTensors(tensorsOf(back.files.get("adapter_model.safetensors")!), original)).toEqual([]);
  });
});

describe("modules_to_save", () => {
  const withEmbeddings = (list: string[]): MemoryFolder =>
    variant({
      tensors: (t) => {
        t.set(`${PEFT}language_model.model.embed_tokens.weight`, zeros([64, 16]));
        t.set(`${PEFT}language_model.lm_head.weight`, zeros([64, 16]));
      },
      config: (c) => { c["modules_to_save"] = list; },
    });

  it("a short name the rules rename becomes the names of the modules it saved; one they keep stays", async () => {
    const out = await exported(withEmbeddings(["embed_tokens", "lm_head"]), await withBase());
    expect(configOf(out)["modules_to_save"]).toEqual(["language_model.backbone.embeddings", "lm_head"]);
    const keys = tensorsOf(out.files.get("adapter_model.safetensors")!);
    expect(keys.has(`${PEFT}language_model.backbone.embeddings.weight`)).toBe(true);
    expect(keys.has(`${PEFT}language_model.lm_head.weight`)).toBe(true);

    // …and back: the HF names become Automodel's again.
    const back = await exported(new MemoryFolder(out.files, "adapter"), { to: "native", ...(await withBase()) });
    expect(configOf(back)["modules_to_save"]).toEqual(["language_model.model.embed_tokens", "lm_head"]);
  });
});

describe("layers_to_transform", () => {
  it("does not filter modules named in full, and an empty list filters nothing, as in PEFT", async () => {
    const hf = await hfExport(await withBase());
    const plain = await merged(new MemoryFolder(hf, "adapter"));
    for (const layers of [[0], []]) {
      const limited = variant({ config: (c) => { c["layers_to_transform"] = layers; } }, hf);
      expect(compareTensors(await merged(limited), plain), JSON.stringify(layers)).toEqual([]);
    }
  });

  it("limits suffixes to the layers listed, reading the layer number as PEFT does", async () => {
    const hf = await hfExport(await withBase());
    const bySuffix = variant({
      config: (c) => {
        c["target_modules"] = (c["target_modules"] as string[]).map((m) => (m.endsWith(".q_proj") ? "q_proj" : m));
        c["layers_to_transform"] = [0];
      },
    }, hf);
    await refused(
      mergeError(bySuffix),
      FormatError,
      `${T(`${PEFT}language_model.backbone.layers.2.mixer.q_proj.lora_A.weight`)}its module language_model.backbone.layers.2.mixer.q_proj is not among ${C}'s target_modules, so PEFT would not load it`,
    );
    const layer2 = variant({ config: (c) => { c["target_modules"] = (c["target_modules"] as string[]).map((m) => (m.endsWith(".q_proj") ? "q_proj" : m)); c["layers_to_transform"] = 2; } }, hf);
    expect(compareTensors(await merged(layer2), await merged(new MemoryFolder(hf, "adapter")))).toEqual([]);
  });
});

describe('"all-linear"', () => {
  it("covers no embedding, so LoRA on one is a tensor PEFT would not place", async () => {
    const hf = variant({
      tensors: (t) => {
        t.set(`${PEFT}language_model.backbone.embeddings.lora_A.weight`, zeros([4, 16]));
        t.set(`${PEFT}language_model.backbone.embeddings.lora_B.weight`, zeros([64, 4]));
      },
      config: (c) => { c["target_modules"] = "all-linear"; },
    }, await hfExport(await withBase()));
    await refused(
      mergeError(hf),
      FormatError,
      `${T(`${PEFT}language_model.backbone.embeddings.lora_A.weight`)}its module language_model.backbone.embeddings is not among ${C}'s target_modules, so PEFT would not load it`,
    );
  });
});

describe("the merged HF checkpoint", () => {
  it("holds the routing bias in float32 even when the base held it in bf16, as convert --to hf writes it", async () => {
    const bf16Bias = baseVariant({
      tensors: (t) => {
        for (const [k, v] of t) if (k.endsWith("e_score_correction_bias")) t.set(k, castTensor(v, "BF16"));
      },
    });
    const out = await merged(adapterDir(), bf16Bias);
    const bias = "language_model.backbone.layers.1.mixer.gate.e_score_correction_bias";
    expect(out.get(bias)!.dtype).toBe("F32");
    const original = tensorsOf(files(BASE).get("model.safetensors")!).get(bias)!;
    const widened = castTensor(castTensor(original, "BF16"), "F32");
    expect(compareTensors(new Map([[bias, out.get(bias)!]]), new Map([[bias, widened]]))).toEqual([]);
  });
});

describe("refusals", () => {
  it("LoRA weights that are not BF16, F16 or F32", async () => {
    const key = `${LM}.0.mixer.in_proj.lora_A.weight`;
    const int8 = variant({ tensors: (t) => { t.set(key, { dtype: "I8", shape: [4, 16], data: new Uint8Array(64) }); } });
    const message = `${T(key)}is I8; LoRA weights must be BF16, F16 or F32 (a quantized or integer adapter cannot be exported or merged)`;
    await refused(exportError(int8), FormatError, message);
    await refused(mergeError(int8), FormatError, message);
  });

  it("--experts drop of an adapter that holds nothing but routed-expert LoRA", async () => {
    const expertsOnly = variant({ tensors: (t) => { for (const k of [...t.keys()]) if (!k.includes(".mixer.experts.lora_")) t.delete(k); } });
    await refused(
      exportError(expertsOnly, { experts: "drop" }),
      InputError,
      `${W}: every one of its 16 LoRA modules is a routed expert's, so --experts drop would leave an adapter with nothing in it, which PEFT cannot load; serve the merged model instead (lora merge)`,
    );
  });
});
