import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { repoRoot } from "./helpers/fixtures.js";

const pkg = JSON.parse(fs.readFileSync(path.join(repoRoot, "package.json"), "utf8")) as {
  bin: Record<string, string>;
  exports: Record<string, { types: string; import: string }>;
  dependencies: Record<string, string>;
  type: string;
};

describe("the package", () => {
  it("is an ES module whose bin and exports point at built files", () => {
    expect(pkg.type).toBe("module");
    const bin = path.join(repoRoot, pkg.bin["omni-ckpt"]!);
    expect(fs.readFileSync(bin, "utf8").startsWith("#!/usr/bin/env node\n")).toBe(true);
    expect(Object.keys(pkg.exports).sort()).toEqual([".", "./core"]);
    for (const entry of Object.values(pkg.exports)) {
      for (const target of Object.values(entry)) expect(fs.existsSync(path.join(repoRoot, target))).toBe(true);
    }
  });

  it("depends at run time only on the argument parser and the progress bar", () => {
    expect(Object.keys(pkg.dependencies).sort()).toEqual(["cli-progress", "commander"]);
  });

  it("exports the adapters, the reader and writer, and the whole-checkpoint operations", async () => {
    const lib = (await import(path.join(repoRoot, pkg.exports["."]!.import))) as Record<string, unknown>;
    for (const name of [
      "NemotronOmniStateDictAdapter",
      "NemotronV3StateDictAdapter",
      "Checkpoint",
      "SafetensorsFile",
      "ShardedWriter",
      "serialize",
      "castInto",
      "convertCheckpoint",
      "inspectCheckpoint",
      "verifyCheckpoint",
      "diffCheckpoints",
      "synthesize",
      "InputError",
    ]) {
      expect(typeof lib[name], name).toBe("function");
    }
  });
});

describe("the core entry", () => {
  it("holds the formats, rules and whole-checkpoint operations over any folder, and nothing of Node's", async () => {
    const core = (await import(path.join(repoRoot, pkg.exports["./core"]!.import))) as Record<string, unknown>;
    for (const name of ["NemotronOmniStateDictAdapter", "Checkpoint", "MemoryFolder", "MemoryOutput", "convertFolder", "describeCheckpoint", "verifyRoundTrip", "compareCheckpoints", "ShardedWriter"]) {
      expect(typeof core[name], name).toBe("function");
    }
    for (const name of ["LocalFolder", "FileSource", "OutputFolder", "convertCheckpoint", "synthesize"]) expect(core[name], name).toBeUndefined();
    // The Node entry is a superset: everything of the core, under the same names.
    const lib = (await import(path.join(repoRoot, pkg.exports["."]!.import))) as Record<string, unknown>;
    for (const name of Object.keys(core)) if (name !== "Checkpoint") expect(lib[name], name).toBe(core[name]);
  });
});
