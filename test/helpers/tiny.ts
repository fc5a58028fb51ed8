import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll } from "vitest";
import { synthesize } from "../../src/node/synth.js";
import { tempDir } from "./cli.js";

/**
 * A temporary folder with the `tiny` synthetic HF checkpoint at `hf`, made before the calling file's tests
 * and removed after them.
 */
export function tinyCheckpoint(): { readonly work: string; readonly hf: string } {
  const work = tempDir();
  const hf = path.join(work, "hf");
  beforeAll(async () => {
    await synthesize(hf, { preset: "tiny" });
  });
  afterAll(() => fs.rmSync(work, { recursive: true, force: true }));
  return { work, hf };
}
