import * as vm from "node:vm";
import { build } from "esbuild";
import { describe, expect, it } from "vitest";
import { repoRoot } from "../helpers/fixtures.js";
import { consolidateFiles, memoryHf, memorySave } from "../helpers/saves.js";

/**
 * Consolidation is part of the browser-safe core: bundled for the browser and run where neither `Buffer`
 * nor `process` exists, it makes a sharded save of an in-memory checkpoint and consolidates it, byte for
 * byte as under Node.
 */
const SCRIPT = `
(async () => {
  const { planSynth, writeSynth, MemoryOutput, MemoryFolder, Checkpoint, writeAutomodelSave, openShardedSave, planConsolidation, listMetadataFiles, writeConsolidation } = omni;
  const synth = new MemoryOutput("synth");
  await writeSynth(planSynth({ preset: "tiny", seed: 5 }), synth);
  const ckpt = await Checkpoint.open(new MemoryFolder(synth.files, "hf"));
  const saved = new MemoryOutput("model");
  await writeAutomodelSave(ckpt, saved, { world: 4, ep: 2 });
  ckpt.close();
  const save = await openShardedSave(new MemoryFolder([...saved.files].map(([k, v]) => ["model/" + k, v]), "ckpt"), "model");
  const plan = planConsolidation(save);
  const out = new MemoryOutput("out");
  await writeConsolidation(plan, out, await listMetadataFiles(save));
  return { globals: { Buffer: typeof Buffer, process: typeof process }, files: [...out.files].map(([name, bytes]) => [name, Array.from(bytes)]) };
})()
`;

describe("consolidation in a browser-like sandbox", () => {
  it("makes and consolidates a sharded save with no Node globals, as under Node", async () => {
    const result = await build({
      stdin: { contents: 'export * from "omni-ckpt/core";', resolveDir: repoRoot, sourcefile: "entry.js" },
      bundle: true,
      platform: "browser",
      format: "iife",
      globalName: "omni",
      write: false,
      logLevel: "silent",
    });
    const sandbox = vm.createContext({ TextEncoder, TextDecoder, atob, WebAssembly, setTimeout, clearTimeout, queueMicrotask, performance, AbortController, AbortSignal, URL, console });
    vm.runInContext(result.outputFiles[0]!.text, sandbox);
    const got = (await vm.runInContext(SCRIPT, sandbox)) as { globals: Record<string, string>; files: [string, number[]][] };
    expect(got.globals).toEqual({ Buffer: "undefined", process: "undefined" });
    const { out } = await consolidateFiles(await memorySave(await memoryHf({ preset: "tiny", seed: 5 }), { world: 4, ep: 2 }));
    const hex = (entries: Iterable<[string, ArrayLike<number>]>) => new Map([...entries].map(([n, b]) => [n, Buffer.from(Array.from(b)).toString("hex")]));
    expect(hex(got.files)).toEqual(hex(out));
    expect([...out.keys()]).toContain("model.safetensors.index.json");
  });
});
