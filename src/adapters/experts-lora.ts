import { ConversionError } from "../errors.js";
import { formatShape } from "../tensor/tensor.js";
import { type View, contiguous, permute, reshape, select, slice, transpose } from "../tensor/view.js";
import { type ExpertProj, type GroupedLora, type LoraHalf, type ParamWrapperPart, expertLoraKey, expertsBase, paramWrapperKey, parseExpertKey } from "./expert-keys.js";
import { type ExpertRules, gatedHalves, perExpert, put, requireMatrix, requireUniform, stackGated, stackTransposed } from "./experts.js";
import { type Diagnostics, type PlanDict, type PlannedTensor, assemble, viewOf } from "./plan.js";

/**
 * LoRA on routed experts, in the three forms it comes in: Automodel's grouped native tensors
 * (`lora_gate_and_up_A` [E,H,r], `lora_gate_and_up_B` [E,r,I], `lora_down_A` [E,I,r], `lora_down_B` [E,r,H]),
 * PEFT's per-expert modules (`…experts.{e}.{proj}.lora_{A,B}.weight`), and PEFT's ParamWrapper, which folds
 * the expert axis into the rank axis (`…experts.lora_{A,B}.weight`, `…experts.base_layer.lora_{A,B}.weight`).
 */

/**
 * Per-expert PEFT LoRA keys → grouped native LoRA tensors (the reference's `_recombine_lora_expert_keys`).
 * A group without every expert stays per-expert.
 */
export function recombineLoraExperts(dict: PlanDict, rules: ExpertRules, diags: Diagnostics): PlanDict {
  type Group = { prefix: string; layer: string; proj: ExpertProj; lora: LoraHalf; experts: Map<number, PlannedTensor> };
  const groups = new Map<string, Group>();
  const rest: PlanDict = new Map();
  for (const [key, t] of dict) {
    const k = parseExpertKey(key);
    if (k?.kind !== "expert-lora") {
      rest.set(key, t);
      continue;
    }
    const id = JSON.stringify([k.prefix, k.layer, k.proj, k.half]);
    const group = groups.get(id) ?? { prefix: k.prefix, layer: k.layer, proj: k.proj, lora: k.half, experts: new Map() };
    groups.set(id, group);
    if (group.experts.has(k.expert)) throw new ConversionError(`${JSON.stringify(t.pieces[0]?.src)}: LoRA for expert ${k.expert} of layer ${k.layer} appears twice`);
    group.experts.set(k.expert, t);
  }
  if (groups.size === 0) return dict;

  const find = (g: Group, proj: ExpertProj): Group | undefined => groups.get(JSON.stringify([g.prefix, g.layer, proj, g.lora]));
  const complete = (g: Group | undefined): g is Group => g !== undefined && g.experts.size === rules.nExperts;
  const sorted = (g: Group): PlannedTensor[] => [...g.experts.entries()].sort((a, b) => a[0] - b[0]).map((x) => x[1]);
  const keepPerExpert = (g: Group): void => {
    diags.add("lora-incomplete", `LoRA ${g.proj}.${g.lora} of layer ${g.layer} has ${g.experts.size} of ${rules.nExperts} experts; kept per expert`);
    for (const [e, t] of g.experts) put(rest, expertLoraKey(g.prefix, g.layer, e, g.proj, g.lora), t);
  };
  const dropped = (g: Group, why: string): void => {
    for (const t of g.experts.values()) diags.add("dropped", `${t.pieces[0]?.src}: ${why}`, t.pieces[0]?.src);
  };
  const base = (g: Group): string => expertsBase(g.prefix, g.layer);

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

/** PEFT ParamWrapper LoRA → grouped native LoRA tensors (`_convert_paramwrapper_to_native`). */
export function paramWrapperToNative(dict: PlanDict, rules: ExpertRules): PlanDict {
  const out: PlanDict = new Map();
  const created: [string, PlannedTensor][] = [];
  const E = rules.nExperts;
  for (const [key, t] of dict) {
    const k = parseExpertKey(key);
    if (k?.kind !== "param-wrapper") {
      out.set(key, t);
      continue;
    }
    requireMatrix(t, "a ParamWrapper LoRA weight");
    const [rows, cols] = t.shape as [number, number];
    const foldedAxis = k.part.endsWith("lora_A.weight") ? rows : cols;
    if (foldedAxis % E !== 0) {
      throw new ConversionError(
        `${JSON.stringify(t.pieces[0]?.src)}: ParamWrapper LoRA ${formatShape(t.shape)} cannot hold ${E} experts (${foldedAxis} is not a multiple of ${E})`,
      );
    }
    const r = foldedAxis / E;
    const base = expertsBase(k.prefix, k.layer);
    switch (k.part) {
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

/** A grouped native LoRA tensor → PEFT's ParamWrapper form (the reference's default `to_hf`). */
export function loraToParamWrapper(prefix: string, layer: string, t: PlannedTensor, suffix: GroupedLora, rules: ExpertRules): PlannedTensor[] {
  const base = expertsBase(prefix, layer);
  if (t.shape.length !== 3) {
    throw new ConversionError(`${JSON.stringify(t.pieces[0]?.src ?? t.name)}: grouped LoRA tensor must be 3-d, found ${formatShape(t.shape)}`);
  }
  // The fold puts experts in the rank axis; an expert-parallel slice would read back as other experts.
  perExpert(t, rules);
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

/** A grouped native LoRA tensor → PEFT v4's per-expert modules (`to_hf(..., v4_compatible=True)`). */
export function loraToPerExpert(prefix: string, layer: string, t: PlannedTensor, suffix: GroupedLora, rules: ExpertRules): PlannedTensor[] {
  const experts = perExpert(t, rules);
  const halves = rules.gated && suffix === "lora_gate_and_up_B" ? gatedHalves(t, rules) : undefined;
  const out: PlannedTensor[] = [];
  const key = (e: number, proj: ExpertProj, half: LoraHalf): string => expertLoraKey(prefix, layer, e, proj, half);
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

/*
 * PEFT ≥ 0.19.1's ParamWrapper layout (SPEC §8), the one PEFT loads onto transformers 5's NemotronH, whose
 * experts are fused 3-D parameters `…experts.up_proj` (E, I, H) and `…experts.down_proj` (E, H, I). It is
 * not the layout above that the reference's `to_hf` writes (SPEC §2 step 7), which PEFT ≥ 0.19 refuses:
 * here down_proj is the outer wrapper (`…experts.lora_{A,B}.weight`), up_proj the inner one
 * (`…experts.base_layer.lora_{A,B}.weight`), each `lora_A` is (E·r, in) with row e·r + j holding row j of
 * expert e's A, and each `lora_B` is (out, r·E) with column j·E + e holding column j of expert e's B.
 */

/** The projection a fused ParamWrapper LoRA tensor belongs to, and which half it is. */
export function fusedLoraPart(part: ParamWrapperPart): { proj: "up_proj" | "down_proj"; half: LoraHalf } {
  return {
    proj: part.startsWith("base_layer.") ? "up_proj" : "down_proj",
    half: part.endsWith("lora_A.weight") ? "lora_A" : "lora_B",
  };
}

/**
 * A fused ParamWrapper LoRA tensor (SPEC §8) → each expert's matrix as PEFT v4's per-expert module holds it
 * (`lora_A` [r, in], `lora_B` [out, r]), named `…experts.{e}.{proj}.lora_{A,B}.weight`: views, no copy.
 */
export function fusedLoraToPerExpert(
  prefix: string,
  layer: string,
  t: PlannedTensor,
  part: ParamWrapperPart,
  nExperts: number,
  /** The projection, when the layer's one wrapper is up_proj's (see perExpertLoraToFused). */
  proj: "up_proj" | "down_proj" = fusedLoraPart(part).proj,
): PlannedTensor[] {
  requireMatrix(t, "a ParamWrapper LoRA weight");
  const [rows, cols] = t.shape as [number, number];
  const { half } = fusedLoraPart(part);
  const folded = half === "lora_A" ? rows : cols;
  if (folded % nExperts !== 0 || folded === 0) {
    throw new ConversionError(
      `${JSON.stringify(t.pieces[0]?.src ?? t.name)}: ParamWrapper LoRA ${formatShape(t.shape)} cannot hold ${nExperts} experts (${folded} is not a positive multiple of ${nExperts})`,
    );
  }
  const r = folded / nExperts;
  return Array.from({ length: nExperts }, (_, e) =>
    half === "lora_A"
      ? viewOf(t, expertLoraKey(prefix, layer, e, proj, half), (v) => select(reshape(v, [nExperts, r, cols]), 0, e))
      : viewOf(t, expertLoraKey(prefix, layer, e, proj, half), (v) => select(reshape(v, [rows, r, nExperts]), 2, e)),
  );
}

/** One projection's per-expert LoRA matrices, in expert order → its fused ParamWrapper tensor (SPEC §8). */
export function perExpertLoraToFused(
  prefix: string,
  layer: string,
  proj: "up_proj" | "down_proj",
  half: LoraHalf,
  experts: readonly PlannedTensor[],
  /**
   * Whether up_proj's wrapper is nested in down_proj's (both projections adapted): PEFT wraps the experts
   * once per targeted parameter, down_proj's outermost, and a lone wrapper's LoRA has the unnested names.
   */
  nested = true,
): PlannedTensor {
  const first = requireUniform(experts, `layer ${layer} LoRA ${proj}.${half}`);
  const E = experts.length;
  const part: ParamWrapperPart = `${proj === "up_proj" && nested ? "base_layer." : ""}${half}.weight` as ParamWrapperPart;
  const name = paramWrapperKey(prefix, layer, part);
  if (half === "lora_A") {
    const [r, cols] = first.shape as [number, number];
    const out = contiguous([E * r, cols]);
    return assemble(name, first.dtype, out.shape, experts.map((t, e) => ({ from: t, into: slice(out, 0, e * r, (e + 1) * r) })));
  }
  const [rows, r] = first.shape as [number, number];
  const out = contiguous([rows, r, E]);
  return assemble(name, first.dtype, [rows, r * E], experts.map((t, e) => ({ from: t, into: select(out, 2, e) })));
}
