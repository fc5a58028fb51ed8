import { ConversionError, UsageError } from "../errors.js";
import { type DType, isFloat } from "../tensor/dtype.js";
import { formatShape, sameShape } from "../tensor/tensor.js";
import { type View, contiguous, permute, reshape, select, slice, transpose } from "../tensor/view.js";
import { type Diagnostics, type Part, type PlanDict, type PlannedTensor, assemble, renamed, viewOf } from "./plan.js";

/**
 * The MoE expert rules shared by the adapters (the reference's MoESplitExpertsStateDictMixin): per-expert
 * HF weights ⇄ grouped native tensors, expert-parallel ranges, the availability check, and LoRA experts
 * in per-expert and PEFT ParamWrapper forms. Everything works on plan dicts, so nothing here reads bytes.
 */

export type ExpertActivation = "relu2" | "swiglu" | "swigluoai" | "quick_geglu" | "geglu";

const GATED: ReadonlySet<string> = new Set(["swiglu", "swigluoai", "quick_geglu", "geglu"]);

export function isGatedActivation(activation: string): boolean {
  return GATED.has(activation);
}

export interface ExpertRules {
  readonly nExperts: number;
  /** `moe_intermediate_size`: where a gated grouped tensor splits into gate and up. */
  readonly interDim: number;
  readonly gated: boolean;
  /** dtype of merged expert weights (the reference's adapter `dtype`). */
  readonly dtype: DType;
}

export interface ExpertParallel {
  readonly rank: number;
  readonly size: number;
}

const SEGMENT = "mixer.experts";
const SEGMENT_RE = "mixer\\.experts";

/** Experts `[start, end)` that an EP rank holds: the first `E mod size` ranks take one extra (SPEC §3). */
export function expertRange(nExperts: number, ep?: ExpertParallel): [number, number] {
  if (!ep) return [0, nExperts];
  const { rank, size } = ep;
  if (!Number.isInteger(size) || size < 1) throw new UsageError(`expert-parallel size must be ≥ 1, got ${size}`);
  if (!Number.isInteger(rank) || rank < 0 || rank >= size) {
    throw new UsageError(`expert-parallel rank must be in [0, ${size}), got ${rank}`);
  }
  const per = Math.floor(nExperts / size);
  const rem = nExperts % size;
  const start = rank < rem ? rank * (per + 1) : rank * per + rem;
  return [start, start + (rank < rem ? per + 1 : per)];
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

type Proj = "gate_proj" | "up_proj" | "down_proj";

interface LayerGroup {
  nativeKey: string;
  which: "gate_and_up" | "down";
  layer: string;
  experts: Map<number, { gate_proj?: PlannedTensor; up_proj?: PlannedTensor; down_proj?: PlannedTensor }>;
}

/**
 * Before merging: every expert this rank needs must be present for every projection of every MoE layer
 * present, or the conversion stops naming how many are missing and the first few (the reference check).
 * `display` turns an internal key back into the name the user's file uses.
 */
export function validateExpertAvailability(
  dict: PlanDict,
  rules: ExpertRules,
  ep: ExpertParallel | undefined,
  display: (key: string) => string,
): void {
  const [start, end] = expertRange(rules.nExperts, ep);
  const required: number[] = [];
  for (let e = start; e < end; e++) required.push(e);

  let keyPrefix = "";
  for (const key of dict.keys()) {
    if (key.includes(`.${SEGMENT}.`) && key.includes("layers.")) {
      keyPrefix = key.slice(0, key.indexOf("layers."));
      break;
    }
  }
  const prefixes = ["model.language_model.", "model.", "language_model.", ""];
  if (keyPrefix && !prefixes.includes(keyPrefix)) prefixes.unshift(keyPrefix);
  const pattern = new RegExp(
    `^(?<prefix>${prefixes.map(escapeRe).join("|")})layers\\.(\\d+)\\.${SEGMENT_RE}\\.\\d+\\.(gate_proj|up_proj|down_proj)\\.weight`,
  );
  const layers = new Map<number, Set<string>>();
  for (const key of dict.keys()) {
    const m = pattern.exec(key);
    if (!m) continue;
    const layer = Number(m[2]);
    const set = layers.get(layer) ?? new Set<string>();
    set.add(m.groups?.["prefix"] ?? "");
    layers.set(layer, set);
  }
  if (layers.size === 0) return;

  const projections: Proj[] = rules.gated ? ["gate_proj", "up_proj", "down_proj"] : ["up_proj", "down_proj"];
  const missing: string[] = [];
  for (const [layer, layerPrefixes] of layers) {
    for (const prefix of layerPrefixes) {
      for (const e of required) {
        for (const proj of projections) {
          const key = `${prefix}layers.${layer}.${SEGMENT}.${e}.${proj}.weight`;
          if (!dict.has(key)) missing.push(display(key));
        }
      }
    }
  }
  if (missing.length > 0) {
    const total = required.length * layers.size * projections.length;
    const rankInfo = ep ? ` (rank ${ep.rank} of ${ep.size}, experts ${start}–${end - 1})` : "";
    throw new ConversionError(
      `expert weights missing from checkpoint${rankInfo}: ${missing.length}/${total} required weights not found ` +
        `in MoE layers [${[...layers.keys()].sort((a, b) => a - b).join(", ")}]; first missing: ${missing.slice(0, 5).join(", ")}` +
        (missing.length > 5 ? ` (and ${missing.length - 5} more)` : ""),
    );
  }
}

/** Insert without silently replacing: two inputs that would become one output are an error. */
export function put(dict: PlanDict, key: string, t: PlannedTensor): void {
  const previous = dict.get(key);
  if (previous) {
    const a = previous.pieces[0]?.src ?? previous.name;
    const b = t.pieces[0]?.src ?? t.name;
    throw new ConversionError(`tensors ${JSON.stringify(a)} and ${JSON.stringify(b)} would both become ${JSON.stringify(key)}`);
  }
  dict.set(key, { ...t, name: key });
}

function requireMatrix(t: PlannedTensor, what: string): void {
  if (t.shape.length !== 2) {
    throw new ConversionError(`${JSON.stringify(t.pieces[0]?.src ?? t.name)}: ${what} must be a matrix, found shape ${formatShape(t.shape)}`);
  }
}

/** All tensors of a group must agree in shape and dtype before they can share one grouped tensor. */
function requireUniform(list: readonly PlannedTensor[], what: string): PlannedTensor {
  const first = list[0]!;
  requireMatrix(first, what);
  for (const t of list) {
    if (t.dtype !== first.dtype || !sameShape(t.shape, first.shape)) {
      throw new ConversionError(
        `${what}: ${JSON.stringify(t.pieces[0]?.src)} is ${t.dtype}${formatShape(t.shape)} but ` +
          `${JSON.stringify(first.pieces[0]?.src)} is ${first.dtype}${formatShape(first.shape)}; experts of one layer must match`,
      );
    }
  }
  return first;
}

function targetDType(source: DType, target: DType): DType {
  return isFloat(source) ? target : source;
}

/**
 * Per-expert HF weights → grouped native tensors (the reference's `_from_hf_w_merged_experts`), followed by
 * the LoRA recombinations. Keys keep whatever prefix they carry; `_scale_inv` tensors are dropped.
 */
export function mergeExperts(
  dict: PlanDict,
  rules: ExpertRules,
  ep: ExpertParallel | undefined,
  diags: Diagnostics,
  display: (key: string) => string,
): PlanDict {
  validateExpertAvailability(dict, rules, ep, display);
  const [start, end] = expertRange(rules.nExperts, ep);
  const pattern = new RegExp(
    `^(?<prefix>(?:model\\.)?(?:language_model\\.)?)layers\\.(\\d+)\\.${SEGMENT_RE}\\.(\\d+)\\.(gate_proj|up_proj|down_proj)\\.weight`,
  );
  const out: PlanDict = new Map();
  const groups = new Map<string, LayerGroup>();

  for (const [key, t] of dict) {
    if (key.includes(`.${SEGMENT}.`) && key.endsWith(".weight")) {
      const m = pattern.exec(key);
      if (!m) {
        put(out, key, t);
        continue;
      }
      const prefix = m.groups?.["prefix"] ?? "";
      const layer = m[2]!;
      const expert = Number(m[3]);
      const which = m[4] as Proj;
      if (expert < start || expert >= end) {
        if (expert >= rules.nExperts) {
          diags.add("expert-out-of-range", `${display(key)}: expert ${expert} is outside the config's ${rules.nExperts} experts; dropped`, display(key));
        }
        continue;
      }
      if (which === "gate_proj" && !rules.gated) {
        diags.add("dropped", `${display(key)}: gate_proj is unused by non-gated (relu2) experts; dropped`, display(key));
        continue;
      }
      const kind = which === "down_proj" ? "down" : "gate_and_up";
      const nativeKey = `${prefix}layers.${layer}.${SEGMENT}.${kind === "down" ? "down_projs" : "gate_and_up_projs"}`;
      const group = groups.get(nativeKey) ?? { nativeKey, which: kind, layer, experts: new Map() };
      groups.set(nativeKey, group);
      const slot = group.experts.get(expert) ?? {};
      if (slot[which]) {
        throw new ConversionError(`${display(key)}: expert ${expert} of layer ${layer} appears twice (also as ${JSON.stringify(slot[which]!.pieces[0]?.src)})`);
      }
      slot[which] = t;
      group.experts.set(expert, slot);
      continue;
    }
    if (key.endsWith("_scale_inv")) {
      diags.add("dropped", `${display(key)}: FP8 scale dropped`, display(key));
      continue;
    }
    put(out, key, t);
  }

  for (const group of groups.values()) put(out, group.nativeKey, buildGroup(group, rules, end - start, display));

  const recombined = recombineLoraExperts(out, rules, diags);
  return paramWrapperToNative(recombined, rules);
}

function buildGroup(group: LayerGroup, rules: ExpertRules, expected: number, display: (key: string) => string): PlannedTensor {
  const ids = [...group.experts.keys()].sort((a, b) => a - b);
  if (ids.length !== expected) {
    throw new ConversionError(`${display(group.nativeKey)}: ${ids.length} of ${expected} experts present`);
  }
  const dtype = (t: PlannedTensor): DType => targetDType(t.dtype, rules.dtype);
  const experts = ids.map((e) => group.experts.get(e)!);
  if (group.which === "down") {
    const list = experts.map((x) => x.down_proj!);
    return stackTransposed(group.nativeKey, list, `layer ${group.layer} down_proj experts`, dtype);
  }
  if (!rules.gated) {
    const list = experts.map((x) => x.up_proj!);
    return stackTransposed(group.nativeKey, list, `layer ${group.layer} up_proj experts`, dtype);
  }
  const gates = experts.map((x) => x.gate_proj!);
  const ups = experts.map((x) => x.up_proj!);
  return stackGated(group.nativeKey, gates, ups, `layer ${group.layer} gate_proj/up_proj experts`, dtype);
}

/** Stack `list[k]ᵀ` along a new first axis, in `dtype(first)` (LoRA tensors keep theirs). */
function stackTransposed(
  name: string,
  list: readonly PlannedTensor[],
  what: string,
  dtype: (first: PlannedTensor) => DType = (t) => t.dtype,
): PlannedTensor {
  const first = requireUniform(list, what);
  const [a, b] = first.shape as [number, number];
  const out = contiguous([list.length, b, a]);
  return assemble(
    name,
    dtype(first),
    out.shape,
    list.map((t, n) => ({ from: t, take: (v) => transpose(v, 0, 1), into: select(out, 0, n) })),
  );
}

/** Gated experts: row k is [gates[k]ᵀ | ups[k]ᵀ] along the last axis (weights and LoRA B alike). */
function stackGated(
  name: string,
  gates: readonly PlannedTensor[],
  ups: readonly PlannedTensor[],
  what: string,
  dtype: (first: PlannedTensor) => DType = (t) => t.dtype,
): PlannedTensor {
  const first = requireUniform([...gates, ...ups], what);
  const [i, h] = first.shape as [number, number];
  const out = contiguous([gates.length, h, 2 * i]);
  const parts: Part[] = [];
  gates.forEach((gate, n) => {
    const row = select(out, 0, n);
    parts.push({ from: gate, take: (v) => transpose(v, 0, 1), into: slice(row, 1, 0, i) });
    parts.push({ from: ups[n]!, take: (v) => transpose(v, 0, 1), into: slice(row, 1, i, 2 * i) });
  });
  return assemble(name, dtype(first), out.shape, parts);
}

/**
 * Per-expert PEFT LoRA keys (`…experts.{e}.{proj}.lora_{A,B}.weight`) → grouped native LoRA tensors (the
 * reference's `_recombine_lora_expert_keys`). A group without every expert stays per-expert.
 */
export function recombineLoraExperts(dict: PlanDict, rules: ExpertRules, diags: Diagnostics): PlanDict {
  const pattern = new RegExp(
    `^(?<prefix>.*)layers\\.(?<layer>\\d+)\\.${SEGMENT_RE}\\.(?<expert>\\d+)\\.(?<proj>gate_proj|up_proj|down_proj)\\.(?<lora>lora_[AB])\\.weight`,
  );
  type Group = { prefix: string; layer: string; proj: Proj; lora: "lora_A" | "lora_B"; experts: Map<number, PlannedTensor> };
  const groups = new Map<string, Group>();
  const rest: PlanDict = new Map();
  for (const [key, t] of dict) {
    const m = pattern.exec(key);
    if (!m?.groups) {
      rest.set(key, t);
      continue;
    }
    const g = m.groups as { prefix: string; layer: string; expert: string; proj: Proj; lora: "lora_A" | "lora_B" };
    const id = JSON.stringify([g.prefix, g.layer, g.proj, g.lora]);
    const group = groups.get(id) ?? { prefix: g.prefix, layer: g.layer, proj: g.proj, lora: g.lora, experts: new Map() };
    groups.set(id, group);
    const e = Number(g.expert);
    if (group.experts.has(e)) throw new ConversionError(`${JSON.stringify(t.pieces[0]?.src)}: LoRA for expert ${e} of layer ${g.layer} appears twice`);
    group.experts.set(e, t);
  }
  if (groups.size === 0) return dict;

  const find = (g: Group, proj: Proj): Group | undefined => groups.get(JSON.stringify([g.prefix, g.layer, proj, g.lora]));
  const complete = (g: Group | undefined): g is Group => g !== undefined && g.experts.size === rules.nExperts;
  const sorted = (g: Group): PlannedTensor[] => [...g.experts.entries()].sort((a, b) => a[0] - b[0]).map((x) => x[1]);
  const keepPerExpert = (g: Group): void => {
    diags.add("lora-incomplete", `LoRA ${g.proj}.${g.lora} of layer ${g.layer} has ${g.experts.size} of ${rules.nExperts} experts; kept per expert`);
    for (const [e, t] of g.experts) put(rest, `${g.prefix}layers.${g.layer}.${SEGMENT}.${e}.${g.proj}.${g.lora}.weight`, t);
  };
  const dropped = (g: Group, why: string): void => {
    for (const t of g.experts.values()) diags.add("dropped", `${t.pieces[0]?.src}: ${why}`, t.pieces[0]?.src);
  };
  const base = (g: Group): string => `${g.prefix}layers.${g.layer}.${SEGMENT}`;

  for (const g of groups.values()) {
    if (!complete(g)) {
      keepPerExpert(g);
      continue;
    }
    const what = `layer ${g.layer} LoRA ${g.proj}.${g.lora}`;
    if (g.proj === "down_proj") {
      put(rest, `${base(g)}.${g.lora === "lora_A" ? "lora_down_A" : "lora_down_B"}`, stackTransposed("", sorted(g), what));
      continue;
    }
    const name = `${base(g)}.${g.lora === "lora_A" ? "lora_gate_and_up_A" : "lora_gate_and_up_B"}`;
    if (!rules.gated) {
      // Non-gated experts have one input projection, up_proj; a gate_proj LoRA counts only on its own.
      if (g.proj === "gate_proj" && complete(find(g, "up_proj"))) {
        dropped(g, "gate_proj LoRA is unused when an up_proj LoRA is present for non-gated experts");
        continue;
      }
      put(rest, name, stackTransposed("", sorted(g), what));
      continue;
    }
    if (g.proj === "up_proj") {
      // Gated: A is shared by gate and up (the gate copy is kept); B is gate ⊕ up, built from the gate group.
      if (g.lora === "lora_A") dropped(g, "duplicate of the gate_proj LoRA A");
      else if (!complete(find(g, "gate_proj"))) dropped(g, "up_proj LoRA B without a complete gate_proj partner is dropped, as the reference does");
      continue;
    }
    if (g.lora === "lora_A") {
      put(rest, name, stackTransposed("", sorted(g), what));
      continue;
    }
    const up = find(g, "up_proj");
    if (!complete(up)) {
      // The reference keeps the gate half per expert; an incomplete up half is kept by its own group.
      keepPerExpert(g);
      continue;
    }
    put(rest, name, stackGated(name, sorted(g), sorted(up), what));
  }
  return rest;
}

/**
 * PEFT ParamWrapper LoRA (`…experts.lora_{A,B}.weight`, `…experts.base_layer.lora_{A,B}.weight`, the
 * expert axis folded into the rank axis) → grouped native LoRA tensors (`_convert_paramwrapper_to_native`).
 */
export function paramWrapperToNative(dict: PlanDict, rules: ExpertRules): PlanDict {
  const pattern = new RegExp(`^(?<prefix>.*)layers\\.(?<layer>\\d+)\\.${SEGMENT_RE}\\.(?<pw>(?:base_layer\\.)?lora_[AB]\\.weight)$`);
  const out: PlanDict = new Map();
  const created: [string, PlannedTensor][] = [];
  const E = rules.nExperts;
  for (const [key, t] of dict) {
    const m = pattern.exec(key);
    if (!m?.groups) {
      out.set(key, t);
      continue;
    }
    const { prefix, layer, pw } = m.groups as { prefix: string; layer: string; pw: string };
    requireMatrix(t, "a ParamWrapper LoRA weight");
    const [rows, cols] = t.shape as [number, number];
    const foldedAxis = pw.endsWith("lora_A.weight") ? rows : cols;
    if (foldedAxis % E !== 0) {
      throw new ConversionError(
        `${JSON.stringify(t.pieces[0]?.src)}: ParamWrapper LoRA ${formatShape(t.shape)} cannot hold ${E} experts (${foldedAxis} is not a multiple of ${E})`,
      );
    }
    const r = foldedAxis / E;
    const base = `${prefix}layers.${layer}.${SEGMENT}`;
    switch (pw) {
      case "lora_A.weight": // (r·E, H) → (E, r, H)
        created.push([`${base}.lora_down_B`, viewOf(t, "", (v) => reshape(v, [E, r, cols]))]);
        break;
      case "lora_B.weight": // (I, r·E) → (I, r, E) → (E, I, r)
        created.push([`${base}.lora_down_A`, viewOf(t, "", (v) => permute(reshape(v, [rows, r, E]), [2, 0, 1]))]);
        break;
      case "base_layer.lora_A.weight": // (r·E, I) → (E, r, I)
        created.push([`${base}.lora_gate_and_up_B`, viewOf(t, "", (v) => reshape(v, [E, r, cols]))]);
        break;
      default: // base_layer.lora_B.weight: (H, r·E) → (H, r, E) → (E, H, r)
        created.push([`${base}.lora_gate_and_up_A`, viewOf(t, "", (v) => permute(reshape(v, [rows, r, E]), [2, 0, 1]))]);
    }
  }
  if (created.length === 0) return dict;
  for (const [k, t] of created) put(out, k, t);
  return out;
}

export interface SplitOptions {
  /** Prefix of the emitted per-expert keys ("backbone." or "mtp."). */
  readonly prefix: string;
  /** Emit expert LoRA per expert (PEFT v4) instead of the fused ParamWrapper form. */
  readonly v4Compatible: boolean;
}

const LORA_SUFFIXES = ["lora_gate_and_up_A", "lora_gate_and_up_B", "lora_down_A", "lora_down_B"] as const;

/**
 * One grouped native tensor → its HF tensors (`_convert_single_merged_expert_to_hf_split_experts`), or
 * undefined when the key is not a grouped expert tensor and ordinary renaming applies.
 */
export function splitExpertTensor(
  fqn: string,
  t: PlannedTensor,
  rules: ExpertRules,
  options: SplitOptions,
  diags: Diagnostics,
): PlannedTensor[] | undefined {
  const layerOf = (): string => /layers\.(\d+)/.exec(fqn)?.[1] ?? "";
  if (fqn.includes(`.${SEGMENT}.gate_and_up_projs`) && fqn.endsWith(".gate_and_up_projs")) {
    const layer = layerOf();
    const experts = perExpert(fqn, t, rules);
    const halves = rules.gated ? gatedHalves(t, rules) : undefined;
    const out: PlannedTensor[] = [];
    const key = (e: number, proj: string): string => `${options.prefix}layers.${layer}.${SEGMENT}.${e}.${proj}.weight`;
    experts.forEach((w, e) => {
      if (!halves) {
        out.push(viewOf(t, key(e, "up_proj"), (v) => transpose(w(v), 0, 1)));
        return;
      }
      out.push(viewOf(t, key(e, "gate_proj"), (v) => halves.gate(w(v))));
      out.push(viewOf(t, key(e, "up_proj"), (v) => halves.up(w(v))));
    });
    return out;
  }
  if (fqn.includes(`.${SEGMENT}.down_projs`) && fqn.endsWith(".down_projs")) {
    if (t.shape.length !== 3 || t.shape[1] !== rules.interDim) {
      diags.add(
        "grouped-shape-mismatch",
        `${t.pieces[0]?.src}: down_projs ${formatShape(t.shape)} does not have moe_intermediate_size ${rules.interDim} on axis 1; passed through unsplit, as the reference does`,
        t.pieces[0]?.src,
      );
      return undefined;
    }
    const layer = layerOf();
    return perExpert(fqn, t, rules).map((w, e) =>
      viewOf(t, `${options.prefix}layers.${layer}.${SEGMENT}.${e}.down_proj.weight`, (v) => transpose(w(v), 0, 1)),
    );
  }
  for (const suffix of LORA_SUFFIXES) {
    if (fqn.includes(`.${SEGMENT}.${suffix}`) && fqn.endsWith(`.${suffix}`)) {
      return options.v4Compatible ? loraToPerExpert(fqn, t, suffix, rules) : loraToParamWrapper(fqn, t, suffix, rules);
    }
  }
  return undefined;
}

/** Views selecting each expert of a grouped tensor; the first axis must be exactly the expert count. */
function perExpert(fqn: string, t: PlannedTensor, rules: ExpertRules): ((v: View) => View)[] {
  if (t.shape.length !== 3) {
    throw new ConversionError(`${JSON.stringify(t.pieces[0]?.src ?? fqn)}: grouped expert tensor must be 3-d, found ${formatShape(t.shape)}`);
  }
  if (t.shape[0] !== rules.nExperts) {
    throw new ConversionError(
      `${JSON.stringify(t.pieces[0]?.src ?? fqn)}: holds ${t.shape[0]} experts on axis 0 but the config has ${rules.nExperts}` +
        (t.shape[0]! < rules.nExperts ? " (an expert-parallel slice cannot be converted to HF on its own)" : ""),
    );
  }
  return Array.from({ length: rules.nExperts }, (_, e) => (v) => select(v, 0, e));
}

function loraToParamWrapper(fqn: string, t: PlannedTensor, suffix: (typeof LORA_SUFFIXES)[number], rules: ExpertRules): PlannedTensor[] {
  const m = /^(.*)layers\.(\d+)\./.exec(fqn);
  if (!m) return [t];
  const base = `${m[1]}layers.${m[2]}.${SEGMENT}`;
  if (t.shape.length !== 3) {
    throw new ConversionError(`${JSON.stringify(t.pieces[0]?.src ?? fqn)}: grouped LoRA tensor must be 3-d, found ${formatShape(t.shape)}`);
  }
  // The fold puts experts in the rank axis; an expert-parallel slice would read back as other experts.
  perExpert(fqn, t, rules);
  const [a, b, c] = t.shape as [number, number, number];
  switch (suffix) {
    case "lora_gate_and_up_B": // (E, r, I) → (E·r, I)
      return [viewOf(t, `${base}.base_layer.lora_A.weight`, (v) => reshape(v, [a * b, c]))];
    case "lora_down_B": // (E, r, H) → (E·r, H)
      return [viewOf(t, `${base}.lora_A.weight`, (v) => reshape(v, [a * b, c]))];
    case "lora_gate_and_up_A": // (E, H, r) → (H, r, E) → (H, r·E)
      return [assemble(`${base}.base_layer.lora_B.weight`, t.dtype, [b, c * a], [{ from: t, take: (v) => permute(v, [1, 2, 0]), into: contiguous([b, c, a]) }])];
    default: // lora_down_A: (E, I, r) → (I, r, E) → (I, r·E)
      return [assemble(`${base}.lora_B.weight`, t.dtype, [b, c * a], [{ from: t, take: (v) => permute(v, [1, 2, 0]), into: contiguous([b, c, a]) }])];
  }
}

/**
 * The gate and up halves of a gated grouped tensor's per-expert matrices (2 × moe_intermediate_size columns,
 * gate first), each transposed to HF's order. Any other width is refused: sliced, it would cut a wrong half.
 */
function gatedHalves(t: PlannedTensor, rules: ExpertRules): { gate: (w: View) => View; up: (w: View) => View } {
  const width = t.shape[2]!;
  if (width !== 2 * rules.interDim) {
    throw new ConversionError(`${JSON.stringify(t.pieces[0]?.src)}: gated experts need 2 × moe_intermediate_size = ${2 * rules.interDim} columns, found ${width}`);
  }
  return {
    gate: (w) => transpose(slice(w, 1, 0, rules.interDim), 0, 1),
    up: (w) => transpose(slice(w, 1, rules.interDim, width), 0, 1),
  };
}

function loraToPerExpert(
  fqn: string,
  t: PlannedTensor,
  suffix: (typeof LORA_SUFFIXES)[number],
  rules: ExpertRules,
): PlannedTensor[] | undefined {
  const m = /^(.*)layers\.(\d+)\./.exec(fqn);
  if (!m) return undefined;
  const experts = perExpert(fqn, t, rules);
  const halves = rules.gated && suffix === "lora_gate_and_up_B" ? gatedHalves(t, rules) : undefined;
  const out: PlannedTensor[] = [];
  const key = (e: number, proj: string, lora: string): string => `${m[1]}layers.${m[2]}.${SEGMENT}.${e}.${proj}.${lora}.weight`;
  experts.forEach((w, e) => {
    const whole = (v: View) => transpose(w(v), 0, 1);
    switch (suffix) {
      case "lora_gate_and_up_A":
        if (rules.gated) out.push(viewOf(t, key(e, "gate_proj", "lora_A"), whole));
        out.push(viewOf(t, key(e, "up_proj", "lora_A"), whole));
        break;
      case "lora_gate_and_up_B":
        if (halves) {
          out.push(viewOf(t, key(e, "gate_proj", "lora_B"), (v) => halves.gate(w(v))));
          out.push(viewOf(t, key(e, "up_proj", "lora_B"), (v) => halves.up(w(v))));
        } else out.push(viewOf(t, key(e, "up_proj", "lora_B"), whole));
        break;
      case "lora_down_A":
        out.push(viewOf(t, key(e, "down_proj", "lora_A"), whole));
        break;
      default:
        out.push(viewOf(t, key(e, "down_proj", "lora_B"), whole));
    }
  });
  return out;
}

export function renameAll(list: readonly PlannedTensor[], f: (name: string) => string): PlannedTensor[] {
  return list.map((t) => renamed(t, f(t.name)));
}
