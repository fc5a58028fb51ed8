import { describe, expect, it } from "vitest";
import { BufferPool } from "../../src/convert/buffer-pool.js";
import { copyView } from "../../src/tensor/copy.js";
import { contiguous, slice, transpose } from "../../src/tensor/view.js";
import { inArena } from "../../src/tensor/wasm/kernels.js";
import { seededRandom } from "../helpers/fixtures.js";

/** dst = srcᵀ computed element by element, the obvious way. */
function naiveTranspose(src: Uint8Array, rows: number, cols: number, item: number, srcRow: number, dstRow: number, dst: Uint8Array): void {
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      for (let b = 0; b < item; b++) dst[(c * dstRow + r) * item + b] = src[(r * srcRow + c) * item + b]!;
    }
  }
}

describe("SIMD transposes in the kernel arena", () => {
  const pool = new BufferPool();

  it("hands out arena memory, so the WebAssembly kernels are used", () => {
    const b = pool.acquire(1024);
    expect(inArena(b.buffer)).toBe(true);
    pool.release(b);
  });

  for (const item of [2, 4] as const) {
    it(`item size ${item}: matches the naive transpose for sizes around the 8×8 blocks and 128 tiles, with padded rows`, () => {
      const rand = seededRandom(item * 7919);
      const sizes = [1, 3, 4, 7, 8, 9, 15, 16, 17, 31, 64, 127, 128, 129, 200];
      for (let k = 0; k < 120; k++) {
        const rows = sizes[rand.int(sizes.length)]!;
        const cols = sizes[rand.int(sizes.length)]!;
        const padSrc = rand.int(3) === 0 ? rand.int(9) : 0;
        const padDst = rand.int(3) === 0 ? rand.int(9) : 0;
        const srcRow = cols + padSrc;
        const dstRow = rows + padDst;
        const src = pool.acquire(rows * srcRow * item);
        const dst = pool.acquire(cols * dstRow * item);
        const expected = new Uint8Array(dst.byteLength);
        for (let i = 0; i < src.length; i++) src[i] = rand.int(256);
        for (let i = 0; i < dst.length; i++) dst[i] = expected[i] = rand.int(256);
        naiveTranspose(src, rows, cols, item, srcRow, dstRow, expected);
        // The source is [rows, cols] inside rows of srcRow; the destination [cols, rows] inside rows of dstRow.
        const srcView = transpose(slice(contiguous([rows, srcRow]), 1, 0, cols), 0, 1);
        const dstView = slice(contiguous([cols, dstRow]), 1, 0, rows);
        copyView(src, dst, item, srcView, dstView);
        expect(Buffer.from(dst).equals(Buffer.from(expected)), `rows ${rows} cols ${cols} pads ${padSrc}/${padDst}`).toBe(true);
        pool.release(src);
        pool.release(dst);
      }
    });
  }

  it("strided rows (a column piece put in place) match the copy outside the arena", () => {
    const rand = seededRandom(4242);
    for (let k = 0; k < 200; k++) {
      const item = [1, 2, 4, 8][rand.int(4)]!;
      const rows = 1 + rand.int(40);
      const cols = 1 + rand.int(40);
      const width = cols + rand.int(40);
      const at = rand.int(width - cols + 1);
      // A [rows, cols] piece, contiguous, into columns [at, at + cols) of a [rows, width] tensor.
      const src = pool.acquire(rows * cols * item);
      const dst = pool.acquire(rows * width * item);
      for (let i = 0; i < src.length; i++) src[i] = rand.int(256);
      for (let i = 0; i < dst.length; i++) dst[i] = rand.int(256);
      const plain = new Uint8Array(dst);
      const dstView = slice(contiguous([rows, width]), 1, at, at + cols);
      copyView(src, dst, item, contiguous([rows, cols]), dstView);
      copyView(new Uint8Array(src), plain, item, contiguous([rows, cols]), dstView);
      expect(Buffer.from(dst).equals(Buffer.from(plain)), `item ${item} rows ${rows} cols ${cols} width ${width} at ${at}`).toBe(true);
      pool.release(src);
      pool.release(dst);
    }
  });

  it("reuses freed arena space, lowest addresses first, and coalesces neighbours", () => {
    const a = pool.acquire(1000);
    const b = pool.acquire(1000);
    const c = pool.acquire(1000);
    const at = (x: Uint8Array) => x.byteOffset;
    expect(at(b) - at(a)).toBe(1024);
    pool.release(a);
    pool.release(b);
    const big = pool.acquire(2000);
    expect(at(big)).toBe(at(a));
    pool.release(big);
    pool.release(c);
  });
});
