/**
 * A strict JSON reader for untrusted headers, indexes and configs. `JSON.parse` keeps the last of two
 * duplicate keys, rounds integers above 2^53 and gives objects a prototype a key named `__proto__` can
 * reach; here objects are `Map`s, duplicates are errors and numbers keep their literal text so callers can
 * insist on exact integers, and a config can be edited in place without re-spelling its numbers.
 */

export class JsonNumber {
  constructor(readonly text: string) {}

  /** The value as a double; Python's `Infinity`, `-Infinity` and `NaN` literals included. */
  get value(): number {
    return Number(this.text);
  }

  /** The value if the literal is a plain non-negative integer that a double holds exactly. */
  get safeIndex(): number | undefined {
    if (!/^(0|[1-9][0-9]*)$/.test(this.text)) return undefined;
    const n = Number(this.text);
    return Number.isSafeInteger(n) ? n : undefined;
  }
}

export type JsonValue = null | boolean | string | JsonNumber | JsonValue[] | JsonObject;
export type JsonObject = Map<string, JsonValue>;

export class JsonSyntaxError extends Error {
  constructor(
    readonly detail: string,
    readonly position: number,
    /** For a duplicate key: the key, and how deep its object sits (1 = the top-level object). */
    readonly duplicate?: { readonly key: string; readonly depth: number },
  ) {
    super(`${detail} at character ${position}`);
  }
}

const NUMBER = /-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/y;
/** What Python's `json.dumps` writes for non-finite floats (`allow_nan=True`, its default). */
const NON_FINITE = /-?Infinity|NaN/y;
/** A possibly empty run of string characters that need no attention: no quote, backslash or control. */
const PLAIN = /[^"\\\u0000-\u001f]*/y;

/** Headers nest three deep; anything far deeper is an attack on the stack, not a checkpoint. */
const MAX_DEPTH = 64;

/** Where a value sits in the text: `[start, end)`, and for an object member where its key starts. */
export interface JsonSpan {
  readonly start: number;
  readonly end: number;
  readonly keyStart?: number;
}

/** A path into a JSON document: object keys and array indexes. */
export type JsonPath = readonly (string | number)[];

export interface ParseOptions {
  /**
   * Accept `Infinity`, `-Infinity` and `NaN`, which Python's `json` writes for non-finite floats (configs
   * saved by transformers hold them). Safetensors headers and indexes stay strict JSON.
   */
  readonly nonFinite?: boolean;
  /** Told the span of every value, with its path, as it is parsed. */
  readonly onSpan?: (path: JsonPath, span: JsonSpan) => void;
}

export function parseJson(text: string, options: ParseOptions = {}): JsonValue {
  const p = new Parser(text, options);
  p.skipWs();
  const v = p.value(0);
  p.skipWs();
  if (p.pos !== text.length) p.fail("unexpected data after the JSON value");
  return v;
}

class Parser {
  pos = 0;
  private readonly path: (string | number)[] = [];
  private readonly nonFinite: boolean;
  private readonly onSpan: ((path: JsonPath, span: JsonSpan) => void) | undefined;

  constructor(
    readonly s: string,
    options: ParseOptions,
  ) {
    this.nonFinite = options.nonFinite ?? false;
    this.onSpan = options.onSpan;
  }

  /** A value, with its span reported when asked for. */
  spanned(depth: number, keyStart?: number): JsonValue {
    if (!this.onSpan) return this.value(depth);
    const start = this.pos;
    const v = this.value(depth);
    this.onSpan([...this.path], keyStart === undefined ? { start, end: this.pos } : { start, end: this.pos, keyStart });
    return v;
  }

  fail(detail: string, duplicate?: { key: string; depth: number }): never {
    throw new JsonSyntaxError(detail, this.pos, duplicate);
  }

  skipWs(): void {
    const s = this.s;
    while (this.pos < s.length) {
      const c = s.charCodeAt(this.pos);
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) this.pos++;
      else break;
    }
  }

  value(depth: number): JsonValue {
    if (depth > MAX_DEPTH) this.fail("JSON nested too deeply");
    const c = this.s[this.pos];
    switch (c) {
      case "{":
        return this.object(depth);
      case "[":
        return this.array(depth);
      case '"':
        return this.string();
      case "t":
        return this.literal("true", true);
      case "f":
        return this.literal("false", false);
      case "n":
        return this.literal("null", null);
      case undefined:
        return this.fail("unexpected end of JSON");
      default:
        if (this.nonFinite && (c === "I" || c === "N" || (c === "-" && this.s[this.pos + 1] === "I"))) return this.nonFiniteNumber();
        if (c === "-" || (c >= "0" && c <= "9")) return this.number();
        return this.fail(`unexpected character ${JSON.stringify(c)}`);
    }
  }

  literal<T>(word: string, v: T): T {
    if (!this.s.startsWith(word, this.pos)) this.fail("invalid literal");
    this.pos += word.length;
    return v;
  }

  number(): JsonNumber {
    const m = NUMBER;
    m.lastIndex = this.pos;
    const r = m.exec(this.s);
    if (!r) this.fail("invalid number");
    this.pos += r[0].length;
    return new JsonNumber(r[0]);
  }

  nonFiniteNumber(): JsonNumber {
    NON_FINITE.lastIndex = this.pos;
    const r = NON_FINITE.exec(this.s);
    if (!r) this.fail("invalid literal");
    this.pos += r[0].length;
    return new JsonNumber(r[0]);
  }

  string(): string {
    const s = this.s;
    this.pos++; // opening quote
    let out = "";
    let runStart = this.pos;
    for (;;) {
      // Skip a run of plain characters in one native step; headers are thousands of such keys.
      PLAIN.lastIndex = this.pos;
      PLAIN.test(s);
      this.pos = PLAIN.lastIndex;
      if (this.pos >= s.length) this.fail("unterminated string");
      const c = s.charCodeAt(this.pos);
      if (c === 0x22) {
        out += s.slice(runStart, this.pos);
        this.pos++;
        return out;
      }
      if (c < 0x20) this.fail("control character in string");
      if (c !== 0x5c) {
        this.pos++;
        continue;
      }
      out += s.slice(runStart, this.pos);
      const e = s[this.pos + 1];
      this.pos += 2;
      switch (e) {
        case '"':
          out += '"';
          break;
        case "\\":
          out += "\\";
          break;
        case "/":
          out += "/";
          break;
        case "b":
          out += "\b";
          break;
        case "f":
          out += "\f";
          break;
        case "n":
          out += "\n";
          break;
        case "r":
          out += "\r";
          break;
        case "t":
          out += "\t";
          break;
        case "u": {
          const hex = s.slice(this.pos, this.pos + 4);
          if (!/^[0-9a-fA-F]{4}$/.test(hex)) this.fail("invalid \\u escape");
          out += String.fromCharCode(parseInt(hex, 16));
          this.pos += 4;
          break;
        }
        default:
          this.pos -= 2;
          this.fail("invalid escape in string");
      }
      runStart = this.pos;
    }
  }

  array(depth: number): JsonValue[] {
    this.pos++;
    const out: JsonValue[] = [];
    this.skipWs();
    if (this.s[this.pos] === "]") {
      this.pos++;
      return out;
    }
    for (;;) {
      this.skipWs();
      this.path.push(out.length);
      out.push(this.spanned(depth + 1));
      this.path.pop();
      this.skipWs();
      const c = this.s[this.pos];
      this.pos++;
      if (c === "]") return out;
      if (c !== ",") {
        this.pos--;
        this.fail("expected ',' or ']' in array");
      }
    }
  }

  object(depth: number): JsonObject {
    this.pos++;
    const out: JsonObject = new Map();
    this.skipWs();
    if (this.s[this.pos] === "}") {
      this.pos++;
      return out;
    }
    for (;;) {
      this.skipWs();
      if (this.s[this.pos] !== '"') this.fail("expected a string key in object");
      const keyAt = this.pos;
      const key = this.string();
      if (out.has(key)) {
        this.pos = keyAt;
        this.fail(`duplicate key ${JSON.stringify(key)}`, { key, depth: depth + 1 });
      }
      this.skipWs();
      if (this.s[this.pos] !== ":") this.fail("expected ':' after object key");
      this.pos++;
      this.skipWs();
      this.path.push(key);
      out.set(key, this.spanned(depth + 1, keyAt));
      this.path.pop();
      this.skipWs();
      const c = this.s[this.pos];
      this.pos++;
      if (c === "}") return out;
      if (c !== ",") {
        this.pos--;
        this.fail("expected ',' or '}' in object");
      }
    }
  }
}

export function isJsonObject(v: JsonValue): v is JsonObject {
  return v instanceof Map;
}

export function describeJson(v: JsonValue): string {
  if (v === null) return "null";
  if (v instanceof Map) return "an object";
  if (Array.isArray(v)) return "an array";
  if (v instanceof JsonNumber) return `the number ${v.text}`;
  if (typeof v === "string") return "a string";
  return `the literal ${v}`;
}

/**
 * Plain JavaScript values (objects without prototypes reachable through keys), for configs. A
 * non-finite float as transformers 5 writes it, `{"__float__": "Infinity"}`, becomes the number.
 */
export function toPlain(v: JsonValue): unknown {
  if (v instanceof JsonNumber) return v.value;
  if (Array.isArray(v)) return v.map(toPlain);
  if (v instanceof Map) {
    const tagged = v.size === 1 ? v.get("__float__") : undefined;
    if (typeof tagged === "string" && /^(-?Infinity|NaN)$/.test(tagged)) return Number(tagged);
    // Object.fromEntries defines own properties: a key named `__proto__` stays a key.
    return Object.fromEntries([...v].map(([k, x]) => [k, toPlain(x)]));
  }
  return v;
}
