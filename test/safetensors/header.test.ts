import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { openSafetensors } from "../helpers/fixtures.js";
import { FormatError, InputError } from "../../src/errors.js";
import { SafetensorsFile } from "../../src/safetensors/file.js";
import { MAX_HEADER_LENGTH, PREFIX_LENGTH, parseHeader, readHeaderLength } from "../../src/safetensors/header.js";

/**
 * Hand-built files, most of them malformed. Every refusal must be a FormatError naming the file, the tensor
 * when there is one, and the problem with its real numbers.
 */

const FILE = "bad.safetensors";

interface BuildOptions {
  /** Replaces the true header length in the 8-byte prefix. */
  readonly length?: bigint;
  /** Spaces appended to the header (and counted in its length). */
  readonly pad?: number;
}

/** Prefix + header + data. `header` is JSON text, or raw bytes for encodings JSON text cannot express. */
function build(header: string | Uint8Array, data: Uint8Array | number = 0, options: BuildOptions = {}): Uint8Array {
  const text = typeof header === "string" ? new TextEncoder().encode(header + " ".repeat(options.pad ?? 0)) : header;
  const body = typeof data === "number" ? pattern(data) : data;
  const out = new Uint8Array(PREFIX_LENGTH + text.byteLength + body.byteLength);
  new DataView(out.buffer).setBigUint64(0, options.length ?? BigInt(text.byteLength), true);
  out.set(text, PREFIX_LENGTH);
  out.set(body, PREFIX_LENGTH + text.byteLength);
  return out;
}

/** Recognizable non-zero bytes, so a read from the wrong place shows. */
function pattern(n: number, seed = 1): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 37 + seed * 11 + 1) & 0xff;
  return out;
}

/** One header entry as JSON text. */
function entry(dtype: string, shape: readonly (number | string)[], begin: number | string, end: number | string): string {
  return `{"dtype":"${dtype}","shape":[${shape.join(",")}],"data_offsets":[${begin},${end}]}`;
}

function open(bytes: Uint8Array): SafetensorsFile {
  return SafetensorsFile.fromBytes(bytes, FILE);
}

function caught(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  throw new Error("expected a FormatError, but nothing was thrown");
}

/** The file must be refused with exactly this problem (a string) or one matching it (a RegExp). */
function expectRefused(bytes: Uint8Array, detail: string | RegExp, tensor?: string): FormatError {
  const e = caught(() => open(bytes));
  expect(e).toBeInstanceOf(FormatError);
  expect(e).toBeInstanceOf(InputError);
  const fe = e as FormatError;
  expect(fe.file).toBe(FILE);
  expect(fe.tensor).toBe(tensor);
  if (typeof detail === "string") expect(fe.detail).toBe(detail);
  else expect(fe.detail).toMatch(detail);
  expect(fe.message).toBe(`${FILE}: ${tensor !== undefined ? `tensor ${JSON.stringify(tensor)}: ` : ""}${fe.detail}`);
  return fe;
}

function f32(...values: number[]): Uint8Array {
  return new Uint8Array(new Float32Array(values).buffer);
}

describe("header length prefix", () => {
  it("refuses an empty file", () => {
    expectRefused(new Uint8Array(0), "file is 0 bytes, too short to hold a safetensors header length");
  });

  for (let n = 1; n <= 7; n++) {
    it(`refuses a ${n}-byte file`, () => {
      expectRefused(new Uint8Array(n).fill(0x7b), `file is ${n} bytes, too short to hold a safetensors header length`);
    });
  }

  it("refuses an 8-byte file whose header length is zero", () => {
    expectRefused(new Uint8Array(8), "header length 0 is too short for a JSON object");
  });

  it("refuses a header length of 1", () => {
    expectRefused(build("{"), "header length 1 is too short for a JSON object");
  });

  it("refuses a header length larger than the file", () => {
    expectRefused(build("{}", 0, { length: 100n }), "header length 100 runs past the end of the file (10 bytes)");
    // One byte short: the length counts a byte that is not there.
    const header = `{"a":${entry("U8", [0], 0, 0)}}`;
    expectRefused(
      build(header, 0, { length: BigInt(header.length + 1) }),
      `header length ${header.length + 1} runs past the end of the file (${8 + header.length} bytes)`,
    );
    // The header fits but the data it declares does not.
    expectRefused(build(`{"a":${entry("U8", [1], 0, 1)}}`, 0), "data [0, 1) runs past the end of the file (0 data bytes)", "a");
  });

  it("refuses a header length exactly at the limit when the file is smaller", () => {
    expectRefused(
      build("{}", 0, { length: BigInt(MAX_HEADER_LENGTH) }),
      `header length ${MAX_HEADER_LENGTH} runs past the end of the file (10 bytes)`,
    );
  });

  it("refuses absurd header lengths before allocating anything", () => {
    expectRefused(build("{}", 0, { length: 2n ** 63n }), "header length 9223372036854775808 exceeds the 100000000-byte limit");
    expectRefused(build("{}", 0, { length: 2n ** 64n - 1n }), "header length 18446744073709551615 exceeds the 100000000-byte limit");
    expectRefused(build("{}", 0, { length: BigInt(MAX_HEADER_LENGTH + 1) }), "header length 100000001 exceeds the 100000000-byte limit");
  });

  it("readHeaderLength checks the prefix it is given", () => {
    const prefix = new Uint8Array(8);
    new DataView(prefix.buffer).setBigUint64(0, 16n, true);
    expect(readHeaderLength(prefix, 24, FILE)).toBe(16);
    expect(readHeaderLength(prefix, 100, FILE)).toBe(16);
    const e = caught(() => readHeaderLength(prefix, 23, FILE));
    expect(e).toBeInstanceOf(FormatError);
    expect((e as FormatError).message).toBe(`${FILE}: header length 16 runs past the end of the file (23 bytes)`);
    const short = caught(() => readHeaderLength(prefix.subarray(0, 4), 100, FILE));
    expect((short as FormatError).message).toBe(`${FILE}: file is 100 bytes, too short to hold a safetensors header length`);
  });

  it("reads the prefix through a subarray with a byte offset", () => {
    const backing = new Uint8Array(16);
    new DataView(backing.buffer).setBigUint64(3, 2n, true);
    expect(readHeaderLength(backing.subarray(3, 11), 10, FILE)).toBe(2);
  });
});

describe("header text", () => {
  it("refuses a header that is not JSON", () => {
    expectRefused(build("garbage"), 'header is not valid JSON: unexpected character "g" at character 0');
    expectRefused(build("nope"), "header is not valid JSON: invalid literal at character 0");
    expectRefused(build("{'a': 1}"), "header is not valid JSON: expected a string key in object at character 1");
    expectRefused(build('{"a":{}'), /^header is not valid JSON: expected ',' or '}' in object at character 7$/);
  });

  it("refuses a header that is a JSON array, number, string or null", () => {
    expectRefused(build("[]"), "header is an array, not a JSON object");
    expectRefused(build("[1, 2, 3]"), "header is an array, not a JSON object");
    expectRefused(build("42"), "header is the number 42, not a JSON object");
    expectRefused(build('"text"'), "header is a string, not a JSON object");
    expectRefused(build("null"), "header is null, not a JSON object");
    expectRefused(build("true"), "header is the literal true, not a JSON object");
  });

  it("refuses invalid UTF-8 anywhere in the header", () => {
    const good = new TextEncoder().encode(`{"ab":${entry("U8", [1], 0, 1)}}`);
    const bad = good.slice();
    bad[2] = 0xff; // inside the tensor name
    expectRefused(build(bad, 1), "header is not valid UTF-8");
    // A truncated multi-byte sequence, and an overlong encoding of "/".
    expectRefused(build(new Uint8Array([0x7b, 0x22, 0xe2, 0x82, 0x22, 0x3a, 0x30, 0x7d])), "header is not valid UTF-8");
    expectRefused(build(new Uint8Array([0x7b, 0x22, 0xc0, 0xaf, 0x22, 0x3a, 0x30, 0x7d])), "header is not valid UTF-8");
    // UTF-8-encoded surrogate halves are not UTF-8.
    expectRefused(build(new Uint8Array([0x7b, 0x22, 0xed, 0xa0, 0x80, 0x22, 0x3a, 0x30, 0x7d])), "header is not valid UTF-8");
  });

  it("refuses data after the JSON value, including NUL padding", () => {
    expectRefused(build(`{}x`), "header is not valid JSON: unexpected data after the JSON value at character 2");
    expectRefused(build(`{}\0\0\0\0\0\0`), "header is not valid JSON: unexpected data after the JSON value at character 2");
    expectRefused(build(`{}{}`), "header is not valid JSON: unexpected data after the JSON value at character 2");
  });

  it("refuses a duplicate tensor name instead of keeping the last", () => {
    const header = `{"w":${entry("U8", [1], 0, 1)},"w":${entry("U8", [1], 1, 2)}}`;
    expectRefused(build(header, 2), "appears twice in the header (JSON.parse would silently keep the last)", "w");
  });

  it("refuses a duplicate key spelled differently with escapes", () => {
    expectRefused(build(`{"w":${entry("U8", [1], 0, 1)},"\\u0077":${entry("U8", [1], 1, 2)}}`, 2), "appears twice in the header (JSON.parse would silently keep the last)", "w");
  });

  it("refuses a duplicate key inside an entry", () => {
    expectRefused(
      build(`{"w":{"dtype":"U8","dtype":"F32","shape":[1],"data_offsets":[0,1]}}`, 1),
      /^header is not valid JSON: duplicate key "dtype" at character \d+$/,
    );
  });

  it("fails cleanly on JSON nested 10,000 deep (no stack overflow)", () => {
    const deep = 10_000;
    expectRefused(build(`{"a":${"[".repeat(deep)}${"]".repeat(deep)}}`), /^header is not valid JSON: JSON nested too deeply at character \d+$/);
    expectRefused(build(`${'{"a":'.repeat(deep)}1${"}".repeat(deep)}`), /^header is not valid JSON: JSON nested too deeply at character \d+$/);
    expectRefused(build("[".repeat(100_000)), /^header is not valid JSON: JSON nested too deeply at character \d+$/);
  });

  it("refuses bad strings in the header", () => {
    expectRefused(build('{"a\nb":1}'), "header is not valid JSON: control character in string at character 3");
    expectRefused(build('{"a\\qb":1}'), "header is not valid JSON: invalid escape in string at character 3");
    expectRefused(build('{"a\\u12g4":1}'), "header is not valid JSON: invalid \\u escape at character 5");
    expectRefused(build('{"abc'), "header is not valid JSON: unterminated string at character 5");
  });
});

describe("tensor entries", () => {
  it("refuses an unknown dtype", () => {
    expectRefused(build(`{"w":${entry("F128", [1], 0, 16)}}`, 16), 'unknown dtype "F128"', "w");
    expectRefused(build(`{"w":${entry("f32", [1], 0, 4)}}`, 4), 'unknown dtype "f32"', "w");
    expectRefused(build(`{"w":${entry("toString", [1], 0, 4)}}`, 4), 'unknown dtype "toString"', "w");
    expectRefused(build(`{"w":${entry("__proto__", [1], 0, 4)}}`, 4), 'unknown dtype "__proto__"', "w");
  });

  it("refuses an entry without dtype, shape or data_offsets", () => {
    expectRefused(build(`{"w":{"shape":[1],"data_offsets":[0,4]}}`, 4), "entry has no dtype", "w");
    expectRefused(build(`{"w":{"dtype":"F32","data_offsets":[0,4]}}`, 4), "entry has no shape", "w");
    expectRefused(build(`{"w":{"dtype":"F32","shape":[1]}}`, 4), "entry has no data_offsets", "w");
  });

  it("refuses fields of the wrong kind", () => {
    expectRefused(build(`{"w":[1,2]}`), "entry is an array, not an object", "w");
    expectRefused(build(`{"w":null}`), "entry is null, not an object", "w");
    expectRefused(build(`{"w":{"dtype":4,"shape":[1],"data_offsets":[0,4]}}`, 4), "dtype is not a string", "w");
    expectRefused(build(`{"w":{"dtype":"F32","shape":"1","data_offsets":[0,4]}}`, 4), "shape is not an array", "w");
    expectRefused(build(`{"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}}`, 4), "data_offsets is not a pair of integers", "w");
    expectRefused(build(`{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}`, 4), "data_offsets is not a pair of integers", "w");
    expectRefused(build(`{"w":{"dtype":"F32","shape":[1],"data_offsets":{"0":0}}}`, 4), "data_offsets is not a pair of integers", "w");
    expectRefused(build(`{"w":${entry("F32", ['"1"'], 0, 4)}}`, 4), "shape dimension 0 is a string, not an integer", "w");
    expectRefused(build(`{"w":${entry("F32", ["null"], 0, 4)}}`, 4), "shape dimension 0 is null, not an integer", "w");
    expectRefused(build(`{"w":${entry("F32", [1], '"0"', 4)}}`, 4), "data_offsets[0] is a string, not an integer", "w");
  });

  it("refuses a negative dimension", () => {
    expectRefused(build(`{"w":${entry("F32", [2, -1], 0, 4)}}`, 4), "shape dimension 1 is negative (-1)", "w");
    expectRefused(build(`{"w":${entry("F32", ["-0"], 0, 0)}}`), "shape dimension 0 is negative (-0)", "w");
  });

  it("refuses fractional and exponent dimensions, even integral ones", () => {
    expectRefused(build(`{"w":${entry("F32", [1.5], 0, 4)}}`, 4), "shape dimension 0 1.5 is not an integer", "w");
    expectRefused(build(`{"w":${entry("F32", ["1.0"], 0, 4)}}`, 4), "shape dimension 0 1.0 is not an integer", "w");
    expectRefused(build(`{"w":${entry("F32", ["1e3"], 0, 4000)}}`, 4000), "shape dimension 0 1e3 is not an integer", "w");
    expectRefused(build(`{"w":${entry("F32", ["1E0"], 0, 4)}}`, 4), "shape dimension 0 1E0 is not an integer", "w");
  });

  it("refuses leading zeros in a dimension", () => {
    expectRefused(build(`{"w":${entry("F32", ["01"], 0, 4)}}`, 4), /^header is not valid JSON: expected ',' or '\]' in array at character \d+$/);
  });

  it("refuses dimensions and offsets above 2^53", () => {
    expectRefused(
      build(`{"w":${entry("U8", ["9007199254740993", 0], 0, 0)}}`),
      "shape dimension 0 9007199254740993 is 2^53 or more and cannot be represented exactly",
      "w",
    );
    expectRefused(
      build(`{"w":${entry("U8", ["123456789012345678901234567890"], 0, 4)}}`, 4),
      "shape dimension 0 123456789012345678901234567890 is 2^53 or more and cannot be represented exactly",
      "w",
    );
    expectRefused(
      build(`{"w":${entry("U8", [0], "9007199254740993", "9007199254740993")}}`),
      "data_offsets[0] 9007199254740993 is 2^53 or more and cannot be represented exactly",
      "w",
    );
    expectRefused(
      build(`{"w":${entry("U8", [4], 0, "18446744073709551620")}}`, 4),
      "data_offsets[1] 18446744073709551620 is 2^53 or more and cannot be represented exactly",
      "w",
    );
  });

  it("accepts the largest exact integer as a dimension of an empty tensor", () => {
    const st = open(build(`{"w":${entry("U8", [0, "9007199254740991"], 0, 0)}}`));
    expect(st.tensors.get("w")?.shape).toEqual([0, 9007199254740991]);
  });

  it("refuses a shape whose byte size overflows", () => {
    // 2^78 elements.
    expectRefused(
      build(`{"w":${entry("F32", [67108864, 67108864, 67108864], 0, 4)}}`, 4),
      "shape [67108864, 67108864, 67108864] holds 2^53 bytes or more",
      "w",
    );
    // Elements fit exactly (3 * 2^51) but bytes (x8) do not.
    expectRefused(build(`{"w":${entry("F64", [2251799813685248, 3], 0, 8)}}`, 8), "shape [2251799813685248, 3] holds 2^53 bytes or more", "w");
    // Each dimension fits a double; the product wraps no 64-bit integer here, it is just refused.
    expectRefused(build(`{"w":${entry("U8", [4294967296, 4294967296], 0, 0)}}`), "shape [4294967296, 4294967296] holds 2^53 bytes or more", "w");
  });

  it("refuses data_offsets that do not match shape x itemsize", () => {
    expectRefused(build(`{"w":${entry("F32", [2], 0, 4)}}`, 4), "data_offsets [0, 4] span 4 bytes but F32[2] needs 8", "w");
    expectRefused(build(`{"w":${entry("BF16", [2, 3], 0, 6)}}`, 6), "data_offsets [0, 6] span 6 bytes but BF16[2, 3] needs 12", "w");
    expectRefused(build(`{"w":${entry("I64", [], 0, 4)}}`, 4), "data_offsets [0, 4] span 4 bytes but I64[] needs 8", "w");
    expectRefused(build(`{"w":${entry("F32", [0], 0, 4)}}`, 4), "data_offsets [0, 4] span 4 bytes but F32[0] needs 0", "w");
  });

  it("refuses data_offsets that end before they begin", () => {
    expectRefused(build(`{"w":${entry("U8", [4], 8, 4)}}`, 8), "data_offsets [8, 4] end before they begin", "w");
  });

  it("refuses __metadata__ that is not string -> string", () => {
    expectRefused(build(`{"__metadata__":{"format":"pt","n":1}}`), '__metadata__ must map strings to strings, but key "n" holds the number 1');
    expectRefused(build(`{"__metadata__":{"a":{"b":"c"}}}`), '__metadata__ must map strings to strings, but key "a" holds an object');
    expectRefused(build(`{"__metadata__":{"a":null}}`), '__metadata__ must map strings to strings, but key "a" holds null');
    expectRefused(build(`{"__metadata__":["format","pt"]}`), "__metadata__ is an array, not an object of strings");
    expectRefused(build(`{"__metadata__":"pt"}`), "__metadata__ is a string, not an object of strings");
  });
});

describe("data layout", () => {
  it("refuses offsets past the end of the data", () => {
    expectRefused(build(`{"w":${entry("F32", [2], 0, 8)}}`, 4), "data [0, 8) runs past the end of the file (4 data bytes)", "w");
    expectRefused(build(`{"a":${entry("U8", [4], 0, 4)},"b":${entry("U8", [4], 4, 8)}}`, 6), "data [4, 8) runs past the end of the file (6 data bytes)", "b");
  });

  it("refuses overlapping tensors", () => {
    expectRefused(build(`{"a":${entry("F32", [1], 0, 4)},"b":${entry("F32", [1], 2, 6)}}`, 6), 'data [2, 6) overlaps tensor "a"', "b");
    // Listed in the other order: still found, still named by data order.
    expectRefused(build(`{"b":${entry("F32", [1], 2, 6)},"a":${entry("F32", [1], 0, 4)}}`, 6), 'data [2, 6) overlaps tensor "a"', "b");
    // Two tensors sharing the very same bytes.
    expectRefused(build(`{"a":${entry("F32", [1], 0, 4)},"b":${entry("F32", [1], 0, 4)}}`, 4), 'data [0, 4) overlaps tensor "a"', "b");
    // A zero-size tensor inside another tensor's bytes.
    expectRefused(build(`{"a":${entry("F32", [2], 0, 8)},"z":${entry("F32", [0], 4, 4)}}`, 8), 'data [4, 4) overlaps tensor "a"', "z");
  });

  it("refuses a gap between tensors", () => {
    expectRefused(
      build(`{"a":${entry("F32", [1], 0, 4)},"b":${entry("F32", [1], 8, 12)}}`, 12),
      'gap of 4 bytes in the data before it (after "a")',
      "b",
    );
  });

  it("refuses a gap before the first tensor", () => {
    expectRefused(build(`{"a":${entry("F32", [1], 4, 8)}}`, 8), "gap of 4 bytes in the data before it", "a");
  });

  it("refuses bytes after the last tensor", () => {
    expectRefused(build(`{"a":${entry("F32", [1], 0, 4)}}`, 7), "3 bytes after the last tensor are not covered by any tensor");
    expectRefused(build(`{}`, 1), "1 bytes after the last tensor are not covered by any tensor");
    expectRefused(build(`{"__metadata__":{"format":"pt"}}`, 8), "8 bytes after the last tensor are not covered by any tensor");
  });
});

describe("valid but unusual files", () => {
  it("reads tensors named __proto__ and constructor as ordinary tensors", () => {
    const header = `{"__proto__":${entry("F32", [2], 0, 8)},"constructor":${entry("U8", [3], 8, 11)},"toString":${entry("U8", [1], 11, 12)}}`;
    const data = new Uint8Array([...f32(1.5, -2), 7, 8, 9, 10]);
    const st = open(build(header, data));
    expect([...st.tensors.keys()]).toEqual(["__proto__", "constructor", "toString"]);
    const proto = st.readTensorSync("__proto__");
    expect(proto.dtype).toBe("F32");
    expect(proto.shape).toEqual([2]);
    expect([...new Float32Array(proto.data.slice().buffer)]).toEqual([1.5, -2]);
    expect(st.readTensorSync("constructor")).toEqual({ dtype: "U8", shape: [3], data: new Uint8Array([7, 8, 9]) });
    expect(st.readTensorSync("toString").data).toEqual(new Uint8Array([10]));
    // Nothing leaked onto Object.prototype.
    expect(({} as Record<string, unknown>)["dtype"]).toBeUndefined();
    expect(Object.getPrototypeOf({})).toBe(Object.prototype);
  });

  it("reads a __proto__ key inside an entry as an unknown field", () => {
    const st = open(build(`{"w":{"__proto__":{"dtype":"F64"},"dtype":"U8","shape":[2],"data_offsets":[0,2]}}`, new Uint8Array([1, 2])));
    expect(st.readTensorSync("w")).toEqual({ dtype: "U8", shape: [2], data: new Uint8Array([1, 2]) });
  });

  it("reads zero-size tensors of shape [0] and [3, 0], at the start, middle and end", () => {
    const header =
      `{"z0":${entry("F32", [0], 0, 0)},"a":${entry("U8", [2], 0, 2)},"z1":${entry("BF16", [3, 0], 2, 2)},` +
      `"b":${entry("U8", [1], 2, 3)},"z2":${entry("I64", [0, 5, 7], 3, 3)}}`;
    const st = open(build(header, new Uint8Array([1, 2, 3])));
    expect(st.readTensorSync("z0")).toEqual({ dtype: "F32", shape: [0], data: new Uint8Array(0) });
    expect(st.readTensorSync("z1")).toEqual({ dtype: "BF16", shape: [3, 0], data: new Uint8Array(0) });
    expect(st.readTensorSync("z2")).toEqual({ dtype: "I64", shape: [0, 5, 7], data: new Uint8Array(0) });
    expect(st.readTensorSync("a").data).toEqual(new Uint8Array([1, 2]));
    expect(st.readTensorSync("b").data).toEqual(new Uint8Array([3]));
  });

  it("reads a file holding only zero-size tensors and no data", () => {
    const st = open(build(`{"a":${entry("F32", [0], 0, 0)},"b":${entry("F32", [0, 2], 0, 0)}}`));
    expect(st.header.entries.map((e) => [e.name, e.begin, e.end])).toEqual([
      ["a", 0, 0],
      ["b", 0, 0],
    ]);
  });

  it("reads 0-d scalars", () => {
    const i64 = new Uint8Array(8);
    new DataView(i64.buffer).setBigInt64(0, -12345678901234n, true);
    const st = open(build(`{"n":${entry("I64", [], 0, 8)},"x":${entry("F32", [], 8, 12)}}`, new Uint8Array([...i64, ...f32(0.25)])));
    const n = st.readTensorSync("n");
    expect(n.shape).toEqual([]);
    expect(new DataView(n.data.buffer, n.data.byteOffset).getBigInt64(0, true)).toBe(-12345678901234n);
    const x = st.readTensorSync("x");
    expect(x.shape).toEqual([]);
    expect(new DataView(x.data.buffer, x.data.byteOffset).getFloat32(0, true)).toBe(0.25);
  });

  it("ignores unknown extra fields in an entry", () => {
    const st = open(
      build(`{"w":{"dtype":"U8","extra":{"x":[1,2,{"y":null}]},"shape":[2],"note":"hi","data_offsets":[0,2],"n":1e400}}`, new Uint8Array([5, 6])),
    );
    expect(st.readTensorSync("w")).toEqual({ dtype: "U8", shape: [2], data: new Uint8Array([5, 6]) });
  });

  it("accepts a header padded with trailing spaces, and whitespace around tokens", () => {
    const header = `{"w":${entry("U8", [1], 0, 1)}}`;
    for (let pad = 0; pad <= 9; pad++) {
      const st = open(build(header, new Uint8Array([42]), { pad }));
      expect(st.readTensorSync("w").data).toEqual(new Uint8Array([42]));
      expect(st.header.dataStart).toBe(PREFIX_LENGTH + header.length + pad);
    }
    const st = open(build(` \n{ "w" :\t{"dtype" : "U8", "shape" : [ 1 ] , "data_offsets":[0 , 1]}\r\n}   `, new Uint8Array([9])));
    expect(st.readTensorSync("w").data).toEqual(new Uint8Array([9]));
  });

  it("reads tensors at unaligned offsets", () => {
    const i64 = new Uint8Array(8);
    new DataView(i64.buffer).setBigInt64(0, 0x0102030405060708n, true);
    const header = `{"b":${entry("U8", [1], 0, 1)},"w":${entry("F32", [3], 1, 13)},"n":${entry("I64", [1], 13, 21)}}`;
    // Odd header length too, so nothing is aligned in the file either.
    const bytes = build(header, new Uint8Array([0xab, ...f32(1, -0.5, 3.25), ...i64]), { pad: 1 });
    expect((PREFIX_LENGTH + header.length + 1) % 2).toBe(1);
    const st = open(bytes);
    expect(st.readTensorSync("b").data).toEqual(new Uint8Array([0xab]));
    const w = st.readTensorSync("w");
    const view = new DataView(w.data.buffer, w.data.byteOffset, w.data.byteLength);
    expect([view.getFloat32(0, true), view.getFloat32(4, true), view.getFloat32(8, true)]).toEqual([1, -0.5, 3.25]);
    const n = st.readTensorSync("n");
    expect(new DataView(n.data.buffer, n.data.byteOffset).getBigInt64(0, true)).toBe(0x0102030405060708n);
    expect(st.position(st.tensors.get("w")!)).toBe(PREFIX_LENGTH + header.length + 1 + 1);
  });

  it("reads entries listed out of data order, sorted by offset", () => {
    const header = `{"second":${entry("U8", [2], 2, 4)},"first":${entry("U8", [2], 0, 2)}}`;
    const st = open(build(header, new Uint8Array([1, 2, 3, 4])));
    expect(st.header.entries.map((e) => e.name)).toEqual(["first", "second"]);
    expect(st.readTensorSync("second").data).toEqual(new Uint8Array([3, 4]));
  });

  it("accepts __metadata__: null, and reads string metadata", () => {
    expect(open(build(`{"__metadata__":null}`)).header.metadata).toBeNull();
    const st = open(build(`{"__metadata__":{"format":"pt","note":"é\\n"},"w":${entry("U8", [1], 0, 1)}}`, 1));
    expect(st.header.metadata).toEqual(new Map([["format", "pt"], ["note", "é\n"]]));
    expect(open(build(`{"w":${entry("U8", [1], 0, 1)}}`, 1)).header.metadata).toBeNull();
  });

  it("accepts an empty header {} with no data", () => {
    const st = open(build("{}"));
    expect(st.header.entries).toEqual([]);
    expect(st.tensors.size).toBe(0);
    expect(st.header.headerLength).toBe(2);
    expect(st.header.dataStart).toBe(10);
    expect(open(build("{}", 0, { pad: 6 })).header.headerLength).toBe(8);
  });

  it("decodes escaped and non-ASCII tensor names", () => {
    const header = `{"caf\\u00e9.w":${entry("U8", [1], 0, 1)},"数据/😀":${entry("U8", [1], 1, 2)},"a\\"b\\\\c":${entry("U8", [1], 2, 3)}}`;
    const st = open(build(header, new Uint8Array([1, 2, 3])));
    expect([...st.tensors.keys()]).toEqual(["café.w", "数据/😀", 'a"b\\c']);
    expect(st.readTensorSync("数据/😀").data).toEqual(new Uint8Array([2]));
  });

  it("knows every dtype of the format and its item size", () => {
    const sizes: [string, number][] = [
      ["BOOL", 1], ["U8", 1], ["I8", 1], ["F8_E5M2", 1], ["F8_E4M3", 1], ["I16", 2], ["U16", 2], ["F16", 2],
      ["BF16", 2], ["I32", 4], ["U32", 4], ["F32", 4], ["F64", 8], ["I64", 8], ["U64", 8],
    ];
    let offset = 0;
    const parts: string[] = [];
    for (const [dtype, size] of sizes) {
      parts.push(`"t_${dtype}":${entry(dtype, [3], offset, offset + 3 * size)}`);
      offset += 3 * size;
    }
    const st = open(build(`{${parts.join(",")}}`, offset));
    for (const [dtype, size] of sizes) {
      const e = st.tensors.get(`t_${dtype}`)!;
      expect(e.dtype).toBe(dtype);
      expect(e.end - e.begin).toBe(3 * size);
    }
  });

  it("parseHeader reports the header length and data start", () => {
    const text = new TextEncoder().encode(`{"w":${entry("U8", [3], 0, 3)}}  `);
    const h = parseHeader(text, 3, FILE);
    expect(h.headerLength).toBe(text.byteLength);
    expect(h.dataStart).toBe(PREFIX_LENGTH + text.byteLength);
    expect(h.entries).toEqual([{ name: "w", dtype: "U8", shape: [3], begin: 0, end: 3 }]);
  });
});

describe("reading from disk", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "omni-ckpt-header-"));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  function openFds(): number {
    return fs.readdirSync("/proc/self/fd").length;
  }

  it("names the path in errors and closes the file after a refusal", () => {
    const file = path.join(dir, "broken.safetensors");
    fs.writeFileSync(file, build(`{"w":${entry("F32", [2], 0, 4)}}`, 4));
    const before = process.platform === "linux" ? openFds() : 0;
    for (let i = 0; i < 20; i++) {
      const e = caught(() => openSafetensors(file));
      expect(e).toBeInstanceOf(FormatError);
      expect((e as FormatError).message).toBe(`${file}: tensor "w": data_offsets [0, 4] span 4 bytes but F32[2] needs 8`);
    }
    if (process.platform === "linux") expect(openFds()).toBe(before);
  });

  it("reads a truncated file's declared tensors as errors, not zeros", () => {
    const file = path.join(dir, "ok.safetensors");
    const bytes = build(`{"w":${entry("U8", [4], 0, 4)}}`, new Uint8Array([1, 2, 3, 4]));
    fs.writeFileSync(file, bytes);
    const st = openSafetensors(file, "ok-name");
    try {
      expect(st.name).toBe("ok-name");
      expect(st.readTensorSync("w").data).toEqual(new Uint8Array([1, 2, 3, 4]));
      // The file shrinks under us: the read must fail loudly.
      fs.truncateSync(file, bytes.byteLength - 2);
      const e = caught(() => st.readTensorSync("w"));
      expect(e).toBeInstanceOf(FormatError);
      expect((e as FormatError).message).toBe(`ok-name: file ended at byte ${bytes.byteLength - 2}, expected 2 more`);
    } finally {
      st.close();
    }
  });

  it("refuses a missing file and a directory", () => {
    const missing = path.join(dir, "missing.safetensors");
    const e = caught(() => openSafetensors(missing));
    expect(e).toBeInstanceOf(FormatError);
    expect((e as FormatError).message).toBe(`${missing}: cannot open: no such file (ENOENT)`);
    const d = caught(() => openSafetensors(dir));
    expect(d).toBeInstanceOf(FormatError);
    expect((d as FormatError).message).toBe(`${dir}: is not a regular file (a directory)`);
  });

  it("reads tensors asynchronously and refuses ranges outside a tensor", async () => {
    const file = path.join(dir, "async.safetensors");
    fs.writeFileSync(file, build(`{"a":${entry("U8", [3], 0, 3)},"b":${entry("U8", [5], 3, 8)}}`, new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8])));
    const st = openSafetensors(file);
    try {
      const b = st.tensors.get("b")!;
      const buf = new Uint8Array(3);
      await st.readRange(b, 2, buf);
      expect(buf).toEqual(new Uint8Array([6, 7, 8]));
      expect(() => st.readRangeSync(b, 3, new Uint8Array(3))).toThrow(new RangeError(`${file}: read of 3 bytes at 3 is outside tensor "b"`));
      expect(() => st.readTensorSync("c")).toThrow(new RangeError(`${file}: no tensor "c"`));
    } finally {
      st.close();
    }
  });
});
