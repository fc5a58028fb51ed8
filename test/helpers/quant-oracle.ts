/**
 * An independent model of FP8 dequantization for the tests, written from the definitions rather than
 * from bits: float8 codes decoded from their fields with powers of two, products rounded to float32 and
 * then to bfloat16 by arithmetic on the exact value (round half to even at the format's quantum). Nothing
 * here shares code with src/quant/.
 */

/** Value of a float8 code from its bit fields (PyTorch's e4m3fn and e5m2). */
export function decodeFloat8(code: number, format: "F8_E4M3" | "F8_E5M2"): number {
  const negative = code >= 128;
  const low = code % 128;
  const mantBits = format === "F8_E4M3" ? 3 : 2;
  const bias = format === "F8_E4M3" ? 7 : 15;
  const exp = Math.floor(low / 2 ** mantBits);
  const mant = low % 2 ** mantBits;
  let v: number;
  if (format === "F8_E4M3" && exp === 15 && mant === 7) return NaN;
  if (format === "F8_E5M2" && exp === 31) v = mant === 0 ? Infinity : NaN;
  else if (exp === 0) v = mant * Math.pow(2, 1 - bias - mantBits);
  else v = (1 + mant / 2 ** mantBits) * Math.pow(2, exp - bias);
  return negative ? -v : v;
}

/** Round a finite or infinite number to a binary format of `p` significant bits, round half to even. */
function roundToFormat(x: number, p: number, emin: number, emax: number): number {
  if (Number.isNaN(x) || !Number.isFinite(x) || x === 0) return x;
  const a = Math.abs(x);
  let e = Math.floor(Math.log2(a));
  // log2 of a double may be off by one near powers of two; settle it exactly.
  while (Math.pow(2, e) > a) e--;
  while (Math.pow(2, e + 1) <= a) e++;
  const quantum = Math.pow(2, Math.max(e, emin) - (p - 1));
  const q = a / quantum;
  const floor = Math.floor(q);
  const rest = q - floor;
  const n = rest > 0.5 || (rest === 0.5 && floor % 2 === 1) ? floor + 1 : floor;
  const r = n * quantum;
  const max = (2 - Math.pow(2, 1 - p)) * Math.pow(2, emax);
  const magnitude = r > max ? Infinity : r;
  return x < 0 ? -magnitude : magnitude;
}

export const roundToF32 = (x: number): number => roundToFormat(x, 24, -126, 127);

/** bfloat16 bits of a number (PyTorch: any NaN becomes 0x7FC0). */
export function bf16Bits(x: number): number {
  if (Number.isNaN(x)) return 0x7fc0;
  const r = roundToFormat(x, 8, -126, 127);
  const sign = r < 0 || Object.is(r, -0) ? 0x8000 : 0;
  const a = Math.abs(r);
  if (a === Infinity) return sign | 0x7f80;
  if (a === 0) return sign;
  if (a < Math.pow(2, -126)) return sign | (a / Math.pow(2, -133));
  let e = Math.floor(Math.log2(a));
  while (Math.pow(2, e) > a) e--;
  while (Math.pow(2, e + 1) <= a) e++;
  const frac = a / Math.pow(2, e) - 1;
  return sign | ((e + 127) << 7) | (frac * 128);
}

/** What PyTorch's `(w.to(torch.float32) * scale).to(torch.bfloat16)` gives for one code and scale. */
export function dequantizedBf16(code: number, format: "F8_E4M3" | "F8_E5M2", scale: number): number {
  return bf16Bits(roundToF32(decodeFloat8(code, format) * scale));
}
