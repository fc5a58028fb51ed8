import * as fs from "node:fs";
import * as path from "node:path";
import * as vm from "node:vm";
import { build } from "esbuild";
import { describe, expect, it } from "vitest";
import { loraDir, repoRoot } from "../helpers/fixtures.js";

/**
 * `lora export` and `lora merge` from `omni-ckpt/core` bundled for the browser and run where neither
 * `Buffer` nor `process` nor `require` exists, on the reference fixture held in memory.
 */

const fixture = path.join(loraDir, "tiny-experts-rank2");

function folderFiles(dir: string): [string, number[]][] {
  return fs.readdirSync(dir).map((f) => [f, Array.from(fs.readFileSync(path.join(dir, f)))]);
}

const SCRIPT = `
(async () => {
  const { MemoryFolder, MemoryOutput, exportAdapterFolder, mergeFolders } = omni;
  const folder = (files, name) => new MemoryFolder(files.map(([n, b]) => [n, new Uint8Array(b)]), name);
  const exported = new MemoryOutput("export");
  await exportAdapterFolder(folder(adapterFiles, "adapter"), exported, {});
  const merged = new MemoryOutput("merged");
  const summary = await mergeFolders(folder(baseFiles, "base"), folder(adapterFiles, "adapter"), merged, {});
  return {
    globals: { Buffer: typeof Buffer, process: typeof process, require: typeof require },
    modules: summary.modules,
    exported: Array.from(exported.files.get("adapter_model.safetensors")),
    merged: Array.from(merged.files.get("model.safetensors")),
  };
})()
`;

describe("LoRA in a browser-like sandbox", () => {
  it("exports and merges the fixture from the core bundle, byte for byte as expected", async () => {
    const result = await build({
      stdin: { contents: 'export * from "omni-ckpt/core";', resolveDir: repoRoot, sourcefile: "entry.js" },
      bundle: true,
      platform: "browser",
      format: "iife",
      globalName: "omni",
      write: false,
      logLevel: "silent",
    });
    const sandbox = vm.createContext({
      TextEncoder,
      TextDecoder,
      atob,
      WebAssembly,
      setTimeout,
      clearTimeout,
      queueMicrotask,
      performance,
      AbortController,
      AbortSignal,
      console,
      adapterFiles: folderFiles(path.join(fixture, "adapter")),
      baseFiles: folderFiles(path.join(fixture, "base")),
    });
    vm.runInContext(result.outputFiles[0]!.text, sandbox);
    const out = (await vm.runInContext(SCRIPT, sandbox)) as { globals: Record<string, string>; modules: number; exported: number[]; merged: number[] };
    expect(out.globals).toEqual({ Buffer: "undefined", process: "undefined", require: "undefined" });
    expect(out.modules).toBe(31);
    expect(Buffer.from(out.exported).equals(fs.readFileSync(path.join(fixture, "expected-export/adapter_model.safetensors")))).toBe(true);
    expect(Buffer.from(out.merged).equals(fs.readFileSync(path.join(fixture, "expected-merged/model.safetensors")))).toBe(true);
  });
});
