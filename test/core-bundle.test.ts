import * as vm from "node:vm";
import { build } from "esbuild";
import { describe, expect, it } from "vitest";
import { MemoryFolder } from "../src/io/folder.js";
import { MemoryOutput } from "../src/io/output.js";
import { convertFolder } from "../src/convert/convert.js";
import { planSynth, writeSynth } from "../src/synth/layout.js";
import { repoRoot } from "./helpers/fixtures.js";

/**
 * `omni-ckpt/core` bundled for the browser platform, as a web app's bundler would, then run where neither
 * `Buffer` nor `process` nor `require` exists: a stray Node global or `node:` import anywhere the core
 * reaches fails here, whatever the type checker was told.
 */
async function coreBundle(): Promise<string> {
  const result = await build({
    stdin: { contents: 'export * from "omni-ckpt/core";', resolveDir: repoRoot, sourcefile: "entry.js" },
    bundle: true,
    platform: "browser",
    format: "iife",
    globalName: "omni",
    write: false,
    logLevel: "silent",
  });
  return result.outputFiles[0]!.text;
}

/** What the bundle does in the sandbox: synthesize, inspect and convert a small checkpoint held in memory. */
const SCRIPT = `
(async () => {
  const { planSynth, writeSynth, MemoryOutput, MemoryFolder, Checkpoint, describeCheckpoint, convertFolder } = omni;
  const synth = new MemoryOutput("synth");
  await writeSynth(planSynth({ preset: "tiny", seed: 5 }), synth);
  const folder = new MemoryFolder(synth.files, "tiny");
  const ckpt = await Checkpoint.open(folder);
  const report = await describeCheckpoint(ckpt);
  ckpt.close();
  const out = new MemoryOutput("native");
  const summary = await convertFolder(folder, out, { to: "native" });
  return {
    globals: { Buffer: typeof Buffer, process: typeof process, require: typeof require },
    report: { layout: report.layout, tensors: report.tensors, convert: report.convert },
    summary: { from: summary.from, to: summary.to, tensorsOut: summary.tensorsOut, files: summary.files, auxFiles: summary.auxFiles },
    files: [...out.files].map(([name, bytes]) => [name, Array.from(bytes)]),
  };
})()
`;

describe("omni-ckpt/core in a browser-like sandbox", () => {
  it("bundles for the browser platform and converts an in-memory checkpoint with no Node globals", async () => {
    const code = await coreBundle();
    const synth = new MemoryOutput();
    await writeSynth(planSynth({ preset: "tiny", seed: 5 }), synth);
    expect(code).not.toMatch(/require\(["']node:/);
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
      URL,
      console,
    });
    vm.runInContext(code, sandbox);
    const result = (await vm.runInContext(SCRIPT, sandbox)) as {
      globals: Record<string, string>;
      report: { layout: string; tensors: number; convert: { tensors: number } };
      summary: { from: string; to: string; tensorsOut: number; files: string[]; auxFiles: string[] };
      files: [string, number[]][];
    };
    expect(result.globals).toEqual({ Buffer: "undefined", process: "undefined", require: "undefined" });
    expect(result.report.layout).toBe("hf");
    expect(result.summary).toMatchObject({ from: "hf", to: "native", files: ["model.safetensors"] });
    expect(result.summary.auxFiles).toContain("config.json");
    expect(result.summary.auxFiles).toContain("modeling.py");
    expect(result.summary.auxFiles.sort()).toEqual([...synth.files.keys()].filter((f) => !f.endsWith(".safetensors")).sort());
    expect(result.summary.tensorsOut).toBe(result.report.convert.tensors);

    // Byte for byte what the same conversion gives under Node.
    const out = new MemoryOutput();
    await convertFolder(new MemoryFolder(synth.files), out, { to: "native" });
    expect(new Map(result.files.map(([name, bytes]) => [name, Buffer.from(bytes).toString("hex")]))).toEqual(
      new Map([...out.files].map(([name, bytes]) => [name, Buffer.from(bytes).toString("hex")])),
    );
  });
});
