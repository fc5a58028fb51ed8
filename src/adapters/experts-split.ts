import { formatShape } from "../tensor/tensor.js";
import { transpose } from "../tensor/view.js";
import { expertWeightKey, parseExpertKey } from "./expert-keys.js";
import { type ExpertRules, gatedHalves, perExpert } from "./experts.js";
import { loraToParamWrapper, loraToPerExpert } from "./experts-lora.js";
import { type Diagnostics, type PlannedTensor, viewOf } from "./plan.js";

/** Native → HF for routed experts: each grouped tensor split back into per-expert weights. */

export interface SplitOptions {
  /** Prefix of the emitted per-expert keys ("backbone." or "mtp."). */
  readonly prefix: string;
  /** Emit expert LoRA per expert (PEFT v4) instead of the fused ParamWrapper form. */
  readonly v4Compatible: boolean;
}

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
  const k = parseExpertKey(fqn);
  if (k?.kind === "grouped-lora") {
    return options.v4Compatible ? loraToPerExpert(k.prefix, k.layer, t, k.lora, rules) : loraToParamWrapper(k.prefix, k.layer, t, k.lora, rules);
  }
  if (k?.kind !== "grouped") return undefined;
  const key = (e: number, proj: "gate_proj" | "up_proj" | "down_proj"): string => expertWeightKey(options.prefix, k.layer, e, proj);
  if (k.weight === "gate_and_up_projs") {
    const experts = perExpert(t, rules);
    const halves = rules.gated ? gatedHalves(t, rules) : undefined;
    const out: PlannedTensor[] = [];
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
  if (t.shape.length !== 3 || t.shape[1] !== rules.interDim) {
    diags.add(
      "grouped-shape-mismatch",
      `${t.pieces[0]?.src}: down_projs ${formatShape(t.shape)} does not have moe_intermediate_size ${rules.interDim} on axis 1; passed through unsplit, as the reference does`,
      t.pieces[0]?.src,
    );
    return undefined;
  }
  return perExpert(t, rules).map((w, e) => viewOf(t, key(e, "down_proj"), (v) => transpose(w(v), 0, 1)));
}
