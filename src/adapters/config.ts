import { FormatError } from "../errors.js";
import type { JsonEdit } from "../safetensors/json-edit.js";

/**
 * The parts of a NemotronH language-model config the conversion rules read (SPEC §5). The Omni
 * `config.json` nests it under `llm_config` (or `text_config`, as transformers 5 names it); a plain
 * NemotronH checkpoint has it at the top level.
 */
export interface LlmConfig {
  /** 0 means "keep every layer" (the reference's truncation only applies when > 0). */
  readonly numHiddenLayers: number;
  /** Absent for dense models: then no expert rule applies. */
  readonly nRoutedExperts?: number;
  readonly moeIntermediateSize?: number;
  readonly hiddenSize?: number;
  /**
   * One character per layer: M Mamba, E MoE, * attention, - MLP; from `hybrid_override_pattern`, or
   * derived from `layers_block_type` where a writer (transformers 5) keeps only that.
   */
  readonly hybridOverridePattern?: string;
  /** Which field the pattern was read from. */
  readonly patternSource?: "hybrid_override_pattern" | "layers_block_type";
  readonly numNextnPredictLayers?: number;
  readonly numExpertsPerTok?: number;
  readonly vocabSize?: number;
  readonly tieWordEmbeddings?: boolean;
}

/** Where the language-model config lives in `config.json`. */
export type LlmConfigKey = "llm_config" | "text_config";

export interface ModelConfig {
  /** "omni" when the checkpoint is the multimodal model, "nemotron_h" for a bare language model. */
  readonly kind: "omni" | "nemotron_h";
  readonly llm: LlmConfig;
  /** The nested key of an Omni config's language model; absent for a bare NemotronH config. */
  readonly llmKey?: LlmConfigKey;
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

/**
 * `layers_block_type` spellings, old and new: NemotronH's own code wrote "mamba" and "attention";
 * transformers 5 writes "linear_attention" (Mamba) and "full_attention".
 */
const BLOCK_TYPES: Readonly<Record<string, string>> = {
  mamba: "M",
  linear_attention: "M",
  moe: "E",
  attention: "*",
  full_attention: "*",
  mlp: "-",
};

function patternFromBlockTypes(blocks: unknown, where: string): string | undefined {
  if (blocks === undefined || blocks === null) return undefined;
  if (!Array.isArray(blocks)) throw new FormatError(where, `layers_block_type must be a list, found ${JSON.stringify(blocks)}`);
  return blocks
    .map((b, i) => {
      const c = typeof b === "string" ? BLOCK_TYPES[b] : undefined;
      if (c === undefined) {
        throw new FormatError(where, `layers_block_type[${i}] is ${JSON.stringify(b)}; expected one of ${Object.keys(BLOCK_TYPES).join(", ")}`);
      }
      return c;
    })
    .join("");
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
  const fromBlocks = patternFromBlockTypes(r["layers_block_type"], where);
  if (typeof pattern === "string" && fromBlocks !== undefined && pattern !== fromBlocks) {
    throw new FormatError(where, `hybrid_override_pattern ${pattern} and layers_block_type (${fromBlocks}) describe different layers`);
  }
  const layerPattern = typeof pattern === "string" ? pattern : fromBlocks;
  // A layer count below the pattern's length is how the reference truncates a model (oracle case
  // tiny-num-layers-3), so the two may disagree; without a count, the pattern's length is the count.
  const declared = optionalInt(r, "num_hidden_layers", where, 0);
  const out: {
    -readonly [K in keyof LlmConfig]: LlmConfig[K];
  } = { numHiddenLayers: declared ?? layerPattern?.length ?? 0 };
  if (nRoutedExperts !== undefined) out.nRoutedExperts = nRoutedExperts;
  if (moeIntermediateSize !== undefined) out.moeIntermediateSize = moeIntermediateSize;
  const hidden = optionalInt(r, "hidden_size", where, 1);
  if (hidden !== undefined) out.hiddenSize = hidden;
  if (layerPattern !== undefined) {
    out.hybridOverridePattern = layerPattern;
    out.patternSource = typeof pattern === "string" ? "hybrid_override_pattern" : "layers_block_type";
  }
  const mtp = optionalInt(r, "num_nextn_predict_layers", where, 0);
  if (mtp !== undefined) out.numNextnPredictLayers = mtp;
  const topK = optionalInt(r, "num_experts_per_tok", where, 1);
  if (topK !== undefined) out.numExpertsPerTok = topK;
  const vocab = optionalInt(r, "vocab_size", where, 1);
  if (vocab !== undefined) out.vocabSize = vocab;
  if (typeof r["tie_word_embeddings"] === "boolean") out.tieWordEmbeddings = r["tie_word_embeddings"];
  return out;
}

/** Read a model's `config.json` (already parsed), Omni or bare NemotronH. */
export function parseModelConfig(raw: unknown, where = "config.json"): ModelConfig {
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) throw new FormatError(where, "is not a JSON object");
  const r = raw as Raw;
  for (const key of ["llm_config", "text_config"] as const) {
    if (r[key] !== undefined && r[key] !== null) {
      const other = key === "llm_config" ? "text_config" : "llm_config";
      if (r[other] !== undefined && r[other] !== null) throw new FormatError(where, "has both llm_config and text_config; it is unclear which describes the language model");
      return { kind: "omni", llm: parseLlmConfig(r[key], `${where} (${key})`), llmKey: key };
    }
  }
  if (r["model_type"] === "nemotron_h" || r["hybrid_override_pattern"] !== undefined || r["layers_block_type"] !== undefined) {
    return { kind: "nemotron_h", llm: parseLlmConfig(r, where) };
  }
  throw new FormatError(where, "has no llm_config: not a Nemotron Omni (or NemotronH) config");
}

/**
 * The edits that cut a config to its first `n` language-model layers, in the fields it has: the layer
 * count, `hybrid_override_pattern` and `layers_block_type`, each in its own spelling.
 */
export function truncationEdits(raw: Record<string, unknown>, config: ModelConfig, n: number): JsonEdit[] {
  const base = config.llmKey ? [config.llmKey] : [];
  const llm = (config.llmKey ? raw[config.llmKey] : raw) as Raw;
  const edits: JsonEdit[] = [];
  if (typeof llm["num_hidden_layers"] === "number") edits.push({ path: [...base, "num_hidden_layers"], value: n });
  const pattern = llm["hybrid_override_pattern"];
  if (typeof pattern === "string") edits.push({ path: [...base, "hybrid_override_pattern"], value: pattern.slice(0, n) });
  if (Array.isArray(llm["layers_block_type"])) edits.push({ path: [...base, "layers_block_type"], keep: n });
  return edits;
}
