import { shardFileName } from "../safetensors/shard-plan.js";

/**
 * The file names of NeMo Automodel's sharded training saves (SPEC §9): one file of pieces per rank in the
 * `model/` folder of a checkpoint, and `.hf_metadata/` beside them.
 */

/** Where Automodel keeps the model config and the two mappings consolidation follows. */
export const METADATA_DIR = ".hf_metadata";
/** `{tensor: output file index 1..n}`, from the base model's index. */
export const FILE_INDEX_MAPPING = "fqn_to_file_index_mapping.json";
/** `{tensor: dtype in the base model's headers}`; optional. */
export const DTYPE_MAPPING = "fqn_to_dtype_mapping.json";
/** The folder inside `model/` where Automodel's own tool writes its output. */
export const CONSOLIDATED_DIR = "consolidated";
/** The checkpoint folder's sub-folder that holds the save (`epoch_0_step_500/model/`). */
export const MODEL_DIR = "model";

/**
 * `shard-0000R-model-00001-of-00001.safetensors`: R is the rank + 1. Automodel's writer never gives the
 * fqn-to-index mapping to the storage plan, so the "model-i-of-n" part is always `00001-of-00001`.
 */
const RANK_FILE = /^shard-([0-9]{5,})-model-([0-9]{5,})-of-([0-9]{5,})\.safetensors$/;

export interface RankFileName {
  /** The number in the name: the rank + 1. */
  readonly number: number;
  /** The "model-i-of-n" part, which is always 1 of 1 in a save Automodel writes. */
  readonly index: number;
  readonly of: number;
}

/** The parts of a rank file's name, or undefined for any other name. */
export function parseRankFileName(name: string): RankFileName | undefined {
  const m = RANK_FILE.exec(name);
  if (!m) return undefined;
  return { number: Number(m[1]), index: Number(m[2]), of: Number(m[3]) };
}

/** The file rank file number `n` (rank n - 1) has in a save Automodel writes. */
export function rankFileName(n: number): string {
  return `shard-${String(n).padStart(5, "0")}-model-00001-of-00001.safetensors`;
}

/** Output file `index` (1-based) of `count`, as Automodel's consolidator names them (`model-00002-of-00004.safetensors`). */
export function outputFileName(index: number, count: number): string {
  return shardFileName(index - 1, count);
}
