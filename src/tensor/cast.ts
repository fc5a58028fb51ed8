import { type DType, isFloat, itemSize } from "./dtype.js";
import { float8Table } from "../quant/float8.js";
import { inArena, widenBf16InArena } from "./wasm/kernels.js";

/**
 * Float casts that match PyTorch bit for bit (SPEC §4). Narrowing rounds to nearest, ties to even, on the
 * bit patterns (the algorithm of c10::detail::round_to_nearest_even and of IEEE 754 binary16 conversion);
 * widening is exact. Values move through integer views so no NaN payload or -0 is touched by the engine.
 */

/** The NaN PyTorch's scalar path produces for bfloat16. */
const BF16_NAN = 0x7fc0;

export function f32BitsToBf16(bits: number): number {
  if ((bits & 0x7f800000) === 0x7f800000 && (bits & 0x007fffff) !== 0) return BF16_NAN;
  const lsb = (bits >>> 16) & 1;
  return ((bits >>> 0) + 0x7fff + lsb) >>> 16;
}

/** IEEE 754 binary32 → binary16, round to nearest even, overflow to ±inf, gradual underflow. */
export function f32BitsToF16(bits: number): number {
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  const mant = bits & 0x7fffff;
  if (exp === 0xff) return sign | (mant !== 0 ? 0x7e00 : 0x7c00);
  // Unbiased exponent re-biased for half precision.
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    // Subnormal half (or zero): shift the full significand (with its implicit 1) into place.
    if (e < -10) return sign;
    const m = mant | 0x800000;
    const shift = 14 - e;
    const half = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    return sign | (half + (rem > mid || (rem === mid && (half & 1) === 1) ? 1 : 0));
  }
  const half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  // A carry out of the mantissa correctly bumps the exponent, up to infinity.
  return sign | (half + (rem > 0x1000 || (rem === 0x1000 && (half & 1) === 1) ? 1 : 0));
}

let f16Table: Uint32Array | undefined;

/** binary16 bits → binary32 bits for all 65,536 patterns, exact. */
function f16ToF32Table(): Uint32Array {
  if (f16Table) return f16Table;
  const t = new Uint32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = (h & 0x8000) << 16;
    const exp = (h >>> 10) & 0x1f;
    const mant = h & 0x3ff;
    let bits: number;
    // PyTorch widens half through float arithmetic, which quiets a signalling NaN; do the same.
    if (exp === 0x1f) bits = sign | 0x7f800000 | (mant << 13) | (mant !== 0 ? 0x400000 : 0);
    else if (exp !== 0) bits = sign | ((exp - 15 + 127) << 23) | (mant << 13);
    else if (mant === 0) bits = sign;
    else {
      // Normalize the subnormal: value = mant × 2^-24.
      let e = -14;
      let m = mant;
      while ((m & 0x400) === 0) {
        m <<= 1;
        e--;
      }
      bits = sign | ((e + 127) << 23) | ((m & 0x3ff) << 13);
    }
    t[h] = bits >>> 0;
  }
  f16Table = t;
  return t;
}

export function f16BitsToF32(h: number): number {
  return f16ToF32Table()[h & 0xffff]!;
}

function u16(bytes: Uint8Array, count: number): Uint16Array {
  return new Uint16Array(bytes.buffer, bytes.byteOffset, count);
}
function u32(bytes: Uint8Array, count: number): Uint32Array {
  return new Uint32Array(bytes.buffer, bytes.byteOffset, count);
}

/** Decode `count` floats of any float dtype to binary32 bit patterns (exact except F64, which rounds). */
function toF32Bits(src: Uint8Array, from: DType, out: Uint32Array, count: number): void {
  switch (from) {
    case "F32":
      out.set(u32(src, count));
      return;
    case "BF16": {
      const s = u16(src, count);
      // SIMD where both sides are in the kernels' arena: V8's loop manages ~1.8 ns an element.
      const done = inArena(src.buffer) && inArena(out.buffer) ? widenBf16InArena(src.byteOffset, out.byteOffset, count) : 0;
      for (let i = done; i < count; i++) out[i] = s[i]! << 16;
      return;
    }
    case "F16": {
      const s = u16(src, count);
      const t = f16ToF32Table();
      for (let i = 0; i < count; i++) out[i] = t[s[i]!]!;
      return;
    }
    case "F64": {
      // JS number → float32 assignment rounds to nearest even, as a C cast does; NaN stays NaN.
      const s = new Float64Array(src.buffer, src.byteOffset, count);
      const f = new Float32Array(out.buffer, out.byteOffset, count);
      for (let i = 0; i < count; i++) f[i] = s[i]!;
      return;
    }
    case "F8_E4M3":
    case "F8_E5M2": {
      // One definition of the float8 codes, PyTorch's (src/quant/float8.ts).
      const t = float8Table(from);
      for (let i = 0; i < count; i++) out[i] = t[src[i]!]!;
      return;
    }
    default:
      throw new TypeError(`cannot read ${from} as a float`);
  }
}

/** Elements converted per pass when a cast goes through binary32, bounding scratch memory. */
const CAST_BLOCK = 1 << 16;
let block: Uint32Array | undefined;

/** The pass buffer, shared: casts are synchronous, and a stream casts one piece after another. */
function castBlock(count: number): Uint32Array {
  block ??= new Uint32Array(CAST_BLOCK);
  return count < CAST_BLOCK ? block.subarray(0, count) : block;
}

/**
 * Cast `count` elements of `from` in `src` to `to` in `dst`. Supported targets are F32, F16, BF16 and F64,
 * from any float dtype; a cast to the same dtype is a copy. Both buffers must be aligned to their item size.
 */
export function castInto(src: Uint8Array, from: DType, dst: Uint8Array, to: DType, count: number): void {
  if (count === 0) return;
  if (from === to) {
    dst.set(src.subarray(0, count * itemSize(from)));
    return;
  }
  if (!isFloat(from) || !isFloat(to)) throw new TypeError(`no cast from ${from} to ${to}: only floats are cast`);
  if (src.byteOffset % itemSize(from) !== 0 || dst.byteOffset % itemSize(to) !== 0) {
    throw new RangeError("castInto: buffers must be aligned to their item size");
  }
  if (to === "F64") {
    const d = new Float64Array(dst.buffer, dst.byteOffset, count);
    if (from === "F32") {
      d.set(new Float32Array(src.buffer, src.byteOffset, count));
      return;
    }
    const bits = castBlock(count);
    const f = new Float32Array(bits.buffer);
    for (let start = 0; start < count; start += bits.length) {
      const n = Math.min(bits.length, count - start);
      toF32Bits(src.subarray(start * itemSize(from)), from, bits, n);
      for (let i = 0; i < n; i++) d[start + i] = f[i]!;
    }
    return;
  }
  if (to === "F32") {
    toF32Bits(src, from, u32(dst, count), count);
    return;
  }
  if (to !== "BF16" && to !== "F16") throw new TypeError(`no cast to ${to}`);
  const out = u16(dst, count);
  const narrow = to === "BF16" ? f32BitsToBf16 : f32BitsToF16;
  if (from === "F32") {
    const s = u32(src, count);
    for (let i = 0; i < count; i++) out[i] = narrow(s[i]!);
    return;
  }
  const bits = castBlock(count);
  for (let start = 0; start < count; start += bits.length) {
    const n = Math.min(bits.length, count - start);
    toF32Bits(src.subarray(start * itemSize(from)), from, bits, n);
    for (let i = 0; i < n; i++) out[start + i] = narrow(bits[i]!);
  }
}

/** Float values as float64, exactly (every float dtype widens without loss); any alignment. */
export function toFloat64(bytes: Uint8Array, dtype: DType): Float64Array {
  const count = bytes.byteLength / itemSize(dtype);
  const out = new Float64Array(count);
  let src = bytes;
  if (src.byteOffset % itemSize(dtype) !== 0) src = bytes.slice();
  castInto(src, dtype, new Uint8Array(out.buffer), "F64", count);
  return out;
}

/** Whether `castInto` can produce `to` from `from`. */
export function canCast(from: DType, to: DType): boolean {
  return from === to || (isFloat(from) && (to === "F32" || to === "F16" || to === "BF16" || to === "F64"));
}
