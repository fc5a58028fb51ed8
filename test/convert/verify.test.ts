import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { verifyCheckpoint } from "../../src/convert/verify.js";
import { FormatError } from "../../src/errors.js";
import { synthesize } from "../../src/synth/synth.js";
import { arenaAllFree } from "../helpers/arena.js";
import { tempDir } from "../helpers/cli.js";

const work = tempDir();
const hf = path.join(work, "hf");
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));
beforeAll(async () => {
  await synthesize(hf, { preset: "tiny" });
});

describe("verifyCheckpoint", () => {
  it("proves a round trip exact, component by component, and gives back every buffer", async () => {
    const report = await verifyCheckpoint(hf);
    expect(report.exact).toBe(true);
    expect(report.problems).toEqual([]);
    expect(report.components.every((c) => c.exact === c.tensors)).toBe(true);
    expect(arenaAllFree()).toBe(true);
  });

  it("fails with the file named when a shard changes under it, and still gives back every buffer", async () => {
    const copy = path.join(work, "shrinking");
    fs.cpSync(hf, copy, { recursive: true });
    const shard = path.join(copy, "model.safetensors");
    let cut = false;
    const run = verifyCheckpoint(copy, {
      onProgress: (_bytes, tensors) => {
        // Halfway through, the file loses its second half: later reads run past its end.
        if (!cut && tensors > 20) {
          fs.truncateSync(shard, Math.floor(fs.statSync(shard).size / 2));
          cut = true;
        }
      },
    });
    await expect(run).rejects.toThrow(FormatError);
    await expect(run).rejects.toThrow(`${shard}: file ended at byte`);
    expect(cut).toBe(true);
    expect(arenaAllFree()).toBe(true);
  });
});
