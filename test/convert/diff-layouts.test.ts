import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { diffCheckpoints } from "../../src/node/checks.js";
import { convertCheckpoint } from "../../src/node/convert.js";
import { synthesize } from "../../src/node/synth.js";
import { serialize } from "../../src/safetensors/encode.js";
import { runCli, tempDir } from "../helpers/cli.js";
import { loadAll } from "../helpers/fixtures.js";

const work = tempDir();
const hf = path.join(work, "hf");
const native = path.join(work, "native");
const changed = path.join(work, "changed");
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

const GROUPED = "language_model.model.layers.1.mixer.experts.gate_and_up_projs";

beforeAll(async () => {
  await synthesize(hf, { preset: "tiny", maxShardSize: 10_000 });
  await convertCheckpoint({ src: hf, dst: native, to: "native" });
  // One element of expert 2 in the grouped tensor changed: [e, h, i] = [2, 3, 5] is up_proj[2][5, 3] in HF.
  const tensors = loadAll(native);
  const t = tensors.get(GROUPED)!;
  const [, H, I] = t.shape as [number, number, number];
  const data = t.data.slice();
  const at = ((2 * H + 3) * I + 5) * 2;
  data[at + 1] = data[at + 1]! ^ 0x40;
  tensors.set(GROUPED, { ...t, data });
  fs.cpSync(native, changed, { recursive: true });
  for (const f of fs.readdirSync(changed)) if (f.endsWith(".safetensors") || f.endsWith(".index.json")) fs.rmSync(path.join(changed, f));
  fs.writeFileSync(path.join(changed, "model.safetensors"), serialize(tensors));
});

describe("diff across layouts", () => {
  it("an HF checkpoint and its native conversion hold the same weights, either way round", async () => {
    const there = await diffCheckpoints(hf, native);
    expect(there.identical).toBe(true);
    expect(there.converted).toEqual({ from: "native", to: "hf" });
    expect(there.same).toBe(loadAll(hf).size);
    const back = await diffCheckpoints(native, hf);
    expect(back.identical).toBe(true);
    expect(back.converted).toEqual({ from: "hf", to: "native" });
    expect(back.same).toBe(loadAll(native).size);
    // Hashes are of A's bytes and of B's as converted: equal tensor by tensor, and A's are its files' bytes.
    const a = loadAll(hf);
    for (const [name, h] of there.hashes) {
      expect(h.b, name).toBe(h.a);
      expect(h.a, name).toBe(crypto.createHash("sha256").update(a.get(name)!.data).digest("hex"));
    }
  });

  it("needs B's folder (its config.json) to convert it", async () => {
    const file = path.join(native, "model.safetensors");
    await expect(diffCheckpoints(hf, file)).rejects.toThrow(
      `${file} is in the native (NeMo Automodel) layout but ${hf} is Hugging Face (HF); converting it to compare needs its folder (with config.json), not a single file`,
    );
  });

  it("finds one changed expert, named in A's layout", async () => {
    const report = await diffCheckpoints(hf, changed);
    expect(report.differences).toEqual([
      {
        name: "language_model.backbone.layers.1.mixer.experts.2.up_proj.weight",
        kind: "content",
        detail: expect.stringMatching(/^1 of \d+ elements differ, max \|a - b\| = /),
        maxAbsDiff: expect.any(Number),
        differingElements: 1,
      },
    ]);
    expect(report.same).toBe(loadAll(hf).size - 1);
    const r = runCli(["diff", changed, hf]);
    expect(r.stdout.split("\n")[0]).toMatch(new RegExp(`^${GROUPED.replace(/\./g, "\\.")}: 1 of \\d+ elements differ, max \\|a - b\\| = `));
    expect(r.stdout).toMatch(/different: 1 difference, [\d,]+ tensors identical \(B converted HF → native in memory, /);
    expect(r.code).toBe(3);
  });
});
