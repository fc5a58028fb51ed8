import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { loraDir } from "../helpers/fixtures.js";
import { runCli, snapshot, tempDir } from "../helpers/cli.js";

/* `lora export` and `lora merge` through the spawned command line, on the reference fixture. */

const fixture = path.join(loraDir, "tiny-experts-rank2");
const adapter = path.join(fixture, "adapter");
const base = path.join(fixture, "base");
const work = tempDir();
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

function expectCleanError(r: { code: number | null; stderr: string }, code: number, message: string): void {
  expect(r.code).toBe(code);
  expect(r.stderr).toBe(`omni-ckpt: error: ${message}\n`);
}

describe("omni-ckpt lora", () => {
  it("export: the expected tensors, a summary line, and --json", () => {
    const before = snapshot(fixture);
    const dst = path.join(work, "export");
    const r = runCli(["lora", "export", adapter, dst]);
    expect(r.code).toBe(0);
    expect(r.stderr).toBe("");
    expect(r.stdout).toMatch(/^exported Automodel → HF adapter: 38 → 62 tensors, 31 LoRA modules \(16 of them routed experts, per expert\), 6\.56 kB \+ 1 other file, [0-9.]+ s → .*export\n$/);
    expect(fs.readFileSync(path.join(dst, "adapter_model.safetensors")).equals(fs.readFileSync(path.join(fixture, "expected-export/adapter_model.safetensors")))).toBe(true);
    expect(fs.readdirSync(dst).sort()).toEqual(["adapter_config.json", "adapter_model.safetensors", "automodel_peft_config.json"]);
    const j = runCli(["lora", "export", "--json", "--experts", "drop", "--base", base, adapter, path.join(work, "drop")]);
    expect(j.code).toBe(0);
    const summary = JSON.parse(j.stdout) as { from: string; to: string; experts: string; modules: number; dropped: { modules: number; tensors: number }; checkedAgainst: string };
    expect(summary).toMatchObject({ from: "automodel", to: "hf", experts: "drop", modules: 15, dropped: { modules: 16, tensors: 8 }, checkedAgainst: base });
    expect(snapshot(fixture)).toEqual(before);
  });

  it("merge: PyTorch's merged weights, the base's other files, and back to Automodel with --to native", () => {
    const dst = path.join(work, "merged");
    const r = runCli(["lora", "merge", base, adapter, dst]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^merged Automodel adapter into .*base: 31 LoRA modules \(16 routed-expert\), 113 tensors, 38\.6 kB in 1 file \+ 1 other file, .* → .*merged\n$/);
    expect(fs.readFileSync(path.join(dst, "model.safetensors")).equals(fs.readFileSync(path.join(fixture, "expected-merged/model.safetensors")))).toBe(true);
    expect(fs.readFileSync(path.join(dst, "config.json")).equals(fs.readFileSync(path.join(base, "config.json")))).toBe(true);
    const back = path.join(work, "back");
    expect(runCli(["lora", "export", "-q", path.join(work, "export"), back, "--to", "native"]).stderr).toMatch(/give the base model \(--base RELEASE\)/);
    expect(runCli(["lora", "export", "-q", path.join(work, "export"), back, "--to", "native", "--base", base]).code).toBe(0);
    expect(fs.readFileSync(path.join(back, "adapter_model.safetensors")).equals(fs.readFileSync(path.join(adapter, "adapter_model.safetensors")))).toBe(true);
    const native = runCli(["lora", "merge", "--json", "--to", "native", base, path.join(work, "export"), path.join(work, "merged-native")]);
    expect(native.code).toBe(0);
    expect(JSON.parse(native.stdout)).toMatchObject({ adapter: "hf", to: "native", modules: 31, expertModules: 16 });
  });

  it("refuses with one line and exit 2: bad flags, an existing DST, a DST inside the adapter, a bad adapter", () => {
    expectCleanError(runCli(["lora", "export", adapter, path.join(work, "x"), "--experts", "some"]), 2, '--experts must be per-expert, fused or drop, got "some"');
    expectCleanError(runCli(["lora", "merge", base, adapter, path.join(work, "x"), "--to", "gguf"]), 2, '--to must be hf or native, got "gguf"');
    expectCleanError(runCli(["lora", "export", adapter, path.join(work, "export")]), 2, `${path.join(work, "export")} already exists and is not empty; pass --force to replace it`);
    expect(runCli(["lora", "export", "-q", "--force", adapter, path.join(work, "export")]).code).toBe(0);
    expectCleanError(runCli(["lora", "merge", base, adapter, path.join(adapter, "out")]), 2, `destination ${path.join(adapter, "out")} is inside the source folder; choose another`);
    expectCleanError(runCli(["lora", "export", base, path.join(work, "y")]), 2, `${base}: no adapter_model.safetensors in this folder; is it a PEFT adapter folder?`);
    const r = runCli(["lora", "merge", "--debug", base, base, path.join(work, "z")]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/\n\s+at /);
    expect(fs.existsSync(path.join(work, "z"))).toBe(false);
  });
});
