import { describe, expect, it } from "vitest";
import { FormatError } from "../../src/errors.js";
import { pythonJson } from "../../src/lora/json-write.js";
import { type LoraSettings, parseLoraSettings, patternValue, peftModuleScale, savesModule, targetsModule, targetsParameter } from "../../src/lora/settings.js";
import { type JsonObject, parseJson } from "../../src/safetensors/json.js";

/* PEFT's rules for reading adapter_config.json, as omni-ckpt implements them, and the JSON it writes back. */

function settings(json: string): LoraSettings {
  return parseLoraSettings(parseJson(json) as JsonObject, "adapter_config.json");
}

describe("PEFT's matching rules", () => {
  it("target_modules: a list matches a full name or a suffix at a dot; a string is a regex over the whole name", () => {
    const list = settings('{"r": 4, "target_modules": ["q_proj", "mixer.in_proj", "mlp1.1"]}');
    expect(targetsModule(list, "language_model.backbone.layers.2.mixer.q_proj")).toBe(true);
    expect(targetsModule(list, "language_model.backbone.layers.0.mixer.in_proj")).toBe(true);
    expect(targetsModule(list, "mlp1.1")).toBe(true);
    expect(targetsModule(list, "language_model.backbone.layers.2.mixer.xq_proj")).toBe(false);
    expect(targetsModule(list, "mlp1.11")).toBe(false);
    const regex = settings('{"r": 4, "target_modules": ".*\\\\.(q|k)_proj"}');
    expect(targetsModule(regex, "a.q_proj")).toBe(true);
    expect(targetsModule(regex, "q_proj")).toBe(false);
    expect(targetsModule(regex, "a.q_proj.b")).toBe(false);
    const excluded = settings('{"r": 4, "target_modules": ["q_proj"], "exclude_modules": ["layers.2.mixer.q_proj"]}');
    expect(targetsModule(excluded, "x.layers.2.mixer.q_proj")).toBe(false);
    expect(targetsModule(excluded, "x.layers.3.mixer.q_proj")).toBe(true);
    const saved = settings('{"r": 4, "target_modules": ["lm_head", "q_proj"], "modules_to_save": ["lm_head"]}');
    expect(targetsModule(saved, "language_model.lm_head")).toBe(false);
    expect(savesModule(saved, "language_model.lm_head")).toBe(true);
    const layers = settings('{"r": 4, "target_modules": ["q_proj"], "layers_to_transform": [2]}');
    expect(targetsModule(layers, "backbone.layers.2.mixer.q_proj")).toBe(true);
    expect(targetsModule(layers, "backbone.layers.3.mixer.q_proj")).toBe(false);
    const params = settings('{"r": 4, "target_parameters": ["layers.1.mixer.experts.up_proj"]}');
    expect(targetsParameter(params, "language_model.backbone.layers.1.mixer.experts.up_proj")).toBe(true);
    expect(targetsParameter(params, "model.layers.11.mixer.experts.up_proj")).toBe(false);
    expect(targetsModule(params, "model.layers.1.mixer.experts")).toBe(false);
  });

  it("rank_pattern and alpha_pattern: regexes matched as (.*\\.)?(key)$, the first matching key wins, else r and lora_alpha", () => {
    const s = settings('{"r": 8, "lora_alpha": 16, "rank_pattern": {"in_proj": 2, "layers\\\\.0\\\\..*": 4}, "alpha_pattern": {"q_proj": 4}}');
    expect(patternValue(s.rankPattern, "x.layers.0.mixer.in_proj", s.file)).toBe(2);
    expect(patternValue(s.rankPattern, "x.layers.0.mixer.q_proj", s.file)).toBe(4);
    expect(patternValue(s.rankPattern, "x.layers.1.mixer.q_proj", s.file)).toBeUndefined();
    expect(patternValue(s.rankPattern, "x.layers.1.mixer.xin_proj", s.file)).toBeUndefined();
    expect(peftModuleScale(s, "x.layers.1.mixer.q_proj")).toEqual({ rank: 8, alpha: 4, scale: 0.5 });
    expect(peftModuleScale(s, "x.layers.1.mixer.in_proj")).toEqual({ rank: 2, alpha: 16, scale: 8 });
    const rs = settings('{"r": 16, "lora_alpha": 32, "use_rslora": true}');
    expect(peftModuleScale(rs, "m").scale).toBe(8);
  });

  it("refuses what it cannot honour, naming the file", () => {
    const bad = (json: string): string => {
      try {
        settings(json);
      } catch (e) {
        expect(e).toBeInstanceOf(FormatError);
        return (e as Error).message;
      }
      throw new Error("expected a refusal");
    };
    expect(bad('{"r": 0}')).toBe("adapter_config.json: r must be a positive integer, found the number 0");
    expect(bad('{"r": 4, "fan_in_fan_out": true}')).toBe("adapter_config.json: fan_in_fan_out is true: that is for GPT-2 style Conv1D weights, which this model does not have");
    expect(bad('{"r": 4, "rank_pattern": {"q": 2.5}}')).toBe('adapter_config.json: rank_pattern["q"] must be a positive integer, found the number 2.5');
    expect(bad('{"r": 4, "rank_pattern": {"(q": 2}}')).toMatch(/^adapter_config\.json: pattern "\(q" is not a regular expression omni-ckpt can read: /);
  });
});

describe("the JSON omni-ckpt writes configs in", () => {
  it("is Python's json.dumps(indent=2, sort_keys=True): keys in code point order, ASCII escapes, numbers as written", () => {
    const text = '{"z": 1e-05, "a": [1, 0.0, {"é": null}], "b": {}, "c": [], "d": "\\u00e9\\u007f\\n"}';
    expect(pythonJson(parseJson(text))).toBe(
      '{\n  "a": [\n    1,\n    0.0,\n    {\n      "\\u00e9": null\n    }\n  ],\n  "b": {},\n  "c": [],\n  "d": "\\u00e9\\u007f\\n",\n  "z": 1e-05\n}',
    );
  });
});
