import { describe, expect, it } from "vitest";
import { materialize } from "../../src/adapters/execute.js";
import type { PieceScale, PlannedTensor } from "../../src/adapters/plan.js";
import { BufferPool } from "../../src/convert/buffer-pool.js";
import { CHUNK_BYTES, planChunks } from "../../src/convert/chunks.js";
import { type TensorSource, buildTensor, streamTensors } from "../../src/convert/stream.js";
import type { Tensor } from "../../src/tensor/tensor.js";
import { Scratch } from "../../src/tensor/transfer.js";
import { contiguous, select, transpose } from "../../src/tensor/view.js";
import { arenaAllFree } from "../helpers/arena.js";
import { seededRandom } from "../helpers/fixtures.js";
import { dequantizedBf16 } from "../helpers/quant-oracle.js";

const rng = seededRandom(3);
const codes = (n: number): Uint8Array => Uint8Array.from({ length: n }, () => rng.int(256));
const f32 = (values: number[]): Uint8Array => new Uint8Array(Float32Array.from(values).buffer);

// A weight large enough that its bf16 output spans several 1 MB chunks: 1100 × 700 with 128×128 block scales.
const R = 700;
const C = 900;
const blocks = Math.ceil(R / 128) * Math.ceil(C / 128);
const inputs = new Map<string, Tensor>([
  ["w", { dtype: "F8_E4M3", shape: [R, C], data: codes(R * C) }],
  ["w_scale_inv", { dtype: "F32", shape: [Math.ceil(R / 128), Math.ceil(C / 128)], data: f32(Array.from({ length: blocks }, (_, i) => 2 ** -(i % 9) * 1.375)) }],
  // Two experts [I, H] = [40, 24] with per-row scales, transposed into one grouped [2, 24, 40] tensor.
  ["e0", { dtype: "F8_E4M3", shape: [40, 24], data: codes(960) }],
  ["e1", { dtype: "F8_E4M3", shape: [40, 24], data: codes(960) }],
  ["e0_scale", { dtype: "F32", shape: [40, 1], data: f32(Array.from({ length: 40 }, (_, i) => 0.001 * (i + 1))) }],
  ["e1_scale", { dtype: "F32", shape: [40], data: f32(Array.from({ length: 40 }, (_, i) => 0.003 * (i + 1))) }],
]);

const blockScale: PieceScale = { src: "w_scale_inv", layout: "block", cols: C, block: [128, 128] };
const flat: PlannedTensor = { name: "flat", dtype: "BF16", shape: [R, C], pieces: [{ src: "w", srcView: contiguous([R, C]), dstView: contiguous([R, C]), scale: blockScale }] };
const out = contiguous([2, 24, 40]);
const grouped: PlannedTensor = {
  name: "grouped",
  dtype: "F32",
  shape: [2, 24, 40],
  pieces: ["e0", "e1"].map((src, e) => ({
    src,
    srcView: transpose(contiguous([40, 24]), 0, 1),
    dstView: select(out, 0, e),
    scale: { src: `${src}_scale`, layout: "row", cols: 24 } as PieceScale,
  })),
};

/** A source that answers late and out of order, with no synchronous reads. */
const late: TensorSource = {
  info: (name) => inputs.get(name)!,
  read: async (name, offset, buf) => {
    await new Promise((r) => setTimeout(r, rng.int(3)));
    buf.set(inputs.get(name)!.data.subarray(offset, offset + buf.byteLength));
  },
};

function expectedFlat(): Uint16Array {
  const w = inputs.get("w")!.data;
  const s = new Float32Array(inputs.get("w_scale_inv")!.data.buffer.slice(0));
  const e = new Uint16Array(R * C);
  for (let i = 0; i < R; i++) for (let j = 0; j < C; j++) e[i * C + j] = dequantizedBf16(w[i * C + j]!, "F8_E4M3", s[Math.floor(i / 128) * Math.ceil(C / 128) + Math.floor(j / 128)]!);
  return e;
}

function expectedGrouped(): Uint32Array {
  const e = new Uint32Array(2 * 24 * 40);
  ["e0", "e1"].forEach((name, x) => {
    const w = inputs.get(name)!.data;
    const s = new Float32Array(inputs.get(`${name}_scale`)!.data.buffer.slice(0));
    for (let i = 0; i < 40; i++) for (let h = 0; h < 24; h++) e[(x * 24 + h) * 40 + i] = (dequantizedBf16(w[i * 24 + h]!, "F8_E4M3", s[i]!) << 16) >>> 0;
  });
  return e;
}

/** The first few elements that differ (a deep equality of a million elements is slow). */
function mismatches(got: Uint16Array | Uint32Array, want: Uint16Array | Uint32Array): string[] {
  const out: string[] = [];
  if (got.length !== want.length) return [`length ${got.length} != ${want.length}`];
  for (let i = 0; i < got.length && out.length < 5; i++) if (got[i] !== want[i]) out.push(`[${i}]: ${got[i]} != ${want[i]}`);
  return out;
}

describe("dequantizing while streaming", () => {
  it("cuts a dequantized tensor into bounded chunks, each piece keeping its scale", () => {
    const chunks = [...planChunks([flat], (n) => inputs.get(n)!.dtype, undefined)];
    expect(chunks.length).toBe(Math.ceil((R * C * 2) / CHUNK_BYTES));
    for (const c of chunks) {
      expect(c.byteLength).toBeLessThanOrEqual(CHUNK_BYTES);
      for (const p of c.pieces) expect(p.scale).toEqual(blockScale);
    }
  });

  it("streams, builds and materializes the same bytes as the independent model, from a late out-of-order source", async () => {
    const written = new Map<string, Uint8Array>([["flat", new Uint8Array(R * C * 2)], ["grouped", new Uint8Array(2 * 24 * 40 * 4)]]);
    await streamTensors([flat, grouped], late, { write: async (name, offset, bytes) => void written.get(name)!.set(bytes, offset) });
    const wantFlat = expectedFlat();
    const wantGrouped = expectedGrouped();
    expect(mismatches(new Uint16Array(written.get("flat")!.buffer), wantFlat)).toEqual([]);
    expect(mismatches(new Uint32Array(written.get("grouped")!.buffer), wantGrouped)).toEqual([]);

    const get = (n: string): Tensor => inputs.get(n)!;
    expect(mismatches(new Uint16Array(materialize(flat, get).data.buffer), wantFlat)).toEqual([]);
    expect(mismatches(new Uint32Array(materialize(grouped, get).data.buffer), wantGrouped)).toEqual([]);

    const pool = new BufferPool();
    const scratch = new Scratch(pool);
    const built = await buildTensor(grouped, late, pool, scratch);
    scratch.release();
    expect(mismatches(new Uint32Array(built.data.slice().buffer), wantGrouped)).toEqual([]);
    pool.release(built.data);
    expect(arenaAllFree()).toBe(true);
  });
});
