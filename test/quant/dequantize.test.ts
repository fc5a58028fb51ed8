import { describe, expect, it } from "vitest";
import type { PieceScale } from "../../src/adapters/plan.js";
import { BufferPool } from "../../src/convert/buffer-pool.js";
import { dequantizeToBf16, scaleValues } from "../../src/quant/dequantize.js";
import { inArena } from "../../src/tensor/wasm/kernels.js";
import { seededRandom } from "../helpers/fixtures.js";
import { dequantizedBf16 } from "../helpers/quant-oracle.js";

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
const f32Of = (bits: number): number => {
  u32[0] = bits;
  return f32[0]!;
};
const hex = (n: number): string => `0x${n.toString(16).padStart(4, "0")}`;

/** Scales that reach every corner: exact, ties, overflow to inf, float32 and bfloat16 subnormals, 0, NaN. */
const SCALES = [
  1, 2 ** -9, 1 + 2 ** -23, 1 / 448, 100, 127.99, -0, 0.1, 3.0517578125e-5, 1e38, 2 ** 120, 2 ** -130, 1e-45, 2 ** -149, 0, -1, -0.75,
  Infinity, NaN, f32Of(0x3f808000), f32Of(0x3f818000), f32Of(0x00800000), f32Of(0x7f7fffff),
].map((x) => Math.fround(x));

const all = Uint8Array.from({ length: 256 }, (_, i) => i);

/** Run the kernel with its buffers in plain memory (the JavaScript path) or in the SIMD arena. */
function run(codes: Uint8Array, format: "F8_E4M3" | "F8_E5M2", first: number, scale: PieceScale, values: Float32Array, arena: boolean): Uint16Array {
  const pool = new BufferPool();
  const src = arena ? pool.acquire(codes.byteLength) : new Uint8Array(codes.byteLength);
  const outBytes = arena ? pool.acquire(codes.byteLength * 2) : new Uint8Array(codes.byteLength * 2);
  if (arena) expect(inArena(src.buffer) && inArena(outBytes.buffer)).toBe(true);
  src.set(codes);
  const out = new Uint16Array(outBytes.buffer, outBytes.byteOffset, codes.byteLength);
  dequantizeToBf16(src, format, out, codes.byteLength, first, scale, values);
  const copy = out.slice();
  if (arena) {
    pool.release(src);
    pool.release(outBytes);
  }
  return copy;
}

describe("dequantizeToBf16: bit-identical to (w.to(float32) * scale).to(bfloat16)", () => {
  for (const format of ["F8_E4M3", "F8_E5M2"] as const) {
    for (const arena of [false, true]) {
      it(`${format}, all 256 codes × ${SCALES.length} scales (${arena ? "SIMD" : "JavaScript"} path)`, () => {
        const wrong: string[] = [];
        for (const s of SCALES) {
          const got = run(all, format, 0, { src: "s", layout: "tensor", cols: 256 }, Float32Array.of(s), arena);
          for (let c = 0; c < 256; c++) {
            const want = dequantizedBf16(c, format, s);
            if (got[c] !== want) wrong.push(`code ${c.toString(16)} × ${s}: ${hex(got[c]!)} != ${hex(want)}`);
          }
        }
        expect(wrong.slice(0, 10)).toEqual([]);
      });
    }
  }

  it("a NaN code or product becomes 0x7FC0; -0 stays -0; overflow becomes ±inf", () => {
    const got = run(Uint8Array.of(0x7f, 0xff, 0x80, 0x7e, 0xfe, 0x00), "F8_E4M3", 0, { src: "s", layout: "tensor", cols: 6 }, Float32Array.of(1e38), false);
    expect([...got].map(hex)).toEqual(["0x7fc0", "0x7fc0", "0x8000", "0x7f80", "0xff80", "0x0000"]);
  });

  const rng = seededRandom(12);
  const randomCodes = (n: number): Uint8Array => Uint8Array.from({ length: n }, () => rng.int(256));
  const randomScales = (n: number): Float32Array => Float32Array.from({ length: n }, () => Math.fround(2 ** (rng.int(40) - 30) * (1 + rng.int(1 << 23) / 2 ** 23)));

  /** The scale of element (i, j), written from the layouts' definitions. */
  function scaleAt(layout: PieceScale, values: Float32Array, i: number, j: number): number {
    if (layout.layout === "tensor") return values[0]!;
    if (layout.layout === "row") return values[i]!;
    const [br, bc] = layout.block!;
    return values[Math.floor(i / br) * Math.ceil(layout.cols / bc) + Math.floor(j / bc)]!;
  }

  const cases: [string, number, number, PieceScale, number][] = [
    ["per row", 37, 53, { src: "s", layout: "row", cols: 53 }, 37],
    ["128×128 blocks, ragged last blocks", 300, 270, { src: "s", layout: "block", cols: 270, block: [128, 128] }, 3 * 3],
    ["2×3 blocks", 7, 8, { src: "s", layout: "block", cols: 8, block: [2, 3] }, 4 * 3],
  ];
  for (const [what, rows, cols, layout, nScales] of cases) {
    for (const arena of [false, true]) {
      it(`${what}: each element takes its own scale, from any starting element (${arena ? "SIMD" : "JavaScript"})`, () => {
        const codes = randomCodes(rows * cols);
        const values = randomScales(nScales);
        const wrong: string[] = [];
        // Whole tensor, then ranges starting and ending mid-row and mid-block.
        const n = rows * cols;
        const tail = Math.min(130, n - 1);
        for (const [first, count] of [[0, n], [cols + 5, Math.min(3 * cols + 17, n - cols - 5)], [n - tail, tail]] as const) {
          const got = run(codes.subarray(first, first + count), "F8_E4M3", first, layout, values, arena);
          for (let k = 0; k < count; k++) {
            const f = first + k;
            const want = dequantizedBf16(codes[f]!, "F8_E4M3", scaleAt(layout, values, Math.floor(f / cols), f % cols));
            if (got[k] !== want) wrong.push(`element ${f}: ${hex(got[k]!)} != ${hex(want)}`);
          }
        }
        expect(wrong.slice(0, 10)).toEqual([]);
      });
    }
  }

  it("scale tensors in bf16 or f16 are widened exactly", () => {
    expect([...scaleValues(Uint8Array.of(0x80, 0x3f, 0x00, 0xc0), "BF16")]).toEqual([1, -2]);
    expect([...scaleValues(Uint8Array.of(0x00, 0x3c, 0x01, 0x00), "F16")]).toEqual([1, 2 ** -24]);
    expect([...scaleValues(new Uint8Array(Float32Array.of(0.25, 3).buffer), "F32")]).toEqual([0.25, 3]);
  });
});
