import { compileKeyRegex } from "../adapters/key-regex.js";
import { FormatError, UsageError } from "../errors.js";
import { JsonNumber, type JsonObject, type JsonValue, describeJson } from "../safetensors/json.js";

/**
 * What an adapter's `adapter_config.json` says about placing and scaling its modules, and PEFT's own rules
 * for reading it (peft `tuners_utils.check_target_module_exists`, `utils/other.get_pattern_key`,
 * `LoraLayer.update_layer`): target modules and parameters, per-module rank and alpha, rsLoRA.
 */
export interface LoraSettings {
  /** adapter_config.json as named in messages. */
  readonly file: string;
  readonly r: number;
  readonly loraAlpha: number;
  readonly useRslora: boolean;
  /** In the file's order: PEFT takes the first key that matches. */
  readonly rankPattern: readonly (readonly [string, number])[];
  readonly alphaPattern: readonly (readonly [string, number])[];
  readonly targetModules: string | readonly string[] | undefined;
  readonly targetParameters: readonly string[] | undefined;
  readonly excludeModules: string | readonly string[] | undefined;
  readonly modulesToSave: readonly string[] | undefined;
  readonly layersToTransform: readonly number[] | undefined;
  readonly layersPattern: readonly string[] | undefined;
}

function num(v: JsonValue | undefined): number | undefined {
  return v instanceof JsonNumber ? v.value : undefined;
}

function stringList(json: JsonObject, key: string, file: string, allowString: boolean): string | string[] | undefined {
  const v = json.get(key);
  if (v === undefined || v === null) return undefined;
  if (typeof v === "string" && allowString) return v;
  if (Array.isArray(v) && v.every((x) => typeof x === "string")) return v as string[];
  throw new FormatError(file, `${key} must be ${allowString ? "a string or " : ""}a list of strings, found ${describeJson(v)}`);
}

function patternOf(json: JsonObject, key: string, file: string, integer: boolean): [string, number][] {
  const v = json.get(key);
  if (v === undefined || v === null) return [];
  if (!(v instanceof Map)) throw new FormatError(file, `${key} must be an object of module patterns, found ${describeJson(v)}`);
  const out: [string, number][] = [];
  for (const [k, x] of v) {
    const n = num(x);
    if (n === undefined || !Number.isFinite(n) || (integer && !(Number.isSafeInteger(n) && n > 0))) {
      throw new FormatError(file, `${key}[${JSON.stringify(k)}] must be ${integer ? "a positive integer" : "a number"}, found ${describeJson(x)}`);
    }
    out.push([k, n]);
  }
  return out;
}

/**
 * Read and check the LoRA settings of `adapter_config.json`. What omni-ckpt cannot honour exactly is refused:
 * DoRA, another PEFT method, trained biases, Conv1D-style transposed weights.
 */
export function parseLoraSettings(json: JsonObject, file: string): LoraSettings {
  const peftType = json.get("peft_type");
  if (peftType !== undefined && peftType !== "LORA") {
    throw new FormatError(file, `peft_type is ${typeof peftType === "string" ? JSON.stringify(peftType) : describeJson(peftType)}; only LoRA adapters (peft_type "LORA") can be exported or merged`);
  }
  if (json.get("use_dora") === true) {
    throw new FormatError(file, "use_dora is true: DoRA adapters are not supported (their magnitude vectors rescale the merged weight; it is not a LoRA delta)");
  }
  const bias = json.get("bias");
  if (bias !== undefined && bias !== null && bias !== "none") {
    throw new FormatError(file, `bias is ${typeof bias === "string" ? JSON.stringify(bias) : describeJson(bias)}: adapters that train biases are not supported, only bias "none"`);
  }
  if (json.get("fan_in_fan_out") === true) {
    throw new FormatError(file, "fan_in_fan_out is true: that is for GPT-2 style Conv1D weights, which this model does not have");
  }
  const r = num(json.get("r"));
  if (r === undefined || !Number.isSafeInteger(r) || r < 1) throw new FormatError(file, `r must be a positive integer, found ${describeJson(json.get("r") ?? null)}`);
  const alphaValue = json.get("lora_alpha");
  const loraAlpha = alphaValue === undefined ? 8 : num(alphaValue);
  if (loraAlpha === undefined || !Number.isFinite(loraAlpha)) throw new FormatError(file, `lora_alpha must be a number, found ${describeJson(alphaValue ?? null)}`);
  const rslora = json.get("use_rslora");
  if (rslora !== undefined && rslora !== null && typeof rslora !== "boolean") throw new FormatError(file, `use_rslora must be true or false, found ${describeJson(rslora)}`);
  const layers = json.get("layers_to_transform");
  let layersToTransform: number[] | undefined;
  if (layers !== undefined && layers !== null) {
    const list = layers instanceof JsonNumber ? [layers] : Array.isArray(layers) ? layers : undefined;
    if (!list || !list.every((x) => x instanceof JsonNumber && x.safeIndex !== undefined)) {
      throw new FormatError(file, `layers_to_transform must be a layer number or a list of them, found ${describeJson(layers)}`);
    }
    layersToTransform = list.map((x) => (x as JsonNumber).safeIndex!);
  }
  const layersPatternRaw = stringList(json, "layers_pattern", file, true);
  const settings: LoraSettings = {
    file,
    r,
    loraAlpha,
    useRslora: rslora === true,
    rankPattern: patternOf(json, "rank_pattern", file, true),
    alphaPattern: patternOf(json, "alpha_pattern", file, false),
    targetModules: stringList(json, "target_modules", file, true),
    targetParameters: stringList(json, "target_parameters", file, false) as string[] | undefined,
    excludeModules: stringList(json, "exclude_modules", file, true),
    modulesToSave: stringList(json, "modules_to_save", file, false) as string[] | undefined,
    layersToTransform,
    layersPattern: typeof layersPatternRaw === "string" ? [layersPatternRaw] : layersPatternRaw,
  };
  // Every pattern compiles now, so a bad one is reported against the file rather than a module.
  for (const [k] of [...settings.rankPattern, ...settings.alphaPattern]) patternRegex(k, file);
  return settings;
}

const compiled = new Map<string, RegExp>();

/** PEFT's `re.match(rf"(.*\.)?({key})$", name)`. */
function patternRegex(key: string, file: string): RegExp {
  let re = compiled.get(key);
  if (!re) {
    try {
      re = compileKeyRegex(`(.*\\.)?(${key})$`);
    } catch (e) {
      if (e instanceof UsageError) throw new FormatError(file, `pattern ${JSON.stringify(key)} is not a regular expression omni-ckpt can read: ${e.message}`);
      throw e;
    }
    compiled.set(key, re);
  }
  return re;
}

/** The value of the first pattern that matches `name` (PEFT's `get_pattern_key`), if any does. */
export function patternValue(pattern: readonly (readonly [string, number])[], name: string, file: string): number | undefined {
  for (const [key, value] of pattern) if (patternRegex(key, file).test(name)) return value;
  return undefined;
}

/**
 * The rank and alpha PEFT gives a module (or, for `target_parameters`, a `module.parameter` key), and the
 * scale it merges with: `alpha / r`, or `alpha / √r` with rsLoRA.
 */
export function peftModuleScale(s: LoraSettings, key: string): { rank: number; alpha: number; scale: number } {
  const rank = patternValue(s.rankPattern, key, s.file) ?? s.r;
  const alpha = patternValue(s.alphaPattern, key, s.file) ?? s.loraAlpha;
  return { rank, alpha, scale: s.useRslora ? alpha / Math.sqrt(rank) : alpha / rank };
}

function fullMatch(pattern: string, name: string, file: string, what: string): boolean {
  try {
    return compileKeyRegex(`(?:${pattern})$`).test(name);
  } catch (e) {
    if (e instanceof UsageError) throw new FormatError(file, `${what} ${JSON.stringify(pattern)} is not a regular expression omni-ckpt can read: ${e.message}`);
    throw e;
  }
}

function listMatch(list: readonly string[], name: string): boolean {
  return list.some((t) => name === t || name.endsWith(`.${t}`));
}

/**
 * The layer number PEFT reads from a module name for `layers_to_transform`: `re.match(r".*\.[^.]*\.(\d+)\.")`,
 * or `.*\.{pattern}\.(\d+)\.` per `layers_pattern`. The leading `.*` is greedy, so the last numbered part
 * before the module's own name counts: for `…layers.3.mixer.experts.7.up_proj` that is 7, the expert, not
 * the layer. PEFT reads it so, and so omni-ckpt does.
 */
function layerIndex(s: LoraSettings, name: string): number | undefined {
  const patterns = s.layersPattern;
  const m = patterns && patterns.length > 0
    ? patterns.map((p) => compileKeyRegex(`.*\\.${p}\\.(\\d+)\\.`).exec(name)).find((x) => x)
    : /^.*\.[^.]*\.(\d+)\./.exec(name);
  return m ? Number(m[1]) : undefined;
}

/** Modules that are no linear layer in this model, which PEFT's "all-linear" leaves alone: embeddings. */
const NOT_LINEAR = /(^|\.)(embeddings|embed_tokens|word_embeddings)$/;

/** Whether PEFT puts a LoRA layer on module `name` (relative to the model, no `base_model.model.`). */
export function targetsModule(s: LoraSettings, name: string): boolean {
  const ex = s.excludeModules;
  if (ex !== undefined) {
    if (typeof ex === "string" ? fullMatch(ex, name, s.file, "exclude_modules") : listMatch(ex, name)) return false;
  }
  // Modules saved whole get no LoRA layer: `re.match(rf"(^|.*\.){m}($|\..*)", key)`.
  if (s.modulesToSave?.some((m) => compileKeyRegex(`(?:^|.*\\.)${m}(?:$|\\..*)`).test(name))) return false;
  const t = s.targetModules;
  if (t === undefined) return false;
  if (typeof t === "string") {
    // "all-linear" puts LoRA on every linear layer but the output layer.
    if (t.toLowerCase() === "all-linear") return !/(^|\.)lm_head$/.test(name) && !NOT_LINEAR.test(name);
    return fullMatch(t, name, s.file, "target_modules");
  }
  // A module named in full is targeted whatever layers_to_transform says; a suffix only in those layers.
  if (t.includes(name)) return true;
  if (!listMatch(t, name)) return false;
  if (s.layersToTransform === undefined || s.layersToTransform.length === 0) return true;
  const layer = layerIndex(s, name);
  return layer !== undefined && s.layersToTransform.includes(layer);
}

/** Whether PEFT wraps parameter `key` (`module.parameter`) through `target_parameters`. */
export function targetsParameter(s: LoraSettings, key: string): boolean {
  return s.targetParameters !== undefined && listMatch(s.targetParameters, key);
}

/** Whether a full weight of module `name` is one PEFT saves through `modules_to_save` (`_set_trainable`). */
export function savesModule(s: LoraSettings, name: string): boolean {
  return s.modulesToSave?.some((m) => name.endsWith(m)) ?? false;
}

/** A module or parameter name as a regular expression matching exactly it. */
export function escapeRegex(name: string): string {
  return name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}
