import type { ModelConfig } from "../adapters/config.js";
import { EXPERTS_SEGMENT, expertsBase } from "../adapters/expert-keys.js";
import { NemotronOmniStateDictAdapter } from "../adapters/nemotron-omni.js";
import { NemotronV3StateDictAdapter, type ToHfOptions } from "../adapters/nemotron-v3.js";
import type { Diagnostic, Plan, PlannedTensor } from "../adapters/plan.js";
import { inputTensor } from "../adapters/plan.js";
import type { DType } from "../tensor/dtype.js";
import type { TensorInfo } from "../tensor/tensor.js";

/**
 * LoRA module names on both sides, from the conversion rules themselves (SPEC §1–§2): a module `M` is named
 * as its weight `M.weight` is. The reference adapter does not see through PEFT's `base_model.model.`
 * prefix; callers strip it first and put it back. Routed experts are named through the expert-key grammar.
 */

interface Rules {
  planSingleToHf(fqn: string, t: PlannedTensor, options?: ToHfOptions): PlannedTensor[];
  planFromHf(headers: ReadonlyMap<string, TensorInfo>): Plan;
}

/** The Omni adapter for an Omni config, the NemotronH one for a bare language model. */
export function rulesFor(config: ModelConfig, dtype?: DType): Rules {
  const options = dtype === undefined ? {} : { dtype };
  return config.kind === "omni" ? new NemotronOmniStateDictAdapter(config, options) : new NemotronV3StateDictAdapter(config.llm, options);
}

const PROBE: TensorInfo = { dtype: "BF16", shape: [1, 1] };

export class ModuleNames {
  /** Warnings the rules gave while naming (an HF module no rule knows, passed through). */
  readonly diagnostics: Diagnostic[] = [];

  constructor(readonly rules: Rules) {}

  /** The HF name of a native weight (or any parameter), or undefined when the rules give it none or several. */
  weightToHf(native: string): string | undefined {
    const out = this.rules.planSingleToHf(native, inputTensor(native, PROBE));
    return out.length === 1 ? out[0]!.name : undefined;
  }

  /** The native name of an HF weight, or undefined when the rules drop it (a layer past `num_hidden_layers`). */
  weightToNative(hf: string): string | undefined {
    const plan = this.rules.planFromHf(new Map([[hf, PROBE]]));
    this.diagnostics.push(...plan.diagnostics.filter((d) => d.code === "unknown-key"));
    return plan.tensors.length === 1 ? plan.tensors[0]!.name : undefined;
  }

  /** Native module → HF module, as `M.weight` is renamed. */
  moduleToHf(native: string): string | undefined {
    return stripWeight(this.weightToHf(`${native}.weight`));
  }

  /** HF module → native module, as `M.weight` is renamed. */
  moduleToNative(hf: string): string | undefined {
    return stripWeight(this.weightToNative(`${hf}.weight`));
  }

  /**
   * The native prefix of an HF expert key prefix (`language_model.backbone.` → `language_model.model.`): the
   * experts module `<prefix>layers.<L>.mixer.experts` renamed as a module.
   */
  expertPrefixToNative(prefix: string, layer: string): string | undefined {
    const tail = `layers.${layer}.${EXPERTS_SEGMENT}`;
    const native = this.moduleToNative(expertsBase(prefix, layer));
    return native?.endsWith(tail) ? native.slice(0, -tail.length) : undefined;
  }
}

function stripWeight(name: string | undefined): string | undefined {
  return name?.endsWith(".weight") ? name.slice(0, -".weight".length) : undefined;
}
