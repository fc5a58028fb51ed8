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
const hf32 = path.join(work, "hf-f32-experts");
const hfGated = path.join(work, "hf-gate-proj");
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

  // The HF checkpoint with its experts in float32, one element of expert 1 moved by less than a bf16 ulp;
  // and with a gate_proj these ungated experts do not have, which a conversion drops.
  const hfTensors = loadAll(hf);
  const widened = new Map(hfTensors);
  for (const [name, t] of hfTensors) {
    if (!/\.experts\.\d+\.(up|down)_proj\.weight$/.test(name)) continue;
    const bf = new Uint16Array(t.data.slice().buffer);
    const f32 = new Uint32Array(bf.length);
    for (let i = 0; i < bf.length; i++) f32[i] = bf[i]! << 16;
    if (name === "language_model.backbone.layers.1.mixer.experts.1.down_proj.weight") f32[7] = f32[7]! | 0x1234;
    widened.set(name, { dtype: "F32", shape: t.shape, data: new Uint8Array(f32.buffer) });
  }
  for (const [dir, ts] of [[hf32, widened], [hfGated, new Map([...hfTensors, ["language_model.backbone.layers.1.mixer.experts.0.gate_proj.weight", hfTensors.get("language_model.backbone.layers.1.mixer.experts.0.up_proj.weight")!]])]] as const) {
    fs.cpSync(hf, dir, { recursive: true });
    for (const f of fs.readdirSync(dir)) if (f.endsWith(".safetensors") || f.endsWith(".index.json")) fs.rmSync(path.join(dir, f));
    fs.writeFileSync(path.join(dir, "model.safetensors"), serialize(ts));
  }
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

  it("groups B's float32 experts in float32, so a difference below bf16's precision is found", async () => {
    const report = await diffCheckpoints(native, hf32);
    expect(report.identical).toBe(false);
    // Every grouped tensor is float32 now, where A's are bf16; none is rounded into looking equal.
    expect(report.differences.map((d) => `${d.name}: ${d.detail}`).filter((d) => d.includes("experts."))).toEqual(
      [...loadAll(native).keys()].filter((k) => /\.experts\.(gate_and_up|down)_projs$/.test(k)).sort().map((k) => `${k}: dtype BF16 vs F32`),
    );
    // Against float32 grouped experts of the unchanged weights, the one element is what differs.
    const native32 = path.join(work, "native-f32");
    await convertCheckpoint({ src: hf, dst: native32, to: "native", dtype: "f32" });
    const one = await diffCheckpoints(native32, hf32);
    expect(one.differences.map((d) => [d.name, d.kind, d.differingElements])).toEqual([["language_model.model.layers.1.mixer.experts.down_projs", "content", 1]]);
  });

  it("counts a tensor of B that the conversion leaves out as a difference", async () => {
    const report = await diffCheckpoints(native, hfGated);
    expect(report.differences).toEqual([
      {
        name: "language_model.backbone.layers.1.mixer.experts.0.gate_proj.weight",
        kind: "only-b",
        detail: `only in ${hfGated} (BF16[12, 16]), which the conversion to native leaves out`,
      },
    ]);
    expect(report.identical).toBe(false);
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
