import { FormatError } from "../errors.js";

/**
 * The parts of a NemotronH language-model config the conversion rules read (SPEC §5). The Omni
 * `config.json` nests it under `llm_config`; a plain NemotronH checkpoint has it at the top level.
 */
export interface LlmConfig {
  /** 0 means "keep every layer" (the reference's truncation only applies when > 0). */
  readonly numHiddenLayers: number;
  /** Absent for dense models: then no expert rule applies. */
  readonly nRoutedExperts?: number;
  readonly moeIntermediateSize?: number;
  readonly hiddenSize?: number;
  /** One character per layer: M Mamba, E MoE, * attention, - MLP. */
  readonly hybridOverridePattern?: string;
  readonly numNextnPredictLayers?: number;
}

export interface ModelConfig {
  /** "omni" when the checkpoint is the multimodal model, "nemotron_h" for a bare language model. */
  readonly kind: "omni" | "nemotron_h";
  readonly llm: LlmConfig;
}

type Raw = Record<string, unknown>;

function optionalInt(raw: Raw, key: string, where: string, min: number): number | undefined {
  const v = raw[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min) {
    throw new FormatError(where, `${key} must be an integer ≥ ${min}, found ${JSON.stringify(v)}`);
  }
  return v;
}

/** Validate the language-model part of a config; `where` names it in errors. */
export function parseLlmConfig(raw: unknown, where = "config"): LlmConfig {
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    throw new FormatError(where, "language-model config is not an object");
  }
  const r = raw as Raw;
  const nRoutedExperts = optionalInt(r, "n_routed_experts", where, 1);
  const moeIntermediateSize = optionalInt(r, "moe_intermediate_size", where, 1);
  if (nRoutedExperts !== undefined && moeIntermediateSize === undefined) {
    throw new FormatError(where, "has n_routed_experts but no moe_intermediate_size");
  }
  const pattern = r["hybrid_override_pattern"];
  if (pattern !== undefined && pattern !== null && (typeof pattern !== "string" || !/^[ME*\-]*$/.test(pattern))) {
    throw new FormatError(where, `hybrid_override_pattern must be a string of M, E, * and -, found ${JSON.stringify(pattern)}`);
  }
  const out: {
    -readonly [K in keyof LlmConfig]: LlmConfig[K];
  } = { numHiddenLayers: optionalInt(r, "num_hidden_layers", where, 0) ?? 0 };
  if (nRoutedExperts !== undefined) out.nRoutedExperts = nRoutedExperts;
  if (moeIntermediateSize !== undefined) out.moeIntermediateSize = moeIntermediateSize;
  const hidden = optionalInt(r, "hidden_size", where, 1);
  if (hidden !== undefined) out.hiddenSize = hidden;
  if (typeof pattern === "string") out.hybridOverridePattern = pattern;
  const mtp = optionalInt(r, "num_nextn_predict_layers", where, 0);
  if (mtp !== undefined) out.numNextnPredictLayers = mtp;
  return out;
}

/** Read a model's `config.json` (already parsed), Omni or bare NemotronH. */
export function parseModelConfig(raw: unknown, where = "config.json"): ModelConfig {
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) throw new FormatError(where, "is not a JSON object");
  const r = raw as Raw;
  if (r["llm_config"] !== undefined) return { kind: "omni", llm: parseLlmConfig(r["llm_config"], `${where} (llm_config)`) };
  if (r["model_type"] === "nemotron_h" || r["hybrid_override_pattern"] !== undefined) {
    return { kind: "nemotron_h", llm: parseLlmConfig(r, where) };
  }
  throw new FormatError(where, "has no llm_config: not a Nemotron Omni (or NemotronH) config");
}
