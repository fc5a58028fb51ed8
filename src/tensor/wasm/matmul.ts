import { f16BitsToF32, f32BitsToBf16, f32BitsToF16 } from "../cast.js";
import { inArena, kernelExports } from "./kernels.js";

/**
 * The LoRA merge's arithmetic: `delta = scale · L·R` in float32 (a blocked SIMD kernel in kernels.wat), then
 * `W ← W + delta.to(W.dtype)` in W's dtype, as PyTorch's `W.add_(((B.float() @ A.float()) * scale).to(W.dtype))`.
 * Sums run over k in order with every product and sum rounded on its own: WebAssembly has no fused
 * multiply-add, so the SIMD lanes, the scalar tails and the JavaScript fallback below give the same bits.
 * Buffers are byte views whose first byte is element [0][0]; strides count elements.
 */
interface LoraExports {
  lora_matmul_f32(l: number, ls: number, rm: number, rs: number, out: number, os: number, rows: number, cols: number, r: number, scale: number): void;
  lora_add_bf16(w: number, d: number, n: number): void;
  lora_add_f32(w: number, d: number, n: number): void;
}

let exportsCache: LoraExports | null | undefined;

function kernels(): LoraExports | null {
  if (exportsCache === undefined) {
    const e = kernelExports();
    exportsCache = e && typeof e["lora_matmul_f32"] === "function" ? (e as unknown as LoraExports) : null;
  }
  return exportsCache;
}

/** Whether these buffers can all go to the WebAssembly kernels (they live in the kernels' memory). */
function allInArena(...bufs: Uint8Array[]): boolean {
  return bufs.every((b) => inArena(b.buffer));
}

function f32s(b: Uint8Array, count: number): Float32Array {
  return new Float32Array(b.buffer, b.byteOffset, count);
}

/**
 * out[i][j] = scale · Σ_k l[i][k]·r[k][j] (float32), for i < rows, j < cols, k < rank. `l`, `r` and `out`
 * hold float32 elements, 4-byte aligned.
 */
export function matmulScaled(
  l: Uint8Array,
  lStride: number,
  r: Uint8Array,
  rStride: number,
  out: Uint8Array,
  outStride: number,
  rows: number,
  cols: number,
  rank: number,
  scale: number,
): void {
  if (rows === 0 || cols === 0) return;
  const k = kernels();
  if (k && allInArena(l, r, out)) {
    k.lora_matmul_f32(l.byteOffset, lStride, r.byteOffset, rStride, out.byteOffset, outStride, rows, cols, rank, Math.fround(scale));
    return;
  }
  matmulScaledJs(l, lStride, r, rStride, out, outStride, rows, cols, rank, scale);
}

/** The same in plain JavaScript: where WebAssembly is unavailable or a buffer lies outside its memory. */
export function matmulScaledJs(
  l: Uint8Array,
  lStride: number,
  r: Uint8Array,
  rStride: number,
  out: Uint8Array,
  outStride: number,
  rows: number,
  cols: number,
  rank: number,
  scale: number,
): void {
  if (rows === 0 || cols === 0) return;
  const L = f32s(l, (rows - 1) * lStride + rank);
  const R = f32s(r, rank === 0 ? 0 : (rank - 1) * rStride + cols);
  const O = f32s(out, (rows - 1) * outStride + cols);
  const s = Math.fround(scale);
  const fr = Math.fround;
  for (let i = 0; i < rows; i++) {
    const li = i * lStride;
    const oi = i * outStride;
    for (let j = 0; j < cols; j++) {
      let acc = 0;
      for (let q = 0, rp = j; q < rank; q++, rp += rStride) acc = fr(acc + fr(L[li + q]! * R[rp]!));
      O[oi + j] = fr(acc * s);
    }
  }
}

/** Weight dtypes a delta can be added to. */
export type MergeDType = "BF16" | "F16" | "F32";

/**
 * n weights of `dtype` (any alignment of their item size) += n float32 deltas (4-byte aligned): each delta
 * rounded to the weight's dtype, then the sum computed in float32 and rounded back, as PyTorch adds two
 * half-precision tensors on the CPU.
 */
export function addDelta(dtype: MergeDType, w: Uint8Array, delta: Uint8Array, n: number): void {
  if (n === 0) return;
  const k = kernels();
  if (k && dtype !== "F16" && allInArena(w, delta)) {
    if (dtype === "BF16") k.lora_add_bf16(w.byteOffset, delta.byteOffset, n);
    else k.lora_add_f32(w.byteOffset, delta.byteOffset, n);
    return;
  }
  addDeltaJs(dtype, w, delta, n);
}

const bits = new DataView(new ArrayBuffer(4));

function f32Bits(x: number): number {
  bits.setFloat32(0, x, true);
  return bits.getUint32(0, true);
}

function bitsF32(b: number): number {
  bits.setUint32(0, b >>> 0, true);
  return bits.getFloat32(0, true);
}

/** The same in plain JavaScript (and for float16 weights, which have no SIMD path). */
export function addDeltaJs(dtype: MergeDType, w: Uint8Array, delta: Uint8Array, n: number): void {
  const d = f32s(delta, n);
  const wv = new DataView(w.buffer, w.byteOffset, w.byteLength);
  const fr = Math.fround;
  for (let i = 0; i < n; i++) {
    if (dtype === "F32") {
      wv.setFloat32(i * 4, fr(wv.getFloat32(i * 4, true) + d[i]!), true);
    } else if (dtype === "BF16") {
      const dw = bitsF32(f32BitsToBf16(f32Bits(d[i]!)) << 16);
      const sum = fr(bitsF32(wv.getUint16(i * 2, true) << 16) + dw);
      wv.setUint16(i * 2, f32BitsToBf16(f32Bits(sum)), true);
    } else {
      const dw = bitsF32(f16BitsToF32(f32BitsToF16(f32Bits(d[i]!))));
      const sum = fr(bitsF32(f16BitsToF32(wv.getUint16(i * 2, true))) + dw);
      wv.setUint16(i * 2, f32BitsToF16(f32Bits(sum)), true);
    }
  }
}
