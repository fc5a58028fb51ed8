/**
 * A strict JSON reader for untrusted headers and indexes. `JSON.parse` keeps the last of two duplicate
 * keys, rounds integers above 2^53 and gives objects a prototype a key named `__proto__` can reach; here
 * objects are `Map`s, duplicates are errors and numbers keep their literal text so callers can insist on
 * exact integers.
 */

export class JsonNumber {
  constructor(readonly text: string) {}

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
/** A possibly empty run of string characters that need no attention: no quote, backslash or control. */
const PLAIN = /[^"\\\u0000-\u001f]*/y;

/** Headers nest three deep; anything far deeper is an attack on the stack, not a checkpoint. */
const MAX_DEPTH = 64;

export function parseJson(text: string): JsonValue {
  const p = new Parser(text);
  p.skipWs();
  const v = p.value(0);
  p.skipWs();
  if (p.pos !== text.length) p.fail("unexpected data after the JSON value");
  return v;
}

class Parser {
  pos = 0;
  constructor(readonly s: string) {}

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
      out.push(this.value(depth + 1));
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
      out.set(key, this.value(depth + 1));
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

/** Plain JavaScript values (objects without prototypes reachable through keys), for configs. */
export function toPlain(v: JsonValue): unknown {
  if (v instanceof JsonNumber) return Number(v.text);
  if (Array.isArray(v)) return v.map(toPlain);
  // Object.fromEntries defines own properties: a key named `__proto__` stays a key.
  if (v instanceof Map) return Object.fromEntries([...v].map(([k, x]) => [k, toPlain(x)]));
  return v;
}
