import { describe, expect, it } from "vitest";
import type { PlannedTensor } from "../../src/adapters/plan.js";
import { type TensorSink, type TensorSource, streamTensors } from "../../src/convert/stream.js";
import { WriteError } from "../../src/safetensors/writer.js";
import { contiguous, transpose } from "../../src/tensor/view.js";
import { arenaAllFree } from "../helpers/arena.js";

// Two 64×64 bf16 inputs, each transposed into one half of a grouped output: one chunk, two reads.
const N = 64;
const grouped: PlannedTensor = {
  name: "grouped",
  dtype: "BF16",
  shape: [2, N, N],
  pieces: ["a", "b"].map((src, i) => ({
    src,
    srcView: transpose(contiguous([N, N]), 0, 1),
    dstView: { ...contiguous([N, N]), offset: i * N * N },
  })),
};

const delay = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function source(read: TensorSource["read"]): TensorSource {
  return { info: () => ({ dtype: "BF16", shape: [N, N] }), read };
}

const nowhere: TensorSink = { write: async () => undefined };

describe("streamTensors when something fails", () => {
  it("a failed read waits for the other reads of its chunk before giving their memory back", async () => {
    let slowDone = false;
    let failedAt: boolean | undefined;
    const run = streamTensors(
      [grouped],
      source(async (name, _offset, buf) => {
        if (name === "a") throw new Error("read of a failed");
        await delay(30);
        buf.fill(1);
        slowDone = true;
      }),
      nowhere,
    ).catch((e: unknown) => {
      failedAt = slowDone;
      throw e;
    });
    await expect(run).rejects.toThrow("read of a failed");
    expect(failedAt).toBe(true);
    expect(arenaAllFree()).toBe(true);
  });

  it("a read that throws before it starts, and a failed write, give back every buffer too", async () => {
    const refused = streamTensors(
      [grouped],
      source((name) => {
        if (name === "b") throw new RangeError("b is not readable");
        return delay(10);
      }),
      nowhere,
    );
    await expect(refused).rejects.toThrow("b is not readable");
    expect(arenaAllFree()).toBe(true);

    const full = streamTensors([grouped], source(async () => undefined), {
      write: () => Promise.reject(new WriteError("out.safetensors: write failed: no space left on device (ENOSPC)")),
    });
    await expect(full).rejects.toThrow(WriteError);
    expect(arenaAllFree()).toBe(true);
  });

  it("on success, every buffer is back in the pool", async () => {
    const written: number[] = [];
    await streamTensors([grouped], source(async (_name, _offset, buf) => void buf.fill(2)), {
      write: async (_name, _offset, bytes) => void written.push(bytes.byteLength),
    });
    expect(written).toEqual([2 * N * N * 2]);
    expect(arenaAllFree()).toBe(true);
  });
});
