import { expect } from "vitest";
import type { Diagnostic, Logger } from "../../src/adapters/plan.js";
import { type DType, itemSize } from "../../src/tensor/dtype.js";
import { type Tensor, numel } from "../../src/tensor/tensor.js";
import { type Random, compareTensors } from "./fixtures.js";

/*
 * Small in-memory state dicts for the adapter tests, and the plainest possible element arithmetic to
 * compute what a conversion must produce: every index tuple, bit pattern by bit pattern, with no use of
 * the view machinery the adapters themselves run on.
 */

/** A tensor of random bytes (any bit pattern, NaNs included: a same-dtype conversion copies bytes). */
export function randomTensor(dtype: DType, shape: readonly number[], r: Random): Tensor {
  const data = new Uint8Array(numel(shape) * itemSize(dtype));
  for (let i = 0; i < data.length; i++) data[i] = r.int(256);
  return { dtype, shape: [...shape], data };
}

/** A tensor whose elements are the given bit patterns (item size 1, 2 or 4), little-endian. */
export function tensorOfBits(dtype: DType, shape: readonly number[], bits: readonly number[]): Tensor {
  const size = itemSize(dtype);
  if (bits.length !== numel(shape)) throw new Error(`tensorOfBits: ${bits.length} values for shape [${shape.join(", ")}]`);
  const data = new Uint8Array(bits.length * size);
  const view = new DataView(data.buffer);
  bits.forEach((b, i) => {
    if (size === 1) view.setUint8(i, b);
    else if (size === 2) view.setUint16(i * 2, b, true);
    else if (size === 4) view.setUint32(i * 4, b >>> 0, true);
    else throw new Error(`tensorOfBits: item size ${size} not supported`);
  });
  return { dtype, shape: [...shape], data };
}

/** Every element's bit pattern, in row-major order (item size 1, 2 or 4). */
export function bitsOf(t: Tensor): number[] {
  const size = itemSize(t.dtype);
  const view = new DataView(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  const out: number[] = [];
  for (let i = 0; i < t.data.byteLength / size; i++) {
    out.push(size === 1 ? view.getUint8(i) : size === 2 ? view.getUint16(i * 2, true) : view.getUint32(i * 4, true));
  }
  return out;
}

/** Row-major offset of an index tuple. */
export function offsetOf(shape: readonly number[], index: readonly number[]): number {
  let at = 0;
  for (let k = 0; k < shape.length; k++) at = at * shape[k]! + index[k]!;
  return at;
}

/** The bytes of one element, as hex (any item size). */
export function elementHex(t: Tensor, index: readonly number[]): string {
  const size = itemSize(t.dtype);
  const at = offsetOf(t.shape, index) * size;
  return Buffer.from(t.data.subarray(at, at + size)).toString("hex");
}

export function* indices(shape: readonly number[]): Generator<number[]> {
  if (shape.some((d) => d === 0)) return;
  const index = new Array<number>(shape.length).fill(0);
  for (;;) {
    yield [...index];
    let k = shape.length - 1;
    while (k >= 0 && ++index[k]! === shape[k]) index[k--] = 0;
    if (k < 0) return;
  }
}

/**
 * A tensor of `shape` and `dtype` whose element at `index` is the element `from(index)` of `src`, byte for
 * byte: the reference every transpose, stack, concatenation and reshape is checked against.
 */
export function gather(shape: readonly number[], pick: (index: number[]) => [Tensor, number[]]): Tensor {
  let dtype: DType | undefined;
  const parts: Uint8Array[] = [];
  for (const idx of indices(shape)) {
    const [src, at] = pick(idx);
    dtype ??= src.dtype;
    if (src.dtype !== dtype) throw new Error("gather: mixed dtypes");
    const size = itemSize(src.dtype);
    const o = offsetOf(src.shape, at) * size;
    if (at.length !== src.shape.length || at.some((v, k) => v < 0 || v >= src.shape[k]!)) {
      throw new Error(`gather: index [${at.join(", ")}] outside [${src.shape.join(", ")}]`);
    }
    parts.push(src.data.subarray(o, o + size));
  }
  if (dtype === undefined) throw new Error("gather: empty shape needs an explicit dtype");
  const data = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    data.set(p, at);
    at += p.length;
  }
  return { dtype, shape: [...shape], data };
}

/** Apply a bit-pattern function to every element, giving a tensor of another dtype. */
export function mapBits(t: Tensor, dtype: DType, f: (bits: number) => number): Tensor {
  return tensorOfBits(dtype, t.shape, bitsOf(t).map(f));
}

// ---- float bit patterns, written out independently of src/tensor/cast.ts ----

/** bfloat16 → float32 is the top half of the float32. */
export const bf16ToF32 = (h: number): number => (h << 16) >>> 0;

/** binary16 → binary32 for every non-NaN pattern (normal, subnormal, ±0, ±inf). */
export function f16ToF32(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  let mant = h & 0x3ff;
  if (exp === 0x1f) {
    if (mant !== 0) throw new Error("f16ToF32: NaN has no single expected pattern here");
    return (sign | 0x7f800000) >>> 0;
  }
  if (exp !== 0) return (sign | ((exp - 15 + 127) << 23) | (mant << 13)) >>> 0;
  if (mant === 0) return sign >>> 0;
  let e = -14;
  while ((mant & 0x400) === 0) {
    mant <<= 1;
    e--;
  }
  return (sign | ((e + 127) << 23) | ((mant & 0x3ff) << 13)) >>> 0;
}

/** float32 → bfloat16, round to nearest even, for every non-NaN pattern (PyTorch's formula). */
export function f32ToBf16(x: number): number {
  if ((x & 0x7f800000) === 0x7f800000 && (x & 0x7fffff) !== 0) throw new Error("f32ToBf16: NaN");
  return ((x >>> 0) + 0x7fff + ((x >>> 16) & 1)) >>> 16;
}

/** float32 → binary16 for values binary16 holds exactly (normal numbers and zeros): no rounding involved. */
export function f32ToF16Exact(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const mant = x & 0x7fffff;
  if (exp === 0 && mant === 0) return sign;
  const e = exp - 127 + 15;
  if (e <= 0 || e >= 0x1f || (mant & 0x1fff) !== 0) throw new Error(`f32ToF16Exact: 0x${x.toString(16)} is not exact in binary16`);
  return sign | (e << 10) | (mant >>> 13);
}

/** float32 bits of a JS number (exactly representable numbers only, checked). */
export function f32Bits(v: number): number {
  const f = new Float32Array([v]);
  if (f[0] !== v && !Number.isNaN(v)) throw new Error(`f32Bits: ${v} is not a float32`);
  return new Uint32Array(f.buffer)[0]!;
}

/**
 * A float32 tensor of random multiples of 1/8 in [-16, 16): exactly representable in float32, binary16
 * and bfloat16 (at most 8 significant bits), so a cast between them has one right answer and no rounding.
 */
export function exactSmallFloats(shape: readonly number[], r: Random): Tensor {
  return tensorOfBits("F32", shape, Array.from({ length: numel(shape) }, () => f32Bits((r.int(256) - 128) / 8)));
}

/** The same values in another float dtype (the input must come from `exactSmallFloats`). */
export function exactCast(t: Tensor, dtype: "F32" | "F16" | "BF16"): Tensor {
  if (t.dtype !== "F32") throw new Error("exactCast: F32 input expected");
  if (dtype === "F32") return { ...t, data: t.data.slice() };
  return mapBits(t, dtype, dtype === "BF16" ? (x) => {
    if ((x & 0xffff) !== 0) throw new Error("exactCast: not exact in bfloat16");
    return x >>> 16;
  } : f32ToF16Exact);
}

// ---- state dicts ----

export function hexOf(t: Tensor): string {
  return Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength).toString("hex");
}

/** Names, dtypes, shapes and bytes all equal (order aside), with readable differences on failure. */
export function expectSameDict(actual: ReadonlyMap<string, Tensor>, expected: ReadonlyMap<string, Tensor>): void {
  expect(compareTensors(actual, expected)).toEqual([]);
}

/** One tensor equal in dtype, shape and bytes. */
export function expectTensor(actual: Tensor | undefined, expected: Tensor): void {
  expect(actual, "tensor missing").toBeDefined();
  expect({ dtype: actual!.dtype, shape: [...actual!.shape] }).toEqual({ dtype: expected.dtype, shape: [...expected.shape] });
  expect(hexOf(actual!)).toBe(hexOf(expected));
}

/** A logger that records what it is told. */
export function recordingLogger(): { logger: Logger; warnings: { message: string; diagnostic: Diagnostic }[] } {
  const warnings: { message: string; diagnostic: Diagnostic }[] = [];
  return { logger: { warn: (message, diagnostic) => warnings.push({ message, diagnostic }) }, warnings };
}

/** An Omni `config.json` with the given language-model fields. */
export function omniConfig(llm: Record<string, unknown>): Record<string, unknown> {
  return { architectures: ["NemotronH_Nano_Omni_Reasoning_V3"], llm_config: { model_type: "nemotron_h", ...llm } };
}
