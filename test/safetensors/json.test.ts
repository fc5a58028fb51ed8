import { describe, expect, it } from "vitest";
import { type JsonPath, type JsonSpan, JsonNumber, JsonSyntaxError, parseJson, toPlain } from "../../src/safetensors/json.js";
import { editJson } from "../../src/safetensors/json-edit.js";
import { parseHeader } from "../../src/safetensors/header.js";
import { FormatError } from "../../src/errors.js";

const syntaxError = (text: string, options = {}): JsonSyntaxError => {
  try {
    parseJson(text, options);
  } catch (e) {
    if (e instanceof JsonSyntaxError) return e;
    throw e;
  }
  throw new Error(`parsed: ${text}`);
};

describe("the strict JSON reader", () => {
  it("keeps numbers as their literal text, objects as Maps, duplicates as errors", () => {
    const v = parseJson('{"a": 1e-05, "b": [0.0, 9007199254740993], "__proto__": {}}') as Map<string, unknown>;
    expect(v).toBeInstanceOf(Map);
    expect((v.get("a") as JsonNumber).text).toBe("1e-05");
    expect(((v.get("b") as JsonNumber[])[1] as JsonNumber).text).toBe("9007199254740993");
    expect(((v.get("b") as JsonNumber[])[1] as JsonNumber).safeIndex).toBeUndefined();
    expect([...v.keys()]).toEqual(["a", "b", "__proto__"]);
    const dup = syntaxError('{"x": 1, "x": 2}');
    expect(dup.message).toBe('duplicate key "x" at character 9');
    expect(dup.duplicate).toEqual({ key: "x", depth: 1 });
  });

  it("reads Python's non-finite literals only when asked (configs), never in headers", () => {
    expect(syntaxError("[0.0, Infinity]").message).toBe('unexpected character "I" at character 6');
    const v = parseJson("[0.0, Infinity, -Infinity, NaN]", { nonFinite: true }) as JsonNumber[];
    expect(v.map((n) => n.text)).toEqual(["0.0", "Infinity", "-Infinity", "NaN"]);
    expect(toPlain(v)).toEqual([0, Infinity, -Infinity, NaN]);
    expect(syntaxError("[Inf]", { nonFinite: true }).message).toBe("invalid literal at character 1");
    expect(syntaxError("[-Nan]", { nonFinite: true }).message).toBe("invalid number at character 1");
    // A header with such a literal is not a safetensors header.
    const header = new TextEncoder().encode('{"w":{"dtype":"F32","shape":[Infinity],"data_offsets":[0,4]}}');
    expect(() => parseHeader(header, 4, "x.safetensors")).toThrow(new FormatError("x.safetensors", 'header is not valid JSON: unexpected character "I" at character 29'));
  });

  it("turns transformers 5's tagged non-finite floats into numbers for configs", () => {
    expect(toPlain(parseJson('{"t": [{"__float__": "Infinity"}, {"__float__": "-Infinity"}, {"__float__": "NaN"}, {"__float__": "1"}]}'))).toEqual({
      t: [Infinity, -Infinity, NaN, { __float__: "1" }],
    });
  });

  it("reports every value's span with its path, member spans starting at their key", () => {
    const text = '{ "a": [1, "x"],\n  "b": {"c": null} }';
    const spans = new Map<string, JsonSpan>();
    parseJson(text, { onSpan: (path: JsonPath, span) => spans.set(JSON.stringify(path), span) });
    const slice = (p: JsonPath): string => {
      const s = spans.get(JSON.stringify(p))!;
      return text.slice(s.start, s.end);
    };
    expect(slice(["a"])).toBe('[1, "x"]');
    expect(slice(["a", 1])).toBe('"x"');
    expect(slice(["b", "c"])).toBe("null");
    expect(text.slice(spans.get('["b"]')!.keyStart!, spans.get('["b"]')!.end)).toBe('"b": {"c": null}');
    expect(spans.get('["a",0]')!.keyStart).toBeUndefined();
  });
});

describe("editing JSON in its own text", () => {
  const config = `{
  "llm_config": {
    "hybrid_override_pattern": "MEM*E",
    "layers_block_type": [
      "mamba",
      "moe",
      "mamba",
      "attention",
      "moe"
    ],
    "name": "caf\\u00e9",
    "num_hidden_layers": 5,
    "rms_norm_eps": 1e-05,
    "time_step_limit": [
      0.0,
      Infinity
    ]
  },
  "quantization_config": {
    "quant_method": "modelopt"
  },
  "torch_dtype": "bfloat16"
}
`;

  it("changes only the values asked for, in the document's spelling", () => {
    const out = editJson(
      config,
      [
        { path: ["llm_config", "num_hidden_layers"], value: 3 },
        { path: ["llm_config", "hybrid_override_pattern"], value: "MEM" },
        { path: ["llm_config", "layers_block_type"], keep: 3 },
        { path: ["llm_config", "name"], value: "thé" },
      ],
      { nonFinite: true },
    );
    expect(out).toBe(
      config
        .replace('"num_hidden_layers": 5', '"num_hidden_layers": 3')
        .replace('"MEM*E"', '"MEM"')
        .replace('"mamba",\n      "attention",\n      "moe"\n', '"mamba"\n')
        .replace('"caf\\u00e9"', '"th\\u00e9"'),
    );
    expect(out).toContain("1e-05");
    expect(out).toContain("Infinity");
  });

  it("removes members wherever they are, leaving valid JSON and everything else as it was", () => {
    const middle = editJson(config, [{ path: ["quantization_config"], remove: true }], { nonFinite: true });
    expect(middle).toBe(config.replace(',\n  "quantization_config": {\n    "quant_method": "modelopt"\n  }', ""));
    const first = editJson(config, [{ path: ["llm_config"], remove: true }], { nonFinite: true });
    expect(toPlain(parseJson(first, { nonFinite: true }))).toEqual({ quantization_config: { quant_method: "modelopt" }, torch_dtype: "bfloat16" });
    expect(first.startsWith('{\n  "quantization_config"')).toBe(true);
    const last = editJson(config, [{ path: ["torch_dtype"], remove: true }], { nonFinite: true });
    expect(last.endsWith('  }\n}\n')).toBe(true);
    expect(editJson('{"only": 1}', [{ path: ["only"], remove: true }])).toBe("{}");
    expect(editJson("[1, 2, 3]", [{ path: [], keep: 0 }])).toBe("[]");
  });

  it("refuses edits of values that are not there, or that overlap", () => {
    expect(() => editJson(config, [{ path: ["nope"], value: 1 }], { nonFinite: true })).toThrow(new RangeError('no value at ["nope"] to edit'));
    expect(() =>
      editJson(config, [{ path: ["llm_config"], remove: true }, { path: ["llm_config", "num_hidden_layers"], value: 1 }], { nonFinite: true }),
    ).toThrow(new RangeError("internal: overlapping JSON edits"));
  });
});
