import { type LoraHalf, expertModuleKey, expertsBase, groupedLoraKey } from "../adapters/expert-keys.js";
import { perExpertLoraToFused } from "../adapters/experts-lora.js";
import { stackTransposed } from "../adapters/experts.js";
import { type PlannedTensor, inputTensor, renamed } from "../adapters/plan.js";
import { type Layout, checkLayoutName } from "../convert/layout.js";
import { ConversionError, InputError, UsageError } from "../errors.js";
import { referenceOrder } from "../safetensors/encode.js";
import type { JsonObject, JsonValue } from "../safetensors/json.js";
import { byteLength } from "../tensor/tensor.js";
import { PEFT_PREFIX } from "./files.js";
import { jsonNumber, pythonJson } from "./json-write.js";
import type { LoraModule, LoraSet } from "./read.js";
import { escapeRegex } from "./settings.js";

/**
 * `lora export`: an adapter's tensors renamed for the other side, as views of the adapter file (nothing is
 * computed), and its `adapter_config.json` rewritten to match: explicit target modules, a rank (and if
 * need be alpha) pattern that makes PEFT's scale Automodel's, everything else kept.
 */

/** How routed-expert LoRA is written for HF: PEFT v4 modules per expert, PEFT ≥ 0.19.1's ParamWrapper, or not at all. */
export type ExpertExport = "per-expert" | "fused" | "drop";

export const EXPERT_EXPORTS: readonly ExpertExport[] = ["per-expert", "fused", "drop"];

export interface ExportOptions {
  /** "hf" (Automodel → PEFT on the release, the default) or "native" (a PEFT adapter → Automodel). */
  readonly to?: Layout;
  /** Routed experts in the HF export; per-expert by default. */
  readonly experts?: ExpertExport;
}

export interface ExportPlan {
  readonly to: Layout;
  readonly experts: ExpertExport | undefined;
  /** Output tensors in write order: views of the adapter's tensors under their new names. */
  readonly tensors: readonly PlannedTensor[];
  /** The new adapter_config.json. */
  readonly configText: string;
  /** LoRA modules written (each routed expert's projection counts once), and of them routed experts. */
  readonly modules: number;
  readonly expertModules: number;
  /** Routed-expert modules left out by `--experts drop`, and the tensors they were read from. */
  readonly dropped: { readonly modules: number; readonly tensors: number } | undefined;
  readonly replacements: number;
  readonly bytes: number;
}

const halves: readonly [LoraHalf, "a" | "b"][] = [
  ["lora_A", "a"],
  ["lora_B", "b"],
];

/** Plan an export from an adapter read by `readLora`. */
export function planExport(set: LoraSet, options: ExportOptions = {}): ExportPlan {
  const to = checkLayoutName(options.to ?? "hf");
  if (options.experts !== undefined && !EXPERT_EXPORTS.includes(options.experts)) {
    throw new UsageError(`experts must be ${EXPERT_EXPORTS.map((e) => JSON.stringify(e)).join(", ")}, got ${JSON.stringify(options.experts)}`);
  }
  if (to === "native" && options.experts !== undefined) throw new UsageError("--experts applies only to an export to HF (--to hf)");
  const from = set.source === "automodel" ? "native" : "hf";
  if (from === to) {
    throw new InputError(
      `${set.adapter.where}: is already ${to === "hf" ? "a PEFT adapter under the HF release's names" : "an Automodel adapter under its native names"}; nothing to export`,
    );
  }
  return to === "hf" ? planToHf(set, options.experts ?? "per-expert") : planToNative(set);
}

function keyOf(module: string, half: LoraHalf): string {
  return `${PEFT_PREFIX}${module}.${half}.weight`;
}

function finish(
  set: LoraSet,
  to: Layout,
  experts: ExpertExport | undefined,
  tensors: PlannedTensor[],
  json: JsonObject,
  counts: { modules: number; expertModules: number; dropped?: { modules: number; tensors: number } },
): ExportPlan {
  const ordered = referenceOrder(tensors);
  const seen = new Set<string>();
  for (const t of ordered) {
    if (seen.has(t.name)) throw new ConversionError(`${set.adapter.where}: two adapter tensors would both become ${JSON.stringify(t.name)}`);
    seen.add(t.name);
  }
  return {
    to,
    experts,
    tensors: ordered,
    configText: pythonJson(json),
    modules: counts.modules,
    expertModules: counts.expertModules,
    dropped: counts.dropped,
    replacements: set.replacements.length,
    bytes: ordered.reduce((n, t) => n + byteLength(t), 0),
  };
}

/** Expert modules grouped per layer and projection, each list in expert order and complete, or an error. */
function expertGroups(set: LoraSet, modules: readonly LoraModule[]): Map<string, { prefix: string; layer: string; proj: "up_proj" | "down_proj"; list: LoraModule[] }> {
  const groups = new Map<string, { prefix: string; layer: string; proj: "up_proj" | "down_proj"; list: LoraModule[] }>();
  for (const m of modules) {
    const e = m.expert!;
    if (e.proj === "gate_proj") {
      throw new InputError(`${set.adapter.weights.name}: tensor ${JSON.stringify(m.keys[0])}: is gate_proj LoRA, but this model's experts are not gated (relu2: up_proj and down_proj only)`);
    }
    const id = `${e.prefix}\u0000${e.layer}\u0000${e.proj}`;
    const g = groups.get(id) ?? { prefix: e.prefix, layer: e.layer, proj: e.proj, list: [] };
    groups.set(id, g);
    g.list.push(m);
  }
  const E = set.config.llm.nRoutedExperts ?? 0;
  for (const g of groups.values()) {
    g.list.sort((x, y) => x.expert!.index - y.expert!.index);
    if (g.list.length !== E || g.list.some((m, i) => m.expert!.index !== i)) {
      const have = new Set(g.list.map((m) => m.expert!.index));
      const missing = Array.from({ length: E }, (_, i) => i).filter((i) => !have.has(i));
      throw new InputError(
        `${set.adapter.weights.name}: ${expertsBase(g.prefix, g.layer)}.*.${g.proj} has LoRA for ${g.list.length} of ${E} experts ` +
          `(none for expert${missing.length === 1 ? "" : "s"} ${missing.slice(0, 5).join(", ")}${missing.length > 5 ? ", …" : ""}: no ${PEFT_PREFIX}${expertModuleKey(g.prefix, g.layer, missing[0]!, g.proj)}.lora_A.weight); ` +
          "Automodel's grouped form needs every expert",
      );
    }
  }
  return groups;
}

/**
 * A pattern that gives a set of modules a value: exact names for dense modules; for the routed experts of
 * one layer that all share it, one pattern for every expert (`…experts\.\d+\.(?:up_proj|down_proj)`), or
 * for the fused form the `module.parameter` keys (`…experts\.(?:up_proj|down_proj)`).
 */
function patternFor(entries: readonly { module: LoraModule; value: number }[], set: LoraSet, fused: boolean): [string, JsonValue][] {
  const out: [string, JsonValue][] = [];
  const layers = new Map<string, { base: string; fusedKey: string; value: number; projs: Set<string>; experts: Map<string, Set<number>> }>();
  for (const { module: m, value } of entries) {
    if (!m.expert) {
      out.push([escapeRegex(m.name), jsonNumber(value)]);
      continue;
    }
    const base = expertsBase(m.expert.prefix, m.expert.layer);
    const id = `${base}\u0000${value}`;
    const l = layers.get(id) ?? { base, fusedKey: fusedExperts(m.expert.layer), value, projs: new Set(), experts: new Map() };
    layers.set(id, l);
    l.projs.add(m.expert.proj);
    const ex = l.experts.get(m.expert.proj) ?? new Set();
    l.experts.set(m.expert.proj, ex);
    ex.add(m.expert.index);
  }
  const E = set.config.llm.nRoutedExperts ?? 0;
  for (const l of layers.values()) {
    const projs = [...l.projs].sort().reverse(); // up_proj before down_proj
    const every = projs.every((p) => l.experts.get(p)!.size === E);
    const projPattern = projs.length === 1 ? projs[0]! : `(?:${projs.join("|")})`;
    if (fused) out.push([`${escapeRegex(l.fusedKey)}\\.${projPattern}`, jsonNumber(l.value)]);
    else if (every) out.push([`${escapeRegex(l.base)}\\.\\d+\\.${projPattern}`, jsonNumber(l.value)]);
    else {
      for (const p of projs) for (const e of [...l.experts.get(p)!].sort((a, b) => a - b)) out.push([escapeRegex(`${l.base}.${e}.${p}`), jsonNumber(l.value)]);
    }
  }
  return out.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
}

/**
 * The fused experts of a layer as `target_parameters` and `rank_pattern` name them: from `layers.` on, a
 * suffix PEFT matches at a dot. The release's own code calls the language model `language_model.backbone.`
 * and transformers 5, whose fused experts this form is for, `model.`; the suffix is the same in both.
 */
function fusedExperts(layer: string): string {
  return expertsBase("", layer);
}

function strings(list: Iterable<string>): JsonValue[] {
  return [...new Set(list)].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

const moduleOf = (weight: string): string => weight.slice(0, Math.max(0, weight.lastIndexOf(".")));

/**
 * The modules_to_save entries renamed as modules are. A full name the rules rename is renamed. A suffix
 * (PEFT matches entries with `name.endswith(entry)`) stays when every saved module it matched still ends
 * with it once renamed (`lm_head`); otherwise (`embed_tokens`, now `…backbone.embeddings`) it becomes the
 * renamed names of the modules it matched, which the adapter holds weights of.
 */
function renamedModulesToSave(
  json: JsonObject,
  rename: (m: string) => string | undefined,
  saved: readonly { readonly from: string; readonly to: string }[],
): void {
  const v = json.get("modules_to_save");
  if (!Array.isArray(v)) return;
  const out: JsonValue[] = [];
  for (const m of v) {
    if (typeof m !== "string") {
      out.push(m);
      continue;
    }
    const full = rename(m);
    if (full !== undefined && full !== m) {
      out.push(full);
      continue;
    }
    const matched = saved.filter((s) => moduleOf(s.from).endsWith(m));
    if (matched.every((s) => moduleOf(s.to).endsWith(m))) out.push(m);
    else for (const s of matched) if (!out.includes(moduleOf(s.to))) out.push(moduleOf(s.to));
  }
  json.set("modules_to_save", out);
}

function setOrDelete(json: JsonObject, key: string, value: JsonValue | undefined): void {
  if (value === undefined) json.delete(key);
  else json.set(key, value);
}

function planToHf(set: LoraSet, experts: ExpertExport): ExportPlan {
  const settings = set.adapter.config.settings;
  const tensors: PlannedTensor[] = [];
  const dense = set.modules.filter((m) => !m.expert);
  const routed = set.modules.filter((m) => m.expert);
  const written: LoraModule[] = [...dense];
  for (const m of dense) for (const [half, ab] of halves) tensors.push(renamed(m[ab], keyOf(m.name, half)));
  let dropped: { modules: number; tensors: number } | undefined;
  const targetParameters: string[] = [];
  if (experts === "per-expert") {
    for (const m of routed) for (const [half, ab] of halves) tensors.push(renamed(m[ab], keyOf(m.name, half)));
    written.push(...routed);
  } else if (experts === "fused") {
    const mtp = routed.find((m) => /(^|\.)mtp\.$/.test(m.expert!.prefix));
    if (mtp) {
      throw new InputError(
        `${set.adapter.weights.name}: tensor ${JSON.stringify(mtp.keys[0])}: is LoRA on the routed experts of an MTP layer, which have no fused form ` +
          "(transformers 5 does not build the MTP layers); export with --experts per-expert",
      );
    }
    const groups = [...expertGroups(set, routed).values()];
    const layerKey = (g: { prefix: string; layer: string }): string => `${g.prefix}\u0000${g.layer}`;
    const projsOf = new Map<string, number>();
    for (const g of groups) projsOf.set(layerKey(g), (projsOf.get(layerKey(g)) ?? 0) + 1);
    for (const g of groups) {
      const nested = projsOf.get(layerKey(g))! > 1;
      for (const [half, ab] of halves) {
        const t = perExpertLoraToFused(g.prefix, g.layer, g.proj, half, g.list.map((m) => m[ab]), nested);
        tensors.push(renamed(t, PEFT_PREFIX + t.name));
      }
      targetParameters.push(`${fusedExperts(g.layer)}.${g.proj}`);
    }
    written.push(...routed);
  } else if (routed.length > 0) {
    dropped = { modules: routed.length, tensors: new Set(routed.flatMap((m) => m.keys)).size };
    if (dense.length === 0 && set.replacements.length === 0) {
      throw new InputError(
        `${set.adapter.weights.name}: every one of its ${routed.length} LoRA modules is a routed expert's, so --experts drop would leave an adapter with nothing in it, ` +
          "which PEFT cannot load; serve the merged model instead (lora merge)",
      );
    }
  }
  for (const r of set.replacements) tensors.push(renamed(inputTensor(r.key, r.info), PEFT_PREFIX + r.weight));

  // PEFT scales a module by alpha / r (or alpha / √r with rsLoRA), r and alpha from the patterns; the
  // patterns below make that each module's own scale.
  const rankEntries: { module: LoraModule; value: number }[] = [];
  const alphaEntries: { module: LoraModule; value: number }[] = [];
  const peftScale = (alpha: number, r: number): number => (settings.useRslora ? alpha / Math.sqrt(r) : alpha / r);
  const exported = experts === "drop" ? dense : written;
  for (const m of exported) {
    if (m.rank !== settings.r) rankEntries.push({ module: m, value: m.rank });
    if (peftScale(settings.loraAlpha, m.rank) !== m.scale) alphaEntries.push({ module: m, value: settings.useRslora ? m.scale * Math.sqrt(m.rank) : m.scale * m.rank });
  }
  const fused = experts === "fused";
  const json: JsonObject = new Map(set.adapter.config.json);
  const targetModules = exported.filter((m) => !(fused && m.expert)).map((m) => m.name);
  json.set("target_modules", strings(targetModules));
  setOrDelete(json, "target_parameters", fused && targetParameters.length > 0 ? targetParameters : undefined);
  const rankPattern = [...patternFor(rankEntries.filter((e) => !(fused && e.module.expert)), set, false), ...patternFor(rankEntries.filter((e) => fused && e.module.expert), set, true)];
  const alphaPattern = [...patternFor(alphaEntries.filter((e) => !(fused && e.module.expert)), set, false), ...patternFor(alphaEntries.filter((e) => fused && e.module.expert), set, true)];
  setOrDelete(json, "rank_pattern", rankPattern.length > 0 ? new Map(rankPattern) : undefined);
  setOrDelete(json, "alpha_pattern", alphaPattern.length > 0 ? new Map(alphaPattern) : undefined);
  if (json.get("rank_pattern") === undefined && set.adapter.config.json.has("rank_pattern")) json.set("rank_pattern", new Map());
  if (json.get("alpha_pattern") === undefined && set.adapter.config.json.has("alpha_pattern")) json.set("alpha_pattern", new Map());
  renamedModulesToSave(
    json,
    (m) => set.names.moduleToHf(m),
    set.replacements.map((r) => ({ from: r.key.slice(PEFT_PREFIX.length), to: r.weight })),
  );
  return finish(set, "hf", experts, tensors, json, {
    modules: exported.length,
    expertModules: exported.filter((m) => m.expert).length,
    ...(dropped ? { dropped } : {}),
  });
}

/** Automodel's v5-mode target parameters for NemotronH experts, as its adapter writes them. */
const AUTOMODEL_TARGET_PARAMETERS = ["mixer.experts.up_proj", "mixer.experts.down_proj"];

function planToNative(set: LoraSet): ExportPlan {
  const settings = set.adapter.config.settings;
  const file = set.adapter.weights.name;
  // Automodel scales every module by lora_alpha / its own rank and has no patterns or rsLoRA.
  for (const m of set.modules) {
    const automodel = settings.loraAlpha / m.rank;
    if (m.scale !== automodel) {
      throw new InputError(
        `${file}: tensor ${JSON.stringify(m.keys[0])}: PEFT scales module ${m.name} by ${m.scale} (alpha ${m.alpha}, rank ${m.rank}${settings.useRslora ? ", rsLoRA" : ""}), ` +
          `which Automodel cannot express: it scales every module by lora_alpha / its rank = ${automodel}`,
      );
    }
  }
  const tensors: PlannedTensor[] = [];
  const nativeModules: string[] = [];
  const name = (hf: string, key: string): string => {
    const native = set.names.moduleToNative(hf);
    if (native === undefined) throw new InputError(`${file}: tensor ${JSON.stringify(key)}: no rule names its module ${hf} in the native layout`);
    return native;
  };
  const dense = set.modules.filter((m) => !m.expert);
  for (const m of dense) {
    const native = name(m.name, m.keys[0]);
    nativeModules.push(native);
    for (const [half, ab] of halves) tensors.push(renamed(m[ab], keyOf(native, half)));
  }
  const routed = set.modules.filter((m) => m.expert);
  if (routed.length > 0 && set.expertForm === "per-expert" && set.configFrom === "adapter") {
    // Per-expert modules do not say how many experts a layer has: an adapter lacking the last ones would
    // pass as a smaller model's. The fused form folds the count into its shapes, but needs the base too.
    throw new InputError(
      `${file}: tensor ${JSON.stringify(routed[0]!.keys[0])}: is routed-expert LoRA per expert, which does not say how many experts each layer has, ` +
        "and Automodel's grouped form needs every one: give the base model (--base RELEASE) so the count comes from its config",
    );
  }
  for (const g of expertGroups(set, routed).values()) {
    const prefix = set.names.expertPrefixToNative(g.prefix, g.layer);
    if (prefix === undefined) throw new InputError(`${file}: no rule names ${expertsBase(g.prefix, g.layer)} in the native layout`);
    nativeModules.push(expertsBase(prefix, g.layer));
    const what = `${expertsBase(g.prefix, g.layer)}.*.${g.proj}`;
    const [aName, bName] = g.proj === "up_proj" ? (["lora_gate_and_up_A", "lora_gate_and_up_B"] as const) : (["lora_down_A", "lora_down_B"] as const);
    // Each expert's A [r, in] and B [out, r] transposed and stacked: [E, in, r] and [E, r, out].
    tensors.push(stackTransposed(PEFT_PREFIX + groupedLoraKey(prefix, g.layer, aName), g.list.map((m) => m.a), `${what} LoRA A`));
    tensors.push(stackTransposed(PEFT_PREFIX + groupedLoraKey(prefix, g.layer, bName), g.list.map((m) => m.b), `${what} LoRA B`));
  }
  const savedNative: { from: string; to: string }[] = [];
  for (const r of set.replacements) {
    const native = set.names.weightToNative(r.weight);
    if (native === undefined) throw new InputError(`${file}: tensor ${JSON.stringify(r.key)}: no rule names ${r.weight} in the native layout`);
    tensors.push(renamed(inputTensor(r.key, r.info), PEFT_PREFIX + native));
    savedNative.push({ from: r.key.slice(PEFT_PREFIX.length), to: native });
  }
  const json: JsonObject = new Map(set.adapter.config.json);
  json.set("target_modules", strings(nativeModules));
  setOrDelete(json, "target_parameters", routed.length > 0 ? AUTOMODEL_TARGET_PARAMETERS : undefined);
  json.delete("rank_pattern");
  json.delete("alpha_pattern");
  renamedModulesToSave(json, (m) => set.names.moduleToNative(m), savedNative);
  return finish(set, "native", undefined, tensors, json, { modules: set.modules.length, expertModules: routed.length });
}
