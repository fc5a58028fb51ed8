import { describe, expect, it } from "vitest";
import { f32BitsToBf16 } from "../../src/tensor/cast.js";
import { copyView } from "../../src/tensor/copy.js";
import { BufferPool } from "../../src/convert/buffer-pool.js";
import { Scratch, transfer } from "../../src/tensor/transfer.js";
import { type View, contiguous, permute, select, slice, transpose } from "../../src/tensor/view.js";
import { type Random, seededRandom } from "../helpers/fixtures.js";

/*
 * copyView is checked against the plainest possible copy: every index tuple, byte by byte. Buffers are
 * subarrays of larger ArrayBuffers, and the whole ArrayBuffer is compared, so a write outside the view or
 * outside the subarray shows up too.
 */

function* indices(shape: readonly number[]): Generator<number[]> {
  if (shape.some((d) => d === 0)) return;
  const index = new Array<number>(shape.length).fill(0);
  for (;;) {
    yield index;
    let k = shape.length - 1;
    while (k >= 0 && ++index[k]! === shape[k]) index[k--] = 0;
    if (k < 0) return;
  }
}

const addressOf = (v: View, index: readonly number[]): number =>
  index.reduce((at, i, k) => at + i * v.strides[k]!, v.offset);

function naiveCopy(src: Uint8Array, dst: Uint8Array, size: number, sv: View, dv: View): void {
  for (const idx of indices(sv.shape)) {
    const a = addressOf(sv, idx) * size;
    const b = addressOf(dv, idx) * size;
    for (let k = 0; k < size; k++) dst[b + k] = src[a + k]!;
  }
}

/** Patterns a float-aware copy would change: signalling and quiet NaNs with payloads, and -0. */
const SPECIAL: Record<number, readonly bigint[]> = {
  2: [0x7c01n, 0xfe01n, 0x7f81n, 0xffffn, 0x8000n],
  4: [0x7f800001n, 0xffc12345n, 0x7fa00000n, 0x80000000n],
  8: [0x7ff0000000000001n, 0xfff8dead0000beefn, 0x7ff4000000000000n, 0x8000000000000000n],
};

/** Random bytes, with about a third of the elements replaced by special patterns. */
function fill(bytes: Uint8Array, size: number, r: Random): void {
  for (let i = 0; i < bytes.length; i++) bytes[i] = r.int(256);
  const special = SPECIAL[size];
  if (!special) return;
  for (let e = 0; (e + 1) * size <= bytes.length; e++) {
    if (r.int(3) !== 0) continue;
    let v = r.pick(special);
    for (let k = 0; k < size; k++, v >>= 8n) bytes[e * size + k] = Number(v & 0xffn);
  }
}

interface Buffer {
  /** The whole allocation, guards included. */
  readonly all: Uint8Array;
  /** What copyView sees: a subarray starting `misalign` bytes in. */
  readonly data: Uint8Array;
}

function buffer(elements: number, size: number, misalign: number, r: Random): Buffer {
  const all = new Uint8Array(misalign + elements * size + 8);
  fill(all, size, r);
  return { all, data: all.subarray(misalign, misalign + elements * size) };
}

function viewEnd(v: View): number {
  return v.shape.some((d) => d === 0) ? 0 : addressOf(v, v.shape.map((d) => d - 1)) + 1;
}

/** Run copyView and the naive copy on identical buffers; return a description of the first difference. */
function check(size: number, sv: View, dv: View, misalign: readonly [number, number], r: Random): string | undefined {
  const src = buffer(Math.max(viewEnd(sv), 1) + r.int(3), size, misalign[0], r);
  const dst = buffer(Math.max(viewEnd(dv), 1) + r.int(3), size, misalign[1], r);
  const srcBefore = src.all.slice();
  const want = dst.all.slice();
  naiveCopy(src.data, want.subarray(misalign[1], misalign[1] + dst.data.length), size, sv, dv);
  copyView(src.data, dst.data, size, sv, dv);
  const at = dst.all.findIndex((b, i) => b !== want[i]);
  if (at >= 0) {
    const what = `item ${size}, misalign ${misalign}, src ${JSON.stringify(sv)}, dst ${JSON.stringify(dv)}`;
    return `${what}: first wrong byte ${at - misalign[1]} of the destination`;
  }
  if (src.all.some((b, i) => b !== srcBefore[i])) return `item ${size}: source modified`;
  return undefined;
}

function randomShape(r: Random): number[] {
  return Array.from({ length: r.int(5) }, () => r.pick([0, 1, 1, 2, 2, 3, 4, 5, 6, 7]));
}

/**
 * A view of exactly `shape` inside a larger random layout: a base tensor holding the dimensions in a
 * random order, some padded (then sliced back), sometimes with an extra dimension selected away, and a
 * leading offset.
 */
function embed(shape: readonly number[], r: Random): View {
  const rank = shape.length;
  const order = r.shuffle(shape.map((_, i) => i)); // base dimension j holds target dimension order[j]
  const pad = shape.map(() => (r.int(3) === 0 ? 1 + r.int(2) : 0));
  const base = order.map((d) => shape[d]! + pad[d]!);
  const extraAt = r.int(3) === 0 ? r.int(rank + 1) : -1;
  const extraSize = 1 + r.int(3);
  if (extraAt >= 0) base.splice(extraAt, 0, extraSize);
  let v = contiguous(base, r.int(4));
  if (extraAt >= 0) v = select(v, extraAt, r.int(extraSize));
  v = permute(
    v,
    shape.map((_, i) => order.indexOf(i)),
  );
  shape.forEach((n, i) => {
    const start = r.int(pad[i]! + 1);
    v = slice(v, i, start, start + n);
  });
  return v;
}

describe("copyView against a naive copy (seeded)", () => {
  it("agrees on 4,000 random view pairs of rank 0-4, item sizes 1/2/4/8, misaligned buffers", () => {
    const r = seededRandom(0xc0b1);
    const problems: string[] = [];
    for (let c = 0; c < 4000 && problems.length < 5; c++) {
      const shape = randomShape(r);
      const size = r.pick([1, 2, 4, 8]);
      const misalign = [r.pick([0, 0, 1, 2, 3, 4, 6, 7]), r.pick([0, 0, 1, 2, 3, 4, 5, 8])] as const;
      const problem = check(size, embed(shape, r), embed(shape, r), misalign, r);
      if (problem !== undefined) problems.push(`case ${c}: ${problem}`);
    }
    expect(problems).toEqual([]);
  });

  it("agrees for item sizes without a word type (3, 6, 16)", () => {
    const r = seededRandom(0x3616);
    const problems: string[] = [];
    for (let c = 0; c < 300; c++) {
      const shape = randomShape(r);
      const problem = check(r.pick([3, 6, 16]), embed(shape, r), embed(shape, r), [r.int(4), r.int(4)], r);
      if (problem !== undefined) problems.push(`case ${c}: ${problem}`);
    }
    expect(problems).toEqual([]);
  });
});

describe("transposes, on and off the 16-bit 2×2 fast path", () => {
  // Even sizes with even offsets and 4-byte-aligned buffers take the paired path; every other row here
  // breaks one of its conditions. Sizes above 64 cross its tiles, above 32 the generic kernel's blocks.
  const sizes: [number, number][] = [
    [2, 2], [4, 6], [6, 4], [64, 64], [66, 130], [130, 66], [128, 2], [2, 128],
    [3, 4], [4, 3], [65, 66], [66, 65], [1, 8], [8, 1], [5, 7],
  ];
  const layouts: { name: string; misalign: [number, number]; srcOffset: number; dstOffset: number }[] = [
    { name: "aligned", misalign: [0, 0], srcOffset: 0, dstOffset: 0 },
    { name: "even element offsets", misalign: [4, 8], srcOffset: 2, dstOffset: 4 },
    { name: "odd source offset", misalign: [0, 0], srcOffset: 1, dstOffset: 0 },
    { name: "odd destination offset", misalign: [0, 0], srcOffset: 0, dstOffset: 3 },
    { name: "source 2 bytes off a word", misalign: [2, 0], srcOffset: 0, dstOffset: 0 },
    { name: "destination at an odd byte", misalign: [0, 1], srcOffset: 0, dstOffset: 0 },
    { name: "source at an odd byte", misalign: [3, 0], srcOffset: 0, dstOffset: 0 },
  ];

  for (const size of [2, 1, 4, 8]) {
    it(`item size ${size}: dst[C, R] = src[R, C]ᵀ for ${sizes.length} sizes × ${layouts.length} layouts`, () => {
      const r = seededRandom(0x7a + size);
      const problems: string[] = [];
      for (const [rows, cols] of sizes) {
        for (const l of layouts) {
          const sv = transpose(contiguous([rows, cols], l.srcOffset), 0, 1);
          const dv = contiguous([cols, rows], l.dstOffset);
          const p = check(size, sv, dv, l.misalign, r);
          if (p !== undefined) problems.push(`${rows}×${cols} ${l.name}: ${p}`);
          // The reverse direction: columns written from contiguous rows.
          const q = check(size, contiguous([cols, rows], l.srcOffset), transpose(contiguous([rows, cols], l.dstOffset), 0, 1), l.misalign, r);
          if (q !== undefined) problems.push(`${rows}×${cols} ${l.name}, reversed: ${q}`);
        }
      }
      expect(problems).toEqual([]);
    });
  }

  it("row strides wider than the copied block, padding before and after, on both sides (16-bit)", () => {
    const r = seededRandom(0x5719);
    const problems: string[] = [];
    // [before, after] the copied columns. Odd block sizes inside even row strides must not take pairs
    // that spill into the padding.
    const pads = [[0, 0], [0, 1], [0, 2], [1, 1], [2, 0], [2, 2], [0, 3]] as const;
    for (const [rows, cols] of [[4, 6], [64, 66], [66, 130], [5, 6], [6, 5], [5, 7]] as const) {
      for (const [sb, sa] of pads) {
        for (const [db, da] of pads) {
          const sv = transpose(slice(contiguous([rows, sb + cols + sa]), 1, sb, sb + cols), 0, 1);
          const dv = slice(contiguous([cols, db + rows + da]), 1, db, db + rows);
          const p = check(2, sv, dv, [0, 0], r);
          if (p !== undefined) problems.push(`${rows}×${cols} src pad ${sb}/${sa} dst pad ${db}/${da}: ${p}`);
        }
      }
    }
    expect(problems).toEqual([]);
  });

  it("batched expert transposes [E, R, C] → [E, C, R] for every item size", () => {
    const r = seededRandom(0xe7);
    const problems: string[] = [];
    for (const size of [1, 2, 4, 8]) {
      for (const [e, rows, cols] of [[4, 16, 12], [3, 66, 34], [2, 7, 9], [8, 2, 2]] as const) {
        const p = check(size, transpose(contiguous([e, rows, cols]), 1, 2), contiguous([e, cols, rows]), [0, 0], r);
        if (p !== undefined) problems.push(`${size}-byte ${e}×${rows}×${cols}: ${p}`);
      }
    }
    expect(problems).toEqual([]);
  });
});

describe("transfer: copy with a cast on the way", () => {
  it("matches a naive per-element cast over 1,000 random F32 → BF16 view pairs, misaligned sources", () => {
    const r = seededRandom(0x7f32);
    const scratch = new Scratch();
    const problems: string[] = [];
    for (let c = 0; c < 1000 && problems.length < 5; c++) {
      const shape = randomShape(r);
      const sv = embed(shape, r);
      const dv = embed(shape, r);
      const misalign = r.pick([0, 1, 2, 3, 4]);
      const src = buffer(Math.max(viewEnd(sv), 1), 4, misalign, r);
      const dst = buffer(Math.max(viewEnd(dv), 1), 2, r.pick([0, 2]), r);
      const want = dst.data.slice();
      const srcWords = new DataView(src.data.buffer, src.data.byteOffset, src.data.byteLength);
      const wantWords = new DataView(want.buffer);
      for (const idx of indices(shape)) {
        const bits = srcWords.getUint32(addressOf(sv, idx) * 4, true);
        wantWords.setUint16(addressOf(dv, idx) * 2, f32BitsToBf16(bits), true);
      }
      transfer(src.data, "F32", sv, dst.data, "BF16", dv, scratch);
      if (!dst.data.every((b, i) => b === want[i])) problems.push(`case ${c}: ${JSON.stringify({ sv, dv, misalign })}`);
    }
    expect(problems).toEqual([]);
  });

  it("is a plain bit copy when the dtypes agree", () => {
    const src = new Uint32Array([0x7f800001, 0x80000000, 0xffc12345, 0x3f800000]);
    const dst = new Uint32Array(4);
    transfer(new Uint8Array(src.buffer), "F32", transpose(contiguous([2, 2]), 0, 1), new Uint8Array(dst.buffer), "F32", contiguous([2, 2]));
    expect([...dst]).toEqual([0x7f800001, 0xffc12345, 0x80000000, 0x3f800000]);
  });
});

describe("transfer with pool-backed scratch", () => {
  it("casts then transposes in the kernels' arena with the same bytes as plain memory, and gives the scratch back", () => {
    const r = seededRandom(0xbf16);
    const pool = new BufferPool();
    const [experts, rows, cols] = [3, 40, 24];
    const src = pool.acquire(experts * rows * cols * 2);
    fill(src, 2, r);
    const dstView = contiguous([experts, cols, rows]);
    const srcView = transpose(contiguous([experts, rows, cols]), 1, 2);
    const plain = new Uint8Array(experts * rows * cols * 4);
    transfer(src, "BF16", srcView, plain, "F32", dstView, new Scratch());

    const given: Uint8Array[] = [];
    const taken: Uint8Array[] = [];
    const scratch = new Scratch({
      acquire: (n) => {
        const b = pool.acquire(n);
        given.push(b);
        return b;
      },
      release: (b) => {
        taken.push(b);
        pool.release(b);
      },
    });
    const pooled = pool.acquire(plain.byteLength);
    transfer(src, "BF16", srcView, pooled, "F32", dstView, scratch);
    expect(Buffer.from(pooled).equals(plain)).toBe(true);
    expect(given.length).toBeGreaterThan(0);
    expect(given.every((b) => b.buffer === src.buffer)).toBe(true);
    scratch.release();
    expect(taken).toEqual(given);
  });
});

describe("copyView, by hand", () => {
  it("transposes a 2×3 matrix of 16-bit words, NaN payloads and -0 untouched", () => {
    const src = new Uint16Array([0x7c01, 0x8000, 0x0001, 0xfe01, 0x7f81, 0xffff]);
    const dst = new Uint16Array(6);
    copyView(new Uint8Array(src.buffer), new Uint8Array(dst.buffer), 2, transpose(contiguous([2, 3]), 0, 1), contiguous([3, 2]));
    expect([...dst]).toEqual([0x7c01, 0xfe01, 0x8000, 0x7f81, 0x0001, 0xffff]);
  });

  it("copies float64 signalling NaNs and -0 bit for bit, from an odd byte offset", () => {
    const words = [0x7ff0000000000001n, 0x8000000000000000n, 0xfff8dead0000beefn];
    const all = new Uint8Array(1 + 24);
    const view = new DataView(all.buffer);
    words.forEach((w, i) => view.setBigUint64(1 + 8 * i, w, true));
    const out = new BigUint64Array(3);
    copyView(all.subarray(1), new Uint8Array(out.buffer), 8, contiguous([3]), contiguous([3]));
    expect([...out]).toEqual(words);
  });

  it("writes a 0-d view (one element) and nothing for size-0 views", () => {
    const src = Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8]);
    const dst = new Uint8Array(8).fill(0xee);
    copyView(src, dst, 4, select(contiguous([2]), 0, 1), contiguous([]));
    expect([...dst]).toEqual([5, 6, 7, 8, 0xee, 0xee, 0xee, 0xee]);
    copyView(src, dst, 4, contiguous([0, 2]), contiguous([0, 2], 1));
    expect([...dst]).toEqual([5, 6, 7, 8, 0xee, 0xee, 0xee, 0xee]);
  });

  it("refuses views of different shapes, naming both", () => {
    const b = new Uint8Array(48);
    expect(() => copyView(b, b.slice(), 4, contiguous([3, 4]), contiguous([4, 3]))).toThrow(
      new RangeError("copyView: shapes differ ([3, 4] vs [4, 3])"),
    );
    expect(() => copyView(b, b.slice(), 4, contiguous([12]), contiguous([12, 1]))).toThrow(new RangeError("copyView: shapes differ ([12] vs [12, 1])"));
  });
});
