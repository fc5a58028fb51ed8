import { describe, expect, it } from "vitest";
import type { PlannedTensor } from "../../src/adapters/plan.js";
import { type TensorSink, type TensorSource, streamTensors } from "../../src/convert/stream.js";
import { WriteError } from "../../src/errors.js";
import { contiguous, transpose } from "../../src/tensor/view.js";
import { convertFolder } from "../../src/convert/convert.js";
import type { ByteSource } from "../../src/io/byte-source.js";
import { type EntryStat, type Folder, type FolderEntry, MemoryFolder } from "../../src/io/folder.js";
import { MemoryOutput } from "../../src/io/output.js";
import { planSynth, writeSynth } from "../../src/synth/layout.js";
import { arenaAllFree } from "../helpers/arena.js";
import { seededRandom } from "../helpers/random.js";

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
    await expect(full).rejects.toThrow("out.safetensors: write failed: no space left on device (ENOSPC)");
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

describe("streamTensors from a source that reads in place", () => {
  // Each input element is its own index plus a per-tensor offset, so the grouped output is predictable.
  const fill = (name: string, buf: Uint8Array): void => {
    const v = new Uint16Array(buf.buffer, buf.byteOffset, buf.byteLength / 2);
    for (let i = 0; i < v.length; i++) v[i] = (name === "a" ? 0 : 0x4000) + i;
  };
  const syncSource = (readSync: (name: string, buf: Uint8Array) => void): TensorSource => ({
    info: () => ({ dtype: "BF16", shape: [N, N] }),
    read: () => Promise.reject(new Error("internal: the stream should have read in place")),
    readSync: (name, _offset, buf) => readSync(name, buf),
  });

  it("uses readSync and builds the same transposed bytes", async () => {
    const out = new Uint16Array(2 * N * N);
    await streamTensors([grouped], syncSource(fill), {
      write: async (_name, offset, bytes) => void out.set(new Uint16Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength)), offset / 2),
    });
    for (let t = 0; t < 2; t++) {
      for (let r = 0; r < N; r++) {
        for (let c = 0; c < N; c++) expect(out[t * N * N + r * N + c]).toBe((t === 0 ? 0 : 0x4000) + c * N + r);
      }
    }
    expect(arenaAllFree()).toBe(true);
  });

  it("a read that throws gives back every buffer, with writes of earlier chunks still in flight", async () => {
    // Enough tensors for several chunks, so the failure comes while earlier writes are pending.
    const many: PlannedTensor[] = Array.from({ length: 40 }, (_, i) => ({ ...grouped, name: `g${i}`, pieces: grouped.pieces.map((p) => ({ ...p, src: `${p.src}${i}` })) }));
    let writes = 0;
    const run = streamTensors(
      many,
      syncSource((name, buf) => {
        if (name === "b30") throw new RangeError("b30: file shrank");
        fill(name, buf);
      }),
      { write: async () => void (await delay(1), writes++) },
    );
    await expect(run).rejects.toThrow("b30: file shrank");
    expect(writes).toBeGreaterThan(0);
    expect(arenaAllFree()).toBe(true);
  });
});


/**
 * A folder whose files answer only asynchronously, each read after a random delay, so reads complete in
 * another order than they were asked in. Anything the asynchronous path gets wrong about where bytes go
 * (an offset ignored, a region mixed up with another) changes the output.
 */
class LaggyFolder implements Folder {
  reads = 0;
  constructor(
    private readonly inner: MemoryFolder,
    private readonly random: () => number,
  ) {}

  get name(): string {
    return this.inner.name;
  }
  describe(rel: string): string {
    return this.inner.describe(rel);
  }
  list(rel: string): Promise<readonly FolderEntry[] | undefined> {
    return this.inner.list(rel);
  }
  stat(rel: string): Promise<EntryStat | undefined> {
    return this.inner.stat(rel);
  }
  async open(rel: string): Promise<ByteSource> {
    const source = await this.inner.open(rel);
    const folder = this;
    return {
      name: source.name,
      size: source.size,
      async read(into, position) {
        folder.reads++;
        await delay(Math.floor(folder.random() * 4));
        const copy = new Uint8Array(into.byteLength);
        await source.read(copy, position);
        into.set(copy);
      },
      close: () => source.close(),
    };
  }
}

describe("streamTensors reading asynchronously, out of order", () => {
  it.each(["native", "hf"] as const)("a conversion to %s equals the in-place one byte for byte", async (to) => {
    const synth = new MemoryOutput();
    await writeSynth(planSynth({ preset: "small", seed: 11, maxShardSize: 200_000 }), synth);
    let input = new MemoryFolder(synth.files);
    if (to === "hf") {
      // The native side of the same checkpoint: splitting its grouped experts reads slabs at many offsets.
      const native = new MemoryOutput();
      await convertFolder(input, native, { to: "native", maxShardSize: 150_000 });
      input = new MemoryFolder(native.files);
    }
    const inPlace = new MemoryOutput();
    await convertFolder(input, inPlace, { to, maxShardSize: 100_000 });
    const laggy = new LaggyFolder(input, seededRandom(to === "hf" ? 3 : 4));
    const outOfOrder = new MemoryOutput();
    await convertFolder(laggy, outOfOrder, { to, maxShardSize: 100_000 });
    expect(laggy.reads).toBeGreaterThan(50);
    expect([...outOfOrder.files.keys()].sort()).toEqual([...inPlace.files.keys()].sort());
    expect(inPlace.files.size).toBeGreaterThan(3);
    for (const [name, bytes] of inPlace.files) expect(Buffer.from(outOfOrder.files.get(name)!).equals(bytes), name).toBe(true);
    expect(arenaAllFree()).toBe(true);
  });
});
