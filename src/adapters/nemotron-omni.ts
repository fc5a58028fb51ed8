import { type LlmConfig, type ModelConfig, parseModelConfig } from "./config.js";
import { PlannedStateDictAdapter } from "./execute.js";
import { compileKeyRegex } from "./key-regex.js";
import { put } from "./experts.js";
import { type AdapterOptions, type FromHfOptions, NemotronV3StateDictAdapter, type ToHfOptions } from "./nemotron-v3.js";
import { Diagnostics, type HeaderMap, type Plan, type PlanDict, type PlannedTensor, inputTensor, renamed } from "./plan.js";

/** The vision projector is an `nn.Sequential` in HF (`mlp1.{0,1,3}`) and named modules natively. */
const VISION_PROJECTOR_HF_TO_NATIVE: ReadonlyMap<string, string> = new Map([
  ["mlp1.0.weight", "vision_projector.norm.weight"],
  ["mlp1.1.weight", "vision_projector.linear1.weight"],
  ["mlp1.3.weight", "vision_projector.linear2.weight"],
]);
const VISION_PROJECTOR_NATIVE_TO_HF: ReadonlyMap<string, string> = new Map(
  [...VISION_PROJECTOR_HF_TO_NATIVE].map(([hf, native]) => [native, hf]),
);

const LM = "language_model.";
const SOUND_HF = "sound_encoder.encoder.";
const SOUND_NATIVE = "sound_encoder.";

function isModelConfig(c: unknown): c is ModelConfig {
  return typeof c === "object" && c !== null && "llm" in c && "kind" in c;
}

/**
 * Nemotron-3-Nano-Omni: routes the vision encoder, vision projector, sound encoder and sound projection
 * itself and hands `language_model.*` to a NemotronV3 adapter, like the reference NemotronOmniStateDictAdapter.
 */
export class NemotronOmniStateDictAdapter extends PlannedStateDictAdapter<FromHfOptions, ToHfOptions> {
  readonly llm: NemotronV3StateDictAdapter;

  /** `config` is the model's `config.json` (with `llm_config`) or an already parsed ModelConfig. */
  constructor(config: ModelConfig | Record<string, unknown>, options: AdapterOptions = {}) {
    super();
    const parsed = isModelConfig(config) ? config : parseModelConfig(config);
    this.llm = new NemotronV3StateDictAdapter(parsed.llm, options);
  }

  get llmConfig(): LlmConfig {
    return this.llm.config;
  }

  planFromHf(headers: HeaderMap, options: FromHfOptions = {}): Plan {
    const diags = new Diagnostics(this.llm.logger);
    const result: PlanDict = new Map();
    const llm: PlanDict = new Map();
    for (const [key, info] of headers) {
      const t = inputTensor(key, info);
      if (key.startsWith("vision_model.")) put(result, key, t);
      else if (key.startsWith("mlp1.")) {
        const native = VISION_PROJECTOR_HF_TO_NATIVE.get(key);
        if (native === undefined) diags.add("unknown-key", `unknown vision projector key ${key}; kept as is`, key);
        put(result, native ?? key, t);
      } else if (key.startsWith(SOUND_HF)) put(result, SOUND_NATIVE + key.slice(SOUND_HF.length), t);
      else if (key.startsWith("sound_projection.")) put(result, key, t);
      else if (key.startsWith(LM)) llm.set(key.slice(LM.length), t);
      else {
        diags.add("unknown-key", `unknown key ${key}; kept as is`, key);
        put(result, key, t);
      }
    }
    const converted = this.llm.planFromHfDict(llm, options, diags, (k) => LM + k);
    for (const [k, t] of converted) put(result, LM + k, t);
    return { tensors: [...result.values()], diagnostics: diags.list };
  }

  planToHf(headers: HeaderMap, options: ToHfOptions = {}): Plan {
    const diags = new Diagnostics(this.llm.logger);
    const exclude = options.excludeKeyRegex === undefined ? undefined : compileKeyRegex(options.excludeKeyRegex);
    const result: PlanDict = new Map();
    const llm: PlanDict = new Map();
    for (const [fqn, info] of headers) {
      if (exclude?.test(fqn)) continue;
      const t = inputTensor(fqn, info);
      if (fqn.startsWith(LM)) llm.set(fqn.slice(LM.length), t);
      else put(result, nonLlmToHf(fqn), t);
    }
    const converted = this.llm.planToHfDict(llm, options, diags);
    for (const [k, t] of converted) put(result, LM + k, t);
    return { tensors: [...result.values()], diagnostics: diags.list };
  }

  /**
   * One native tensor → its HF tensors. As in the reference, the exclude regex here is tested on the HF
   * names produced (with `language_model.` for the language model), not on the native name.
   */
  planSingleToHf(fqn: string, t: PlannedTensor, options: ToHfOptions = {}): PlannedTensor[] {
    const diags = new Diagnostics(this.llm.logger);
    const result = fqn.startsWith(LM)
      ? this.llm.planSingleToHf(fqn.slice(LM.length), t, options, diags).map((r) => renamed(r, LM + r.name))
      : [renamed(t, nonLlmToHf(fqn))];
    if (options.excludeKeyRegex === undefined) return result;
    const re = compileKeyRegex(options.excludeKeyRegex);
    return result.filter((r) => !re.test(r.name));
  }
}

function nonLlmToHf(fqn: string): string {
  if (fqn.startsWith("vision_projector.")) return VISION_PROJECTOR_NATIVE_TO_HF.get(fqn) ?? fqn;
  if (fqn.startsWith(SOUND_NATIVE)) return SOUND_HF + fqn.slice(SOUND_NATIVE.length);
  return fqn;
}
