import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { NemotronOmniStateDictAdapter } from "../../src/adapters/nemotron-omni.js";
import type { HeaderMap, Plan } from "../../src/adapters/plan.js";
import { PRESETS, type SynthPreset } from "../../src/synth/presets.js";
import { synthesize } from "../../src/node/synth.js";
import { synthLayout } from "../../src/synth/layout.js";
import { openCheckpoint } from "../helpers/fixtures.js";
import { itemSize } from "../../src/tensor/dtype.js";
import { type TensorInfo, numel } from "../../src/tensor/tensor.js";

/*
 * A conversion is planned from headers alone (SPEC §6 sizes: the real model's ~62 GB never exist here).
 * Planning the whole Nemotron-3-Nano-Omni-30B-A3B must be quick, give the real grouped shapes, and read
 * no tensor byte of a checkpoint on disk.
 */

/** SPEC §6's release: 7,349 tensors, 33.02 B parameters. */
const REAL: SynthPreset = PRESETS["nano-omni-30b"]!;
const PATTERN = REAL.llm.pattern;
const EXPERTS = REAL.llm.experts;
const HIDDEN = REAL.llm.hidden;
const MOE_INTER = REAL.llm.moeInter;

const headersOf = (tensors: readonly { name: string; dtype: TensorInfo["dtype"]; shape: readonly number[] }[]): Map<string, TensorInfo> =>
  new Map(tensors.map((t) => [t.name, { dtype: t.dtype, shape: [...t.shape] }]));

const bytesOf = (headers: Iterable<TensorInfo>): number => {
  let n = 0;
  for (const t of headers) n += numel(t.shape) * itemSize(t.dtype);
  return n;
};

/** Every planned tensor's pieces fill it exactly (element counts add up, views agree in shape). */
function expectPiecesFill(plan: Plan, inputs: HeaderMap): void {
  const problems: string[] = [];
  for (const t of plan.tensors) {
    let n = 0;
    for (const p of t.pieces) {
      if (!inputs.has(p.src)) problems.push(`${t.name} reads ${p.src}, which is not an input`);
      if (p.srcView.shape.join() !== p.dstView.shape.join()) problems.push(`${t.name}: a piece of ${p.src} changes shape`);
      n += p.dstView.shape.reduce((a, b) => a * b, 1);
    }
    if (n !== numel(t.shape)) problems.push(`${t.name}: pieces hold ${n} elements, the tensor ${numel(t.shape)}`);
  }
  expect(problems).toEqual([]);
}

describe("planning the real model (SPEC §6) from headers", () => {
  const { tensors, config } = synthLayout(REAL);
  const hf = headersOf(tensors);
  const moeLayers = [...PATTERN].filter((c) => c === "E").length;
  const groupedLayers = moeLayers; // the release has no MTP
  const adapter = new NemotronOmniStateDictAdapter(config);

  it("has the real model's shape: 23 Mamba, 23 MoE, 6 attention layers, 7,349 tensors, 33.02 B parameters", () => {
    expect([...PATTERN].filter((c) => c === "M").length).toBe(23);
    expect(moeLayers).toBe(23);
    expect([...PATTERN].filter((c) => c === "*").length).toBe(6);
    expect(PATTERN.length).toBe(52);
    const params = [...hf.values()].reduce((n, t) => n + numel(t.shape), 0);
    expect(hf.size).toBe(7349);
    expect(params).toBe(33_015_632_238);
    expect(bytesOf(hf.values())).toBe(66_031_345_944);
    expect(hf.get("language_model.backbone.layers.1.mixer.experts.127.up_proj.weight")).toEqual({ dtype: "BF16", shape: [MOE_INTER, HIDDEN] });
  });

  let native: Plan;

  // How long this takes is measured by `npm run bench`, not asserted here.
  it("HF → native plans the grouped shapes [128, 2688, 1856] / [128, 1856, 2688]", () => {
    const plan = adapter.planFromHf(hf);
    native = plan;
    expect(plan.diagnostics).toEqual([]);
    expect(plan.tensors).toHaveLength(hf.size - groupedLayers * (2 * EXPERTS - 2));
    const byName = new Map(plan.tensors.map((t) => [t.name, t]));
    const grouped = [...PATTERN].flatMap((c, i) => (c === "E" ? [`language_model.model.layers.${i}.mixer.experts`] : []));
    expect(grouped).toHaveLength(groupedLayers);
    for (const g of grouped) {
      const up = byName.get(`${g}.gate_and_up_projs`);
      const down = byName.get(`${g}.down_projs`);
      expect({ dtype: up?.dtype, shape: up?.shape, pieces: up?.pieces.length }).toEqual({ dtype: "BF16", shape: [EXPERTS, HIDDEN, MOE_INTER], pieces: EXPERTS });
      expect({ dtype: down?.dtype, shape: down?.shape, pieces: down?.pieces.length }).toEqual({ dtype: "BF16", shape: [EXPERTS, MOE_INTER, HIDDEN], pieces: EXPERTS });
    }
    expect([...byName.keys()].filter((k) => /\.experts\.\d+\./.test(k))).toEqual([]);
    expect(byName.get("language_model.model.layers.0.mixer._fp32_params.A_log")).toMatchObject({ dtype: "F32", shape: [64] });
    // bf16 → bf16 and float32 Mamba parameters: no byte is added or lost.
    expect(bytesOf(plan.tensors)).toBe(bytesOf(hf.values()));
    expectPiecesFill(plan, hf);
  });

  it("native → HF of that plan's output gives back every HF header", () => {
    const nativeHeaders = headersOf(native.tensors);
    const plan = adapter.planToHf(nativeHeaders);
    expect(plan.diagnostics).toEqual([]);
    expect(plan.tensors).toHaveLength(hf.size);
    expect(headersOf(plan.tensors)).toEqual(hf);
    expectPiecesFill(plan, nativeHeaders);
  });

  it("one expert-parallel rank: 128 experts over 5 ranks gives rank 2 experts 52–77", () => {
    const plan = adapter.planFromHf(hf, { ep: { rank: 2, size: 5 } });
    const up = plan.tensors.find((t) => t.name === "language_model.model.layers.1.mixer.experts.gate_and_up_projs")!;
    expect(up.shape).toEqual([26, HIDDEN, MOE_INTER]);
    // Experts 52…77 of the HF checkpoint, in order.
    expect(up.pieces.map((p) => p.src)).toEqual(
      Array.from({ length: 26 }, (_, k) => `language_model.backbone.layers.1.mixer.experts.${52 + k}.up_proj.weight`),
    );
  });
});

describe("planning reads no tensor bytes", () => {
  let dir: string;
  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "omni-ckpt-planning-"));
    // Small shards, so the checkpoint is several files.
    await synthesize(path.join(dir, "tiny"), { preset: "tiny", seed: 3, maxShardSize: 8192 });
  });
  afterAll(() => {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it("planFromHf and planToHf on a checkpoint's headers never touch its files after opening", async () => {
    const ckpt = await openCheckpoint(path.join(dir, "tiny"));
    try {
      const adapter = new NemotronOmniStateDictAdapter((await ckpt.readConfig()).values);
      expect(ckpt.files.length).toBeGreaterThan(1);
      const spies = ckpt.files.flatMap((f) => [vi.spyOn(f.source, "readSync"), vi.spyOn(f.source, "read")]);
      const reads = (): number => spies.reduce((n, s) => n + s.mock.calls.length, 0);

      const headers: HeaderMap = ckpt.tensors;
      const native = adapter.planFromHf(headers);
      const back = adapter.planToHf(headersOf(native.tensors));
      // Plain header copies too, as the streaming converter builds them.
      adapter.planFromHf(headersOf([...ckpt.tensors.values()]), { ep: { rank: 1, size: 3 } });
      expect(reads()).toBe(0);

      const tiny = PRESETS["tiny"]!.llm;
      const grouped = 2; // MoE layers of "ME*ME"
      expect(tiny.pattern).toBe("ME*ME");
      expect(native.tensors).toHaveLength(ckpt.tensors.size - grouped * (2 * tiny.experts - 2));
      expect(back.tensors).toHaveLength(ckpt.tensors.size);
      expectPiecesFill(native, headers);

      // The spies do see reads: reading one tensor goes through them.
      const first = [...ckpt.tensors.values()][0]!;
      first.file.readTensorSync(first.name);
      expect(reads()).toBeGreaterThan(0);
    } finally {
      ckpt.close();
    }
  });
});
