import { FormatError } from "../errors.js";
import { type DType, isDType, itemSize } from "../tensor/dtype.js";
import { formatShape, numelOrUndefined } from "../tensor/tensor.js";
import { type JsonValue, JsonNumber, JsonSyntaxError, describeJson, isJsonObject, parseJson } from "./json.js";

/**
 * The reference `safetensors` library refuses headers above 100 MB: a larger one is not a checkpoint but
 * a way to make the reader allocate without bound.
 */
export const MAX_HEADER_LENGTH = 100_000_000;

/** Every file starts with the header length as an unsigned 64-bit little-endian integer. */
export const PREFIX_LENGTH = 8;

export interface TensorEntry {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
  /** Byte offsets relative to the start of the data section. */
  readonly begin: number;
  readonly end: number;
}

export interface SafetensorsHeader {
  /** Entries in the order of their data. */
  readonly entries: readonly TensorEntry[];
  readonly metadata: ReadonlyMap<string, string> | null;
  readonly headerLength: number;
  /** Absolute file offset of the data section. */
  readonly dataStart: number;
}

/** Read and bound-check the header length from the first 8 bytes of a file of `fileSize` bytes. */
export function readHeaderLength(prefix: Uint8Array, fileSize: number, file: string): number {
  if (fileSize < PREFIX_LENGTH || prefix.byteLength < PREFIX_LENGTH) {
    throw new FormatError(file, `file is ${fileSize} bytes, too short to hold a safetensors header length`);
  }
  const n = new DataView(prefix.buffer, prefix.byteOffset, PREFIX_LENGTH).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_LENGTH)) {
    throw new FormatError(file, `header length ${n} exceeds the ${MAX_HEADER_LENGTH}-byte limit`);
  }
  const len = Number(n);
  if (PREFIX_LENGTH + len > fileSize) {
    throw new FormatError(file, `header length ${len} runs past the end of the file (${fileSize} bytes)`);
  }
  if (len < 2) throw new FormatError(file, `header length ${len} is too short for a JSON object`);
  return len;
}

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/**
 * Parse and validate a header: JSON object, known dtypes, exact integer shapes and offsets, byte sizes that
 * match, and data ranges that tile the data section exactly. `dataSize` is the file size minus the header.
 */
export function parseHeader(bytes: Uint8Array, dataSize: number, file: string): SafetensorsHeader {
  let text: string;
  try {
    text = utf8.decode(bytes);
  } catch {
    throw new FormatError(file, "header is not valid UTF-8");
  }
  let root: JsonValue;
  try {
    root = parseJson(text);
  } catch (e) {
    if (e instanceof JsonSyntaxError && e.duplicate?.depth === 1 && e.duplicate.key !== "__metadata__") {
      throw new FormatError(file, `appears twice in the header (JSON.parse would silently keep the last)`, e.duplicate.key);
    }
    if (e instanceof JsonSyntaxError) throw new FormatError(file, `header is not valid JSON: ${e.message}`);
    throw e;
  }
  if (!isJsonObject(root)) throw new FormatError(file, `header is ${describeJson(root)}, not a JSON object`);

  let metadata: Map<string, string> | null = null;
  const entries: TensorEntry[] = [];
  for (const [name, value] of root) {
    if (name === "__metadata__") {
      metadata = parseMetadata(value, file);
      continue;
    }
    entries.push(parseEntry(name, value, file));
  }
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
  checkTiling(entries, dataSize, file);
  return { entries, metadata, headerLength: bytes.byteLength, dataStart: PREFIX_LENGTH + bytes.byteLength };
}

function parseMetadata(value: JsonValue, file: string): Map<string, string> | null {
  if (value === null) return null;
  if (!isJsonObject(value)) {
    throw new FormatError(file, `__metadata__ is ${describeJson(value)}, not an object of strings`);
  }
  const out = new Map<string, string>();
  for (const [k, v] of value) {
    if (typeof v !== "string") {
      throw new FormatError(file, `__metadata__ must map strings to strings, but key ${JSON.stringify(k)} holds ${describeJson(v)}`);
    }
    out.set(k, v);
  }
  return out;
}

function parseEntry(name: string, value: JsonValue, file: string): TensorEntry {
  const fail = (detail: string): never => {
    throw new FormatError(file, detail, name);
  };
  if (!isJsonObject(value)) return fail(`entry is ${describeJson(value)}, not an object`);
  const dtype = value.get("dtype");
  if (typeof dtype !== "string") return fail(dtype === undefined ? "entry has no dtype" : "dtype is not a string");
  if (!isDType(dtype)) return fail(`unknown dtype ${JSON.stringify(dtype)}`);

  const shapeValue = value.get("shape");
  if (!Array.isArray(shapeValue)) return fail(shapeValue === undefined ? "entry has no shape" : "shape is not an array");
  const shape = shapeValue.map((d, i) => exactIndex(d, `shape dimension ${i}`, fail));

  const offsets = value.get("data_offsets");
  if (!Array.isArray(offsets) || offsets.length !== 2) {
    return fail(offsets === undefined ? "entry has no data_offsets" : "data_offsets is not a pair of integers");
  }
  const begin = exactIndex(offsets[0]!, "data_offsets[0]", fail);
  const end = exactIndex(offsets[1]!, "data_offsets[1]", fail);
  if (end < begin) fail(`data_offsets [${begin}, ${end}] end before they begin`);

  const count = numelOrUndefined(shape);
  const bytes = count === undefined ? undefined : count * itemSize(dtype);
  if (bytes === undefined || !Number.isSafeInteger(bytes)) fail(`shape ${formatShape(shape)} holds 2^53 bytes or more`);
  if (end - begin !== bytes) {
    fail(`data_offsets [${begin}, ${end}] span ${end - begin} bytes but ${dtype}${formatShape(shape)} needs ${bytes}`);
  }
  return { name, dtype, shape, begin, end };
}

function exactIndex(v: JsonValue, what: string, fail: (detail: string) => never): number {
  if (!(v instanceof JsonNumber)) return fail(`${what} is ${describeJson(v)}, not an integer`);
  const n = v.safeIndex;
  if (n !== undefined) return n;
  if (v.text.startsWith("-")) return fail(`${what} is negative (${v.text})`);
  if (/^-?[0-9]+$/.test(v.text)) return fail(`${what} ${v.text} is 2^53 or more and cannot be represented exactly`);
  return fail(`${what} ${v.text} is not an integer`);
}

function checkTiling(entries: readonly TensorEntry[], dataSize: number, file: string): void {
  let cursor = 0;
  let previous: TensorEntry | undefined;
  for (const e of entries) {
    if (e.begin > cursor) {
      throw new FormatError(
        file,
        `gap of ${e.begin - cursor} bytes in the data before it${previous ? ` (after ${JSON.stringify(previous.name)})` : ""}`,
        e.name,
      );
    }
    if (e.begin < cursor) {
      throw new FormatError(file, `data [${e.begin}, ${e.end}) overlaps tensor ${JSON.stringify(previous?.name)}`, e.name);
    }
    if (e.end > dataSize) {
      throw new FormatError(file, `data [${e.begin}, ${e.end}) runs past the end of the file (${dataSize} data bytes)`, e.name);
    }
    cursor = e.end;
    previous = e;
  }
  if (cursor < dataSize) {
    throw new FormatError(file, `${dataSize - cursor} bytes after the last tensor are not covered by any tensor`);
  }
}
