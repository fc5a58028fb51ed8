import { sortByUtf8 } from "../safetensors/encode.js";
import { JsonNumber, type JsonObject, type JsonValue } from "../safetensors/json.js";

/**
 * JSON text as PEFT and Automodel write their configs: Python's `json.dumps(obj, indent=2, sort_keys=True)`
 * (ASCII only, `\uXXXX` escapes, keys in code point order). Numbers keep the literal text they were read
 * with, so `0.0`, `1e-05` and `16.0` come back as written.
 */
export function pythonJson(value: JsonValue): string {
  return write(value, "");
}

function write(v: JsonValue, indent: string): string {
  if (v === null) return "null";
  if (typeof v === "boolean") return v ? "true" : "false";
  if (typeof v === "string") return pythonString(v);
  if (v instanceof JsonNumber) return v.text;
  const inner = `${indent}  `;
  if (Array.isArray(v)) {
    if (v.length === 0) return "[]";
    return `[\n${v.map((x) => inner + write(x, inner)).join(",\n")}\n${indent}]`;
  }
  if (v.size === 0) return "{}";
  const entries = sortByUtf8([...v], (e) => e[0]);
  return `{\n${entries.map(([k, x]) => `${inner}${pythonString(k)}: ${write(x, inner)}`).join(",\n")}\n${indent}}`;
}

/** A string as Python's `json.dumps` (ensure_ascii) spells it. */
export function pythonString(s: string): string {
  return JSON.stringify(s).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

/** A JSON number from a JavaScript one (integers as integers). */
export function jsonNumber(n: number): JsonNumber {
  if (!Number.isFinite(n)) throw new RangeError(`not a finite number: ${n}`);
  return new JsonNumber(String(n));
}

export function jsonObject(entries: Iterable<[string, JsonValue]>): JsonObject {
  return new Map(entries);
}
