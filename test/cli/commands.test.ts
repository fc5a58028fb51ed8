import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openSafetensors, rewriteConfig } from "../helpers/fixtures.js";
import { serialize } from "../../src/safetensors/encode.js";
import type { Tensor } from "../../src/tensor/tensor.js";
import { runCli, snapshot, startCli, tempDir } from "../helpers/cli.js";

const work = tempDir();
const hf = path.join(work, "hf");
const native = path.join(work, "native");
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

beforeAll(() => {
  expect(runCli(["synth", hf, "--preset", "tiny", "--max-shard-size", "10KB"]).code).toBe(0);
  fs.mkdirSync(path.join(hf, "extra"));
  fs.writeFileSync(path.join(hf, "extra", "processor_config.json"), '{"p": 1}\n');
  fs.writeFileSync(path.join(hf, "modeling_custom.py"), "# custom code\n");
  fs.writeFileSync(path.join(hf, "chat_template.jinja"), "{{ messages }}\n");
  expect(runCli(["convert", "--to", "native", "--quiet", hf, native]).code).toBe(0);
});

/** One line on stderr, no stack trace, the given exit code. */
function expectCleanError(r: { code: number | null; stderr: string; stdout: string }, code: number, pattern: RegExp): void {
  expect(r.code).toBe(code);
  const lines = r.stderr.trimEnd().split("\n");
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatch(/^omni-ckpt: /);
  expect(lines[0]).toMatch(pattern);
  expect(r.stderr).not.toMatch(/\n\s+at /);
}

describe("synth and inspect", () => {
  it("synth is deterministic per seed and differs across seeds", () => {
    const a = path.join(work, "seed-a");
    const b = path.join(work, "seed-b");
    const c = path.join(work, "seed-c");
    expect(runCli(["synth", a, "--seed", "7"]).code).toBe(0);
    expect(runCli(["synth", b, "--seed", "7"]).code).toBe(0);
    expect(runCli(["synth", c, "--seed", "8"]).code).toBe(0);
    expect(fs.readFileSync(path.join(a, "model.safetensors"))).toEqual(fs.readFileSync(path.join(b, "model.safetensors")));
    expect(fs.readFileSync(path.join(a, "model.safetensors"))).not.toEqual(fs.readFileSync(path.join(c, "model.safetensors")));
  });

  it("inspect reports layout, components, model shape and the conversion, from headers", () => {
    const r = runCli(["inspect", "--json", hf]);
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout) as {
      layout: string;
      tensors: number;
      components: { component: string; tensors: number; dtypes: Record<string, number> }[];
      model: { layers: number; pattern: string; experts: number; expertWidth: number };
      convert: { to: string; tensors: number };
    };
    expect(report.layout).toBe("hf");
    expect(report.components.map((c) => c.component)).toEqual([
      "vision encoder",
      "vision projector",
      "sound encoder",
      "sound projection",
      "language model",
    ]);
    expect(report.components.find((c) => c.component === "sound encoder")!.dtypes["I64"]).toBe(1);
    expect(report.model).toMatchObject({ layers: 5, pattern: "ME*ME", experts: 4, expertWidth: 12 });
    expect(report.convert.to).toBe("native");
    expect(report.convert.tensors).toBe(fs.existsSync(native) ? JSON.parse(runCli(["inspect", "--json", native]).stdout).tensors : -1);
    const text = runCli(["inspect", native]).stdout;
    expect(text).toMatch(/native \(NeMo Automodel\) layout/);
    expect(text).toMatch(/layer pattern: ME\*ME/);
    expect(text).toMatch(/convert --to hf would write \d+ HF tensors/);
  });

  it("inspect tells an expert-parallel slice", () => {
    const slice = path.join(work, "ep-slice");
    expect(runCli(["convert", "--to", "native", "--ep-rank", "0", "--ep-size", "2", "-q", hf, slice]).code).toBe(0);
    const report = JSON.parse(runCli(["inspect", "--json", slice]).stdout) as { epSlice: { experts: number; of: number }; convert: { error: string } };
    expect(report.epSlice).toEqual({ experts: 2, of: 4 });
    expect(report.convert.error).toMatch(/holds 2 experts on axis 0 but the config has 4 \(an expert-parallel slice/);
  });
});

describe("convert: what users see", () => {
  it("copies every other file, sub-folders included, and prints one summary line", () => {
    const dst = path.join(work, "summary");
    const r = runCli(["convert", "--to", "native", hf, dst]);
    expect(r.code).toBe(0);
    expect(r.stderr).toBe("");
    // The synthetic release's 19 other files (config, code, processor, tokenizer, template) and the 2 added here.
    expect(r.stdout).toMatch(/^converted HF → native: \d+ → \d+ tensors, .* in 1 file \+ 21 other files, .* → /);
    for (const f of ["config.json", "tokenizer_config.json", "generation_config.json", "extra/processor_config.json", "modeling_custom.py", "chat_template.jinja", "modeling.py"]) {
      expect(fs.readFileSync(path.join(dst, f))).toEqual(fs.readFileSync(path.join(hf, f)));
    }
    expect(fs.readdirSync(work).filter((n) => n.includes("omni-ckpt"))).toEqual([]);
  });

  it("--json prints a machine-readable summary", () => {
    const r = runCli(["convert", "--to", "hf", "--json", native, path.join(work, "json-out")]);
    expect(r.code).toBe(0);
    const s = JSON.parse(r.stdout) as { from: string; to: string; tensorsOut: number; files: string[] };
    expect(s).toMatchObject({ from: "native", to: "hf", files: ["model.safetensors"] });
  });

  it("the round trip is exact: diff and verify agree", () => {
    const back = path.join(work, "back");
    expect(runCli(["convert", "--to", "hf", "-q", native, back]).code).toBe(0);
    const d = runCli(["diff", hf, back]);
    expect(d.stdout).toMatch(/^identical: \d+ tensors/m);
    expect(d.code).toBe(0);
    const v = runCli(["verify", hf]);
    expect(v.stdout).toMatch(/bit-exact round trip/);
    expect(v.code).toBe(0);
    expect(runCli(["verify", native]).code).toBe(0);
  });

  it("diff names the tensor that differs and by how much, and exits 3", () => {
    const changed = path.join(work, "changed");
    fs.cpSync(native, changed, { recursive: true });
    const file = openSafetensors(path.join(native, "model.safetensors"));
    const tensors = new Map<string, Tensor>();
    for (const name of file.tensors.keys()) tensors.set(name, file.readTensorSync(name));
    file.close();
    const name = "language_model.model.norm.weight";
    const t = tensors.get(name)!;
    const data = t.data.slice();
    new DataView(data.buffer).setUint16(0, 0x4000, true); // 2.0 in bf16, where the norm holds 1.0
    tensors.set(name, { ...t, data });
    fs.writeFileSync(path.join(changed, "model.safetensors"), serialize(tensors));
    const r = runCli(["diff", native, changed]);
    expect(r.code).toBe(3);
    expect(r.stdout).toMatch(new RegExp(`^${name.replace(/\./g, "\\.")}: 1 of 16 elements differ, max \\|a - b\\| = 1$`, "m"));
    const j = JSON.parse(runCli(["diff", "--json", native, changed]).stdout) as { identical: boolean; hashes: Record<string, { a: string; b: string }> };
    expect(j.identical).toBe(false);
    expect(j.hashes[name]!.a).not.toBe(j.hashes[name]!.b);
  });

  it("diff compares checkpoints of different layouts, B converted into A's layout in memory", () => {
    const r = runCli(["diff", hf, native]);
    expect(r.stdout).toMatch(/^identical: [\d,]+ tensors, same names, dtypes, shapes and bytes \(B converted native → HF in memory, [\d.]+ s\)\n$/);
    expect(r.code).toBe(0);
  });
});

describe("convert: refusals leave everything as it was", () => {
  it("refuses to convert into the layout it is already in", () => {
    const dst = path.join(work, "same-layout");
    expectCleanError(runCli(["convert", "--to", "hf", hf, dst]), 2, /is already in the Hugging Face \(HF\) layout/);
    expect(fs.existsSync(dst)).toBe(false);
  });

  it("refuses an existing non-empty DST without --force, leaving it untouched, and replaces it with --force", () => {
    const dst = path.join(work, "occupied");
    fs.mkdirSync(dst);
    fs.writeFileSync(path.join(dst, "keep.txt"), "mine");
    const before = snapshot(dst);
    const src = snapshot(hf);
    expectCleanError(runCli(["convert", "--to", "native", hf, dst]), 2, /already exists and is not empty; pass --force/);
    expect(snapshot(dst)).toEqual(before);
    expect(runCli(["convert", "--to", "native", "--force", "-q", hf, dst]).code).toBe(0);
    expect(fs.existsSync(path.join(dst, "keep.txt"))).toBe(false);
    expect(runCli(["diff", dst, native]).code).toBe(0);
    expect(snapshot(hf)).toEqual(src);
    expect(fs.readdirSync(work).filter((n) => n.includes("omni-ckpt"))).toEqual([]);
  });

  it("converts into an existing empty folder", () => {
    const dst = path.join(work, "empty-dst");
    fs.mkdirSync(dst);
    expect(runCli(["convert", "--to", "native", "-q", hf, dst]).code).toBe(0);
    expect(runCli(["diff", dst, native]).code).toBe(0);
  });

  it("refuses DST equal to or inside SRC, and --force over a folder holding SRC", () => {
    const src = snapshot(hf);
    expectCleanError(runCli(["convert", "--to", "native", hf, hf]), 2, /is the source itself/);
    expectCleanError(runCli(["convert", "--to", "native", hf, path.join(hf, "sub")]), 2, /inside the source folder/);
    expectCleanError(runCli(["convert", "--to", "native", "--force", hf, work]), 2, /--force would replace .* which contains the source/);
    expect(snapshot(hf)).toEqual(src);
  });

  it("refuses a config that disagrees with the tensors", () => {
    const bad = path.join(work, "bad-config");
    fs.cpSync(hf, bad, { recursive: true });
    rewriteConfig(bad, (cfg) => void ((cfg["llm_config"] as Record<string, unknown>)["n_routed_experts"] = 3));
    expectCleanError(runCli(["convert", "--to", "native", bad, path.join(work, "x1")]), 2, /config\.json: disagrees with the tensors: n_routed_experts is 3, but the checkpoint has expert 3/);
    rewriteConfig(bad, (cfg) => {
      const llm = cfg["llm_config"] as Record<string, unknown>;
      llm["n_routed_experts"] = 4;
      llm["num_hidden_layers"] = 4;
    });
    expectCleanError(runCli(["convert", "--to", "native", bad, path.join(work, "x2")]), 2, /num_hidden_layers is 4, but the checkpoint has tensors past it/);
    fs.rmSync(path.join(bad, "config.json"));
    expectCleanError(runCli(["convert", "--to", "native", bad, path.join(work, "x3")]), 2, /config\.json: cannot open: no such file/);
    expect(fs.existsSync(path.join(work, "x1")) || fs.existsSync(path.join(work, "x2")) || fs.existsSync(path.join(work, "x3"))).toBe(false);
  });

  it("names how many experts are missing and which", () => {
    const partial = path.join(work, "missing-experts");
    fs.cpSync(hf, partial, { recursive: true });
    const index = JSON.parse(fs.readFileSync(path.join(partial, "model.safetensors.index.json"), "utf8")) as { weight_map: Record<string, string> };
    const victim = "language_model.backbone.layers.4.mixer.experts.2.down_proj.weight";
    const shard = index.weight_map[victim]!;
    const file = openSafetensors(path.join(partial, shard));
    const kept = new Map<string, Tensor>();
    for (const name of file.tensors.keys()) if (name !== victim) kept.set(name, file.readTensorSync(name));
    file.close();
    fs.writeFileSync(path.join(partial, shard), serialize(kept));
    delete index.weight_map[victim];
    fs.writeFileSync(path.join(partial, "model.safetensors.index.json"), JSON.stringify(index));
    expectCleanError(
      runCli(["convert", "--to", "native", partial, path.join(work, "x4")]),
      2,
      /missing-experts: expert weights missing from checkpoint: 1\/16 required weights not found .* first missing: language_model\.backbone\.layers\.4\.mixer\.experts\.2\.down_proj\.weight$/,
    );
  });

  it.each([
    [["--to", "sideways"], /--to must be native or hf/],
    [["--to", "native", "--ep-rank", "3", "--ep-size", "3"], /--ep-rank must be in \[0, 3\), got 3/],
    [["--to", "native", "--ep-rank", "0", "--ep-size", "0"], /--ep-size must be a positive integer, got 0/],
    [["--to", "native", "--ep-rank", "0"], /--ep-rank and --ep-size go together/],
    [["--to", "native", "--num-layers", "-1"], /--num-layers must be a positive integer, got -1/],
    [["--to", "native", "--num-layers", "two"], /--num-layers must be an integer, got "two"/],
    [["--to", "native", "--dtype", "q8"], /unsupported expert dtype "q8"/],
    [["--to", "hf", "--exclude", "("], /invalid regex "\(":/],
    [["--to", "native", "--exclude", "x"], /--exclude applies only to --to hf/],
    [["--to", "native", "--max-shard-size", "lots"], /invalid size "lots"/],
    [["--to", "native", "--bogus"], /unknown option '--bogus'/],
    // Near a real option: still one line, no "(Did you mean --force?)".
    [["--to", "native", "--forc"], /unknown option '--forc'$/],
  ])("usage error %j exits 2 with one line", (args, pattern) => {
    const src = args.includes("--exclude") && args.includes("hf") ? native : hf;
    const dst = path.join(work, "never");
    expectCleanError(runCli(["convert", ...args, src, dst]), 2, pattern);
    expect(fs.existsSync(dst)).toBe(false);
  });

  it.each([[["invert", "a", "b"]], [["lora", "merg", "a", "b", "c"]], [["inspect", "--jsn", "a"]]])("a mistyped command or option %j is one line", (args) => {
    expectCleanError(runCli(args), 2, /^omni-ckpt: error: unknown (command|option) '[^']+'$/);
  });

  it("--debug adds the stack trace", () => {
    const r = runCli(["convert", "--to", "native", "--debug", "--ep-rank", "5", "--ep-size", "2", hf, path.join(work, "never")]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/\n\s+at /);
  });
});

describe("output into a pipe", () => {
  /** Run with stdout's reading end closed at once, as `| head` does once it has its lines. */
  async function closedPipe(args: string[]): Promise<{ code: number | null; stderr: string }> {
    const child = startCli(args);
    child.stdout.destroy();
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const code = await new Promise<number | null>((resolve) => child.on("close", (c) => resolve(c)));
    return { code, stderr };
  }

  it("a reader that stops early ends the output quietly, with the command's own exit code", async () => {
    const other = path.join(work, "hf-seed-9");
    expect(runCli(["synth", other, "--preset", "tiny", "--seed", "9"]).code).toBe(0);
    expect(await closedPipe(["inspect", hf])).toEqual({ code: 0, stderr: "" });
    expect(await closedPipe(["diff", hf, other])).toEqual({ code: 3, stderr: "" });
  });

  it("a closed stderr leaves a refusal's exit code as it is", async () => {
    const child = startCli(["inspect", path.join(work, "no-such-checkpoint")]);
    child.stderr.destroy();
    const code = await new Promise<number | null>((resolve) => child.on("close", (c) => resolve(c)));
    expect(code).toBe(2);
  });
});

describe("the real model's size", () => {
  it("synth --sparse writes the release (SPEC §6) as holes, and inspect reads it from headers", () => {
    const real = path.join(work, "real-size");
    const s = runCli(["synth", real, "--preset", "nano-omni-30b", "--sparse", "--json"]);
    expect(s.code).toBe(0);
    expect(JSON.parse(s.stdout)).toMatchObject({ preset: "nano-omni-30b", tensors: 7349, bytes: 66_031_345_944 });
    const shards = Array.from({ length: 17 }, (_, i) => `model-${String(i + 1).padStart(5, "0")}-of-00017.safetensors`);
    expect(fs.readdirSync(real).filter((f) => f.endsWith(".safetensors")).sort()).toEqual(shards);
    // Cut as save_pretrained cuts them: about 3.9 GB each, the last one shorter.
    for (const shard of shards.slice(0, -1)) expect(fs.statSync(path.join(real, shard)).size / 1e9).toBeCloseTo(3.9, 0);
    for (const f of ["configuration.py", "modeling_nemotron_h.py", "audio_model.py", "evs.py", "preprocessor_config.json", "chat_template.jinja", "tokenizer.json", "special_tokens_map.json"]) {
      expect(fs.existsSync(path.join(real, f)), f).toBe(true);
    }
    const r = runCli(["inspect", "--json", real]);
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout) as {
      layout: string;
      files: number;
      tensors: number;
      params: number;
      bytes: number;
      components: { component: string; tensors: number }[];
      model: { layers: number; experts: number; expertWidth: number; hidden: number; pattern: string; mtpLayers?: number };
      convert: { to: string; tensors: number; bytes: number };
    };
    expect(report).toMatchObject({ layout: "hf", files: 17, tensors: 7349, params: 33_015_632_238, bytes: 66_031_345_944 });
    expect(Object.fromEntries(report.components.map((c) => [c.component, c.tensors]))).toEqual({
      "vision encoder": 390,
      "vision projector": 3,
      "sound encoder": 710,
      "sound projection": 3,
      "language model": 6243,
    });
    expect(report.model).toMatchObject({ layers: 52, experts: 128, expertWidth: 1856, hidden: 2688, pattern: "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME" });
    expect(report.model.mtpLayers).toBeUndefined();
    // 23 MoE layers' 256 per-expert weights become 2 grouped tensors each.
    expect(report.convert).toMatchObject({ to: "native", tensors: 7349 - 23 * 254, bytes: report.bytes });
    fs.rmSync(real, { recursive: true, force: true });
  });
});
