/**
 * Seeded mutations of safetensors files and JSON text, for the fuzz tests. A file is kept as a `Draft` (header
 * text, data, length prefix) while its header is mutated, then assembled into bytes that can be mutated
 * further. Header text is held as latin1 (one char per byte) so any byte, valid UTF-8 or not, can be spliced
 * in. Every mutation appends a line to the draft's log, so a failing case says what was done to it.
 */
import { seededRandom, shuffle } from "./random.js";

export class Rng {
  private readonly next: () => number;

  constructor(seed: number) {
    this.next = seededRandom(seed);
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** Uniform integer in [lo, hi]. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }

  chance(p: number): boolean {
    return this.next() < p;
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }

  u64(): bigint {
    return (BigInt(this.int(2 ** 32)) << 32n) | BigInt(this.int(2 ** 32));
  }

  /** Small non-zero delta, either sign. */
  delta(max = 8): number {
    return (this.chance(0.5) ? 1 : -1) * this.range(1, max);
  }

  shuffle<T>(items: T[]): T[] {
    return shuffle(items, this.next);
  }
}

/** A well-spread 32-bit seed for case `i` of a run with seed `base`: any case replays on its own. */
export function caseSeed(base: number, i: number): number {
  let h = (base ^ Math.imul(i + 1, 0x9e3779b1)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

export const latin1 = (bytes: Uint8Array): string => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("latin1");
export const fromLatin1 = (text: string): Uint8Array => new Uint8Array(Buffer.from(text, "latin1"));
/** UTF-8 bytes of real text, as a latin1 string. */
export const utf8AsLatin1 = (text: string): string => latin1(new TextEncoder().encode(text));

export function hex(bytes: Uint8Array, from = 0, to = bytes.byteLength): string {
  const a = Math.max(0, from);
  const b = Math.min(bytes.byteLength, to);
  return Buffer.from(bytes.buffer, bytes.byteOffset + a, Math.max(0, b - a)).toString("hex").replace(/(..)(?!$)/g, "$1 ");
}

/** Printable ASCII of a byte range, other bytes as `.`. */
export function printable(bytes: Uint8Array, from = 0, to = bytes.byteLength): string {
  let s = "";
  for (let i = Math.max(0, from); i < Math.min(bytes.byteLength, to); i++) {
    const c = bytes[i]!;
    s += c >= 0x20 && c < 0x7f ? String.fromCharCode(c) : ".";
  }
  return s;
}

// ---------------------------------------------------------------------------------------------------------
// Drafts

export type Prefix =
  | { readonly kind: "exact" }
  | { readonly kind: "delta"; readonly delta: number }
  | { readonly kind: "value"; readonly value: bigint };

export interface Draft {
  /** Header as latin1 text: one char per byte. */
  header: string;
  data: Uint8Array;
  prefix: Prefix;
  readonly log: string[];
  /** Every mutation so far leaves a valid file valid (reorder, reshape to the same size, data bytes, …). */
  keepsValid: boolean;
}

export const PREFIX = 8;

/** Split a (valid) safetensors image into a draft of itself. */
export function draftOf(bytes: Uint8Array): Draft {
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset, PREFIX).getBigUint64(0, true));
  return {
    header: latin1(bytes.subarray(PREFIX, PREFIX + n)),
    data: bytes.subarray(PREFIX + n),
    prefix: { kind: "exact" },
    log: [],
    keepsValid: true,
  };
}

export function assemble(d: Draft): Uint8Array {
  const header = fromLatin1(d.header);
  const n = BigInt(header.byteLength);
  const p = d.prefix;
  const value = p.kind === "exact" ? n : p.kind === "delta" ? BigInt.asUintN(64, n + BigInt(p.delta)) : p.value;
  const out = new Uint8Array(PREFIX + header.byteLength + d.data.byteLength);
  new DataView(out.buffer).setBigUint64(0, value, true);
  out.set(header, PREFIX);
  out.set(d.data, PREFIX + header.byteLength);
  return out;
}

/** Safetensors image from header text (real Unicode, encoded as UTF-8) and data. */
export function buildFile(header: string, data: Uint8Array = new Uint8Array(0), padTo = 1): Uint8Array {
  let text = header;
  while (new TextEncoder().encode(text).byteLength % padTo !== 0) text += " ";
  return assemble({ header: utf8AsLatin1(text), data, prefix: { kind: "exact" }, log: [], keepsValid: true });
}

function splice(text: string, at: number, remove: number, insert: string): string {
  return text.slice(0, at) + insert + text.slice(at + remove);
}

function matches(text: string, re: RegExp): RegExpMatchArray[] {
  return [...text.matchAll(re)];
}

// ---------------------------------------------------------------------------------------------------------
// Header structure: parse with JSON.parse, perturb, serialize again

/** A JSON literal written as is (numbers JSON.stringify cannot produce: 2^64, 1.0, -0, 1e400…). */
class Raw {
  constructor(readonly text: string) {}
}

const SAME_SIZE: readonly (readonly string[])[] = [
  ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3"],
  ["I16", "U16", "F16", "BF16"],
  ["I32", "U32", "F32"],
  ["I64", "U64", "F64"],
];
export const DTYPE_NAMES: readonly string[] = SAME_SIZE.flat();
const BAD_DTYPES: readonly unknown[] = [
  "f32", "F128", "", "BF16 ", " F16", "I4", "F8_E4M3FN", "bool", "__proto__", "constructor", "toString", "hasOwnProperty",
  "valueOf", "F32\u0000", "F\u00e932", null, 4, ["F32"], {}, true,
];
/** Names that would reach `Object.prototype` if the reader kept tensors in a plain object. */
const TRICKY_NAMES: readonly string[] = [
  "__proto__", "constructor", "prototype", "toString", "hasOwnProperty", "valueOf", "__defineGetter__", "",
  "é", "名前", "😀", "a\u0000b", "\ud800", "\"quoted\"", "back\\slash", "__metadata__", "0", "-1",
];
const BIG_NUMBERS: readonly Raw[] = [
  "9007199254740991", "9007199254740992", "9007199254740993", "18446744073709551615", "18446744073709551616",
  "4294967296", "2147483648", "1" + "0".repeat(400), "-1", "-0", "1.0", "1.5", "1e2", "1E+2", "2e-1", "1e400", "-1e-400",
  "0.0", "-9007199254740993",
].map((t) => new Raw(t));

function toJson(v: unknown, indent: string, depth: number): string {
  if (v instanceof Raw) return v.text;
  const nl = indent ? `\n${indent.repeat(depth + 1)}` : "";
  const end = indent ? `\n${indent.repeat(depth)}` : "";
  const sep = indent ? ": " : ":";
  if (Array.isArray(v)) return v.length === 0 ? "[]" : `[${v.map((x) => nl + toJson(x, indent, depth + 1)).join(",")}${end}]`;
  if (v !== null && typeof v === "object") {
    const keys = Object.keys(v);
    if (keys.length === 0) return "{}";
    return `{${keys.map((k) => nl + JSON.stringify(k) + sep + toJson((v as Record<string, unknown>)[k], indent, depth + 1)).join(",")}${end}}`;
  }
  return JSON.stringify(v) ?? "null";
}

/** Top-level pairs in order (duplicates allowed), serialized as one JSON object. */
function serializePairs(pairs: readonly [string, unknown][], indent: string): string {
  const nl = indent ? `\n${indent}` : "";
  const sep = indent ? ": " : ":";
  return `{${pairs.map(([k, v]) => nl + JSON.stringify(k) + sep + toJson(v, indent, 1)).join(",")}${indent ? "\n" : ""}}`;
}

interface TensorJson {
  dtype: unknown;
  shape: unknown;
  data_offsets: unknown;
  [k: string]: unknown;
}

function isTensorJson(v: unknown): v is TensorJson {
  return v !== null && typeof v === "object" && !Array.isArray(v) && "data_offsets" in v;
}

function itemSizeOf(dtype: unknown): number | undefined {
  const i = SAME_SIZE.findIndex((g) => g.includes(dtype as string));
  return i < 0 ? undefined : 2 ** i;
}

function offsetsOf(t: TensorJson): [number, number] | undefined {
  const o = t.data_offsets;
  return Array.isArray(o) && o.length === 2 && typeof o[0] === "number" && typeof o[1] === "number" ? [o[0], o[1]] : undefined;
}

/**
 * One perturbation of one entry (or of the entry list). Returns a description and whether it keeps a valid
 * header valid; `pairs` is changed in place.
 */
function perturb(pairs: [string, unknown][], dataSize: number, rng: Rng): [string, boolean] {
  const tensorAt = pairs.map((p, i) => (p[0] !== "__metadata__" && isTensorJson(p[1]) ? i : -1)).filter((i) => i >= 0);
  const used = new Set(pairs.map((p) => p[0]));
  if (tensorAt.length === 0) {
    pairs.push(["fuzz", { dtype: rng.pick(DTYPE_NAMES), shape: [0], data_offsets: [dataSize, dataSize] }]);
    return ["added a zero-size tensor to an empty header", true];
  }
  const at = rng.pick(tensorAt);
  const [name, value] = pairs[at]!;
  const t = value as TensorJson;
  const label = JSON.stringify(name);
  const shape = Array.isArray(t.shape) ? (t.shape as unknown[]) : [];
  const op = rng.int(15);
  switch (op) {
    case 0:
      rng.shuffle(pairs);
      return ["reordered the entries", true];
    case 1: {
      const group = SAME_SIZE.find((g) => g.includes(t.dtype as string));
      if (!group) break;
      t.dtype = rng.pick(group);
      return [`${label}: dtype -> same-size ${String(t.dtype)}`, true];
    }
    case 2: {
      const before = t.dtype;
      t.dtype = rng.chance(0.5) ? rng.pick(DTYPE_NAMES) : rng.pick(BAD_DTYPES);
      const sameSize = itemSizeOf(before) !== undefined && itemSizeOf(before) === itemSizeOf(t.dtype);
      return [`${label}: dtype -> ${JSON.stringify(t.dtype)}`, sameSize];
    }
    case 3: {
      if (!shape.every((d) => typeof d === "number")) break;
      const numel = (shape as number[]).reduce((a, b) => a * b, 1);
      const variants: number[][] = [[numel], [1, ...(shape as number[])], [...(shape as number[]), 1]];
      if (numel === 0) variants.push([0, 7], [3, 0, 5], [0, 2 ** 26, 2 ** 26]);
      t.shape = rng.pick(variants);
      return [`${label}: reshaped ${JSON.stringify(shape)} -> ${JSON.stringify(t.shape)}`, true];
    }
    case 4: {
      const next = [...shape];
      const choice = rng.int(5);
      if (choice === 0) next.push(rng.pick([0, 2, 3]));
      else if (choice === 1) next.pop();
      else if (choice === 2 && next.length > 0) {
        const d = next[rng.int(next.length)];
        const n = typeof d === "number" ? d : 1;
        next[rng.int(next.length)] = rng.pick([0, 1, 2, n + 1, n * 2, ...BIG_NUMBERS, "4", null, []]);
      } else if (choice === 3) {
        next.splice(0, next.length, ...rng.pick([[], [0], [2 ** 27, 2 ** 27, 0], [2 ** 40, 2 ** 40], [2 ** 26, 2 ** 26, 2 ** 26]]));
      } else {
        t.shape = rng.pick([null, {}, "[4]", 4, [[4]]]);
        return [`${label}: shape -> ${JSON.stringify(t.shape)}`, false];
      }
      t.shape = next;
      return [`${label}: shape -> ${toJson(next, "", 0)}`, false];
    }
    case 5:
    case 6: {
      const o = offsetsOf(t);
      if (!o) break;
      const [b, e] = o;
      const other = offsetsOf(pairs[rng.pick(tensorAt)]![1] as TensorJson) ?? [0, 0];
      const d = rng.delta();
      const variants: unknown[] = [
        [b + d, e], [b, e + d], [b + d, e + d], [e, b], [b, b], [e, e], other, [b, e, e], [b], [], [dataSize, dataSize + (e - b)],
        [rng.pick(BIG_NUMBERS), e], [b, rng.pick(BIG_NUMBERS)], [String(b), e], [b, null], { 0: b, 1: e }, null,
      ];
      t.data_offsets = rng.pick(variants);
      return [`${label}: data_offsets [${b}, ${e}] -> ${toJson(t.data_offsets, "", 0)}`, false];
    }
    case 7: {
      // Two tensors of the same byte length trade places: still a valid file.
      const len = (i: number): number => {
        const o = offsetsOf(pairs[i]![1] as TensorJson);
        return o ? o[1] - o[0] : -1;
      };
      const mate = tensorAt.find((i) => i !== at && len(i) === len(at) && len(i) >= 0);
      if (mate === undefined) break;
      const u = pairs[mate]![1] as TensorJson;
      [t.data_offsets, u.data_offsets] = [u.data_offsets, t.data_offsets];
      return [`${label} and ${JSON.stringify(pairs[mate]![0])}: swapped data_offsets`, true];
    }
    case 8: {
      const to = rng.pick(TRICKY_NAMES);
      pairs[at] = [to, value];
      return [`renamed ${label} -> ${JSON.stringify(to)}`, !used.has(to) && to !== "__metadata__"];
    }
    case 9: {
      // A zero-size tensor at a tensor boundary is valid; anywhere else it overlaps.
      const boundaries = [0, dataSize, ...tensorAt.map((i) => offsetsOf(pairs[i]![1] as TensorJson)?.[1] ?? 0)];
      const k = rng.chance(0.7) ? rng.pick(boundaries) : rng.int(dataSize + 2);
      const to = rng.pick(TRICKY_NAMES);
      const zshape = rng.pick([[0], [2, 0], [0, 5, 7], [2 ** 27, 2 ** 27, 0]]);
      pairs.splice(rng.int(pairs.length + 1), 0, [to, { dtype: rng.pick(DTYPE_NAMES), shape: zshape, data_offsets: [k, k] }]);
      const valid = boundaries.includes(k) && !used.has(to) && to !== "__metadata__";
      return [`added zero-size ${JSON.stringify(to)} ${JSON.stringify(zshape)} at ${k}`, valid];
    }
    case 10:
      pairs.splice(at, 1);
      return [`deleted ${label}`, false];
    case 11:
      pairs.splice(at + 1, 0, [name, JSON.parse(JSON.stringify(value)) as unknown]);
      return [`duplicated ${label}`, false];
    case 12: {
      const choice = rng.int(3);
      if (choice === 0) {
        const field = rng.pick(["dtype", "shape", "data_offsets"]);
        delete t[field];
        return [`${label}: removed ${field}`, false];
      }
      if (choice === 1) {
        t[rng.pick(["extra", "offsets", "DTYPE", "__proto__"])] = rng.pick([1, "x", [1, 2], { dtype: "F64" }, null]);
        return [`${label}: added an unknown field`, false];
      }
      pairs[at] = [name, rng.pick([null, [], 1, "x", {}, true, [t]])];
      return [`${label}: entry -> ${toJson(pairs[at]![1], "", 0)}`, false];
    }
    default: {
      const m = pairs.findIndex((p) => p[0] === "__metadata__");
      const valid: unknown[] = [null, {}, { format: "pt" }, JSON.parse('{"__proto__":"y","constructor":"z","":""}')];
      const invalid: unknown[] = [[], "pt", 1, true, { format: 1 }, { format: null }, { format: { a: "b" } }, { format: ["pt"] }];
      if (rng.chance(0.3) && m >= 0) {
        pairs.splice(m, 1);
        return ["deleted __metadata__", true];
      }
      const ok = rng.chance(0.5);
      const meta = rng.pick(ok ? valid : invalid);
      if (m >= 0) pairs[m] = ["__metadata__", meta];
      else pairs.unshift(["__metadata__", meta]);
      return [`__metadata__ -> ${toJson(meta, "", 0)}`, ok];
    }
  }
  rng.shuffle(pairs);
  return ["reordered the entries", true];
}

/** Re-serialize the header after 1–2 structural perturbations, with a true, off-by-some or random length. */
export function mutateStructure(d: Draft, rng: Rng): void {
  const text = new TextDecoder().decode(fromLatin1(d.header));
  const pairs = Object.entries(JSON.parse(text) as Record<string, unknown>);
  const rounds = rng.range(1, 2);
  for (let i = 0; i < rounds; i++) {
    const [what, ok] = perturb(pairs, d.data.byteLength, rng);
    d.log.push(`structure: ${what}`);
    if (!ok) d.keepsValid = false;
  }
  const style = rng.int(4);
  let out = serializePairs(pairs, style === 1 ? "  " : style === 2 ? "\t" : "");
  if (style === 3) out = ` \n${out}\r\n\t`;
  d.header = utf8AsLatin1(out);
  if (rng.chance(0.3)) {
    // Writers pad the header with spaces to 8-byte alignment.
    d.header += " ".repeat((8 - (d.header.length % 8)) % 8);
  }
  d.log.push(`structure: serialized in style ${style}, ${d.header.length} bytes`);
  const p = rng.int(20);
  if (p === 0) {
    d.prefix = { kind: "delta", delta: rng.delta(16) };
    d.keepsValid = false;
    d.log.push(`prefix: header length ${d.prefix.delta > 0 ? "+" : ""}${d.prefix.delta}`);
  } else if (p === 1) {
    d.prefix = { kind: "value", value: rng.u64() >> BigInt(rng.int(64)) };
    d.keepsValid = false;
    d.log.push(`prefix: header length ${d.prefix.value}`);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Text: mutate JSON text as bytes

const SPECIAL_CHARS = [
  "{", "}", "[", "]", '"', ",", ":", "\\", "-", ".", "e", "0", "9", " ", "\t", "\n", "\r", "\x00", "\x01", "\x7f", "/", "'", "+", "n", "t",
];
const NUMBER_REPLACEMENTS = [
  ...BIG_NUMBERS.map((r) => r.text), "0", "1", "2", "007", "+1", "0x10", ".5", "1.", "Infinity", "NaN", "null", "true", '"1"', "[]", "{}", "1 2", "",
];
const KEY_REPLACEMENTS = [
  "__proto__", "constructor", "prototype", "toString", "hasOwnProperty", "valueOf", "__metadata__", "", "dtype", "shape",
  "data_offsets", "\\u005f_proto__", "__proto\\u005f_", "weight_map", "metadata", "\\ud800", "a\\u0000b",
];
const TEXT_DTYPES = [...DTYPE_NAMES, "f32", "F128", "", "__proto__", "toString", "constructor", "BF16 ", "Q4_K", "F8_E4M3FN", "\\u0046\\u00332"];
/** Byte sequences spliced into text: invalid UTF-8 of several kinds, valid multi-byte characters, BOM, NUL. */
const BYTE_SNIPPETS: readonly number[][] = [
  [0xff], [0xfe], [0x80], [0xbf], [0xc0, 0x80], [0xc1, 0xbf], [0xc3], [0xe2, 0x82], [0xed, 0xa0, 0x80], [0xed, 0xbf, 0xbf],
  [0xf4, 0x90, 0x80, 0x80], [0xf8, 0x88, 0x80, 0x80, 0x80], [0xf0, 0x9f, 0x98], [0xe0, 0x80, 0xaf],
  [0xc3, 0xa9], [0xe2, 0x82, 0xac], [0xf0, 0x9f, 0x98, 0x80], [0xef, 0xbb, 0xbf], [0x00], [0xc2, 0xa0], [0xe2, 0x80, 0xa8],
];
const NEST_DEPTHS = [10, 62, 63, 64, 65, 66, 100, 3000, 100_000];

const NUMBER_RE = /(?<=[[,:]\s*)-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/g;
const KEY_RE = /"((?:[^"\\]|\\.)*)"(?=\s*:)/g;
const DTYPE_RE = /"dtype"\s*:\s*"((?:[^"\\]|\\.)*)"/g;
const OFFSETS_RE = /"data_offsets"\s*:\s*\[\s*(\d+)\s*,\s*(\d+)\s*\]/g;
const SHAPE_RE = /"shape"\s*:\s*\[([^\]]*)\]/g;
const ENTRY_RE = /"((?:[^"\\]|\\.)*)"\s*:\s*\{[^{}]*\}/g;
const STRING_START_RE = /"/g;

/** One textual mutation of JSON text (latin1). Returns the new text and a description. */
export function mutateText(text: string, rng: Rng): [string, string] {
  for (let attempt = 0; attempt < 4; attempt++) {
    const r = tryMutateText(text, rng);
    if (r) return r;
  }
  const at = rng.int(text.length + 1);
  return [splice(text, at, 0, "}"), `inserted "}" at ${at}`];
}

function tryMutateText(text: string, rng: Rng): [string, string] | undefined {
  const at = rng.int(text.length + 1);
  const kind = rng.int(20);
  switch (kind) {
    case 0: {
      const n = rng.chance(0.7) ? 1 : rng.range(2, 16);
      return [splice(text, at, n, ""), `deleted ${n} bytes at ${at}`];
    }
    case 1: {
      const n = rng.chance(0.7) ? 1 : rng.range(2, 32);
      return [splice(text, at, 0, text.slice(at, at + n)), `duplicated ${n} bytes at ${at}`];
    }
    case 2: {
      if (text.length < 2) return undefined;
      const i = rng.int(text.length - 1);
      return [splice(text, i, 2, text[i + 1]! + text[i]!), `swapped bytes ${i} and ${i + 1}`];
    }
    case 3: {
      const c = rng.pick(SPECIAL_CHARS);
      const replace = rng.chance(0.5) ? 1 : 0;
      return [splice(text, at, replace, c), `${replace ? "replaced byte" : "inserted"} ${JSON.stringify(c)} at ${at}`];
    }
    case 4: {
      // Probe for a digit rather than list them all: headers run to megabytes after a nesting mutation.
      for (let tries = 0; tries < 64; tries++) {
        const i = rng.int(text.length);
        const d = text.charCodeAt(i);
        if (d < 0x30 || d > 0x39) continue;
        const c = String(rng.int(10));
        return [splice(text, i, 1, c), `digit at ${i} -> ${c}`];
      }
      return undefined;
    }
    case 5:
    case 6:
    case 7: {
      const nums = matches(text, NUMBER_RE);
      if (nums.length === 0) return undefined;
      const m = rng.pick(nums);
      const n = Number(m[0]);
      const to = rng.chance(0.3) ? String(Math.max(0, n + rng.delta())) : rng.chance(0.2) ? String(n * 2) : rng.pick(NUMBER_REPLACEMENTS);
      return [splice(text, m.index!, m[0].length, to), `number ${m[0]} at ${m.index} -> ${to}`];
    }
    case 8: {
      const keys = matches(text, KEY_RE);
      if (keys.length === 0) return undefined;
      const m = rng.pick(keys);
      const to = rng.pick(KEY_REPLACEMENTS);
      return [splice(text, m.index!, m[0].length, `"${to}"`), `key ${m[0]} at ${m.index} -> "${to}"`];
    }
    case 9: {
      const ds = matches(text, DTYPE_RE);
      if (ds.length === 0) return undefined;
      const m = rng.pick(ds);
      const to = rng.pick(TEXT_DTYPES);
      return [splice(text, m.index!, m[0].length, `"dtype":"${to}"`), `dtype ${m[1]} at ${m.index} -> "${to}"`];
    }
    case 10:
    case 11: {
      const os = matches(text, OFFSETS_RE);
      if (os.length === 0) return undefined;
      const m = rng.pick(os);
      const b = Number(m[1]);
      const e = Number(m[2]);
      const other = rng.pick(os);
      const d = rng.delta();
      const to = rng.pick([
        `${b + d},${e}`, `${b},${e + d}`, `${b + d},${e + d}`, `${e},${b}`, `${b},${b}`, `${other[1]},${other[2]}`,
        `${b},${e},${e}`, `${b}`, `${Math.max(0, b - d)},${Math.max(0, e - d)}`, `${b},${e}.0`, `-${b},${e}`, `${b},1e400`,
      ]);
      return [splice(text, m.index!, m[0].length, `"data_offsets":[${to}]`), `data_offsets [${m[1]},${m[2]}] at ${m.index} -> [${to}]`];
    }
    case 12: {
      const ss = matches(text, SHAPE_RE);
      if (ss.length === 0) return undefined;
      const m = rng.pick(ss);
      const inner = m[1]!;
      const to = rng.pick([
        "", "0", "1,1", "-1", "4294967296,4294967296", "134217728,134217728,0", "0,134217728,134217728", "9007199254740993", "1.5",
        "1e2", `${inner},1`, `1,${inner}`, `${inner},0`, "null", "[]", `${inner},`,
      ]);
      return [splice(text, m.index!, m[0].length, `"shape":[${to}]`), `shape [${inner}] at ${m.index} -> [${to}]`];
    }
    case 13: {
      const es = matches(text, ENTRY_RE);
      if (es.length === 0) return undefined;
      const m = rng.pick(es);
      const end = m.index! + m[0].length;
      const copy = rng.chance(0.6) ? m[0] : m[0].replace(/^"/, `"dup.`);
      const what = copy === m[0] ? "duplicated" : "copied under a new name";
      return [splice(text, end, 0, `,${copy}`), `${what} entry ${JSON.stringify(m[1])} at ${m.index}`];
    }
    case 14: {
      const n = rng.pick(NEST_DEPTHS);
      const nest = rng.chance(0.5) ? "[".repeat(n) + "]".repeat(n) : '{"a":'.repeat(n) + "1" + "}".repeat(n);
      const nums = matches(text, NUMBER_RE);
      if (nums.length > 0 && rng.chance(0.7)) {
        const m = rng.pick(nums);
        return [splice(text, m.index!, m[0].length, nest), `number at ${m.index} -> nesting ${n} deep`];
      }
      if (rng.chance(0.5)) return [`{"a":${nest}}`, `whole text -> nesting ${n} deep`];
      return [splice(text, at, 0, "[".repeat(n)), `inserted ${n} unclosed "[" at ${at}`];
    }
    case 15:
    case 16: {
      const snippet = rng.pick(BYTE_SNIPPETS);
      const quotes = matches(text, STRING_START_RE);
      const where = quotes.length > 0 && rng.chance(0.6) ? rng.pick(quotes).index! + 1 : at;
      return [splice(text, where, rng.chance(0.2) ? 1 : 0, String.fromCharCode(...snippet)), `bytes ${hex(new Uint8Array(snippet))} at ${where}`];
    }
    case 17: {
      const cut = rng.int(text.length);
      return [text.slice(0, cut), `truncated the text to ${cut} bytes`];
    }
    case 18: {
      const ws = rng.pick([" ", "\n", "\t", "\r\n", "        "]);
      return rng.chance(0.5) ? [ws + text, "leading whitespace"] : [text + ws, "trailing whitespace"];
    }
    default: {
      const a = rng.int(text.length + 1);
      const n = rng.range(1, 24);
      return [splice(text, at, 0, text.slice(a, a + n)), `copied ${n} bytes from ${a} to ${at}`];
    }
  }
}

/** Whether a text mutation (by its description) keeps valid JSON text valid and meaning the same. */
export function textKeepsValid(description: string): boolean {
  return description === "leading whitespace" || description === "trailing whitespace";
}

// ---------------------------------------------------------------------------------------------------------
// Bytes: mutate an assembled file

const INTERESTING_BYTES = [0x00, 0xff, 0x7f, 0x80, 0x22, 0x5c, 0x7b, 0x7d, 0x5b, 0x5d, 0x2c, 0x3a, 0x20, 0x30, 0x39, 0x2d, 0x2e, 0x65, 0x0a, 0xc0, 0xef];

/**
 * One byte-level mutation. `headerEnd` is where the data starts if the prefix is honest. Returns the new
 * bytes, a description, and whether a valid file stays valid (only same-size changes to data bytes do).
 */
export function mutateBytes(b: Uint8Array, headerEnd: number, rng: Rng): [Uint8Array, string, boolean] {
  const size = b.byteLength;
  const regionPick = rng.int(20);
  const [lo, hi, region] =
    regionPick < 3
      ? [0, Math.min(PREFIX, size), "prefix"]
      : regionPick < 12 || headerEnd >= size
        ? [PREFIX, Math.min(headerEnd, size), "header"]
        : [headerEnd, size, "data"];
  const pos = hi > lo ? rng.range(lo, hi - 1) : rng.int(Math.max(1, size));
  const inData = region === "data" && hi > lo;
  const out = (): Uint8Array => b.slice();
  const op = rng.int(10);
  switch (op) {
    case 0: {
      if (size === 0) break;
      const x = out();
      const bit = rng.int(8);
      x[pos % size] = x[pos % size]! ^ (1 << bit);
      return [x, `flipped bit ${bit} of byte ${pos % size} (${region})`, inData];
    }
    case 1: {
      if (size === 0) break;
      const x = out();
      const v = rng.chance(0.6) ? rng.pick(INTERESTING_BYTES) : rng.int(256);
      x[pos % size] = v;
      return [x, `byte ${pos % size} -> 0x${v.toString(16)} (${region})`, inData];
    }
    case 2: {
      if (size === 0) break;
      const x = out();
      const n = Math.min(rng.range(1, 16), size - (pos % size));
      for (let i = 0; i < n; i++) x[(pos % size) + i] = rng.int(256);
      return [x, `overwrote ${n} bytes at ${pos % size} (${region})`, inData && (pos % size) + n <= hi];
    }
    case 3: {
      const cut = rng.pick([rng.int(PREFIX + 1), rng.int(size + 1), rng.range(Math.min(headerEnd, size), size), size - 1, headerEnd - 1, headerEnd]);
      const at = Math.max(0, Math.min(size, cut));
      return [b.slice(0, at), `truncated to ${at} of ${size} bytes`, false];
    }
    case 4: {
      const n = rng.range(1, 64);
      const junk = rng.pick([new Uint8Array(n), new Uint8Array(n).fill(0x20), new Uint8Array(n).map(() => rng.int(256))]);
      const x = new Uint8Array(size + n);
      x.set(b);
      x.set(junk, size);
      return [x, `appended ${n} bytes of junk`, false];
    }
    case 5: {
      const n = rng.range(1, 16);
      const x = new Uint8Array(size + n);
      const at = Math.min(pos, size);
      x.set(b.subarray(0, at));
      for (let i = 0; i < n; i++) x[at + i] = rng.pick(INTERESTING_BYTES);
      x.set(b.subarray(at), at + n);
      return [x, `inserted ${n} bytes at ${at} (${region})`, false];
    }
    case 6: {
      const at = Math.min(pos, size);
      const n = Math.min(rng.range(1, 16), size - at);
      const x = new Uint8Array(size - n);
      x.set(b.subarray(0, at));
      x.set(b.subarray(at + n), at);
      return [x, `deleted ${n} bytes at ${at} (${region})`, false];
    }
    case 7:
    case 8: {
      if (size < PREFIX) break;
      const n = BigInt(headerEnd - PREFIX);
      const value = rng.pick([
        0n, 1n, 2n, 7n, 8n, n - 1n, n + 1n, n + 2n, n + BigInt(rng.range(3, 64)), BigInt(size - PREFIX), BigInt(size - PREFIX + 1), BigInt(size),
        100_000_000n, 100_000_001n, 2n ** 32n + n, 2n ** 53n + n, 2n ** 63n, 2n ** 64n - 1n, 2n ** 64n - n, rng.u64(),
        BigInt.asUintN(64, n | (1n << BigInt(rng.int(64)))),
      ]);
      const x = out();
      new DataView(x.buffer).setBigUint64(0, BigInt.asUintN(64, value), true);
      return [x, `length prefix -> ${BigInt.asUintN(64, value)}`, false];
    }
    default: {
      if (size === 0) break;
      const x = out();
      const from = rng.int(size);
      const n = Math.min(rng.range(1, 32), size - from, size - (pos % size));
      x.copyWithin(pos % size, from, from + n);
      return [x, `copied ${n} bytes from ${from} to ${pos % size}`, false];
    }
  }
  return [b.slice(), "no change (empty file)", true];
}
