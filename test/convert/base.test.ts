import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RELEASE_BUFFERS } from "../../src/convert/base.js";
import { convertFolder } from "../../src/convert/convert.js";
import { MemoryFolder } from "../../src/io/folder.js";
import { MemoryOutput } from "../../src/io/output.js";
import { convertCheckpoint } from "../../src/node/convert.js";
import { synthesize } from "../../src/node/synth.js";
import { serialize } from "../../src/safetensors/encode.js";
import { castInto } from "../../src/tensor/cast.js";
import type { Tensor } from "../../src/tensor/tensor.js";
import { runCli, tempDir } from "../helpers/cli.js";
import { loadAll, openSafetensors } from "../helpers/fixtures.js";

const work = tempDir();
const dir = (name: string): string => path.join(work, name);
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

/** The native names of the release's static buffers, which a model trained in Automodel does not hold. */
const NATIVE_BUFFERS = RELEASE_BUFFERS.map((n) => n.replace(/^sound_encoder\.encoder\./, "sound_encoder."));

function f32(shape: number[], seed: number): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  return { dtype: "F32", shape, data: new Uint8Array(Float32Array.from({ length: n }, (_, i) => Math.fround(Math.sin(seed + i))).buffer) };
}

function narrow(t: Tensor): Tensor {
  const data = new Uint8Array(t.data.byteLength / 2);
  castInto(t.data, "F32", data, "BF16", t.data.byteLength / 4);
  return { dtype: "BF16", shape: t.shape, data };
}

function widen(t: Tensor): Tensor {
  const data = new Uint8Array(t.data.byteLength * 2);
  castInto(t.data, "BF16", data, "F32", t.data.byteLength / 2);
  return { dtype: "F32", shape: t.shape, data };
}

/** Write tensors as shards of our own choosing (not by size): `files` maps each shard to its tensors. */
function writeShards(folder: string, files: Map<string, Map<string, Tensor>>): void {
  const weightMap: Record<string, string> = {};
  let total = 0;
  for (const [file, tensors] of files) {
    fs.writeFileSync(path.join(folder, file), serialize(tensors));
    for (const [name, t] of tensors) {
      weightMap[name] = file;
      total += t.data.byteLength;
    }
  }
  fs.writeFileSync(path.join(folder, "model.safetensors.index.json"), JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2));
}

function writeSingle(folder: string, tensors: Map<string, Tensor>): void {
  for (const f of fs.readdirSync(folder)) if (f.endsWith(".safetensors") || f.endsWith(".index.json")) fs.rmSync(path.join(folder, f));
  fs.writeFileSync(path.join(folder, "model.safetensors"), serialize(tensors));
}

const release = dir("release");
const trained = dir("trained");
/** Tensors the trained checkpoint holds in another dtype than the release: native name → release dtype. */
const drifted = new Map<string, string>();

beforeAll(async () => {
  // A release with all four static buffers, in three shards assigned by component (not by size), named
  // as the release would name them.
  await synthesize(dir("synth"), { preset: "tiny" });
  const all = loadAll(dir("synth"));
  all.set(RELEASE_BUFFERS[0]!, f32([1, 8, 17], 1));
  all.set(RELEASE_BUFFERS[1]!, f32([40], 2));
  fs.cpSync(dir("synth"), release, { recursive: true });
  fs.rmSync(path.join(release, "model.safetensors"));
  const shard = (name: string): string => (name.startsWith("language_model.") ? "model-00002-of-00003.safetensors" : name.startsWith("vision_model.") ? "model-00001-of-00003.safetensors" : "model-00003-of-00003.safetensors");
  const files = new Map<string, Map<string, Tensor>>();
  for (const [name, t] of all) {
    const f = shard(name);
    files.set(f, (files.get(f) ?? new Map()).set(name, t));
  }
  writeShards(release, files);

  // What training in NeMo Automodel leaves: no static buffers, Mamba parameters and routing biases in bf16,
  // and (trained in float32) the experts of one layer in float32.
  await convertCheckpoint({ src: release, dst: dir("native"), to: "native" });
  const native = loadAll(dir("native"));
  for (const n of NATIVE_BUFFERS) expect(native.delete(n)).toBe(true);
  for (const [name, t] of [...native]) {
    if (t.dtype === "F32" && /(?:_fp32_params\.(?:A_log|D|dt_bias)|e_score_correction_bias)$/.test(name)) {
      native.set(name, narrow(t));
      drifted.set(name, "F32");
    }
    if (name === "language_model.model.layers.1.mixer.experts.down_projs") {
      native.set(name, widen(t));
      drifted.set(name, "BF16");
    }
  }
  fs.cpSync(dir("native"), trained, { recursive: true });
  writeSingle(trained, native);
});

describe("convert --to hf --base RELEASE", () => {
  it("fills exactly the four static buffers from the release, restores its dtypes and follows its shards", () => {
    const out = dir("export");
    const r = runCli(["convert", "--to", "hf", "--base", release, trained, out]);
    expect(r.code).toBe(0);
    const rel = loadAll(release);
    const exported = loadAll(out);
    const nF32 = [...drifted.values()].filter((d) => d === "F32").length;
    // The experts of one layer split into 2 per expert: each written as bfloat16.
    const nBf16 = [...rel.keys()].filter((n) => /^language_model\.backbone\.layers\.1\.mixer\.experts\.\d+\.down_proj\.weight$/.test(n)).length;
    expect(r.stdout.split("\n")[0]).toBe(`${rel.size} of ${rel.size} release tensors present, 4 taken from the release, ${nF32} written as float32, ${nBf16} written as bfloat16`);

    // Same names, dtypes and shapes as the release; the buffers byte for byte.
    expect([...exported].map(([n, t]) => [n, t.dtype, t.shape]).sort()).toEqual([...rel].map(([n, t]) => [n, t.dtype, t.shape]).sort());
    for (const n of RELEASE_BUFFERS) expect(exported.get(n), n).toEqual(rel.get(n));
    // Widened exactly (the bf16 values training left, in float32) and narrowed to nearest even (the float32
    // experts, which hold bf16 values, come back as the release's); everything else as the release's.
    const restored = [...rel.keys()].filter((n) => /(?:mixer\.(?:A_log|D|dt_bias)|e_score_correction_bias)$/.test(n));
    expect(restored.length).toBe(nF32);
    for (const [name, t] of rel) {
      expect(exported.get(name), name).toEqual(restored.includes(name) ? widen(narrow(t)) : t);
    }

    // The release's shard files, each holding the release's tensors in the release's order.
    const shards = fs.readdirSync(release).filter((f) => f.endsWith(".safetensors")).sort();
    expect(fs.readdirSync(out).filter((f) => f.endsWith(".safetensors")).sort()).toEqual(shards);
    for (const f of shards) {
      const a = openSafetensors(path.join(release, f));
      const b = openSafetensors(path.join(out, f));
      expect([...b.tensors.keys()]).toEqual([...a.tensors.keys()]);
      a.close();
      b.close();
    }
    expect(JSON.parse(fs.readFileSync(path.join(out, "model.safetensors.index.json"), "utf8")).weight_map).toEqual(
      JSON.parse(fs.readFileSync(path.join(release, "model.safetensors.index.json"), "utf8")).weight_map,
    );
    // config.json and the other files come from SRC.
    expect(fs.readFileSync(path.join(out, "config.json"))).toEqual(fs.readFileSync(path.join(trained, "config.json")));
  });

  it("takes an HF export of the trained model too (consolidate's output is one), to the same result", () => {
    const viaNative = dir("export-via-native");
    expect(runCli(["convert", "--to", "hf", "--base", release, trained, viaNative]).code).toBe(0);
    const short = dir("trained-hf");
    expect(runCli(["convert", "--to", "hf", trained, short]).code).toBe(0);
    expect(loadAll(short).size).toBe(loadAll(release).size - 4);
    const out = dir("export-from-hf");
    const r = runCli(["convert", "--to", "hf", "--base", release, short, out]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout.split("\n")[0]).toMatch(/^\d+ of \d+ release tensors present, 4 taken from the release, /);
    expect(r.stdout).toContain("converted HF → HF: ");
    const a = loadAll(viaNative);
    const b = loadAll(out);
    expect([...b.keys()].sort()).toEqual([...a.keys()].sort());
    for (const [name, t] of a) expect(b.get(name), name).toEqual(t);
    expect(fs.readdirSync(out).filter((f) => f.endsWith(".safetensors")).sort()).toEqual(fs.readdirSync(release).filter((f) => f.endsWith(".safetensors")).sort());
    // What only a native source's conversion does is refused, not ignored.
    const v4 = runCli(["convert", "--to", "hf", "--base", release, "--v4-compatible", short, dir("export-v4")]);
    expect(v4.stderr).toBe(`omni-ckpt: error: --v4-compatible applies to a native source; ${short} is already in the HF layout\n`);
    expect(v4.code).toBe(2);
  });

  it("works on any folder and output through the core's convertFolder", async () => {
    const memory = (folder: string, name: string): MemoryFolder =>
      new MemoryFolder(fs.readdirSync(folder).map((f) => [f, new Uint8Array(fs.readFileSync(path.join(folder, f)))] as [string, Uint8Array]), name);
    const out = new MemoryOutput();
    const summary = await convertFolder(memory(trained, "trained"), out, { to: "hf", base: memory(release, "release") });
    expect([...summary.base!.taken].sort()).toEqual([...RELEASE_BUFFERS].sort());
    for (const f of fs.readdirSync(release).filter((f) => f.endsWith(".safetensors"))) {
      expect(out.files.get(f), f).toEqual(new Uint8Array(fs.readFileSync(path.join(dir("export"), f))));
    }
    await expect(convertFolder(memory(trained, "trained"), new MemoryOutput(), { to: "hf", base: memory(release, "release"), maxShardSize: 1e9 })).rejects.toThrow(
      "--max-shard-size cannot be used with --base: the output's shards are the release's",
    );
  });

  it("--json reports the audit", () => {
    const r = runCli(["convert", "--to", "hf", "--base", release, "--json", trained, dir("export-json")]);
    expect(r.code).toBe(0);
    const s = JSON.parse(r.stdout) as { base: { release: string; releaseTensors: number; present: number; taken: string[]; retyped: Record<string, number>; files: string[] } };
    expect(s.base.release).toBe(release);
    expect(s.base.present).toBe(s.base.releaseTensors);
    expect([...s.base.taken].sort()).toEqual([...RELEASE_BUFFERS].sort());
    expect(s.base.files).toEqual(["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"]);
  });

  it("refuses, before writing anything, a checkpoint that lacks a trained weight, has one the release lacks, or one of another shape", () => {
    const native = loadAll(trained);
    const cases: [string, (m: Map<string, Tensor>) => void, string][] = [
      [
        "lacks",
        (m) => m.delete("language_model.model.layers.0.mixer.in_proj.weight"),
        "the export lacks 1 tensor of the release (first: language_model.backbone.layers.0.mixer.in_proj.weight); only the release's static buffers (fb, window, norm_mean, norm_std) are ever taken from it, never a trained weight",
      ],
      ["extra", (m) => m.set("language_model.model.layers.0.mixer.extra.weight", f32([2], 3)), "the export has 1 tensor the release does not (first: language_model.backbone.layers.0.mixer.extra.weight)"],
      [
        "shape",
        (m) => m.set("language_model.model.norm.weight", f32([3], 4)),
        `1 tensor of another shape (first: language_model.backbone.norm_f.weight is [3] in the export, [${loadAll(release).get("language_model.backbone.norm_f.weight")!.shape.join(", ")}] in the release)`,
      ],
    ];
    for (const [name, change, why] of cases) {
      const src = dir(`trained-${name}`);
      fs.cpSync(trained, src, { recursive: true });
      const m = new Map(native);
      change(m);
      writeSingle(src, m);
      const r = runCli(["convert", "--to", "hf", "--base", release, src, dir(`out-${name}`)]);
      expect(r.stderr).toBe(`omni-ckpt: error: ${src}: does not match the release ${release}: ${why}\n`);
      expect(r.code).toBe(2);
      expect(fs.existsSync(dir(`out-${name}`))).toBe(false);
      expect(fs.readdirSync(work).filter((f) => f.includes(`out-${name}`))).toEqual([]);
    }
  });

  it("refuses --max-shard-size with --base, --base to native, and a release that is not an HF checkpoint", () => {
    const expectUsage = (args: string[], message: string): void => {
      const r = runCli(args);
      expect(r.stderr).toBe(`omni-ckpt: error: ${message}\n`);
      expect(r.code).toBe(2);
    };
    expectUsage(["convert", "--to", "hf", "--base", release, "--max-shard-size", "5GB", trained, dir("x")], "--max-shard-size cannot be used with --base: the output's shards are the release's");
    expectUsage(["convert", "--to", "native", "--base", release, release, dir("x")], "--base applies only to --to hf");
    expectUsage(["convert", "--to", "hf", "--base", trained, trained, dir("x")], `${trained}: --base needs the release in the Hugging Face (HF) layout, but it is native`);
  });

  it("never writes over or into the release it exports against", () => {
    const before = fs.readdirSync(release).sort();
    const stat = fs.statSync(path.join(release, "config.json"));
    for (const [args, message] of [
      [["--force", release], `destination ${release} is the source itself; choose another`],
      [[path.join(release, "out")], `destination ${path.join(release, "out")} is inside the source folder; choose another`],
    ] as const) {
      const r = runCli(["convert", "--to", "hf", "--base", release, trained, ...args]);
      expect(r.stderr).toBe(`omni-ckpt: error: ${message}\n`);
      expect(r.code).toBe(2);
    }
    expect(fs.readdirSync(release).sort()).toEqual(before);
    expect(fs.statSync(path.join(release, "config.json")).mtimeMs).toBe(stat.mtimeMs);
  });
});
