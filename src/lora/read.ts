import type { LlmConfig, ModelConfig } from "../adapters/config.js";
import {
  type ExpertProj,
  type GroupedLora,
  type ParamWrapperPart,
  expertModuleKey,
  expertsBase,
  paramWrapperKey,
  parseExpertKey,
} from "../adapters/expert-keys.js";
import { fusedLoraPart, fusedLoraToPerExpert } from "../adapters/experts-lora.js";
import { type PlannedTensor, inputTensor } from "../adapters/plan.js";
import { detectLayout } from "../convert/layout.js";
import { ConversionError, FormatError, InputError } from "../errors.js";
import { isFloat } from "../tensor/dtype.js";
import { type TensorInfo, formatShape, sameShape } from "../tensor/tensor.js";
import { type AdapterFolder, PEFT_PREFIX } from "./files.js";
import { ModuleNames, rulesFor } from "./names.js";
import { peftModuleScale, savesModule, targetsModule, targetsParameter } from "./settings.js";

/**
 * An adapter read into one form whatever it came as: LoRA modules under their HF names (PEFT's prefix
 * stripped), each with its A [r, in] and B [out, r] in HF orientation as views of the adapter's tensors,
 * its own rank and the scale it merges with. Routed experts are one module per expert and projection.
 */
export interface LoraModule {
  /** HF module name, e.g. `language_model.backbone.layers.3.mixer.in_proj` or `…mixer.experts.5.up_proj`. */
  readonly name: string;
  readonly a: PlannedTensor;
  readonly b: PlannedTensor;
  readonly rank: number;
  readonly alpha: number;
  /** `alpha / rank`, or `alpha / √rank` for a PEFT adapter with `use_rslora`. */
  readonly scale: number;
  readonly expert?: { readonly prefix: string; readonly layer: string; readonly index: number; readonly proj: ExpertProj };
  /** The adapter keys its A and B come from (for messages). */
  readonly keys: readonly [string, string];
}

/** A full weight saved through `modules_to_save`: it replaces the base's. */
export interface Replacement {
  /** The HF weight it replaces. */
  readonly weight: string;
  readonly key: string;
  readonly info: TensorInfo;
}

/** How routed-expert LoRA came: Automodel's grouped tensors, PEFT v4's per-expert modules, PEFT's ParamWrapper. */
export type ExpertForm = "grouped" | "per-expert" | "fused";

export interface LoraSet {
  readonly adapter: AdapterFolder;
  /** Automodel's native names, or PEFT's on the HF release. */
  readonly source: "automodel" | "hf";
  readonly modules: readonly LoraModule[];
  readonly replacements: readonly Replacement[];
  readonly expertForm: ExpertForm | undefined;
  /** The base's config, or one read off the adapter's own tensors when no base was given. */
  readonly config: ModelConfig;
  /** Whether `config` is the base's or only what the adapter's own tensors show. */
  readonly configFrom: "base" | "adapter";
  readonly names: ModuleNames;
  readonly warnings: readonly string[];
}

/** What reading needs of the base model, when one is given: its tensors' headers and config. */
export interface BaseModel {
  readonly where: string;
  readonly config: ModelConfig;
  readonly headers: ReadonlyMap<string, TensorInfo>;
}

const TOP_LEVEL_OMNI = /^(language_model|vision_model|vision_projector|mlp1|sound_encoder|sound_projection)\./;

/** Where a model's modules live, by layout: a module anywhere else is no module of this model. */
const MODEL_PARTS: Readonly<Record<"omni" | "nemotron_h", Readonly<Record<"automodel" | "hf", RegExp>>>> = {
  omni: {
    automodel: /^(language_model|vision_model|vision_projector|sound_encoder|sound_projection)\./,
    hf: /^(language_model|vision_model|mlp1|sound_encoder|sound_projection)\./,
  },
  nemotron_h: { automodel: /^(model|mtp)\.|^lm_head$/, hf: /^(backbone|mtp)\.|^lm_head$/ },
};

const PART_NAMES: Readonly<Record<"omni" | "nemotron_h", Readonly<Record<"automodel" | "hf", string>>>> = {
  omni: {
    automodel: "language_model., vision_model., vision_projector., sound_encoder. and sound_projection.",
    hf: "language_model., vision_model., mlp1., sound_encoder. and sound_projection.",
  },
  nemotron_h: { automodel: "model., mtp. and lm_head", hf: "backbone., mtp. and lm_head" },
};
const MERGEABLE = new Set(["BF16", "F16", "F32"]);

interface Half {
  A?: string;
  B?: string;
}

/** Read an adapter's tensors (headers only) into LoRA modules under HF names, checked against the base if given. */
export function readLora(adapter: AdapterFolder, base?: BaseModel): LoraSet {
  const file = adapter.weights.name;
  const settings = adapter.config.settings;
  const infos = adapter.weights.tensors;
  const fail = (key: string, detail: string): never => {
    throw new FormatError(file, detail, key);
  };
  const info = (key: string): TensorInfo => infos.get(key)!;

  const stripped = new Map<string, string>();
  for (const key of infos.keys()) {
    if (!key.startsWith(PEFT_PREFIX)) fail(key, `does not start with ${JSON.stringify(PEFT_PREFIX)}, so no rule places it (PEFT and Automodel save every adapter key under that prefix)`);
    stripped.set(key, key.slice(PEFT_PREFIX.length));
  }
  const evidence = detectLayout(stripped.values());
  if (evidence.example.hf !== undefined && evidence.example.native !== undefined) {
    throw new FormatError(
      file,
      `mixes Automodel's native names (${PEFT_PREFIX}${evidence.example.native}) and HF names (${PEFT_PREFIX}${evidence.example.hf}); an adapter uses one or the other`,
    );
  }
  const source = (evidence.layout ?? (adapter.automodelConfig ? "native" : "hf")) === "native" ? "automodel" : "hf";

  // Sort every key into the form it has.
  const dense = new Map<string, Half>();
  const grouped = new Map<string, { prefix: string; layer: string; parts: Map<GroupedLora, string> }>();
  const perExpert = new Map<string, { prefix: string; layer: string; expert: number; proj: ExpertProj } & Half>();
  const fused = new Map<string, { prefix: string; layer: string; parts: Map<ParamWrapperPart, string> }>();
  const full: string[] = [];
  const loraDtype = (key: string): void => {
    const dtype = info(key).dtype;
    if (!MERGEABLE.has(dtype)) fail(key, `is ${dtype}; LoRA weights must be BF16, F16 or F32 (a quantized or integer adapter cannot be exported or merged)`);
  };
  for (const [key, k] of stripped) {
    const ek = parseExpertKey(k);
    if (ek?.kind === "grouped-lora" || ek?.kind === "expert-lora" || ek?.kind === "param-wrapper" || /\.lora_[AB]\.weight$/.test(k)) loraDtype(key);
    if (ek?.kind === "grouped-lora") {
      const id = `${ek.prefix}\u0000${ek.layer}`;
      const g = grouped.get(id) ?? { prefix: ek.prefix, layer: ek.layer, parts: new Map() };
      grouped.set(id, g);
      g.parts.set(ek.lora, key);
    } else if (ek?.kind === "expert-lora") {
      const module = expertModuleKey(ek.prefix, ek.layer, ek.expert, ek.proj);
      const m = perExpert.get(module) ?? { prefix: ek.prefix, layer: ek.layer, expert: ek.expert, proj: ek.proj };
      perExpert.set(module, m);
      m[ek.half === "lora_A" ? "A" : "B"] = key;
    } else if (ek?.kind === "param-wrapper") {
      const id = `${ek.prefix}\u0000${ek.layer}`;
      const g = fused.get(id) ?? { prefix: ek.prefix, layer: ek.layer, parts: new Map() };
      fused.set(id, g);
      g.parts.set(ek.part, key);
    } else if (/\.lora_[AB]\.weight$/.test(k)) {
      const module = k.slice(0, -".lora_A.weight".length);
      const m = dense.get(module) ?? {};
      dense.set(module, m);
      m[k.endsWith(".lora_A.weight") ? "A" : "B"] = key;
    } else if (/(^|\.)lora_magnitude/.test(k)) {
      fail(key, "is a DoRA magnitude vector: DoRA adapters are not supported (the magnitude rescales the merged weight; it is not a LoRA delta)");
    } else if (/(^|\.)lora_/.test(k)) {
      fail(key, "no rule places it: omni-ckpt knows LoRA lora_A/lora_B weights, Automodel's grouped expert LoRA and modules_to_save weights");
    } else full.push(key);
  }

  if (fused.size > 0 && !base) {
    const key = [...fused.values()][0]!.parts.values().next().value!;
    fail(key, "is fused ParamWrapper expert LoRA, which folds the experts into its rows: give the base model so their number and widths come from its config");
  }
  const config = base?.config ?? derivedConfig(stripped, infos, grouped, perExpert);
  const inModel = (key: string, module: string): void => {
    if (!MODEL_PARTS[config.kind][source].test(module)) {
      fail(key, `no rule places it: ${module} is no module of the ${config.kind === "omni" ? "Omni model" : "NemotronH model"}, whose ${source === "automodel" ? "native" : "HF"} names start with ${PART_NAMES[config.kind][source]}`);
    }
  };
  const names = new ModuleNames(rulesFor(config));
  const nExperts = config.llm.nRoutedExperts;
  const needExperts = (key: string): number => {
    if (nExperts === undefined) fail(key, `is routed-expert LoRA, but ${base ? `${base.where}'s config` : "the model"} has no routed experts (no n_routed_experts)`);
    return nExperts!;
  };
  const pair = (m: Half, what: string): [string, string] => {
    if (m.A === undefined) fail(m.B!, `has no matching lora_A (${what}): a LoRA pair needs both halves`);
    if (m.B === undefined) fail(m.A!, `has no matching lora_B (${what}): a LoRA pair needs both halves`);
    return [m.A!, m.B!];
  };
  const matrixRank = (a: string, b: string): number => {
    const ia = info(a);
    const ib = info(b);
    if (ia.shape.length !== 2) fail(a, `is ${formatShape(ia.shape)}; a LoRA A must be a matrix [r, in]`);
    if (ib.shape.length !== 2) fail(b, `is ${formatShape(ib.shape)}; a LoRA B must be a matrix [out, r]`);
    const r = ia.shape[0]!;
    if (ib.shape[1] !== r) fail(b, `LoRA B ${formatShape(ib.shape)} has rank ${ib.shape[1]}, but its A ${JSON.stringify(a)} ${formatShape(ia.shape)} has rank ${r}`);
    if (r === 0) fail(a, "has rank 0");
    return r;
  };
  /** Scale and rank check of a PEFT adapter's module (or `module.parameter` key), by PEFT's own rules. */
  const peftScale = (key: string, peftKey: string, rank: number, targeted: boolean): { alpha: number; scale: number } => {
    if (!targeted) {
      fail(key, `its module ${peftKey} is not among ${settings.file}'s ${/(^|\.)experts\.(up|down)_proj$/.test(peftKey) ? "target_parameters" : "target_modules"}, so PEFT would not load it`);
    }
    const p = peftModuleScale(settings, peftKey);
    if (p.rank !== rank) fail(key, `has rank ${rank}, but ${settings.file} gives ${peftKey} rank ${p.rank} (r or rank_pattern), so PEFT would refuse it`);
    return { alpha: p.alpha, scale: p.scale };
  };
  const automodelScale = (rank: number): { alpha: number; scale: number } => ({ alpha: settings.loraAlpha, scale: settings.loraAlpha / rank });

  const modules: LoraModule[] = [];
  for (const [module, m] of dense) {
    const [a, b] = pair(m, module);
    inModel(a, module);
    const rank = matrixRank(a, b);
    const name = source === "automodel" ? names.moduleToHf(module) : module;
    if (name === undefined) fail(a, `no rule names its module ${module} in the HF layout`);
    const s = source === "automodel" ? automodelScale(rank) : peftScale(a, name!, rank, targetsModule(settings, name!));
    modules.push({ name: name!, a: inputTensor(a, info(a)), b: inputTensor(b, info(b)), rank, ...s, keys: [a, b] });
  }

  for (const g of grouped.values()) {
    const E = needExperts(g.parts.values().next().value!);
    const halves: [GroupedLora, GroupedLora][] = [
      ["lora_gate_and_up_A", "lora_gate_and_up_B"],
      ["lora_down_A", "lora_down_B"],
    ];
    for (const [aName, bName] of halves) {
      const a = g.parts.get(aName);
      const b = g.parts.get(bName);
      if (a === undefined && b === undefined) continue;
      if (a === undefined) fail(b!, `has no matching ${aName}: a LoRA pair needs both halves`);
      if (b === undefined) fail(a!, `has no matching ${bName}: a LoRA pair needs both halves`);
      const ia = info(a!);
      const ib = info(b!);
      for (const [k, i] of [[a!, ia], [b!, ib]] as const) {
        if (i.shape.length !== 3) fail(k, `is ${formatShape(i.shape)}; grouped expert LoRA must be 3-d [E, …, …]`);
        if (i.shape[0] !== E) {
          fail(k, `${formatShape(i.shape)} holds ${i.shape[0]} experts, but ${base ? `${base.where}'s config has` : "the model has"} n_routed_experts ${E} (an adapter for a different model?)`);
        }
      }
      const rank = ia.shape[2]!;
      if (ib.shape[1] !== rank) fail(b!, `${formatShape(ib.shape)} has rank ${ib.shape[1]}, but ${JSON.stringify(a)} ${formatShape(ia.shape)} has rank ${rank}`);
      if (rank === 0) fail(a!, "has rank 0");
      const byModule = new Map<string, { expert: number; proj: ExpertProj; prefix: string; layer: string; A?: PlannedTensor; B?: PlannedTensor }>();
      for (const key of [a!, b!]) {
        let split: PlannedTensor[];
        try {
          split = names.rules.planSingleToHf(stripped.get(key)!, inputTensor(key, info(key)), { v4Compatible: true });
        } catch (e) {
          if (e instanceof ConversionError) throw new InputError(`${file}: ${e.message}`);
          throw e;
        }
        if (split.length !== E) fail(key, `was split into ${split.length} tensors, not one per expert (${E})`);
        for (const t of split) {
          const k = parseExpertKey(t.name);
          if (k?.kind !== "expert-lora") fail(key, `was split into ${t.name}, which is not a per-expert LoRA key`);
          const ek = k as Extract<typeof k, { kind: "expert-lora" }>;
          const module = expertModuleKey(ek.prefix, ek.layer, ek.expert, ek.proj);
          const entry = byModule.get(module) ?? { expert: ek.expert, proj: ek.proj, prefix: ek.prefix, layer: ek.layer };
          byModule.set(module, entry);
          entry[ek.half === "lora_A" ? "A" : "B"] = t;
        }
      }
      for (const [name, e] of byModule) {
        if (!e.A || !e.B) fail(a!, `was not split into whole pairs for ${name}`);
        modules.push({
          name,
          a: e.A!,
          b: e.B!,
          rank,
          ...automodelScale(rank),
          expert: { prefix: e.prefix, layer: e.layer, index: e.expert, proj: e.proj },
          keys: [a!, b!],
        });
      }
    }
  }

  for (const [name, m] of perExpert) {
    const [a, b] = pair(m, name);
    const E = needExperts(a);
    if (m.expert >= E) fail(a, `is LoRA for expert ${m.expert}, but the model has ${E} experts per layer (n_routed_experts)`);
    const rank = matrixRank(a, b);
    const s = peftScale(a, name, rank, targetsModule(settings, name));
    modules.push({
      name,
      a: inputTensor(a, info(a)),
      b: inputTensor(b, info(b)),
      rank,
      ...s,
      expert: { prefix: m.prefix, layer: m.layer, index: m.expert, proj: m.proj },
      keys: [a, b],
    });
  }

  for (const g of fused.values()) {
    const E = needExperts(g.parts.values().next().value!);
    const pairs: [ParamWrapperPart, ParamWrapperPart][] = [
      ["base_layer.lora_A.weight", "base_layer.lora_B.weight"],
      ["lora_A.weight", "lora_B.weight"],
    ];
    // PEFT wraps the experts once per targeted parameter: with both, down_proj's wrapper is the outer one
    // (`…experts.lora_A`) and up_proj's the inner (`…experts.base_layer.lora_A`); with one, its wrapper is
    // the only one and holds the unnested names, so those are up_proj's when only up_proj is targeted.
    const nested = [...g.parts.keys()].some((p) => p.startsWith("base_layer."));
    const targeted = (proj: ExpertProj): boolean => targetsParameter(settings, `${expertsBase(g.prefix, g.layer)}.${proj}`);
    const lone: ExpertProj | undefined = !nested && !targeted("down_proj") && targeted("up_proj") ? "up_proj" : undefined;
    for (const [aPart, bPart] of pairs) {
      const a = g.parts.get(aPart);
      const b = g.parts.get(bPart);
      if (a === undefined && b === undefined) continue;
      if (a === undefined) fail(b!, `has no matching ${paramWrapperKey(g.prefix, g.layer, aPart)}: a LoRA pair needs both halves`);
      if (b === undefined) fail(a!, `has no matching ${paramWrapperKey(g.prefix, g.layer, bPart)}: a LoRA pair needs both halves`);
      const proj = lone ?? fusedLoraPart(aPart).proj;
      const ia = info(a!);
      const ib = info(b!);
      if (ia.shape.length !== 2) fail(a!, `is ${formatShape(ia.shape)}; a ParamWrapper LoRA A must be a matrix [r·E, in]`);
      if (ib.shape.length !== 2) fail(b!, `is ${formatShape(ib.shape)}; a ParamWrapper LoRA B must be a matrix [out, r·E]`);
      const peftKey = `${expertsBase(g.prefix, g.layer)}.${proj}`;
      if (ia.shape[0]! % E !== 0 || ia.shape[0] === 0) fail(a!, `${formatShape(ia.shape)} cannot hold ${E} experts: ${ia.shape[0]} rows is not a positive multiple of ${E}`);
      const rank = ia.shape[0]! / E;
      if (ib.shape[1] !== rank * E) fail(b!, `${formatShape(ib.shape)} has ${ib.shape[1]} columns, but its A ${JSON.stringify(a)} ${formatShape(ia.shape)} has rank ${rank} for ${E} experts (${rank * E})`);
      const s = peftScale(a!, peftKey, rank, targetsParameter(settings, peftKey));
      const as = fusedLoraToPerExpert(g.prefix, g.layer, inputTensor(a!, ia), aPart, E, proj);
      const bs = fusedLoraToPerExpert(g.prefix, g.layer, inputTensor(b!, ib), bPart, E, proj);
      as.forEach((at, e) => {
        modules.push({
          name: expertModuleKey(g.prefix, g.layer, e, proj),
          a: at,
          b: bs[e]!,
          rank,
          ...s,
          expert: { prefix: g.prefix, layer: g.layer, index: e, proj },
          keys: [a!, b!],
        });
      });
    }
  }

  const replacements: Replacement[] = [];
  for (const key of full) {
    const k = stripped.get(key)!;
    const weight = source === "automodel" ? names.weightToHf(k) : k;
    const at = k.lastIndexOf(".");
    const module = at < 0 ? k : k.slice(0, at);
    inModel(key, module);
    if (!savesModule(settings, module)) {
      fail(key, `no rule places it: it is not LoRA, and ${settings.file} lists no modules_to_save entry for its module ${module}`);
    }
    if (weight === undefined) fail(key, "no rule names it in the HF layout");
    replacements.push({ weight: weight!, key, info: info(key) });
  }

  // One module, one adapter.
  const byName = new Map<string, LoraModule>();
  for (const m of modules) {
    const seen = byName.get(m.name);
    if (seen) fail(m.keys[0], `and ${JSON.stringify(seen.keys[0])} both adapt module ${m.name}`);
    byName.set(m.name, m);
  }
  const replaced = new Map<string, Replacement>();
  for (const r of replacements) {
    const seen = replaced.get(r.weight);
    if (seen) fail(r.key, `and ${JSON.stringify(seen.key)} both replace ${r.weight}`);
    replaced.set(r.weight, r);
    const module = r.weight.slice(0, r.weight.lastIndexOf("."));
    if (byName.has(module)) fail(r.key, `replaces a weight of module ${module}, which the adapter also puts LoRA on (${JSON.stringify(byName.get(module)!.keys[0])})`);
  }

  if (base) checkAgainstBase(base, modules, replacements, fail);

  modules.sort((x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : 0));
  const expertForm: ExpertForm | undefined = grouped.size > 0 ? "grouped" : perExpert.size > 0 ? "per-expert" : fused.size > 0 ? "fused" : undefined;
  const warnings = names.diagnostics.map((d) => `${d.message} (in naming an adapter module)`);
  return { adapter, source, modules, replacements, expertForm, config, configFrom: base ? "base" : "adapter", names, warnings };
}

/** Every module must adapt a weight the base has, of the shape the LoRA pair gives, in a float dtype. */
function checkAgainstBase(base: BaseModel, modules: readonly LoraModule[], replacements: readonly Replacement[], fail: (key: string, detail: string) => never): void {
  for (const m of modules) {
    const weight = `${m.name}.weight`;
    const w = base.headers.get(weight);
    if (!w) fail(m.keys[0], `its module ${m.name} has no weight in ${base.where} (${weight})`);
    const shape = [m.b.shape[0]!, m.a.shape[1]!];
    if (!sameShape(w!.shape, shape)) {
      const hint = m.expert && m.keys[0].endsWith(".lora_A.weight") && parseExpertKey(m.keys[0].slice(PEFT_PREFIX.length))?.kind === "param-wrapper"
        ? "; the older ParamWrapper layout that PEFT before 0.19.1 and the reference's to_hf write has in and out the other way round, and PEFT ≥ 0.19.1 refuses it too"
        : "";
      fail(m.keys[0], `gives ${weight} the shape ${formatShape(shape)}, but ${base.where} has ${formatShape(w!.shape)} (an adapter for a different model?)${hint}`);
    }
    if (!MERGEABLE.has(w!.dtype)) fail(m.keys[0], `adapts ${weight}, which ${base.where} holds as ${w!.dtype}; only BF16, F16 and F32 weights can take a LoRA delta`);
  }
  for (const r of replacements) {
    const w = base.headers.get(r.weight);
    if (!w) fail(r.key, `replaces ${r.weight}, which ${base.where} does not have`);
    if (!sameShape(w!.shape, r.info.shape)) fail(r.key, `is ${formatShape(r.info.shape)}, but the ${r.weight} it replaces is ${formatShape(w!.shape)} in ${base.where} (an adapter for a different model?)`);
    if (!isFloat(r.info.dtype) || !isFloat(w!.dtype)) fail(r.key, `is ${r.info.dtype} and replaces a ${w!.dtype} weight; only floating-point weights can be replaced`);
  }
}

/**
 * Without a base model, what the rules need to know comes from the adapter itself: Omni or bare NemotronH
 * by its names, and the expert count and width from the grouped or per-expert expert LoRA.
 */
function derivedConfig(
  stripped: ReadonlyMap<string, string>,
  infos: ReadonlyMap<string, TensorInfo>,
  grouped: ReadonlyMap<string, { parts: Map<GroupedLora, string> }>,
  perExpert: ReadonlyMap<string, { expert: number; proj: ExpertProj } & Half>,
): ModelConfig {
  const llm: { -readonly [K in keyof LlmConfig]: LlmConfig[K] } = { numHiddenLayers: 0 };
  const first = [...grouped.values()][0];
  if (first) {
    const key = first.parts.values().next().value!;
    llm.nRoutedExperts = infos.get(key)!.shape[0] ?? 0;
    // [E,H,r] [E,r,I] [E,I,r] [E,r,H]: the intermediate width is where it shows.
    const down = first.parts.get("lora_down_A");
    const upB = first.parts.get("lora_gate_and_up_B");
    llm.moeIntermediateSize = down !== undefined ? infos.get(down)!.shape[1]! : upB !== undefined ? infos.get(upB)!.shape[2]! : 1;
  } else if (perExpert.size > 0) {
    let experts = 0;
    let inter = 1;
    for (const m of perExpert.values()) {
      experts = Math.max(experts, m.expert + 1);
      if (m.proj === "down_proj" && m.A !== undefined) inter = infos.get(m.A)!.shape[1] ?? inter;
    }
    llm.nRoutedExperts = experts;
    llm.moeIntermediateSize = inter;
  }
  const omni = [...stripped.values()].some((k) => TOP_LEVEL_OMNI.test(k));
  return omni ? { kind: "omni", llm, llmKey: "llm_config" } : { kind: "nemotron_h", llm };
}
