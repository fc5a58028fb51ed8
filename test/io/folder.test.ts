import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { InputError } from "../../src/errors.js";
import { MemoryFolder } from "../../src/io/folder.js";
import { HubFolder } from "../../src/io/http-folder.js";
import { tempDir } from "../helpers/cli.js";
import { startFakeHub } from "../helpers/http-server.js";

/**
 * Folders known by their files' names alone, in memory and as a Hub repo's listing, list the same
 * entries for the same names: one listing code serves both.
 */

const names = ["b.json", "a/x.bin", "a/deep/y.bin", "c/z.bin", "a.txt"];

describe("folders listed from their files' names", () => {
  it("a memory folder and a Hub repo holding the same files list the same entries, sorted, folders included", async () => {
    const dir = tempDir("omni-ckpt-folder-");
    for (const n of names) {
      fs.mkdirSync(path.dirname(path.join(dir, n)), { recursive: true });
      fs.writeFileSync(path.join(dir, n), n);
    }
    const memory = new MemoryFolder(names.map((n) => [n, new TextEncoder().encode(n)]));
    const hub = await startFakeHub({ "org/repo": dir });
    try {
      const repo = new HubFolder({ repo: "org/repo", revision: "main" }, { endpoint: hub.endpoint });
      for (const rel of ["", "a", "a/deep", "c"]) expect(await repo.list(rel), rel).toEqual(await memory.list(rel));
      expect(await memory.list("")).toEqual([
        { name: "a", kind: "folder" },
        { name: "a.txt", kind: "file" },
        { name: "b.json", kind: "file" },
        { name: "c", kind: "folder" },
      ]);
      expect(await memory.list("a")).toEqual([
        { name: "deep", kind: "folder" },
        { name: "x.bin", kind: "file" },
      ]);
      expect(await repo.stat("a/deep")).toEqual({ kind: "folder", size: 0 });
      await expect(memory.list("nope")).rejects.toThrow(new InputError("<memory>/nope: no such folder"));
      await expect(repo.list("nope")).rejects.toThrow(new InputError("hf://org/repo@main/nope: no such folder in the repo"));
    } finally {
      await hub.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
