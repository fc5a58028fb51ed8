import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NemotronOmniStateDictAdapter } from "../../src/adapters/nemotron-omni.js";
import { convertFolder, prepareConversion } from "../../src/convert/convert.js";
import { checkConsistency } from "../../src/convert/consistency.js";
import { verifyRoundTrip } from "../../src/convert/verify.js";
import { parseModelConfig } from "../../src/adapters/config.js";
import { MemoryFolder } from "../../src/io/folder.js";
import { MemoryOutput } from "../../src/io/output.js";
import { inspectCheckpoint } from "../../src/node/checks.js";
import { convertCheckpoint } from "../../src/node/convert.js";
import { synthesize } from "../../src/node/synth.js";
import { parseConfigText } from "../../src/safetensors/checkpoint.js";
import { serialize } from "../../src/safetensors/encode.js";
import type { Tensor } from "../../src/tensor/tensor.js";
import { runCli, tempDir } from "../helpers/cli.js";
import { loadAll, openCheckpoint } from "../helpers/fixtures.js";
import { dequantizedBf16 } from "../helpers/quant-oracle.js";

/** config.json as Python writes it (with `Infinity`), parsed as the tool parses it. */
const readConfig = (folder: string): Record<string, unknown> => parseConfigText(fs.readFileSync(path.join(folder, "config.json"), "utf8"), "config.json").values;

const work = tempDir();
const dir = (name: string): string => path.join(work, name);
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));
beforeAll(async () => {
  await synthesize(dir("bf16"), { preset: "tiny" });
  await synthesize(dir("fp8"), { preset: "tiny", quant: "fp8" });
  await synthesize(dir("nvfp4"), { preset: "tiny", quant: "nvfp4" });
  // small's Mamba in_proj is 200 rows: two 128-row blocks, the second ragged.
  await synthesize(dir("block"), { preset: "small", quant: "fp8-block" });
  await synthesize(dir("small-bf16"), { preset: "small" });
});

/** The quantized weights of a checkpoint as the tests see them: F8 tensors (not scales), in file order. */
async function fp8Weights(location: string): Promise<string[]> {
  const ckpt = await openCheckpoint(location);
  try {
    return [...ckpt.tensors.values()].filter((t) => t.dtype === "F8_E4M3" && !t.name.endsWith("_scale")).map((t) => t.name);
  } finally {
    ckpt.close();
  }
}

const f32At = (t: Tensor, i: number): number => new DataView(t.data.buffer, t.data.byteOffset).getFloat32(4 * i, true);

/**
 * The bf16 bits PyTorch's `(w.to(float32) * scale).to(bfloat16)` gives for a quantized weight of an input
 * checkpoint, from the independent model: the scale's layout read from its shape (scalar, per row, blocks).
 */
function expectedBf16(input: ReadonlyMap<string, Tensor>, name: string): Uint16Array {
  const w = input.get(name)!;
  const inv = input.get(`${name}_scale_inv`);
  const s = inv ?? input.get(`${name}_scale`)!;
  const [rows, cols] = w.shape as [number, number];
  const n = s.data.byteLength / 4;
  const out = new Uint16Array(rows * cols);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      const k = n === 1 ? 0 : inv ? Math.floor(i / 128) * Math.ceil(cols / 128) + Math.floor(j / 128) : i;
      out[i * cols + j] = dequantizedBf16(w.data[i * cols + j]!, "F8_E4M3", f32At(s, k));
    }
  }
  return out;
}

const bits16 = (t: Tensor): Uint16Array => new Uint16Array(t.data.buffer.slice(t.data.byteOffset, t.data.byteOffset + t.data.byteLength));
const isExtra = (name: string): boolean => /\.(?:weight_scale|weight_scale_inv|weight_scale_2|input_scale|k_scale|v_scale)$/.test(name);

/** One line on stderr, exit 2, exactly this message. */
function expectRefusal(args: string[], message: string): void {
  const r = runCli(args);
  expect(r.stderr).toBe(`omni-ckpt: error: ${message}\n`);
  expect(r.code).toBe(2);
}

describe("quantized checkpoints are refused unless dequantized", () => {
  it("convert and verify refuse ModelOpt FP8 and block FP8, naming the scheme and the first quantized tensor", async () => {
    for (const [name, scheme] of [["fp8", "ModelOpt FP8"], ["block", "block FP8"]] as const) {
      const weights = await fp8Weights(dir(name));
      const message =
        `${dir(name)}: is quantized (${scheme}: ${weights.length} F8_E4M3 weights, first ${weights[0]}); ` +
        "converted as is, its FP8 codes would be taken for values: use convert --dequantize to write bf16 weights";
      expectRefusal(["convert", "--to", "native", dir(name), dir(`${name}-out`)], message);
      expectRefusal(["convert", "--to", "hf", dir(name), dir(`${name}-out`)], message);
      expectRefusal(["verify", dir(name)], message);
      expect(fs.existsSync(dir(`${name}-out`))).toBe(false);
    }
  });

  it("NVFP4 is refused as NVFP4 and not supported, with or without --dequantize", async () => {
    const ckpt = await openCheckpoint(dir("nvfp4"));
    const packed = [...ckpt.tensors.values()].filter((t) => t.dtype === "U8").map((t) => t.name);
    ckpt.close();
    const message = `${dir("nvfp4")}: is quantized as NVFP4 (${packed.length} NVFP4 weights, first ${packed[0]}), which omni-ckpt does not support; convert the BF16 release instead`;
    expectRefusal(["convert", "--to", "native", dir("nvfp4"), dir("nvfp4-out")], message);
    expectRefusal(["convert", "--dequantize", "--to", "native", dir("nvfp4"), dir("nvfp4-out")], message);
    expectRefusal(["verify", dir("nvfp4")], message);
  });

  it("the library's whole-checkpoint calls refuse too; the in-memory adapters stay the reference's", async () => {
    const weights = await fp8Weights(dir("fp8"));
    const message = `${dir("fp8")}: is quantized (ModelOpt FP8: ${weights.length} F8_E4M3 weights, first ${weights[0]}); converted as is, its FP8 codes would be taken for values: use convert --dequantize to write bf16 weights`;
    const ckpt = await openCheckpoint(dir("fp8"));
    try {
      await expect(prepareConversion(ckpt, { to: "native" })).rejects.toThrow(message);
      await expect(verifyRoundTrip(ckpt)).rejects.toThrow(message);
    } finally {
      ckpt.close();
    }
    const files = new Map<string, Uint8Array>();
    for (const f of fs.readdirSync(dir("fp8"))) files.set(f, new Uint8Array(fs.readFileSync(path.join(dir("fp8"), f))));
    const memory = new MemoryFolder(files, "fp8-in-memory");
    await expect(convertFolder(memory, new MemoryOutput(), { to: "native" })).rejects.toThrow(message.replace(dir("fp8"), "fp8-in-memory"));

    // fromHf is the reference's API: it neither refuses nor dequantizes (and drops `_scale_inv`, as it does).
    const config = readConfig(dir("block"));
    const native = new NemotronOmniStateDictAdapter(config).fromHf(loadAll(dir("block")));
    expect([...native.keys()].filter((k) => k.endsWith("_scale_inv"))).toEqual([]);
    expect(native.get("language_model.model.layers.0.mixer.in_proj.weight")!.dtype).toBe("F8_E4M3");
    // Its expert merge casts the codes to bf16 as if they were values (the known defect SPEC §7 describes).
    expect(native.get("language_model.model.layers.1.mixer.experts.gate_and_up_projs")!.dtype).toBe("BF16");
  });

  it("synth --quant takes only the schemes it writes", () => {
    expectRefusal(["synth", dir("nope"), "--quant", "int4"], '--quant must be one of fp8, fp8-block, nvfp4, got "int4"');
  });

  it("--base refuses a quantized release", async () => {
    const weights = await fp8Weights(dir("fp8"));
    expect(runCli(["convert", "--to", "native", "-q", dir("bf16"), dir("bf16-native")]).code).toBe(0);
    expectRefusal(
      ["convert", "--to", "hf", "--base", dir("fp8"), dir("bf16-native"), dir("bf16-export")],
      `${dir("fp8")}: is quantized (ModelOpt FP8: ${weights.length} F8_E4M3 weights, first ${weights[0]}); --base needs the release in bf16, as the export is written in its dtypes`,
    );
  });

  it("--dequantize of a checkpoint that is not quantized is a usage error", () => {
    expectRefusal(["convert", "--dequantize", "--to", "native", dir("bf16"), dir("bf16-out")], `--dequantize given, but ${dir("bf16")} is not quantized`);
  });
});

describe("convert --dequantize", () => {
  it("--to hf writes every FP8 weight as PyTorch's bf16 of f32(w) × scale, every other tensor unchanged, and no scale, quantization_config or hf_quant_config.json", () => {
    const out = dir("fp8-hf");
    const r = runCli(["convert", "--dequantize", "--to", "hf", dir("fp8"), out]);
    expect(r.code).toBe(0);
    const input = loadAll(dir("fp8"));
    const extras = [...input.keys()].filter(isExtra);
    const weights = [...input].filter(([n, t]) => t.dtype === "F8_E4M3" && !n.endsWith("_scale")).map(([n]) => n);
    expect(r.stderr).toBe(
      `omni-ckpt: dequantized ${weights.length} ModelOpt FP8 weights to bf16; left out ${extras.length} quantization tensors (scales, input_scale, k_scale/v_scale), ` +
        "config.json quantization_config (every other field kept as written), hf_quant_config.json\n",
    );
    const output = loadAll(out);
    expect([...output.keys()].sort()).toEqual([...input.keys()].filter((n) => !isExtra(n)).sort());
    for (const [name, t] of output) {
      if (weights.includes(name)) {
        expect(t.dtype).toBe("BF16");
        expect(t.shape).toEqual(input.get(name)!.shape);
        expect(bits16(t), name).toEqual(expectedBf16(input, name));
      } else expect(t, name).toEqual(input.get(name));
    }
    // The config is the bf16 checkpoint's, byte for byte: only quantization_config was taken out of the text.
    expect(fs.readFileSync(path.join(out, "config.json"), "utf8")).toBe(fs.readFileSync(path.join(dir("bf16"), "config.json"), "utf8"));
    expect(fs.readdirSync(out).sort()).toEqual(fs.readdirSync(dir("bf16")).sort());
  });

  it("--to native groups dequantized experts (block FP8 with ragged blocks) bit for bit, and the result verifies", () => {
    const out = dir("block-native");
    expect(runCli(["convert", "--dequantize", "--to", "native", "-q", dir("block"), out]).code).toBe(0);
    const input = loadAll(dir("block"));
    const output = loadAll(out);
    const inProj = "language_model.backbone.layers.0.mixer.in_proj.weight";
    expect(input.get(inProj)!.shape[0]! % 128).not.toBe(0);
    expect(bits16(output.get("language_model.model.layers.0.mixer.in_proj.weight")!)).toEqual(expectedBf16(input, inProj));
    const grouped = output.get("language_model.model.layers.1.mixer.experts.gate_and_up_projs")!;
    const [E, H, I] = grouped.shape as [number, number, number];
    const got = bits16(grouped);
    for (let e = 0; e < E; e++) {
      const up = expectedBf16(input, `language_model.backbone.layers.1.mixer.experts.${e}.up_proj.weight`);
      for (let h = 0; h < H; h++) for (let i = 0; i < I; i++) if (got[(e * H + h) * I + i] !== up[i * H + h]) throw new Error(`expert ${e} [${h}, ${i}] differs`);
    }
    // The same names, shapes and dtypes as the bf16 checkpoint's conversion.
    expect(runCli(["convert", "--to", "native", "-q", dir("small-bf16"), dir("small-native")]).code).toBe(0);
    const plain = loadAll(dir("small-native"));
    expect([...output].map(([n, t]) => [n, t.dtype, t.shape])).toEqual([...plain].map(([n, t]) => [n, t.dtype, t.shape]));
    const v = runCli(["verify", out]);
    expect(v.stdout).toMatch(/bit-exact round trip/);
    expect(v.code).toBe(0);
  });

  it("--dtype f32 widens the dequantized bf16 values of the experts", async () => {
    const bf = dir("fp8-native");
    const f32 = dir("fp8-native-f32");
    await convertCheckpoint({ src: dir("fp8"), dst: bf, to: "native", dequantize: true });
    await convertCheckpoint({ src: dir("fp8"), dst: f32, to: "native", dequantize: true, dtype: "f32" });
    const a = loadAll(bf);
    const b = loadAll(f32);
    const key = "language_model.model.layers.1.mixer.experts.down_projs";
    expect(b.get(key)!.dtype).toBe("F32");
    const wide = new Uint32Array(b.get(key)!.data.buffer.slice(0));
    expect([...wide]).toEqual([...bits16(a.get(key)!)].map((h) => (h << 16) >>> 0));
  });

  it("per-row ModelOpt scales ([out] and [out, 1]) apply row by row", () => {
    const rowwise = dir("fp8-rows");
    fs.cpSync(dir("fp8"), rowwise, { recursive: true });
    const input = loadAll(rowwise);
    let k = 0;
    for (const [name, t] of [...input]) {
      if (!name.endsWith(".weight_scale") || t.dtype !== "F32") continue;
      const rows = input.get(name.slice(0, -"_scale".length))!.shape[0]!;
      const values = Float32Array.from({ length: rows }, (_, i) => Math.fround(2 ** -8 * (1 + i / rows)));
      input.set(name, { dtype: "F32", shape: k++ % 2 === 0 ? [rows] : [rows, 1], data: new Uint8Array(values.buffer) });
    }
    fs.writeFileSync(path.join(rowwise, "model.safetensors"), serialize(input));
    const out = dir("fp8-rows-hf");
    expect(runCli(["convert", "--dequantize", "--to", "hf", "-q", rowwise, out]).code).toBe(0);
    const output = loadAll(out);
    for (const name of [...input.keys()].filter((n) => input.get(n)!.dtype === "F8_E4M3" && !n.endsWith("_scale"))) {
      expect(bits16(output.get(name)!), name).toEqual(expectedBf16(input, name));
    }
  });
});

describe("inspect of quantized checkpoints", () => {
  it("names the scheme, how many weights are quantized, how they are scaled and where, and what --dequantize would write", async () => {
    const report = await inspectCheckpoint(dir("fp8"));
    const weights = await fp8Weights(dir("fp8"));
    const input = loadAll(dir("fp8"));
    expect(report.quantization!.schemes).toEqual([
      { scheme: "modelopt-fp8", name: "ModelOpt FP8", weights: weights.length, dtypes: { F8_E4M3: weights.length }, scales: { tensor: weights.length }, components: { "language model": weights.length }, first: weights[0] },
    ]);
    expect(Object.values(report.quantization!.extras).reduce((a, b) => a + b!, 0)).toBe([...input.keys()].filter(isExtra).length);
    expect(report.quantization!.declarations).toEqual([
      { where: "config.json quantization_config", method: "modelopt", algo: "FP8" },
      { where: "hf_quant_config.json", method: "modelopt", algo: "FP8" },
    ]);
    const plain = await inspectCheckpoint(dir("bf16"));
    expect(report.convert).toEqual({ ...plain.convert, dequantize: true });
  });

  it("describes NVFP4 (its packed [out, in/2] weights agree with the config) and says why it cannot be converted", async () => {
    const report = await inspectCheckpoint(dir("nvfp4"));
    const q = report.quantization!;
    expect(q.schemes.map((s) => s.name)).toEqual(["ModelOpt FP8", "NVFP4"]);
    expect(q.dequantizable).toBe(false);
    expect(report.convert).toMatchObject({ to: "native", error: expect.stringMatching(/is quantized as NVFP4 .*which omni-ckpt does not support/) });
    const ckpt = await openCheckpoint(dir("nvfp4"));
    const config = parseModelConfig(readConfig(dir("nvfp4")));
    expect(checkConsistency(config, "hf", ckpt.tensors).problems).toEqual([]);
    ckpt.close();
    const text = runCli(["inspect", dir("nvfp4")]).stdout;
    expect(text).toMatch(/^quantized: ModelOpt FP8 and NVFP4 \(config\.json quantization_config: modelopt MIXED_PRECISION; hf_quant_config\.json: modelopt MIXED_PRECISION\)$/m);
    expect(text).toMatch(/^convert --dequantize cannot read it: \d+ weights are NVFP4/m);
  });

  it("counts the parameters of the model the weights stand for: NVFP4's two per byte, no scale", async () => {
    const plain = await inspectCheckpoint(dir("bf16"));
    for (const q of ["fp8", "nvfp4", "block"]) {
      const report = await inspectCheckpoint(dir(q));
      const like = q === "block" ? await inspectCheckpoint(dir("small-bf16")) : plain;
      expect(report.params, q).toBe(like.params);
      expect(report.components.map((c) => [c.component, c.params]), q).toEqual(like.components.map((c) => [c.component, c.params]));
      expect(report.tensors, q).toBeGreaterThan(like.tensors);
      // A lone shard, with no config beside it, counts the same.
      if (q !== "block") expect((await inspectCheckpoint(path.join(dir(q), "model.safetensors"))).params, `${q} file`).toBe(like.params);
    }
  });
});
