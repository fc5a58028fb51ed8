/**
 * float8 → float32, bit for bit as PyTorch decodes them (c10 `Float8_e4m3fn.h`, `Float8_e5m2.h`), for all
 * 256 codes of each format. Both are tables built from the bit fields once; a cast then is one lookup.
 *
 * - F8_E4M3 (PyTorch `float8_e4m3fn`, "s eeee mmm", bias 7): no infinities; only S.1111.111 (0x7F, 0xFF)
 *   is NaN, so exponent 15 holds ordinary numbers up to 448 (0x7E). Exponent 0 is subnormal, m × 2^-9.
 *   PyTorch's bit trick decodes the two NaNs to 0x7FF00000 / 0xFFF00000 (sign kept); so do we.
 * - F8_E5M2 ("s eeeee mm", bias 15): the top byte of an IEEE binary16, with ±inf (0x7C, 0xFC) and NaNs
 *   (0x7D–0x7F, 0xFD–0xFF). PyTorch widens it through binary16 arithmetic, which quiets the NaNs.
 */

export type Float8 = "F8_E4M3" | "F8_E5M2";

/** binary32 bits of ±m × 2^e for a subnormal float8 mantissa m > 0 (exact: m has at most 3 bits). */
function normalized(sign: number, m: number, e: number): number {
  let mant = m;
  let exp = e;
  while (mant < 8) {
    mant <<= 1;
    exp--;
  }
  // mant is now 1.xxx × 8, so the value is (mant / 8) × 2^(exp + 3).
  return (sign | ((exp + 3 + 127) << 23) | ((mant & 7) << 20)) >>> 0;
}

function e4m3Bits(v: number): number {
  const sign = (v & 0x80) << 24;
  const nonsign = v & 0x7f;
  if (nonsign === 0x7f) return (sign | 0x7ff00000) >>> 0;
  const e = nonsign >>> 3;
  const m = nonsign & 7;
  if (e === 0) return m === 0 ? sign >>> 0 : normalized(sign, m, -9);
  return (sign | ((e - 7 + 127) << 23) | (m << 20)) >>> 0;
}

function e5m2Bits(v: number): number {
  const sign = (v & 0x80) << 24;
  const e = (v >>> 2) & 0x1f;
  const m = v & 3;
  if (e === 0x1f) return (sign | 0x7f800000 | (m << 21) | (m !== 0 ? 0x400000 : 0)) >>> 0;
  if (e === 0) {
    if (m === 0) return sign >>> 0;
    // m × 2^-16, normalized: m is 1 or 2 or 3 (two bits).
    const shift = m >= 2 ? 1 : 0;
    const exp = -16 + shift;
    const rest = m - (1 << shift);
    return (sign | ((exp + 127) << 23) | (rest << (23 - shift))) >>> 0;
  }
  return (sign | ((e - 15 + 127) << 23) | (m << 21)) >>> 0;
}

const tables: Partial<Record<Float8, Uint32Array>> = {};

/** binary32 bit patterns of the 256 codes of a float8 format. */
export function float8Table(format: Float8): Uint32Array {
  let t = tables[format];
  if (!t) {
    t = new Uint32Array(256);
    const decode = format === "F8_E4M3" ? e4m3Bits : e5m2Bits;
    for (let v = 0; v < 256; v++) t[v] = decode(v);
    tables[format] = t;
  }
  return t;
}

const valueTables: Partial<Record<Float8, Float64Array>> = {};

/** The 256 codes' values as numbers (each exactly a float32), for arithmetic on them. */
export function float8Values(format: Float8): Float64Array {
  let t = valueTables[format];
  if (!t) {
    t = new Float64Array(new Float32Array(float8Table(format).buffer.slice(0)));
    valueTables[format] = t;
  }
  return t;
}

export function isFloat8(dtype: string): dtype is Float8 {
  return dtype === "F8_E4M3" || dtype === "F8_E5M2";
}
