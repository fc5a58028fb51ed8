import { type JsonPath, type JsonSpan, parseJson } from "./json.js";

/**
 * Changes to a JSON document made in its text, so that everything else keeps its spelling: key order,
 * indentation, `1e-05` and `0.0`, `\u00e9` escapes, Python's `Infinity`. A config that `save_pretrained`
 * wrote reads back byte for byte where nothing was asked to change.
 */
export type JsonEdit =
  /** Replace the value at `path`. */
  | { readonly path: JsonPath; readonly value: number | string | boolean | null }
  /** Keep only the first `keep` elements of the array at `path`. */
  | { readonly path: JsonPath; readonly keep: number }
  /** Remove the object member at `path`. */
  | { readonly path: JsonPath; readonly remove: true };

interface Node extends JsonSpan {
  readonly path: JsonPath;
}

const key = (path: JsonPath): string => JSON.stringify(path);

/** A string literal in the document's own style: ASCII-only with `\uXXXX` escapes when the text is. */
function literal(value: number | string | boolean | null, asciiOnly: boolean): string {
  if (typeof value === "number" && !Number.isFinite(value)) return String(value); // Python's Infinity / NaN
  const json = JSON.stringify(value);
  if (!asciiOnly || typeof value !== "string") return json;
  return json.replace(/[\u0080-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

export function editJson(text: string, edits: readonly JsonEdit[], options: { nonFinite?: boolean } = {}): string {
  const nodes = new Map<string, Node>();
  const children = new Map<string, Node[]>();
  parseJson(text, {
    nonFinite: options.nonFinite ?? false,
    onSpan: (path, span) => {
      const node: Node = { ...span, path };
      nodes.set(key(path), node);
      const parent = key(path.slice(0, -1));
      const list = children.get(parent) ?? [];
      list.push(node);
      children.set(parent, list);
    },
  });
  const trimmed = text.trimStart();
  const root: Node = { start: text.length - trimmed.length, end: text.length - (trimmed.length - trimmed.trimEnd().length), path: [] };
  const at = (path: JsonPath): Node => {
    const node = path.length === 0 ? root : nodes.get(key(path));
    if (!node) throw new RangeError(`no value at ${key(path)} to edit`);
    return node;
  };
  const asciiOnly = !/[^\u0000-\u007f]/.test(text);
  const replacements: { start: number; end: number; text: string }[] = [];
  for (const edit of edits) {
    if ("value" in edit) {
      const node = at(edit.path);
      replacements.push({ start: node.start, end: node.end, text: literal(edit.value, asciiOnly) });
    } else if ("keep" in edit) {
      const node = at(edit.path);
      const items = children.get(key(edit.path)) ?? [];
      if (text[node.start] !== "[") throw new RangeError(`${key(edit.path)} is not an array`);
      if (edit.keep >= items.length) continue;
      if (edit.keep <= 0) replacements.push({ start: node.start + 1, end: node.end - 1, text: "" });
      else replacements.push({ start: items[edit.keep - 1]!.end, end: items[items.length - 1]!.end, text: "" });
    } else {
      const node = at(edit.path);
      const parentPath = edit.path.slice(0, -1);
      const siblings = children.get(key(parentPath)) ?? [];
      const i = siblings.indexOf(node);
      if (siblings.length === 1) {
        const parent = at(parentPath);
        replacements.push({ start: parent.start + 1, end: parent.end - 1, text: "" });
      } else if (i > 0) replacements.push({ start: siblings[i - 1]!.end, end: node.end, text: "" });
      else replacements.push({ start: node.keyStart!, end: siblings[1]!.keyStart!, text: "" });
    }
  }
  replacements.sort((a, b) => b.start - a.start);
  for (let i = 1; i < replacements.length; i++) {
    if (replacements[i]!.end > replacements[i - 1]!.start) throw new RangeError("internal: overlapping JSON edits");
  }
  let out = text;
  for (const r of replacements) out = out.slice(0, r.start) + r.text + out.slice(r.end);
  return out;
}
