import { ConversionError } from "../errors.js";
import type { DType } from "../tensor/dtype.js";
import { type ExpertProj, expertWeightKey, expertsBase, parseExpertKey } from "./expert-keys.js";
import {
  type ExpertParallel,
  type ExpertRules,
  expertRange,
  put,
  stackGated,
  stackTransposed,
  targetDType,
} from "./experts.js";
import { paramWrapperToNative, recombineLoraExperts } from "./experts-lora.js";
import type { Diagnostics, PlanDict, PlannedTensor } from "./plan.js";

/**
 * HF → native for routed experts: per-expert weights stacked into the grouped tensors of each MoE layer
 * (the reference's `_from_hf_w_merged_experts`), after checking that every expert an EP rank needs is
 * there (`_validate_expert_availability`).
 */

/** The prefixes under which the reference merges expert weights; any other prefix passes through as is. */
const MERGE_PREFIXES: ReadonlySet<string> = new Set(["", "model.", "language_model.", "model.language_model."]);

/** The reference's validation looks under these, and under the prefix of the first expert key it meets. */
const VALIDATE_PREFIXES = ["model.language_model.", "model.", "language_model.", ""];

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

  let detected: string | undefined;
  for (const key of dict.keys()) {
    detected = parseExpertKey(key)?.prefix;
    if (detected !== undefined) break;
  }
  const prefixes = new Set(VALIDATE_PREFIXES);
  if (detected) prefixes.add(detected);
  const projections: ExpertProj[] = rules.gated ? ["gate_proj", "up_proj", "down_proj"] : ["up_proj", "down_proj"];
  const layers = new Map<number, Set<string>>();
  let present = 0;
  for (const key of dict.keys()) {
    const k = parseExpertKey(key);
    // Like the reference's pattern, which does not anchor the end: `….weight` followed by anything counts.
    if (k?.kind !== "expert-weight" || !prefixes.has(k.prefix)) continue;
    const layer = Number(k.layer);
    const set = layers.get(layer) ?? new Set<string>();
    set.add(k.prefix);
    layers.set(layer, set);
    // Present as the search below looks keys up: the layer number as a number spells it (`04` is not 4).
    if (k.expert >= start && k.expert < end && projections.includes(k.proj) && key === expertWeightKey(k.prefix, String(layer), k.expert, k.proj)) present++;
  }
  if (layers.size === 0) return;

  // Counted, not listed: a config may claim any number of experts, and the list would be that long. The
  // missing are counted over every prefix a layer has, the total over layers (the reference's figures).
  let combos = 0;
  for (const p of layers.values()) combos += p.size;
  const missingCount = (end - start) * combos * projections.length - present;
  if (missingCount <= 0) return;
  const total = (end - start) * layers.size * projections.length;
  const missing: string[] = [];
  // The first few, in the reference's order. Bounded: a layer's run of present experts is no longer than
  // the checkpoint's tensor count, so five missing come within that many steps.
  search: for (const [layer, layerPrefixes] of layers) {
    for (const prefix of layerPrefixes) {
      for (let e = start; e < end; e++) {
        for (const proj of projections) {
          const key = expertWeightKey(prefix, String(layer), e, proj);
          if (!dict.has(key)) missing.push(display(key));
          if (missing.length === 5) break search;
        }
      }
    }
  }
  const rankInfo = ep ? ` (rank ${ep.rank} of ${ep.size}, experts ${start}–${end - 1})` : "";
  throw new ConversionError(
    `expert weights missing from checkpoint${rankInfo}: ${missingCount}/${total} required weights not found ` +
      `in MoE layers [${[...layers.keys()].sort((a, b) => a - b).join(", ")}]; first missing: ${missing.join(", ")}` +
      (missingCount > 5 ? ` (and ${missingCount - 5} more)` : ""),
  );
}

/**
 * Per-expert HF weights → grouped native tensors, followed by the LoRA recombinations. Keys keep whatever
 * prefix they carry; `_scale_inv` tensors are dropped, as the reference drops them.
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
  const out: PlanDict = new Map();
  const groups = new Map<string, LayerGroup>();

  for (const [key, t] of dict) {
    if (key.includes(".mixer.experts.") && key.endsWith(".weight")) {
      const k = parseExpertKey(key);
      if (k?.kind !== "expert-weight" || !MERGE_PREFIXES.has(k.prefix)) {
        put(out, key, t);
        continue;
      }
      const { layer, expert, proj } = k;
      if (expert < start || expert >= end) {
        if (expert >= rules.nExperts) {
          diags.add("expert-out-of-range", `${display(key)}: expert ${expert} is outside the config's ${rules.nExperts} experts; dropped`, display(key));
        }
        continue;
      }
      if (proj === "gate_proj" && !rules.gated) {
        diags.add("dropped", `${display(key)}: gate_proj is unused by non-gated (relu2) experts; dropped`, display(key));
        continue;
      }
      const kind = proj === "down_proj" ? "down" : "gate_and_up";
      const nativeKey = `${expertsBase(k.prefix, layer)}.${kind === "down" ? "down_projs" : "gate_and_up_projs"}`;
      const group = groups.get(nativeKey) ?? { nativeKey, which: kind, layer, experts: new Map() };
      groups.set(nativeKey, group);
      const slot = group.experts.get(expert) ?? {};
      if (slot[proj]) {
        throw new ConversionError(`${display(key)}: expert ${expert} of layer ${layer} appears twice (also as ${JSON.stringify(slot[proj]!.pieces[0]?.src)})`);
      }
      slot[proj] = t;
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
