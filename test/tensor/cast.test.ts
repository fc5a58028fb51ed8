import { describe, expect, it } from "vitest";
import { canCast, castInto, f16BitsToF32, f32BitsToBf16, f32BitsToF16 } from "../../src/tensor/cast.js";
import { DTYPES, type DType, isFloat } from "../../src/tensor/dtype.js";
import { BufferPool } from "../../src/convert/buffer-pool.js";
import { seededRandom } from "../helpers/fixtures.js";

/*
 * The oracle below works on values, not bits: decode a pattern to its exact value as a float64 (every
 * format here is a subset of binary64), round that value to a target format by scaling it to an integer
 * count of quanta and rounding half to even, then encode the result. It shares no code or trick with
 * cast.ts, which works on bit patterns.
 */

interface Format {
  /** Significand bits including the implicit one. */
  readonly p: number;
  /** Exponent of the smallest normal. */
  readonly emin: number;
  readonly emax: number;
  readonly expBits: number;
}

const F16: Format = { p: 11, emin: -14, emax: 15, expBits: 5 };
const BF16: Format = { p: 8, emin: -126, emax: 127, expBits: 8 };
const F32: Format = { p: 24, emin: -126, emax: 127, expBits: 8 };

function maxFinite(f: Format): number {
  return (2 - 2 ** (1 - f.p)) * 2 ** f.emax;
}

/** floor(log2(a)) for a finite a > 0, exactly. */
function exponentOf(a: number): number {
  let e = Math.floor(Math.log2(a));
  while (2 ** e > a) e--;
  while (2 ** (e + 1) <= a) e++;
  return e;
}

/** Round x to the nearest value of format f, ties to even; beyond the largest finite value, ±inf. */
function roundTo(x: number, f: Format): number {
  if (!Number.isFinite(x) || x === 0) return x;
  const a = Math.abs(x);
  const quantum = 2 ** (Math.max(exponentOf(a), f.emin) - (f.p - 1));
  const scaled = a / quantum; // exact: division by a power of two
  const floor = Math.floor(scaled);
  const frac = scaled - floor; // exact
  const n = frac > 0.5 || (frac === 0.5 && floor % 2 === 1) ? floor + 1 : floor;
  const r = n * quantum;
  const magnitude = r > maxFinite(f) ? Infinity : r;
  return x < 0 ? -magnitude : magnitude;
}

/** Bits of a value already representable in f (NaN excluded). */
function encode(x: number, f: Format): number {
  const sign = x < 0 || Object.is(x, -0) ? 2 ** (f.p - 1 + f.expBits) : 0;
  const a = Math.abs(x);
  const fracField = 2 ** (f.p - 1);
  let bits: number;
  if (a === Infinity) bits = (2 ** f.expBits - 1) * fracField;
  else if (a < 2 ** f.emin) bits = a / 2 ** (f.emin - f.p + 1);
  else {
    const e = exponentOf(a);
    bits = (e - f.emin + 1) * fracField + (a / 2 ** (e - f.p + 1) - fracField);
  }
  if (!Number.isInteger(bits)) throw new Error(`oracle: ${x} is not representable`);
  return sign + bits;
}

/** Exact value of an IEEE-style pattern with the given field widths and bias. */
function decode(bits: number, expBits: number, fracBits: number, bias: number): number {
  const sign = Math.floor(bits / 2 ** (expBits + fracBits)) % 2 === 1 ? -1 : 1;
  const exp = Math.floor(bits / 2 ** fracBits) % 2 ** expBits;
  const frac = bits % 2 ** fracBits;
  if (exp === 2 ** expBits - 1) return frac === 0 ? sign * Infinity : NaN;
  if (exp === 0) return sign * frac * 2 ** (1 - bias - fracBits);
  return sign * (2 ** fracBits + frac) * 2 ** (exp - bias - fracBits);
}

const decodeF16 = (h: number): number => decode(h, 5, 10, 15);
const decodeBf16 = (h: number): number => decode(h, 8, 7, 127);
const decodeE5M2 = (v: number): number => decode(v, 5, 2, 15);
/** float8_e4m3fn: bias 7, no infinities; only S.1111.111 is NaN, so exponent 15 holds ordinary values. */
function decodeE4M3(v: number): number {
  const sign = v & 0x80 ? -1 : 1;
  const exp = (v >> 3) & 0xf;
  const frac = v & 7;
  if (exp === 15 && frac === 7) return NaN;
  if (exp === 0) return sign * frac * 2 ** -9;
  return sign * (8 + frac) * 2 ** (exp - 10);
}

const isNaN16 = (h: number): boolean => (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
const isNaNBf16 = (h: number): boolean => (h & 0x7f80) === 0x7f80 && (h & 0x7f) !== 0;
const isNaN32 = (b: number): boolean => (b & 0x7f800000) === 0x7f800000 && (b & 0x7fffff) !== 0;

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);
function f32Bits(x: number): number {
  f32Scratch[0] = x;
  return u32Scratch[0]!;
}
function f32Value(bits: number): number {
  u32Scratch[0] = bits;
  return f32Scratch[0]!;
}

function rng(seed: number): () => number {
  return seededRandom(seed).u32;
}

const hex = (n: number, digits: number): string => `0x${n.toString(16).padStart(digits, "0")}`;

function bytes(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** Cast through the public block API and return the output bytes. */
function castAll(src: ArrayBufferView, from: DType, to: DType, count: number, outSize: number): Uint8Array {
  const out = new Uint8Array(count * outSize);
  castInto(bytes(src), from, out, to, count);
  return out;
}

function allPatterns(n: number): Uint16Array | Uint8Array {
  return n === 65536 ? Uint16Array.from({ length: n }, (_, i) => i) : Uint8Array.from({ length: n }, (_, i) => i);
}

/** Indices where `actual` differs from `expected`, formatted for a readable failure. */
function mismatches(count: number, check: (i: number) => string | undefined, limit = 10): string[] {
  const out: string[] = [];
  for (let i = 0; i < count && out.length < limit; i++) {
    const m = check(i);
    if (m !== undefined) out.push(m);
  }
  return out;
}

describe("the oracle itself", () => {
  it("rounds known values", () => {
    expect(roundTo(1 + 2 ** -11, F16)).toBe(1);
    expect(roundTo(1 + 3 * 2 ** -11, F16)).toBe(1 + 2 ** -9);
    expect(roundTo(65520, F16)).toBe(Infinity);
    expect(roundTo(-65519, F16)).toBe(-65504);
    expect(roundTo(2 ** -25, F16)).toBe(0);
    expect(encode(65504, F16)).toBe(0x7bff);
    expect(encode(2 ** -24, F16)).toBe(0x0001);
    expect(encode(-0, BF16)).toBe(0x8000);
    expect(encode(1, BF16)).toBe(0x3f80);
    expect(decodeF16(0x3c00)).toBe(1);
    expect(decodeF16(0x0001)).toBe(2 ** -24);
    expect(decodeE4M3(0x7e)).toBe(448);
  });
});

describe("bf16 ↔ f32", () => {
  it("widens all 65,536 bf16 patterns exactly and narrows them back unchanged", () => {
    const src = allPatterns(65536);
    const wide = new Uint32Array(castAll(src, "BF16", "F32", 65536, 4).buffer);
    const back = new Uint16Array(castAll(wide, "F32", "BF16", 65536, 2).buffer);
    const problems = mismatches(65536, (h) => {
      const bad = `${hex(h, 4)} → ${hex(wide[h]!, 8)} → ${hex(back[h]!, 4)}`;
      if (isNaNBf16(h)) return isNaN32(wide[h]!) && isNaNBf16(back[h]!) ? undefined : bad;
      const value = decodeBf16(h);
      const widened = f32Value(wide[h]!);
      return Object.is(widened, value) && back[h] === h && f32BitsToBf16(wide[h]!) === h ? undefined : bad;
    });
    expect(problems).toEqual([]);
  });

  it("widens in the SIMD kernel (arena buffers) exactly as in JavaScript, tails and odd offsets included", () => {
    const pool = new BufferPool();
    const all = allPatterns(65536);
    const want = new Uint32Array(65536);
    for (let h = 0; h < 65536; h++) want[h] = h << 16;
    // Counts that are and are not multiples of the 8-element vector, from offsets that are not 16-byte aligned.
    for (const [start, count] of [[0, 65536], [3, 65533], [1, 7], [5, 17], [0, 0]] as const) {
      const srcBlock = pool.acquire(2 * 65536 + 16);
      const dstBlock = pool.acquire(4 * 65536 + 16);
      const src = srcBlock.subarray(2, 2 + 2 * count);
      src.set(new Uint8Array(all.buffer, all.byteOffset + 2 * start, 2 * count));
      const dst = dstBlock.subarray(4, 4 + 4 * count);
      castInto(src, "BF16", dst, "F32", count);
      expect(Buffer.from(dst).equals(Buffer.from(want.buffer, 4 * start, 4 * count)), `${start}+${count}`).toBe(true);
      pool.release(srcBlock);
      pool.release(dstBlock);
    }
  });
});

describe("f32 → bf16", () => {
  const table: [string, number, number][] = [
    ["+0", 0x00000000, 0x0000],
    ["-0", 0x80000000, 0x8000],
    ["+inf", 0x7f800000, 0x7f80],
    ["-inf", 0xff800000, 0xff80],
    ["1", 0x3f800000, 0x3f80],
    ["largest f32 overflows to +inf", 0x7f7fffff, 0x7f80],
    ["largest f32, negative, to -inf", 0xff7fffff, 0xff80],
    ["largest bf16 stays", 0x7f7f0000, 0x7f7f],
    ["just under half an ulp above the largest bf16", 0x7f7f7fff, 0x7f7f],
    ["half an ulp above the largest bf16 (odd) ties to inf", 0x7f7f8000, 0x7f80],
    ["tie with even below rounds down", 0x3f808000, 0x3f80],
    ["tie with odd below rounds up", 0x3f818000, 0x3f82],
    ["just above a tie rounds up", 0x3f808001, 0x3f81],
    ["just below a tie rounds down", 0x3f807fff, 0x3f80],
    ["negative tie to even", 0xbf818000, 0xbf82],
    ["carry into the exponent", 0x3fffffff, 0x4000],
    ["smallest f32 subnormal to +0", 0x00000001, 0x0000],
    ["smallest f32 subnormal, negative, to -0", 0x80000001, 0x8000],
    ["smallest bf16 subnormal (2^-133)", 0x00010000, 0x0001],
    ["half the smallest bf16 subnormal ties to 0", 0x00008000, 0x0000],
    ["half the smallest bf16 subnormal, negative, to -0", 0x80008000, 0x8000],
    ["just over half the smallest subnormal", 0x00008001, 0x0001],
    ["1.5 × the smallest subnormal ties up to 2", 0x00018000, 0x0002],
    ["largest f32 subnormal rounds to the smallest normal", 0x007fffff, 0x0080],
    ["smallest normal", 0x00800000, 0x0080],
  ];
  for (const [what, input, want] of table) {
    it(`${what}: ${hex(input, 8)} → ${hex(want, 4)}`, () => {
      expect(hex(f32BitsToBf16(input), 4)).toBe(hex(want, 4));
      expect(hex(encode(roundTo(f32Value(input), BF16), BF16), 4)).toBe(hex(want, 4));
    });
  }

  it("keeps every NaN a NaN, including ones that naive rounding turns into inf or overflows", () => {
    for (const nan of [0x7fc00000, 0xffc00000, 0x7f800001, 0xff800001, 0x7fffffff, 0xffffffff, 0x7f808000, 0x7fbfffff]) {
      expect(isNaNBf16(f32BitsToBf16(nan)), hex(nan, 8)).toBe(true);
    }
  });

  it("matches the value oracle on 300,000 random patterns", () => {
    const next = rng(0xb16);
    const n = 300_000;
    const src = new Uint32Array(n);
    for (let i = 0; i < n; i++) {
      const r = next();
      // A third uniform, a third with the low half forced to a tie, a third one step either side of it.
      const k = i % 3;
      src[i] = k === 0 ? r : k === 1 ? ((r & 0xffff0000) | 0x8000) >>> 0 : ((r & 0xffff0000) | (r & 1 ? 0x8001 : 0x7fff)) >>> 0;
    }
    const out = new Uint16Array(castAll(src, "F32", "BF16", n, 2).buffer);
    const problems = mismatches(n, (i) => {
      const b = src[i]!;
      if (isNaN32(b)) return isNaNBf16(out[i]!) ? undefined : `NaN ${hex(b, 8)} → ${hex(out[i]!, 4)}`;
      const want = encode(roundTo(f32Value(b), BF16), BF16);
      return out[i] === want ? undefined : `${hex(b, 8)} → ${hex(out[i]!, 4)}, want ${hex(want, 4)}`;
    });
    expect(problems).toEqual([]);
  });
});

describe("f16 → bf16 and bf16 → f16", () => {
  it("rounds all 65,536 f16 patterns to bf16 as the value oracle does", () => {
    const out = new Uint16Array(castAll(allPatterns(65536), "F16", "BF16", 65536, 2).buffer);
    const problems = mismatches(65536, (h) => {
      if (isNaN16(h)) return isNaNBf16(out[h]!) ? undefined : `NaN ${hex(h, 4)} → ${hex(out[h]!, 4)}`;
      const want = encode(roundTo(decodeF16(h), BF16), BF16);
      return out[h] === want ? undefined : `${hex(h, 4)} → ${hex(out[h]!, 4)}, want ${hex(want, 4)}`;
    });
    expect(problems).toEqual([]);
    // Spot checks computed by hand: 1 + 2^-8 (f16 0x3c04) is a tie to even, 1 + 3·2^-8 (0x3c0c) rounds up.
    expect([out[0x3c04], out[0x3c0c], out[0x7bff], out[0x0001], out[0x8000]]).toEqual([0x3f80, 0x3f82, 0x4780, 0x3380, 0x8000]);
  });

  it("rounds all 65,536 bf16 patterns to f16 as the value oracle does", () => {
    const out = new Uint16Array(castAll(allPatterns(65536), "BF16", "F16", 65536, 2).buffer);
    const problems = mismatches(65536, (h) => {
      if (isNaNBf16(h)) return isNaN16(out[h]!) ? undefined : `NaN ${hex(h, 4)} → ${hex(out[h]!, 4)}`;
      const want = encode(roundTo(decodeBf16(h), F16), F16);
      return out[h] === want ? undefined : `${hex(h, 4)} → ${hex(out[h]!, 4)}, want ${hex(want, 4)}`;
    });
    expect(problems).toEqual([]);
  });

  it("crosses cast block boundaries without losing place (200,003 elements)", () => {
    const n = 200_003;
    const src = new Uint16Array(n);
    for (let i = 0; i < n; i++) src[i] = (i * 40503) & 0xffff;
    const out = new Uint16Array(castAll(src, "F16", "BF16", n, 2).buffer);
    const problems = mismatches(n, (i) => {
      const h = src[i]!;
      if (isNaN16(h)) return isNaNBf16(out[i]!) ? undefined : `at ${i}: NaN lost`;
      const want = encode(roundTo(decodeF16(h), BF16), BF16);
      return out[i] === want ? undefined : `at ${i}: ${hex(h, 4)} → ${hex(out[i]!, 4)}, want ${hex(want, 4)}`;
    });
    expect(problems).toEqual([]);
  });
});

describe("f32 → f16", () => {
  const table: [string, number, number][] = [
    ["+0", 0, 0x0000],
    ["-0", -0, 0x8000],
    ["+inf", Infinity, 0x7c00],
    ["-inf", -Infinity, 0xfc00],
    ["1", 1, 0x3c00],
    ["0.1", 0.1, 0x2e66],
    ["largest f16, 65504", 65504, 0x7bff],
    ["65519.99 rounds down to 65504", 65519.99, 0x7bff],
    ["65520 (half an ulp above, odd) ties to inf", 65520, 0x7c00],
    ["-65520 ties to -inf", -65520, 0xfc00],
    ["1e10 overflows", 1e10, 0x7c00],
    ["largest f32 overflows", f32Value(0x7f7fffff), 0x7c00],
    ["1 + 2^-11 ties down to even", 1 + 2 ** -11, 0x3c00],
    ["1 + 3·2^-11 ties up to even", 1 + 3 * 2 ** -11, 0x3c02],
    ["1 + 2^-11 + 2^-23 rounds up", 1 + 2 ** -11 + 2 ** -23, 0x3c01],
    ["2049 ties to 2048", 2049, 0x6800],
    ["2051 ties to 2052", 2051, 0x6802],
    ["smallest normal 2^-14", 2 ** -14, 0x0400],
    ["largest subnormal 1023·2^-24", 1023 * 2 ** -24, 0x03ff],
    ["1023.5·2^-24 ties up into the normals", 1023.5 * 2 ** -24, 0x0400],
    ["smallest subnormal 2^-24", 2 ** -24, 0x0001],
    ["-2^-24", -(2 ** -24), 0x8001],
    ["2^-25, half the smallest subnormal, ties to 0", 2 ** -25, 0x0000],
    ["-2^-25 ties to -0", -(2 ** -25), 0x8000],
    ["just above 2^-25 rounds up", 2 ** -25 + 2 ** -48, 0x0001],
    ["3·2^-26 rounds up", 3 * 2 ** -26, 0x0001],
    ["3·2^-25 ties up to 2·2^-24", 3 * 2 ** -25, 0x0002],
    ["2^-26 underflows", 2 ** -26, 0x0000],
    ["smallest f32 subnormal underflows", f32Value(0x00000001), 0x0000],
    // pytorch/pytorch#92233: 0x36d70000 is 107.5·2^-24, a subnormal tie, and PyTorch gives 108·2^-24.
    ["a subnormal tie reported against PyTorch", f32Value(0x36d70000), 0x006c],
  ];
  for (const [what, value, want] of table) {
    it(`${what} → ${hex(want, 4)}`, () => {
      expect(hex(f32BitsToF16(f32Bits(value)), 4)).toBe(hex(want, 4));
      expect(hex(encode(roundTo(Math.fround(value), F16), F16), 4)).toBe(hex(want, 4));
    });
  }

  it("keeps NaNs NaN, including the smallest payloads", () => {
    for (const nan of [0x7fc00000, 0xffc00000, 0x7f800001, 0xff800001, 0x7fffffff, 0x7f801000]) {
      expect(isNaN16(f32BitsToF16(nan)), hex(nan, 8)).toBe(true);
    }
  });

  it("matches the value oracle on 400,000 random patterns, most near the f16 range", () => {
    const next = rng(0xf16);
    const n = 400_000;
    const src = new Uint32Array(n);
    for (let i = 0; i < n; i++) {
      const r = next();
      if (i % 4 === 0) {
        src[i] = r;
        continue;
      }
      const nudge = r & 1 ? 0 : (r & 2) - 1;
      if (i % 4 === 3) {
        // On or next to a tie of the subnormal rounding: f16 keeps the top (exp - 102) significand bits.
        const exp = 102 + (next() % 11);
        const shift = 126 - exp;
        const mant = (r & 0x7fffff & ~((1 << shift) - 1)) | (2 ** (shift - 1) & 0x7fffff);
        src[i] = (((r & 0x80000000) | (exp << 23)) + mant + nudge) >>> 0;
        continue;
      }
      // Exponents from below the subnormals (2^-27) to past overflow (2^17).
      const exp = 100 + (next() % 45);
      let b = ((r & 0x80000000) | (exp << 23) | (r & 0x7fffff)) >>> 0;
      // On or next to a tie of the normal rounding, which drops 13 bits.
      if (i % 4 === 2) b = ((b & ~0x1fff) | (0x1000 + nudge)) >>> 0;
      src[i] = b;
    }
    const out = new Uint16Array(castAll(src, "F32", "F16", n, 2).buffer);
    const problems = mismatches(n, (i) => {
      const b = src[i]!;
      if (isNaN32(b)) return isNaN16(out[i]!) ? undefined : `NaN ${hex(b, 8)} → ${hex(out[i]!, 4)}`;
      const want = encode(roundTo(f32Value(b), F16), F16);
      return out[i] === want ? undefined : `${hex(b, 8)} → ${hex(out[i]!, 4)}, want ${hex(want, 4)}`;
    });
    expect(problems).toEqual([]);
  });
});

describe("f16 → f32", () => {
  it("decodes all 65,536 patterns exactly, through the table and through castInto", () => {
    const out = new Uint32Array(castAll(allPatterns(65536), "F16", "F32", 65536, 4).buffer);
    const problems = mismatches(65536, (h) => {
      const got = out[h]!;
      if (got !== f16BitsToF32(h)) return `${hex(h, 4)}: castInto and f16BitsToF32 disagree`;
      if (isNaN16(h)) return isNaN32(got) ? undefined : `NaN ${hex(h, 4)} → ${hex(got, 8)}`;
      const want = f32Bits(decodeF16(h));
      return got === want ? undefined : `${hex(h, 4)} → ${hex(got, 8)}, want ${hex(want, 8)}`;
    });
    expect(problems).toEqual([]);
    expect([out[0x3c00], out[0x8000], out[0x0001], out[0x03ff], out[0x7bff], out[0xfc00]]).toEqual([
      0x3f800000, 0x80000000, 0x33800000, 0x387fc000, 0x477fe000, 0xff800000,
    ]);
  });

  it("widens to f16 → f32 → f16 unchanged", () => {
    const wide = castAll(allPatterns(65536), "F16", "F32", 65536, 4);
    const back = new Uint16Array(castAll(wide, "F32", "F16", 65536, 2).buffer);
    expect(mismatches(65536, (h) => (back[h] === h || (isNaN16(h) && isNaN16(back[h]!)) ? undefined : hex(h, 4)))).toEqual([]);
  });
});

describe("float8 decode", () => {
  const cases: [DType, (v: number) => number, number[]][] = [
    // 0x7e is the largest e4m3fn value, 448; 0x08 the smallest normal 2^-6; 0x01 the smallest subnormal 2^-9.
    ["F8_E4M3", decodeE4M3, [0x7e, 0x08, 0x01, 0x78, 0x80]],
    // 0x7b is the largest e5m2 value, 57344; 0x7c is +inf; 0x01 the smallest subnormal 2^-16.
    ["F8_E5M2", decodeE5M2, [0x7b, 0x7c, 0x01, 0x04, 0x80]],
  ];
  const spot: Record<string, number[]> = {
    F8_E4M3: [448, 2 ** -6, 2 ** -9, 256, -0],
    F8_E5M2: [57344, Infinity, 2 ** -16, 2 ** -14, -0],
  };

  for (const [dtype, decodeIt, probes] of cases) {
    it(`${dtype}: all 256 patterns to F32, F16, BF16 and F64 exactly`, () => {
      const src = allPatterns(256);
      const f32 = new Float32Array(castAll(src, dtype, "F32", 256, 4).buffer);
      const f32b = new Uint32Array(f32.buffer);
      const f16 = new Uint16Array(castAll(src, dtype, "F16", 256, 2).buffer);
      const bf16 = new Uint16Array(castAll(src, dtype, "BF16", 256, 2).buffer);
      const f64 = new Float64Array(castAll(src, dtype, "F64", 256, 8).buffer);
      const problems = mismatches(256, (v) => {
        const want = decodeIt(v);
        if (Number.isNaN(want)) {
          const ok = Number.isNaN(f32[v]) && isNaN16(f16[v]!) && isNaNBf16(bf16[v]!) && Number.isNaN(f64[v]);
          return ok ? undefined : `${hex(v, 2)} should be NaN`;
        }
        const ok =
          f32b[v] === f32Bits(want) &&
          f16[v] === encode(want, F16) &&
          bf16[v] === encode(want, BF16) &&
          Object.is(f64[v], want);
        return ok ? undefined : `${hex(v, 2)}: got ${f32[v]} / ${hex(f16[v]!, 4)} / ${hex(bf16[v]!, 4)}, want ${want}`;
      });
      expect(problems).toEqual([]);
      expect(probes.map((v) => f32[v])).toEqual(spot[dtype]);
      expect(Object.is(f32[0x80], -0)).toBe(true);
    });
  }

  it("F8_E4M3 has exactly two NaNs and no infinities; F8_E5M2 has six NaNs and two infinities", () => {
    const e4 = new Float32Array(castAll(allPatterns(256), "F8_E4M3", "F32", 256, 4).buffer);
    const e5 = new Float32Array(castAll(allPatterns(256), "F8_E5M2", "F32", 256, 4).buffer);
    const where = (a: Float32Array, p: (x: number) => boolean): number[] => [...a.keys()].filter((i) => p(a[i]!));
    expect(where(e4, Number.isNaN)).toEqual([0x7f, 0xff]);
    expect(where(e4, (x) => !Number.isFinite(x) && !Number.isNaN(x))).toEqual([]);
    expect(where(e5, Number.isNaN)).toEqual([0x7d, 0x7e, 0x7f, 0xfd, 0xfe, 0xff]);
    expect(where(e5, (x) => !Number.isFinite(x) && !Number.isNaN(x))).toEqual([0x7c, 0xfc]);
  });
});

describe("f64", () => {
  it("widens f32 to f64 exactly", () => {
    const next = rng(0x64);
    const src = new Uint32Array(50_000).map(() => next());
    const out = new Float64Array(castAll(src, "F32", "F64", src.length, 8).buffer);
    const problems = mismatches(src.length, (i) => {
      const want = f32Value(src[i]!);
      return Object.is(out[i], want) ? undefined : `${hex(src[i]!, 8)} → ${out[i]}`;
    });
    expect(problems).toEqual([]);
  });

  it("widens every bf16 and f16 pattern to f64 exactly", () => {
    const bf = new Float64Array(castAll(allPatterns(65536), "BF16", "F64", 65536, 8).buffer);
    const hf = new Float64Array(castAll(allPatterns(65536), "F16", "F64", 65536, 8).buffer);
    expect(mismatches(65536, (h) => (Object.is(bf[h], decodeBf16(h)) ? undefined : `bf16 ${hex(h, 4)} → ${bf[h]}`))).toEqual([]);
    expect(mismatches(65536, (h) => (Object.is(hf[h], decodeF16(h)) ? undefined : `f16 ${hex(h, 4)} → ${hf[h]}`))).toEqual([]);
  });

  const f32max = maxFinite(F32);
  const table: [string, number, number][] = [
    ["1 + 2^-24 ties to 1", 1 + 2 ** -24, 0x3f800000],
    ["1 + 2^-24 + 2^-52 rounds up", 1 + 2 ** -24 + 2 ** -52, 0x3f800001],
    ["1 + 3·2^-24 ties up", 1 + 3 * 2 ** -24, 0x3f800002],
    ["largest f32", f32max, 0x7f7fffff],
    ["just under half an ulp above the largest f32", f32max + 2 ** 103 - 2 ** 80, 0x7f7fffff],
    ["half an ulp above the largest f32 ties to inf", f32max + 2 ** 103, 0x7f800000],
    ["1e39 overflows", 1e39, 0x7f800000],
    ["-1e39 overflows", -1e39, 0xff800000],
    ["2^-149", 2 ** -149, 0x00000001],
    ["2^-150 ties to 0", 2 ** -150, 0x00000000],
    ["-2^-150 ties to -0", -(2 ** -150), 0x80000000],
    ["2^-150 + 2^-200 rounds up", 2 ** -150 + 2 ** -200, 0x00000001],
    ["1e-300 underflows", 1e-300, 0x00000000],
    ["-0", -0, 0x80000000],
    ["-inf", -Infinity, 0xff800000],
  ];
  for (const [what, value, want] of table) {
    it(`narrows to f32: ${what}`, () => {
      const out = new Uint32Array(castAll(new Float64Array([value]), "F64", "F32", 1, 4).buffer);
      expect(hex(out[0]!, 8)).toBe(hex(want, 8));
      expect(hex(encode(roundTo(value, F32), F32), 8)).toBe(hex(want, 8));
    });
  }

  it("narrows f64 to f32 like the value oracle on 100,000 random values near the f32 range", () => {
    const next = rng(0x6432);
    const n = 100_000;
    const src = new Float64Array(n);
    const words = new Uint32Array(src.buffer);
    for (let i = 0; i < n; i++) {
      // Biased exponents 1023 ± 160 cover f32 subnormals, normals and overflow.
      const exp = 863 + (next() % 320);
      words[2 * i] = next();
      words[2 * i + 1] = ((next() & 0x800fffff) | (exp << 20)) >>> 0;
    }
    const out = new Uint32Array(castAll(src, "F64", "F32", n, 4).buffer);
    const problems = mismatches(n, (i) => {
      const want = encode(roundTo(src[i]!, F32), F32);
      return out[i] === want ? undefined : `${src[i]} → ${hex(out[i]!, 8)}, want ${hex(want, 8)}`;
    });
    expect(problems).toEqual([]);
  });

  it("narrows f64 to bf16 and f16 through f32, as PyTorch does (c10::BFloat16 and c10::Half take a float)", () => {
    // 1 + 2^-8 + 2^-30: one rounding to bf16 would give 1 + 2^-7, but f32 drops the 2^-30 and leaves a tie
    // (f16 holds 1 + 2^-8 exactly). 1 + 2^-11 + 2^-40 is the same trap for f16.
    const src = new Float64Array([1 + 2 ** -8 + 2 ** -30, 1 + 2 ** -11 + 2 ** -40, NaN, -0, 1e300]);
    const bf = new Uint16Array(castAll(src, "F64", "BF16", src.length, 2).buffer);
    const hf = new Uint16Array(castAll(src, "F64", "F16", src.length, 2).buffer);
    expect([...bf.subarray(0, 2)].map((h) => hex(h, 4))).toEqual(["0x3f80", "0x3f80"]);
    expect([...hf.subarray(0, 2)].map((h) => hex(h, 4))).toEqual(["0x3c04", "0x3c00"]);
    expect(isNaNBf16(bf[2]!) && isNaN16(hf[2]!)).toBe(true);
    expect([bf[3], hf[3], bf[4], hf[4]]).toEqual([0x8000, 0x8000, 0x7f80, 0x7c00]);
  });

  it("narrows f64 to bf16 across cast block boundaries (70,001 elements)", () => {
    const n = 70_001;
    const src = Float64Array.from({ length: n }, (_, i) => (i - 35_000) * 1.0009765625);
    const out = new Uint16Array(castAll(src, "F64", "BF16", n, 2).buffer);
    const problems = mismatches(n, (i) => {
      const want = encode(roundTo(roundTo(src[i]!, F32), BF16), BF16);
      return out[i] === want ? undefined : `at ${i}: ${src[i]} → ${hex(out[i]!, 4)}, want ${hex(want, 4)}`;
    });
    expect(problems).toEqual([]);
  });
});

describe("what is refused", () => {
  const ints = DTYPES.filter((d) => !isFloat(d));

  it("never casts integer or bool dtypes, in either direction", () => {
    const src = new Uint8Array(8);
    const dst = new Uint8Array(8);
    for (const i of ints) {
      expect(() => castInto(src, i, dst, "F32", 1)).toThrow(new TypeError(`no cast from ${i} to F32: only floats are cast`));
      expect(() => castInto(src, "F32", dst, i, 1)).toThrow(new TypeError(`no cast from F32 to ${i}: only floats are cast`));
      expect(canCast(i, "F32")).toBe(false);
      expect(canCast("BF16", i)).toBe(false);
      expect(canCast(i, i)).toBe(true);
    }
    expect(() => castInto(src, "I32", dst, "I64", 1)).toThrow(new TypeError("no cast from I32 to I64: only floats are cast"));
  });

  it("copies a same-dtype 'cast' of any dtype byte for byte", () => {
    const src = Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
    const dst = new Uint8Array(16);
    castInto(src, "I64", dst, "I64", 2);
    expect(dst).toEqual(src);
  });

  it("does not produce float8", () => {
    for (const to of ["F8_E4M3", "F8_E5M2"] as const) {
      expect(() => castInto(new Uint8Array(4), "F32", new Uint8Array(4), to, 1)).toThrow(new TypeError(`no cast to ${to}`));
      expect(canCast("F32", to)).toBe(false);
    }
  });

  it("rejects buffers not aligned to their item size", () => {
    const buf = new Uint8Array(16);
    expect(() => castInto(buf.subarray(1, 9), "F32", new Uint8Array(4), "BF16", 2)).toThrow(
      new RangeError("castInto: buffers must be aligned to their item size"),
    );
    expect(() => castInto(buf.subarray(0, 4), "F32", buf.subarray(1, 3), "BF16", 1)).toThrow(new RangeError("castInto: buffers must be aligned to their item size"));
  });

  it("does nothing for zero elements", () => {
    const dst = Uint8Array.from([9, 9]);
    castInto(new Uint8Array(0), "I32", dst, "F32", 0);
    expect([...dst]).toEqual([9, 9]);
  });
});
