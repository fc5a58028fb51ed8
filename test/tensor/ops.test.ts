import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import type { DType } from "../../src/tensor/dtype.js";
import { cast, concatLast, selectRows, stack, transposeLast2 } from "../../src/tensor/ops.js";
import { type Tensor, makeTensor } from "../../src/tensor/tensor.js";
import { f32ExpertsCase, loadAll } from "../helpers/fixtures.js";

type Typed = Uint8Array | Int16Array | Uint16Array | Int32Array | Float32Array | Float64Array | BigInt64Array;

function tensor(dtype: DType, shape: number[], values: Typed): Tensor {
  return makeTensor(dtype, shape, new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
}

/** The tensor's elements read back through the given typed array constructor. */
function values<T extends Typed>(t: Tensor, of: { new (b: ArrayBuffer, o: number, n: number): T; BYTES_PER_ELEMENT: number }): T {
  const copy = t.data.slice();
  return new of(copy.buffer, 0, copy.byteLength / of.BYTES_PER_ELEMENT);
}

const i32 = (t: Tensor): number[] => [...values(t, Int32Array)];
const u16 = (t: Tensor): number[] => [...values(t, Uint16Array)];

describe("transposeLast2", () => {
  it("transposes a 2×3 int32 matrix", () => {
    const t = transposeLast2(tensor("I32", [2, 3], new Int32Array([1, 2, 3, 4, 5, 6])));
    expect(t.dtype).toBe("I32");
    expect(t.shape).toEqual([3, 2]);
    expect(i32(t)).toEqual([1, 4, 2, 5, 3, 6]);
  });

  it("transposes each matrix of a batch, for 1-, 2- and 8-byte items", () => {
    const u8 = transposeLast2(tensor("U8", [2, 2, 3], Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])));
    expect(u8.shape).toEqual([2, 3, 2]);
    expect([...u8.data]).toEqual([1, 4, 2, 5, 3, 6, 7, 10, 8, 11, 9, 12]);

    // bf16 NaN with payload, -0 and a subnormal must come through as bits.
    const bf = transposeLast2(tensor("BF16", [2, 2], new Uint16Array([0x7f81, 0x8000, 0x0001, 0x3f80])));
    expect(u16(bf)).toEqual([0x7f81, 0x0001, 0x8000, 0x3f80]);

    const big = [1n, -2n, 2n ** 62n, -(2n ** 63n), 5n, 6n];
    const i64 = transposeLast2(tensor("I64", [1, 3, 2], BigInt64Array.from(big)));
    expect(i64.shape).toEqual([1, 2, 3]);
    expect([...values(i64, BigInt64Array)]).toEqual([1n, 2n ** 62n, 5n, -2n, -(2n ** 63n), 6n]);
  });

  it("handles size-0 and size-1 dimensions", () => {
    expect(transposeLast2(makeTensor("F32", [0, 4])).shape).toEqual([4, 0]);
    const row = transposeLast2(tensor("I32", [1, 3], new Int32Array([7, 8, 9])));
    expect([row.shape, i32(row)]).toEqual([[3, 1], [7, 8, 9]]);
  });

  it("refuses fewer than two dimensions", () => {
    expect(() => transposeLast2(tensor("I32", [3], new Int32Array(3)))).toThrow(
      new RangeError("transposeLast2: needs at least 2 dimensions, got I32[3]"),
    );
  });
});

describe("stack", () => {
  it("adds a first axis", () => {
    const a = tensor("I16", [2, 2], new Int16Array([1, 2, 3, 4]));
    const b = tensor("I16", [2, 2], new Int16Array([-5, -6, -7, -8]));
    const s = stack([a, b, a]);
    expect(s.shape).toEqual([3, 2, 2]);
    expect([...values(s, Int16Array)]).toEqual([1, 2, 3, 4, -5, -6, -7, -8, 1, 2, 3, 4]);
  });

  it("stacks 0-d tensors into a vector and empty tensors into an empty tensor", () => {
    const scalars = [5, -1, 9].map((v) => tensor("I64", [], BigInt64Array.from([BigInt(v)])));
    const s = stack(scalars);
    expect([s.shape, [...values(s, BigInt64Array)]]).toEqual([[3], [5n, -1n, 9n]]);
    const e = stack([makeTensor("F16", [0, 3]), makeTensor("F16", [0, 3])]);
    expect([e.shape, e.data.byteLength]).toEqual([[2, 0, 3], 0]);
  });

  it("returns fresh memory", () => {
    const a = tensor("U8", [2], Uint8Array.from([1, 2]));
    const s = stack([a]);
    s.data[0] = 99;
    expect([...a.data]).toEqual([1, 2]);
  });

  it("refuses an empty list and mismatched dtypes or shapes, naming both tensors", () => {
    expect(() => stack([])).toThrow(new RangeError("stack: needs at least one tensor"));
    expect(() => stack([makeTensor("F32", [2, 3]), makeTensor("F32", [3, 2])])).toThrow(
      new RangeError("stack: tensor 1 is F32[3, 2] but tensor 0 is F32[2, 3]"),
    );
    expect(() => stack([makeTensor("F32", [2]), makeTensor("F32", [2]), makeTensor("BF16", [2])])).toThrow(
      new RangeError("stack: tensor 2 is BF16[2] but tensor 0 is F32[2]"),
    );
  });

  it("refuses a tensor whose bytes do not match its shape", () => {
    const bad: Tensor = { dtype: "F32", shape: [2, 2], data: new Uint8Array(12) };
    expect(() => stack([makeTensor("F32", [2, 2]), bad])).toThrow(
      new RangeError("stack: tensor 1 F32[2, 2] needs 16 bytes, has 12"),
    );
  });
});

describe("concatLast", () => {
  it("joins rows along the last axis", () => {
    const a = tensor("I32", [2, 2], new Int32Array([1, 2, 3, 4]));
    const b = tensor("I32", [2, 1], new Int32Array([5, 6]));
    const c = tensor("I32", [2, 3], new Int32Array([7, 8, 9, 10, 11, 12]));
    const t = concatLast([a, b, c]);
    expect(t.shape).toEqual([2, 6]);
    expect(i32(t)).toEqual([1, 2, 5, 7, 8, 9, 3, 4, 6, 10, 11, 12]);
  });

  it("joins vectors and 3-d blocks, skipping empty pieces", () => {
    const v = concatLast([tensor("U8", [2], Uint8Array.from([1, 2])), makeTensor("U8", [0]), tensor("U8", [1], Uint8Array.from([3]))]);
    expect([v.shape, [...v.data]]).toEqual([[3], [1, 2, 3]]);
    const a = tensor("F64", [2, 1, 1], new Float64Array([1.5, -0]));
    const b = tensor("F64", [2, 1, 2], new Float64Array([NaN, 2, 3, 4]));
    const t = concatLast([a, b]);
    expect(t.shape).toEqual([2, 1, 3]);
    expect([...values(t, Float64Array)]).toEqual([1.5, NaN, 2, -0, 3, 4]);
    expect(Object.is(values(t, Float64Array)[3], -0)).toBe(true);
  });

  it("refuses mismatched leading dimensions, ranks or dtypes, and 0-d tensors", () => {
    expect(() => concatLast([makeTensor("F32", [2, 3]), makeTensor("F32", [3, 3])])).toThrow(
      new RangeError(
        "concatLast: tensor 1 is F32[3, 3] but tensor 0 is F32[2, 3]; all but the last dimension and the dtype must match",
      ),
    );
    expect(() => concatLast([makeTensor("F32", [2, 3]), makeTensor("F32", [2, 3, 1])])).toThrow(
      new RangeError("concatLast: tensor 1 is F32[2, 3, 1] but tensor 0 is F32[2, 3]; all but the last dimension and the dtype must match"),
    );
    expect(() => concatLast([makeTensor("F32", [2]), makeTensor("I32", [2])])).toThrow(/tensor 1 is I32\[2\]/);
    expect(() => concatLast([makeTensor("F32", [])])).toThrow(new RangeError("concatLast: cannot concatenate 0-d tensors"));
    expect(() => concatLast([])).toThrow(new RangeError("concatLast: needs at least one tensor"));
  });
});

describe("selectRows", () => {
  const t = tensor("I32", [4, 2], new Int32Array([0, 1, 10, 11, 20, 21, 30, 31]));

  it("copies rows [start, end) of the first axis", () => {
    const s = selectRows(t, 1, 3);
    expect([s.shape, i32(s)]).toEqual([[2, 2], [10, 11, 20, 21]]);
    expect(i32(selectRows(t, 0, 4))).toEqual(i32(t));
    expect(selectRows(t, 2, 2).shape).toEqual([0, 2]);
    const last = selectRows(tensor("BF16", [3], new Uint16Array([1, 0x7fc1, 0x8000])), 1, 3);
    expect(u16(last)).toEqual([0x7fc1, 0x8000]);
  });

  it("returns fresh memory, even from a tensor whose bytes start at an odd offset", () => {
    const backing = new Uint8Array(1 + 8);
    backing.set([1, 2, 3, 4, 5, 6, 7, 8], 1);
    const odd = makeTensor("I16", [2, 2], backing.subarray(1));
    const s = selectRows(odd, 1, 2);
    expect([...s.data]).toEqual([5, 6, 7, 8]);
    s.data[0] = 0;
    expect(backing[5]).toBe(5);
  });

  it("refuses rows out of range and 0-d tensors", () => {
    expect(() => selectRows(t, 3, 5)).toThrow(new RangeError("selectRows: rows [3, 5) out of range for I32[4, 2]"));
    expect(() => selectRows(t, 2, 1)).toThrow(new RangeError("selectRows: rows [2, 1) out of range for I32[4, 2]"));
    expect(() => selectRows(t, -1, 1)).toThrow(new RangeError("selectRows: rows [-1, 1) out of range for I32[4, 2]"));
    expect(() => selectRows(makeTensor("I64", []), 0, 0)).toThrow(new RangeError("selectRows: cannot take rows of a 0-d tensor"));
  });
});

describe("cast", () => {
  it("rounds f32 to bf16 to nearest even, keeping shape", () => {
    const src = tensor("F32", [2, 3], new Float32Array([1, -0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 3.4028234663852886e38, NaN]));
    const out = cast(src, "BF16");
    expect(out.dtype).toBe("BF16");
    expect(out.shape).toEqual([2, 3]);
    const bits = u16(out);
    // 1 + 2^-8 is a tie that stays at 1; 1 + 3·2^-8 ties up to 1 + 2^-6; the largest f32 overflows.
    expect(bits.slice(0, 5)).toEqual([0x3f80, 0x8000, 0x3f80, 0x3f82, 0x7f80]);
    expect(bits[5]! & 0x7f80).toBe(0x7f80);
    expect(bits[5]! & 0x7f).not.toBe(0);
  });

  it("widens bf16 and f16 to f32 exactly", () => {
    expect([...values(cast(tensor("BF16", [3], new Uint16Array([0x3f80, 0xc0a0, 0x0001])), "F32"), Float32Array)]).toEqual([
      1, -5, 2 ** -133,
    ]);
    expect([...values(cast(tensor("F16", [3], new Uint16Array([0x3c00, 0x7bff, 0x0001])), "F32"), Float32Array)]).toEqual([
      1, 65504, 2 ** -24,
    ]);
  });

  it("casts 0-d tensors and tensors at an unaligned byte offset", () => {
    const backing = new Uint8Array(1 + 8);
    backing.set(new Uint8Array(new Float32Array([1.5, -2]).buffer), 1);
    const odd = makeTensor("F32", [2], backing.subarray(1));
    expect(u16(cast(odd, "BF16"))).toEqual([0x3fc0, 0xc000]);
    const scalar = cast(tensor("F64", [], new Float64Array([0.1])), "F32");
    expect([scalar.shape, [...values(scalar, Float32Array)]]).toEqual([[], [Math.fround(0.1)]]);
  });

  it("copies when the dtype does not change, for any dtype", () => {
    const t = tensor("I64", [2], BigInt64Array.from([1n, -1n]));
    const same = cast(t, "I64");
    expect([...values(same, BigInt64Array)]).toEqual([1n, -1n]);
    expect(same.data).not.toBe(t.data);
  });

  it("refuses integer and bool tensors, integer targets and float8 targets", () => {
    expect(() => cast(makeTensor("I32", [2]), "F32")).toThrow(
      new TypeError("cast: cannot cast I32[2] to F32: only float tensors are cast, to F32, F16, BF16 or F64"),
    );
    expect(() => cast(makeTensor("F32", [2]), "I64")).toThrow(/cannot cast F32\[2\] to I64/);
    expect(() => cast(makeTensor("BOOL", []), "BF16")).toThrow(new TypeError("cast: cannot cast BOOL[] to BF16: only float tensors are cast, to F32, F16, BF16 or F64"));
    expect(() => cast(makeTensor("F32", [1]), "F8_E4M3")).toThrow(/cannot cast F32\[1\] to F8_E4M3/);
  });
});

/*
 * The oracle case f32-experts-cast-to-bf16 was produced by the reference implementation: per-expert
 * float32 weights in, one bfloat16 tensor per layer out. up_proj is [I, H] per expert and becomes
 * gate_and_up_projs [E, H, I]; down_proj is [H, I] and becomes down_projs [E, I, H]. Both are the stack of
 * the transposed experts cast to bfloat16, so the ops alone must reproduce every byte.
 */
describe("oracle: f32 experts stacked, transposed and cast to bf16", () => {
  const expected = loadAll(path.join(f32ExpertsCase, "expected", "model.safetensors"));
  const inputDir = path.join(f32ExpertsCase, "input");
  const input = loadAll(inputDir);
  const shardsOf = JSON.parse(fs.readFileSync(path.join(inputDir, "model.safetensors.index.json"), "utf8")) as { weight_map: Record<string, string> };
  const expertKey = /^(language_model\.(?:backbone|mtp)\.layers\.\d+\.mixer\.experts)\.(\d+)\.(up_proj|down_proj)\.weight$/;

  const groups = new Map<string, { prefix: string; proj: string; experts: Map<number, string> }>();
  for (const name of input.keys()) {
    const m = expertKey.exec(name);
    if (!m) continue;
    const key = `${m[1]}.${m[3]}`;
    const g = groups.get(key) ?? { prefix: m[1]!, proj: m[3]!, experts: new Map<number, string>() };
    g.experts.set(Number(m[2]), name);
    groups.set(key, g);
  }
  const outputName = (prefix: string, proj: string): string =>
    `${prefix.replace("language_model.backbone.", "language_model.model.")}.${proj === "up_proj" ? "gate_and_up_projs" : "down_projs"}`;

  it("finds layers 1, 4 and the MTP layer, four experts each, in both shards", () => {
    expect([...groups.keys()].sort()).toEqual([
      "language_model.backbone.layers.1.mixer.experts.down_proj",
      "language_model.backbone.layers.1.mixer.experts.up_proj",
      "language_model.backbone.layers.4.mixer.experts.down_proj",
      "language_model.backbone.layers.4.mixer.experts.up_proj",
      "language_model.mtp.layers.1.mixer.experts.down_proj",
      "language_model.mtp.layers.1.mixer.experts.up_proj",
    ]);
    for (const g of groups.values()) expect([...g.experts.keys()].sort()).toEqual([0, 1, 2, 3]);
    expect(new Set(Object.values(shardsOf.weight_map)).size).toBe(2);
    const grouped = [...expected.keys()].filter((n) => /\.experts\.(gate_and_up_projs|down_projs)$/.test(n)).sort();
    expect(grouped).toEqual([...groups.values()].map((g) => outputName(g.prefix, g.proj)).sort());
  });

  for (const key of [...groups.keys()].sort()) {
    const g = groups.get(key)!;
    const name = outputName(g.prefix, g.proj);
    it(`${name} is stack(experts ᵀ) in bf16, byte for byte`, () => {
      const experts = [...g.experts.keys()].sort((a, b) => a - b).map((e) => {
        return input.get(g.experts.get(e)!)!;
      });
      for (const t of experts) expect(t.dtype).toBe("F32");
      const want = expected.get(name)!;
      const [rows, cols] = experts[0]!.shape;
      expect([want.dtype, want.shape]).toEqual(["BF16", [experts.length, cols, rows]]);

      const got = stack(experts.map((t) => cast(transposeLast2(t), "BF16")));
      expect(got.dtype).toBe("BF16");
      expect(got.shape).toEqual(want.shape);
      expect(Buffer.from(got.data).equals(Buffer.from(want.data))).toBe(true);
      // The same ops in another order must agree: casting commutes with moving elements.
      expect(Buffer.from(transposeLast2(cast(stack(experts), "BF16")).data).equals(Buffer.from(want.data))).toBe(true);
    });
  }
});
