import { describe, expect, it } from "vitest";
import { float8Table } from "../../src/quant/float8.js";
import { castInto } from "../../src/tensor/cast.js";
import { decodeFloat8 } from "../helpers/quant-oracle.js";

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
const valueOf = (bits: number): number => {
  u32[0] = bits;
  return f32[0]!;
};
const hex = (n: number): string => `0x${n.toString(16).padStart(8, "0")}`;

describe("float8 → float32, all 256 codes", () => {
  for (const format of ["F8_E4M3", "F8_E5M2"] as const) {
    it(`${format}: every code decodes to the value its bit fields define`, () => {
      const t = float8Table(format);
      const wrong: string[] = [];
      for (let code = 0; code < 256; code++) {
        const want = decodeFloat8(code, format);
        const got = valueOf(t[code]!);
        const ok = Number.isNaN(want) ? Number.isNaN(got) : Object.is(got, want);
        if (!ok) wrong.push(`${code.toString(16)}: ${got} != ${want}`);
      }
      expect(wrong).toEqual([]);
    });
  }

  it("F8_E4M3 (e4m3fn): ±0, the subnormals, max 448, no infinities, and only S.1111.111 is NaN, with PyTorch's bits", () => {
    const t = float8Table("F8_E4M3");
    expect(hex(t[0x00]!)).toBe("0x00000000");
    expect(hex(t[0x80]!)).toBe("0x80000000");
    expect(valueOf(t[0x01]!)).toBe(2 ** -9);
    expect(valueOf(t[0x07]!)).toBe(7 * 2 ** -9);
    expect(valueOf(t[0x08]!)).toBe(2 ** -6);
    expect(valueOf(t[0x7e]!)).toBe(448);
    expect(valueOf(t[0xfe]!)).toBe(-448);
    expect(valueOf(t[0x78]!)).toBe(256);
    const nans = [...t.keys()].filter((c) => Number.isNaN(valueOf(t[c]!)));
    expect(nans).toEqual([0x7f, 0xff]);
    expect([...t].some((b) => (b & 0x7fffffff) === 0x7f800000)).toBe(false);
    // c10's fp8e4m3fn_to_fp32_value: the sign is kept, the payload is 0x700000.
    expect([hex(t[0x7f]!), hex(t[0xff]!)]).toEqual(["0x7ff00000", "0xfff00000"]);
  });

  it("F8_E5M2: ±inf, six NaNs quieted as binary16 widening quiets them, max 57344, smallest subnormal 2^-16", () => {
    const t = float8Table("F8_E5M2");
    expect(valueOf(t[0x7b]!)).toBe(57344);
    expect(valueOf(t[0x01]!)).toBe(2 ** -16);
    expect(valueOf(t[0x04]!)).toBe(2 ** -14);
    expect(hex(t[0x80]!)).toBe("0x80000000");
    expect([hex(t[0x7c]!), hex(t[0xfc]!)]).toEqual(["0x7f800000", "0xff800000"]);
    expect([0x7d, 0x7e, 0x7f, 0xfd, 0xfe, 0xff].map((c) => hex(t[c]!))).toEqual([
      "0x7fe00000",
      "0x7fc00000",
      "0x7fe00000",
      "0xffe00000",
      "0xffc00000",
      "0xffe00000",
    ]);
  });

  it("castInto decodes float8 through the same table", () => {
    for (const format of ["F8_E4M3", "F8_E5M2"] as const) {
      const codes = Uint8Array.from({ length: 256 }, (_, i) => i);
      const out = new Uint32Array(256);
      castInto(codes, format, new Uint8Array(out.buffer), "F32", 256);
      expect([...out]).toEqual([...float8Table(format)]);
    }
  });
});
