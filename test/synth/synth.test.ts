import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { UsageError } from "../../src/errors.js";
import { type SynthRequest as SynthOptions, synthesize } from "../../src/node/synth.js";
import { tempDir } from "../helpers/cli.js";

const work = tempDir();
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

describe("synthesize", () => {
  it("refuses a dtype it cannot write before creating anything, as the CLI does", async () => {
    const dir = path.join(work, "f16");
    // A JavaScript caller is not held to the type: bf16 bit patterns must not go out labelled F16.
    await expect(synthesize(dir, { dtype: "F16" } as unknown as SynthOptions)).rejects.toThrow(new UsageError('dtype must be BF16 or F32, got "F16"'));
    expect(fs.existsSync(dir)).toBe(false);
  });

  it("refuses a --scale whose layers would not fit in headers held as text, as a usage error", async () => {
    const dir = path.join(work, "huge");
    await expect(synthesize(dir, { preset: "tiny", scale: 100_000_000_000 })).rejects.toThrow(
      new UsageError("--scale 100000000000 would give the tiny preset 500000000000 language-model layers; at most 10000 are synthesized"),
    );
    await expect(synthesize(dir, { preset: "tiny", scale: 0 })).rejects.toThrow(new UsageError("--scale must be a positive integer, got 0"));
    expect(fs.existsSync(dir)).toBe(false);
  });
});
