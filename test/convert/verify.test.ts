import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { openSafetensors } from "../helpers/fixtures.js";
import { convertCheckpoint } from "../../src/node/convert.js";
import { verifyCheckpoint } from "../../src/node/checks.js";
import { serialize } from "../../src/safetensors/encode.js";
import { castInto } from "../../src/tensor/cast.js";
import type { Tensor } from "../../src/tensor/tensor.js";
import { FormatError } from "../../src/errors.js";
import { arenaAllFree } from "../helpers/arena.js";
import { tinyCheckpoint } from "../helpers/tiny.js";

const { work, hf } = tinyCheckpoint();

describe("verifyCheckpoint", () => {
  it("proves a round trip exact, component by component, and gives back every buffer", async () => {
    const report = await verifyCheckpoint(hf);
    expect(report.exact).toBe(true);
    expect(report.problems).toEqual([]);
    expect(report.components.every((c) => c.exact === c.tensors)).toBe(true);
    expect(arenaAllFree()).toBe(true);
  });

  it("tells values widened by rule (Mamba bf16 → f32) from values that changed (f32 experts → bf16)", async () => {
    // The HF checkpoint with its Mamba A_log in bf16: the native side holds it in f32, and back in HF it stays f32.
    const narrowMamba = path.join(work, "bf16-mamba");
    fs.cpSync(hf, narrowMamba, { recursive: true });
    const shard = path.join(narrowMamba, "model.safetensors");
    const file = openSafetensors(shard);
    const tensors = new Map<string, Tensor>();
    for (const name of file.tensors.keys()) {
      const t = file.readTensorSync(name);
      if (!name.endsWith("mixer.A_log")) tensors.set(name, t);
      else {
        const data = new Uint8Array(t.data.byteLength / 2);
        castInto(t.data, "F32", data, "BF16", t.data.byteLength / 4);
        tensors.set(name, { dtype: "BF16", shape: t.shape, data });
      }
    }
    file.close();
    fs.writeFileSync(shard, serialize(tensors));
    const widened = await verifyCheckpoint(narrowMamba);
    expect(widened.exact).toBe(false);
    const llm = widened.components.find((c) => c.component === "language model")!;
    expect(llm.upcast).toBeGreaterThan(0);
    expect(llm.differ).toBe(0);
    expect(widened.problems.some((p) => /mixer\.A_log: BF16 came back as F32 with the same values/.test(p))).toBe(true);

    // Native experts in f32 come back in bf16: lost precision, told as a difference.
    const f32 = path.join(work, "native-f32");
    await convertCheckpoint({ src: hf, dst: f32, to: "native", dtype: "f32" });
    const narrowed = await verifyCheckpoint(f32);
    expect(narrowed.exact).toBe(false);
    expect(narrowed.problems.some((p) => /gate_and_up_projs: F32\[.*\] came back as BF16\[/.test(p))).toBe(true);
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
