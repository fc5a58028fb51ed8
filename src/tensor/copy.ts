import { sameShape } from "./tensor.js";
import { type View, simplifyPair } from "./view.js";
import { copyRowsInArena, inArena, transposeInArena } from "./wasm/kernels.js";

type Words = Uint8Array | Uint16Array | Uint32Array;

/** Square block edge for strided copies: two 32×32 blocks of 4-byte words stay well inside L1. */
const BLOCK = 32;

function wordsOf(bytes: Uint8Array, wordSize: 1 | 2 | 4): Words {
  const n = bytes.byteLength / wordSize;
  if (wordSize === 1) return bytes;
  if (wordSize === 2) return new Uint16Array(bytes.buffer, bytes.byteOffset, n);
  return new Uint32Array(bytes.buffer, bytes.byteOffset, n);
}

/**
 * Copy the elements of `srcView` (over `src`) to `dstView` (over `dst`), element for element, without
 * interpreting them: bytes are moved as integer words, so NaN payloads and -0 survive. Views are in
 * elements of `itemSize` bytes; both views must have the same shape.
 */
export function copyView(src: Uint8Array, dst: Uint8Array, itemSize: number, srcView: View, dstView: View): void {
  if (!sameShape(srcView.shape, dstView.shape)) {
    throw new RangeError(
      `copyView: shapes differ ([${srcView.shape.join(", ")}] vs [${dstView.shape.join(", ")}])`,
    );
  }
  if (srcView.shape.some((d) => d === 0)) return;

  // Move elements as whole words when both buffers allow it; an 8-byte element is two 4-byte words and an
  // unaligned buffer falls back to bytes. Either way the element becomes a trailing run the merge absorbs.
  let wordSize: 1 | 2 | 4 = itemSize === 1 ? 1 : itemSize === 2 ? 2 : 4;
  if (itemSize !== 1 && itemSize !== 2 && itemSize !== 4 && itemSize !== 8) wordSize = 1;
  if (src.byteOffset % wordSize !== 0 || dst.byteOffset % wordSize !== 0) wordSize = 1;
  const per = itemSize / wordSize;
  const widen = (v: View): View =>
    per === 1
      ? v
      : {
          offset: v.offset * per,
          shape: [...v.shape, per],
          strides: [...v.strides.map((s) => s * per), 1],
        };
  const s = widen(srcView);
  const d = widen(dstView);
  const { shape, src: ss, dst: ds } = simplifyPair(s, d);
  const a = wordsOf(src.subarray(0, src.byteLength - (src.byteLength % wordSize)), wordSize);
  const b = wordsOf(dst.subarray(0, dst.byteLength - (dst.byteLength % wordSize)), wordSize);
  copyStrided(a, s.offset, ss, b, d.offset, ds, shape, 0);
}

function copyStrided(
  a: Words,
  aOff: number,
  as: readonly number[],
  b: Words,
  bOff: number,
  bs: readonly number[],
  shape: readonly number[],
  dim: number,
): void {
  const rank = shape.length - dim;
  if (rank === 0) {
    b[bOff] = a[aOff]!;
    return;
  }
  if (rank === 1) {
    copy1d(a, aOff, as[dim]!, b, bOff, bs[dim]!, shape[dim]!);
    return;
  }
  if (rank === 2) {
    copy2d(a, aOff, as[dim]!, as[dim + 1]!, b, bOff, bs[dim]!, bs[dim + 1]!, shape[dim]!, shape[dim + 1]!);
    return;
  }
  const n = shape[dim]!;
  for (let i = 0; i < n; i++) {
    copyStrided(a, aOff + i * as[dim]!, as, b, bOff + i * bs[dim]!, bs, shape, dim + 1);
  }
}

function copy1d(a: Words, aOff: number, as: number, b: Words, bOff: number, bs: number, n: number): void {
  if (as === 1 && bs === 1) {
    b.set(a.subarray(aOff, aOff + n), bOff);
    return;
  }
  for (let i = 0; i < n; i++) b[bOff + i * bs] = a[aOff + i * as]!;
}

function copy2d(
  a: Words,
  aOff: number,
  a0: number,
  a1: number,
  b: Words,
  bOff: number,
  b0: number,
  b1: number,
  n0: number,
  n1: number,
): void {
  if (a1 === 1 && b1 === 1) {
    // Many short rows (a column piece of a consolidated expert): one kernel call instead of a view per row.
    if (n0 > 1 && inArena(a.buffer) && inArena(b.buffer)) {
      const w = a.BYTES_PER_ELEMENT;
      copyRowsInArena(a.byteOffset + aOff * w, b.byteOffset + bOff * w, n1 * w, n0, a0 * w, b0 * w);
      return;
    }
    for (let i = 0; i < n0; i++) {
      const from = aOff + i * a0;
      b.set(a.subarray(from, from + n1), bOff + i * b0);
    }
    return;
  }
  // The transpose that every expert merge and split is made of: contiguous rows written from columns.
  if (b1 === 1 && a0 === 1) {
    const block = a.BYTES_PER_ELEMENT === 2 ? 8 : 4;
    if (a.BYTES_PER_ELEMENT !== 1 && a.BYTES_PER_ELEMENT === b.BYTES_PER_ELEMENT && n0 >= block && n1 >= block && inArena(a.buffer) && inArena(b.buffer)) {
      // SIMD for the whole 8×8 blocks; the strips left over go through the loops below.
      const size = a.BYTES_PER_ELEMENT as 2 | 4;
      const done = transposeInArena(size, a.byteOffset + aOff * size, b.byteOffset + bOff * size, n1, n0, a1, b0);
      if (done.rows < n1) copy2d(a, aOff + done.rows * a1, a0, a1, b, bOff + done.rows, b0, b1, n0, n1 - done.rows);
      if (done.cols < n0 && done.rows > 0) copy2d(a, aOff + done.cols, a0, a1, b, bOff + done.cols * b0, b0, b1, n0 - done.cols, done.rows);
      return;
    }
    if (a instanceof Uint16Array && b instanceof Uint16Array && transpose16Pairs(a, aOff, a1, b, bOff, b0, n0, n1)) return;
  }
  for (let i0 = 0; i0 < n0; i0 += BLOCK) {
    const i1 = Math.min(i0 + BLOCK, n0);
    for (let j0 = 0; j0 < n1; j0 += BLOCK) {
      const j1 = Math.min(j0 + BLOCK, n1);
      for (let i = i0; i < i1; i++) {
        let ai = aOff + i * a0 + j0 * a1;
        let bi = bOff + i * b0 + j0 * b1;
        for (let j = j0; j < j1; j++) {
          b[bi] = a[ai]!;
          ai += a1;
          bi += b1;
        }
      }
    }
  }
}

/**
 * Transpose of 16-bit elements in 2×2 tiles read and written as 32-bit words: half the memory operations
 * of the element loop. Destination (n0 × n1, row stride bRow) takes dst[i][j] = src[j][i] where the
 * source has row stride aRow. Returns false when alignment or odd sizes rule the tiles out.
 */
function transpose16Pairs(
  a: Uint16Array,
  aOff: number,
  aRow: number,
  b: Uint16Array,
  bOff: number,
  bRow: number,
  n0: number,
  n1: number,
): boolean {
  if ((aOff | aRow | bOff | bRow | n0 | n1) & 1) return false;
  if (a.byteOffset % 4 !== 0 || b.byteOffset % 4 !== 0) return false;
  const a32 = new Uint32Array(a.buffer, a.byteOffset, a.length >>> 1);
  const b32 = new Uint32Array(b.buffer, b.byteOffset, b.length >>> 1);
  const aRow32 = aRow >>> 1;
  const bRow32 = bRow >>> 1;
  const TILE = 64;
  for (let i0 = 0; i0 < n0; i0 += TILE) {
    const i1 = Math.min(i0 + TILE, n0);
    for (let j0 = 0; j0 < n1; j0 += TILE) {
      const j1 = Math.min(j0 + TILE, n1);
      for (let i = i0; i < i1; i += 2) {
        // Source rows j, j+1 at columns i, i+1 become destination rows i, i+1 at columns j, j+1.
        let s = ((aOff + j0 * aRow + i) >>> 1) | 0;
        let d0 = ((bOff + i * bRow + j0) >>> 1) | 0;
        let d1 = d0 + bRow32;
        for (let j = j0; j < j1; j += 2) {
          const x = a32[s]!;
          const y = a32[s + aRow32]!;
          b32[d0++] = (x & 0xffff) | (y << 16);
          b32[d1++] = (x >>> 16) | (y & 0xffff0000);
          s += aRow32 << 1;
        }
      }
    }
  }
  return true;
}
