import { UsageError } from "../errors.js";
import { type DType, isDType, isFloat, parseDTypeAlias } from "../tensor/dtype.js";
import { type LlmConfig, parseLlmConfig } from "./config.js";
import { PlannedStateDictAdapter } from "./execute.js";
import { compileKeyRegex } from "./key-regex.js";
import { type ExpertActivation, type ExpertParallel, type ExpertRules, expertRange, isGatedActivation, put, renameAll } from "./experts.js";
import { mergeExperts } from "./experts-merge.js";
import { splitExpertTensor } from "./experts-split.js";
import {
  Diagnostics,
  type HeaderMap,
  type Logger,
  type Plan,
  type PlanDict,
  type PlannedTensor,
  dictFromHeaders,
  renamed,
} from "./plan.js";

export interface AdapterOptions {
  /** dtype of merged expert weights; the reference's default is bfloat16. */
  readonly dtype?: DType | string;
  readonly expertActivation?: ExpertActivation;
  /** Receives warnings (unknown keys, dropped tensors); the library prints nothing itself. */
  readonly logger?: Logger;
}

export interface FromHfOptions {
  /** Load only this expert-parallel rank's experts. */
  readonly ep?: ExpertParallel;
}

export interface ToHfOptions {
  /** Drop keys this regex matches at their start (Python `re.match` semantics). */
  readonly excludeKeyRegex?: string | RegExp;
  /** Emit expert LoRA per expert (PEFT v4) instead of the fused ParamWrapper form. */
  readonly v4Compatible?: boolean;
}

const MAMBA_FP32_NAMES: ReadonlySet<string> = new Set(["A_log", "dt_bias", "D"]);

/** `….mixer._fp32_params.X` → `….mixer.X` everywhere in the key. */
export function stripMambaFp32Holder(key: string): string {
  return key.replace(/(\.mixer)\._fp32_params\./g, "$1.");
}

/** `….mixer.{A_log,D,dt_bias}` → `….mixer._fp32_params.…` (only the last `.mixer.` segment counts). */
export function routeMambaFp32Holder(key: string): string {
  if (key.includes("._fp32_params.") || !key.includes(".mixer.")) return key;
  const at = key.lastIndexOf(".mixer.");
  const tail = key.slice(at + ".mixer.".length);
  if (!MAMBA_FP32_NAMES.has(tail)) return key;
  return `${key.slice(0, at)}.mixer._fp32_params.${tail}`;
}

export function isMambaFp32Key(key: string): boolean {
  const at = key.lastIndexOf(".mixer.");
  if (at < 0) return false;
  const tail = key.slice(at + ".mixer.".length);
  if (MAMBA_FP32_NAMES.has(tail)) return true;
  return tail.startsWith("_fp32_params.") && MAMBA_FP32_NAMES.has(tail.slice("_fp32_params.".length));
}

/** Mamba's A_log, D and dt_bias live in float32 whatever the checkpoint holds. */
function upcastMambaFp32(key: string, t: PlannedTensor): PlannedTensor {
  return renamed(t, key, isMambaFp32Key(key) && isFloat(t.dtype) ? "F32" : t.dtype);
}

export function hfKeyToNative(key: string): string {
  return key
    .replace(/^((?:base_model\.model\.)?backbone)\.norm_f\.weight$/, "$1.norm.weight")
    .replace(/^((?:base_model\.model\.)?backbone)\.embeddings\.weight$/, "$1.embed_tokens.weight")
    .replace(/^(base_model\.model\.)?backbone\./, (_m, outer: string | undefined) => `${outer ?? ""}model.`);
}

export function nativeKeyToHf(key: string): string {
  return stripMambaFp32Holder(key)
    .replace(/^model\./, "backbone.")
    .replace(/^backbone\.norm\.weight$/, "backbone.norm_f.weight")
    .replace(/^backbone\.embed_tokens\.weight$/, "backbone.embeddings.weight");
}

export function resolveDType(dtype: DType | string | undefined): DType {
  if (dtype === undefined) return "BF16";
  const d = isDType(dtype) ? dtype : parseDTypeAlias(dtype);
  if (d !== "BF16" && d !== "F16" && d !== "F32") {
    throw new UsageError(`unsupported expert dtype ${JSON.stringify(dtype)}: use bf16, f16 or f32`);
  }
  return d;
}

function isLlmConfig(c: unknown): c is LlmConfig {
  return typeof c === "object" && c !== null && typeof (c as LlmConfig).numHiddenLayers === "number";
}

/**
 * NemotronH language model: HF (`backbone.*`, per-expert weights) ⇄ NeMo Automodel (`model.*`, grouped
 * experts, Mamba float32 holders, MTP), bit-identical to the reference NemotronV3StateDictAdapter.
 */
export class NemotronV3StateDictAdapter extends PlannedStateDictAdapter<FromHfOptions, ToHfOptions> {
  readonly config: LlmConfig;
  /** Undefined for dense models: no expert rule applies. */
  readonly expertRules: ExpertRules | undefined;
  readonly logger: Logger | undefined;

  constructor(config: LlmConfig | Record<string, unknown>, options: AdapterOptions = {}) {
    super();
    this.config = isLlmConfig(config) ? config : parseLlmConfig(config);
    this.logger = options.logger;
    const activation = options.expertActivation ?? "relu2";
    if (activation !== "relu2" && !isGatedActivation(activation)) {
      throw new UsageError(`unknown expert activation ${JSON.stringify(activation)}`);
    }
    const dtype = resolveDType(options.dtype);
    const { nRoutedExperts, moeIntermediateSize } = this.config;
    this.expertRules =
      nRoutedExperts === undefined
        ? undefined
        : { nExperts: nRoutedExperts, interDim: moeIntermediateSize ?? 0, gated: isGatedActivation(activation), dtype };
  }

  /** HF → native on a plan dict of language-model keys (the `language_model.` prefix already removed). */
  planFromHfDict(
    dict: PlanDict,
    options: FromHfOptions,
    diags: Diagnostics,
    display: (key: string) => string = (k) => k,
  ): PlanDict {
    if (options.ep && this.expertRules) expertRange(this.expertRules.nExperts, options.ep);
    const layers = this.config.numHiddenLayers;
    const backbone: PlanDict = new Map();
    const mtp: PlanDict = new Map();
    for (const [key, t] of dict) {
      const m = /^(?:backbone|model)\.layers\.(\d+)\./.exec(key);
      if (layers > 0 && m && Number(m[1]) >= layers) {
        diags.add("layer-dropped", `${display(key)}: layer ${m[1]} is at or past num_hidden_layers=${layers}; dropped`, display(key));
        continue;
      }
      (key.startsWith("mtp.") ? mtp : backbone).set(key, t);
    }

    const renamedDict: PlanDict = new Map();
    for (const [key, t] of backbone) {
      const k = routeMambaFp32Holder(hfKeyToNative(key));
      put(renamedDict, k, upcastMambaFp32(k, t));
    }
    const rules = this.expertRules;
    const merged = rules ? mergeExperts(renamedDict, rules, options.ep, diags, (k) => display(nativeKeyToHf(k))) : renamedDict;

    if (mtp.size > 0) {
      const stripped: PlanDict = new Map();
      for (const [key, t] of mtp) {
        const k = routeMambaFp32Holder(key.slice("mtp.".length));
        put(stripped, k, upcastMambaFp32(k, t));
      }
      const mergedMtp = rules ? mergeExperts(stripped, rules, options.ep, diags, (k) => display(`mtp.${stripMambaFp32Holder(k)}`)) : stripped;
      for (const [k, t] of mergedMtp) put(merged, `mtp.${k}`, t);
    }
    return merged;
  }

  /** Native → HF for one tensor (`convert_single_tensor_to_hf`); the exclude regex sees the HF keys. */
  planSingleToHf(fqn: string, t: PlannedTensor, options: ToHfOptions = {}, diags = new Diagnostics(this.logger)): PlannedTensor[] {
    const result = this.toHfTensors(fqn, t, options, diags);
    if (options.excludeKeyRegex === undefined) return result;
    const re = compileKeyRegex(options.excludeKeyRegex);
    return result.filter((r) => !re.test(r.name));
  }

  /** One native tensor's HF tensors, before the exclude regex. */
  private toHfTensors(fqn: string, t: PlannedTensor, options: ToHfOptions, diags: Diagnostics): PlannedTensor[] {
    const rules = this.expertRules;
    const v4Compatible = options.v4Compatible ?? false;
    let result: PlannedTensor[];
    if (fqn.startsWith("mtp.")) {
      const key = stripMambaFp32Holder(fqn);
      const split = rules ? splitExpertTensor(key, t, rules, { prefix: "mtp.", v4Compatible }, diags) : undefined;
      result = (split ?? [renamed(t, key)]).map((r) => upcastMambaFp32(r.name, r));
    } else {
      const split = rules ? splitExpertTensor(fqn, t, rules, { prefix: "backbone.", v4Compatible }, diags) : undefined;
      if (split) result = renameAll(split, nativeKeyToHf);
      else {
        const key = nativeKeyToHf(fqn);
        result = [upcastMambaFp32(key, renamed(t, key))];
      }
    }
    return result;
  }

  planToHfDict(dict: PlanDict, options: ToHfOptions, diags: Diagnostics): PlanDict {
    // Compiled once for the whole dict, not once per tensor.
    const exclude = options.excludeKeyRegex === undefined ? undefined : compileKeyRegex(options.excludeKeyRegex);
    const out: PlanDict = new Map();
    for (const [fqn, t] of dict) {
      for (const r of this.toHfTensors(fqn, t, options, diags)) if (!exclude?.test(r.name)) put(out, r.name, r);
    }
    return out;
  }

  planFromHf(headers: HeaderMap, options: FromHfOptions = {}): Plan {
    const diags = new Diagnostics(this.logger);
    const dict = this.planFromHfDict(dictFromHeaders(headers), options, diags);
    return { tensors: [...dict.values()], diagnostics: diags.list };
  }

  planToHf(headers: HeaderMap, options: ToHfOptions = {}): Plan {
    const diags = new Diagnostics(this.logger);
    const dict = this.planToHfDict(dictFromHeaders(headers), options, diags);
    return { tensors: [...dict.values()], diagnostics: diags.list };
  }
}
