import type { ModelConfig } from "../adapters/config.js";
import { parseExpertKey } from "../adapters/expert-keys.js";
import { FormatError } from "../errors.js";
import { logicalShape } from "../quant/detect.js";
import type { TensorInfo } from "../tensor/tensor.js";
import { formatShape } from "../tensor/tensor.js";
import type { Layout } from "./layout.js";

export interface ConsistencyReport {
  /** Everything in the tensors that contradicts config.json, one sentence each. */
  readonly problems: readonly string[];
  /** Experts per grouped tensor when it is fewer than the config's: an expert-parallel slice. */
  readonly epSliceExperts?: number;
}


/**
 * Compare a checkpoint's tensors with its config.json before converting: a config for another model size
 * would otherwise make the reference rules drop or mis-split tensors without a word.
 */
export function checkConsistency(
  config: ModelConfig,
  layout: Layout,
  headers: ReadonlyMap<string, TensorInfo>,
): ConsistencyReport {
  const llm = config.llm;
  const lm = config.kind === "omni" ? "language_model\\." : "";
  const layerRe = new RegExp(`^${lm}(?:base_model\\.model\\.)?(?:backbone|model)\\.layers\\.(\\d+)\\.`);
  const embeddingsRe = new RegExp(`^${lm}(?:base_model\\.model\\.)?(?:backbone\\.embeddings|model\\.embed_tokens)\\.weight$`);
  const problems: string[] = [];
  const layers = new Set<number>();
  let beyond: string | undefined;
  let hasEmbeddings = false;
  let firstExpert: string | undefined;
  let epSliceExperts: number | undefined;
  const E = llm.nRoutedExperts;
  const I = llm.moeIntermediateSize;
  const H = llm.hiddenSize;

  for (const [name, info] of headers) {
    const m = layerRe.exec(name);
    if (m) {
      const layer = Number(m[1]);
      layers.add(layer);
      if (llm.numHiddenLayers > 0 && layer >= llm.numHiddenLayers && beyond === undefined) beyond = name;
    }
    if (embeddingsRe.test(name)) hasEmbeddings = true;

    const k = parseExpertKey(name);
    const hf = layout === "hf" && k?.kind === "expert-weight" && k.rest === "" ? k : undefined;
    const native = layout === "native" && k?.kind === "grouped" ? k : undefined;
    if ((hf || native) && firstExpert === undefined) firstExpert = name;
    if (E === undefined) continue;
    if (hf) {
      const expert = hf.expert;
      if (expert >= E) problems.push(`n_routed_experts is ${E}, but the checkpoint has expert ${expert} (${name})`);
      // NVFP4 packs two values in a byte along the input axis: its [out, in/2] bytes are [out, in] weights.
      const shape = logicalShape(name, info, headers);
      if (I !== undefined && shape.length === 2) {
        const [rows, cols] = shape as [number, number];
        const proj = hf.proj;
        const interAxis = proj === "down_proj" ? cols : rows;
        const hiddenAxis = proj === "down_proj" ? rows : cols;
        if (interAxis !== I) problems.push(`moe_intermediate_size is ${I}, but ${name} is ${formatShape(info.shape)}`);
        else if (H !== undefined && hiddenAxis !== H) problems.push(`hidden_size is ${H}, but ${name} is ${formatShape(info.shape)}`);
      }
    }
    if (native) {
      if (info.shape.length !== 3) {
        problems.push(`${name} should be a 3-d grouped expert tensor, but is ${formatShape(info.shape)}`);
        continue;
      }
      const [n, a, b] = info.shape as [number, number, number];
      if (n > E) problems.push(`n_routed_experts is ${E}, but ${name} groups ${n} experts`);
      else if (n < E) epSliceExperts = n;
      const down = native.weight === "down_projs";
      const inter = down ? a : b;
      const hidden = down ? b : a;
      if (I !== undefined && inter !== I && inter !== 2 * I) {
        problems.push(`moe_intermediate_size is ${I}, but ${name} is ${formatShape(info.shape)}`);
      } else if (H !== undefined && hidden !== H) {
        problems.push(`hidden_size is ${H}, but ${name} is ${formatShape(info.shape)}`);
      }
    }
  }

  if (E === undefined && firstExpert !== undefined) {
    problems.push(`has no n_routed_experts (a dense model), but the checkpoint has MoE expert tensors (${firstExpert})`);
  }
  if (beyond !== undefined) {
    problems.push(`num_hidden_layers is ${llm.numHiddenLayers}, but the checkpoint has tensors past it (${beyond})`);
  } else if (hasEmbeddings && llm.numHiddenLayers > 0 && layers.size !== llm.numHiddenLayers) {
    problems.push(`num_hidden_layers is ${llm.numHiddenLayers}, but the checkpoint holds ${layers.size} layers`);
  }
  const unique = [...new Set(problems)];
  return epSliceExperts === undefined ? { problems: unique } : { problems: unique, epSliceExperts };
}

/** Refuse, naming config.json and the first disagreement, when the tensors contradict the config. */
export function requireConsistent(report: ConsistencyReport, configFile: string): void {
  if (report.problems.length === 0) return;
  const more = report.problems.length > 1 ? ` (and ${report.problems.length - 1} more disagreements)` : "";
  throw new FormatError(configFile, `disagrees with the tensors: ${report.problems[0]}${more}`);
}
