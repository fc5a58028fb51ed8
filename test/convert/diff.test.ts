import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { diffCheckpoints } from "../../src/node/checks.js";
import { synthesize } from "../../src/node/synth.js";
import { tempDir } from "../helpers/cli.js";

const work = tempDir();
const a = path.join(work, "a");
const b = path.join(work, "b");
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));
beforeAll(async () => {
  await synthesize(a, { preset: "tiny", seed: 1 });
  await synthesize(b, { preset: "tiny", seed: 2 });
});

describe("diffCheckpoints", () => {
  it("finds the same differences with or without hashing, and hashes only when asked", async () => {
    const hashed = await diffCheckpoints(a, b);
    const plain = await diffCheckpoints(a, b, { hashes: false });
    expect(plain.differences).toEqual(hashed.differences);
    expect(plain.same).toBe(hashed.same);
    expect(plain.hashes.size).toBe(0);
    expect(hashed.hashes.size).toBe(hashed.same + hashed.differences.filter((d) => d.kind === "content").length);
    for (const h of hashed.hashes.values()) expect(h.a).toMatch(/^[0-9a-f]{64}$/);
  });
});
