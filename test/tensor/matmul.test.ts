import { describe, expect, it } from "vitest";
import { BufferPool } from "../../src/convert/buffer-pool.js";
import { f32BitsToBf16 } from "../../src/tensor/cast.js";
import { inArena } from "../../src/tensor/wasm/kernels.js";
import { type MergeDType, addDelta, addDeltaJs, matmulScaled, matmulScaledJs } from "../../src/tensor/wasm/matmul.js";
import { seededRandom } from "../helpers/fixtures.js";

/*
 * The LoRA merge kernels: the WebAssembly SIMD matmul and adds must give exactly the JavaScript
 * fallback's bits (both round every product and sum on their own, k in order), and the product must be
 * the float64 one rounded to float32 within the summation error bound of summation order.
 */

const pool = new BufferPool();
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

function fillBf16Valued(buf: Uint8Array, n: number, rand: ReturnType<typeof seededRandom>): Float32Array {
  const a = new Float32Array(buf.buffer, buf.byteOffset, n);
  for (let i = 0; i < n; i++) {
    // bfloat16 values (as LoRA factors are), magnitudes 2^-9 .. 2^-1.
    u32[0] = (((rand.u32() & 0x807f) | ((118 + rand.int(8)) << 7)) << 16) >>> 0;
    a[i] = f32[0]!;
  }
  return a;
}

describe("LoRA merge kernels", () => {
  it("run in the kernels' arena", () => {
    const b = pool.acquire(64);
    expect(inArena(b.buffer)).toBe(true);
    pool.release(b);
  });

  it("matmul: SIMD equals the JavaScript fallback bit for bit, for shapes around the 4×8 blocks, padded strides and ranks 1..17", () => {
    const rand = seededRandom(4242);
    const sizes = [1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 33];
    for (let trial = 0; trial < 150; trial++) {
      const rows = rand.pick(sizes);
      const cols = rand.pick(sizes);
      const rank = 1 + rand.int(17);
      const ls = rank + rand.int(3);
      const rs = cols + rand.int(3);
      const os = cols + rand.int(3);
      const l = pool.acquire(rows * ls * 4);
      const r = pool.acquire(rank * rs * 4);
      const out = pool.acquire(rows * os * 4);
      fillBf16Valued(l, rows * ls, rand);
      fillBf16Valued(r, rank * rs, rand);
      out.fill(0);
      const plain = new Uint8Array(out.byteLength);
      const scale = [2, 0.5, 8 / 3, 1 / Math.sqrt(rank)][trial % 4]!;
      matmulScaled(l, ls, r, rs, out, os, rows, cols, rank, scale);
      matmulScaledJs(l, ls, r, rs, plain, os, rows, cols, rank, scale);
      expect(Buffer.from(out).equals(Buffer.from(plain)), `rows ${rows} cols ${cols} rank ${rank}`).toBe(true);
      for (const b of [l, r, out]) pool.release(b);
    }
  });

  it("matmul: float32 results are the float64 products and sums rounded to float32, within the summation error bound", () => {
    const rand = seededRandom(77);
    const rows = 96;
    const cols = 130;
    const rank = 16;
    const l = pool.acquire(rows * rank * 4);
    const r = pool.acquire(rank * cols * 4);
    const out = pool.acquire(rows * cols * 4);
    const L = fillBf16Valued(l, rows * rank, rand);
    const R = fillBf16Valued(r, rank * cols, rand);
    matmulScaled(l, rank, r, cols, out, cols, rows, cols, rank, 1);
    const O = new Float32Array(out.buffer, out.byteOffset, rows * cols);
    let differ = 0;
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < cols; j++) {
        let s = 0;
        let magnitude = 0;
        for (let k = 0; k < rank; k++) {
          s += L[i * rank + k]! * R[k * cols + j]!;
          magnitude += Math.abs(L[i * rank + k]! * R[k * cols + j]!);
        }
        const want = Math.fround(s);
        const got = O[i * cols + j]!;
        if (got !== want) {
          differ++;
          // Within the float32 summation error bound: (rank − 1) roundings of partial sums.
          expect(Math.abs(got - want)).toBeLessThanOrEqual(rank * magnitude * 2 ** -24 + Math.abs(want) * 2 ** -24);
        }
      }
    }
    // Sixteen terms of random sign: about a quarter end one float32 ulp away from the float64 sum.
    expect(differ / (rows * cols)).toBeLessThan(0.5);
    for (const b of [l, r, out]) pool.release(b);
  });

  const specials = [0, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0x7f800001, 0xffffffff, 0x00000001, 0x807fffff, 0x7f7fffff, 0x3f808000, 0x3f818000, 0x3f80ffff];

  for (const dtype of ["BF16", "F32", "F16"] as MergeDType[]) {
    it(`add into ${dtype}: SIMD equals the JavaScript fallback for random and special values, at every alignment and tail length`, () => {
      const rand = seededRandom(dtype.length * 31);
      const item = dtype === "F32" ? 4 : 2;
      for (let trial = 0; trial < 60; trial++) {
        const n = 1 + rand.int(40);
        const shift = rand.int(2) * 2;
        const w = pool.acquire(n * item + 8).subarray(shift, shift + n * item);
        const d = pool.acquire(n * 4);
        const dv = new DataView(d.buffer, d.byteOffset, d.byteLength);
        for (let i = 0; i < n; i++) dv.setUint32(i * 4, rand.int(4) === 0 ? rand.pick(specials) : rand.u32(), true);
        for (let i = 0; i < w.length; i++) w[i] = rand.int(256);
        const plain = w.slice();
        addDelta(dtype, w, d, n);
        addDeltaJs(dtype, plain, d, n);
        expect(Buffer.from(w).equals(Buffer.from(plain)), `n ${n} shift ${shift}`).toBe(true);
        pool.release(d);
      }
    });
  }

  it("add into bfloat16 is W ⊕ bf16(Δ) with each sum rounded to nearest even", () => {
    const w = new Uint8Array(8);
    const d = new Uint8Array(16);
    const wv = new DataView(w.buffer);
    const dv = new DataView(d.buffer);
    // 1.0 + half an ulp (a tie: stays at the even 1.0); 1.0 + three quarters of an ulp (up to 1.0078125);
    // -0 + -0 (stays -0); a NaN delta (PyTorch's NaN).
    const cases: [number, number, number][] = [
      [0x3f80, 0x3b800000, 0x3f80],
      [0x3f80, 0x3bc00000, 0x3f81],
      [0x8000, 0x80000000, 0x8000],
      [0x3f80, 0x7fc00001, 0x7fc0],
    ];
    cases.forEach(([wb, db], i) => {
      wv.setUint16(i * 2, wb, true);
      dv.setUint32(i * 4, db, true);
    });
    addDeltaJs("BF16", w, d, 4);
    cases.forEach(([, , want], i) => expect(wv.getUint16(i * 2, true).toString(16)).toBe(want.toString(16)));
    expect(f32BitsToBf16(0x3b800000)).toBe(0x3b80);
  });
});
