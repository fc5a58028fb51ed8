/**
 * The one grammar of MoE expert key names. Every rule that looks at an expert key (merging, splitting,
 * LoRA, the consistency checks, layout detection) parses it here and decides from the parts what to do;
 * none of them matches key text itself.
 *
 *   <prefix>layers.<L>.mixer.experts.<e>.<proj>.weight            a per-expert weight (HF)
 *   <prefix>layers.<L>.mixer.experts.<e>.<proj>.lora_{A,B}.weight  per-expert LoRA (HF, PEFT v4)
 *   <prefix>layers.<L>.mixer.experts.{base_layer.}lora_{A,B}.weight  PEFT ParamWrapper LoRA (HF, fused)
 *   <prefix>layers.<L>.mixer.experts.{gate_and_up_projs,down_projs}  grouped weights (native)
 *   <prefix>layers.<L>.mixer.experts.lora_{gate_and_up,down}_{A,B}   grouped LoRA (native)
 *
 * `prefix` is whatever precedes `layers.` (`backbone.`, `model.`, `mtp.`, `base_model.model.model.`, …),
 * kept verbatim so a rule can rebuild the key it came from.
 */

export type ExpertProj = "gate_proj" | "up_proj" | "down_proj";
export type LoraHalf = "lora_A" | "lora_B";
export type GroupedWeight = "gate_and_up_projs" | "down_projs";
export type GroupedLora = "lora_gate_and_up_A" | "lora_gate_and_up_B" | "lora_down_A" | "lora_down_B";
export type ParamWrapperPart = "lora_A.weight" | "lora_B.weight" | "base_layer.lora_A.weight" | "base_layer.lora_B.weight";

interface Common {
  /** Everything before `layers.`, verbatim. */
  readonly prefix: string;
  /** The layer number as written. */
  readonly layer: string;
}

export type ExpertKey =
  | (Common & {
      readonly kind: "expert-weight";
      readonly expert: number;
      readonly proj: ExpertProj;
      /**
       * Text after `.weight`: empty for a real weight. The reference matches expert weights without
       * anchoring the end (`re.match`), so a rule that follows it bit for bit needs to see what follows.
       */
      readonly rest: string;
    })
  | (Common & { readonly kind: "expert-lora"; readonly expert: number; readonly proj: ExpertProj; readonly half: LoraHalf })
  | (Common & { readonly kind: "param-wrapper"; readonly part: ParamWrapperPart })
  | (Common & { readonly kind: "grouped"; readonly weight: GroupedWeight })
  | (Common & { readonly kind: "grouped-lora"; readonly lora: GroupedLora });

export const EXPERTS_SEGMENT = "mixer.experts";

/** `<prefix>layers.<L>.mixer.experts.` and the tail after it. */
const HEAD = /^(.*?)layers\.(\d+)\.mixer\.experts\.(.+)$/s;
const EXPERT_WEIGHT = /^(\d+)\.(gate_proj|up_proj|down_proj)\.weight(.*)$/s;
const EXPERT_LORA = /^(\d+)\.(gate_proj|up_proj|down_proj)\.(lora_[AB])\.weight$/;
const PARAM_WRAPPER = /^((?:base_layer\.)?lora_[AB]\.weight)$/;
const GROUPED = /^(gate_and_up_projs|down_projs)$/;
const GROUPED_LORA = /^(lora_gate_and_up_[AB]|lora_down_[AB])$/;

/**
 * The parts of an expert key, or undefined for any other key. The first `layers.<L>.mixer.experts.` in
 * the key counts, so a prefix never contains one.
 */
export function parseExpertKey(key: string): ExpertKey | undefined {
  const head = HEAD.exec(key);
  if (!head) return undefined;
  const [, prefix, layer, tail] = head as unknown as [string, string, string, string];
  let m: RegExpExecArray | null;
  if ((m = EXPERT_LORA.exec(tail))) return { prefix, layer, kind: "expert-lora", expert: Number(m[1]), proj: m[2] as ExpertProj, half: m[3] as LoraHalf };
  if ((m = EXPERT_WEIGHT.exec(tail))) return { prefix, layer, kind: "expert-weight", expert: Number(m[1]), proj: m[2] as ExpertProj, rest: m[3]! };
  if ((m = PARAM_WRAPPER.exec(tail))) return { prefix, layer, kind: "param-wrapper", part: m[1] as ParamWrapperPart };
  if ((m = GROUPED.exec(tail))) return { prefix, layer, kind: "grouped", weight: m[1] as GroupedWeight };
  if ((m = GROUPED_LORA.exec(tail))) return { prefix, layer, kind: "grouped-lora", lora: m[1] as GroupedLora };
  return undefined;
}

/** `<prefix>layers.<L>.mixer.experts` */
export function expertsBase(prefix: string, layer: string): string {
  return `${prefix}layers.${layer}.${EXPERTS_SEGMENT}`;
}

/** `<prefix>layers.<L>.mixer.experts.<e>.<proj>.weight` */
export function expertWeightKey(prefix: string, layer: string, expert: number, proj: ExpertProj): string {
  return `${expertsBase(prefix, layer)}.${expert}.${proj}.weight`;
}

/** `<prefix>layers.<L>.mixer.experts.<e>.<proj>.lora_{A,B}.weight` */
export function expertLoraKey(prefix: string, layer: string, expert: number, proj: ExpertProj, half: LoraHalf): string {
  return `${expertsBase(prefix, layer)}.${expert}.${proj}.${half}.weight`;
}

/** `<prefix>layers.<L>.mixer.experts.<e>.<proj>`: the module of one expert's projection (a PEFT target). */
export function expertModuleKey(prefix: string, layer: string, expert: number, proj: ExpertProj): string {
  return `${expertsBase(prefix, layer)}.${expert}.${proj}`;
}

/** `<prefix>layers.<L>.mixer.experts.<lora>`: a grouped native LoRA tensor. */
export function groupedLoraKey(prefix: string, layer: string, lora: GroupedLora): string {
  return `${expertsBase(prefix, layer)}.${lora}`;
}

/** `<prefix>layers.<L>.mixer.experts.{base_layer.}lora_{A,B}.weight`: PEFT ParamWrapper LoRA. */
export function paramWrapperKey(prefix: string, layer: string, part: ParamWrapperPart): string {
  return `${expertsBase(prefix, layer)}.${part}`;
}

/** Which layout a key's expert form belongs to: per-expert and ParamWrapper are HF, grouped is native. */
export function expertKeyLayout(k: ExpertKey): "hf" | "native" {
  return k.kind === "grouped" || k.kind === "grouped-lora" ? "native" : "hf";
}
