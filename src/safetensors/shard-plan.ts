import { byteLength } from "../tensor/tensor.js";
import { type DeclaredTensor, sortByUtf8 } from "./encode.js";
import { DEFAULT_MAX_SHARD_SIZE } from "./shard-size.js";

/** The file names a Hugging Face checkpoint folder uses for its weights. */
export const SINGLE_FILE = "model.safetensors";
export const INDEX_FILE = "model.safetensors.index.json";
export const CONFIG_FILE = "config.json";

export interface ShardPlan {
  readonly file: string;
  readonly tensors: readonly DeclaredTensor[];
  readonly dataSize: number;
}

/** `model-00001-of-00003.safetensors`, as Hugging Face names shards. */
export function shardFileName(i: number, count: number): string {
  const pad = (n: number): string => String(n).padStart(5, "0");
  return `model-${pad(i + 1)}-of-${pad(count)}.safetensors`;
}

/**
 * Split tensors, in the given order, into shards of at most `maxShardSize` data bytes; a tensor larger
 * than the limit gets a shard of its own (as Hugging Face does). One shard is `model.safetensors`.
 */
export function planShards(tensors: readonly DeclaredTensor[], maxShardSize = DEFAULT_MAX_SHARD_SIZE): ShardPlan[] {
  if (!(maxShardSize > 0)) throw new RangeError(`max shard size must be positive, got ${maxShardSize}`);
  const groups: { tensors: DeclaredTensor[]; size: number }[] = [];
  let current: { tensors: DeclaredTensor[]; size: number } | undefined;
  for (const t of tensors) {
    const size = byteLength(t);
    if (!current || (current.tensors.length > 0 && current.size + size > maxShardSize)) {
      current = { tensors: [], size: 0 };
      groups.push(current);
    }
    current.tensors.push(t);
    current.size += size;
  }
  if (groups.length === 0) groups.push({ tensors: [], size: 0 });
  return groups.map((g, i) => ({
    file: groups.length === 1 ? SINGLE_FILE : shardFileName(i, groups.length),
    tensors: g.tensors,
    dataSize: g.size,
  }));
}

/**
 * Shards given as named groups of tensors, in their own order (a release's weight map, a consolidation's
 * file index): the tensors of each file keep the order given.
 */
export function shardsFromGroups(groups: ReadonlyMap<string, readonly DeclaredTensor[]>): ShardPlan[] {
  return [...groups].map(([file, tensors]) => ({ file, tensors, dataSize: tensors.reduce((n, t) => n + byteLength(t), 0) }));
}

/**
 * `model.safetensors.index.json` for sharded plans, as `save_pretrained` writes it: keys sorted as UTF-8
 * bytes, indented by two, and listed as own properties so a tensor named `__proto__` is listed too.
 * Undefined for a single `model.safetensors`, which needs no index.
 */
export function indexJson(plans: readonly ShardPlan[]): string | undefined {
  if (plans.length === 1 && plans[0]!.file === SINGLE_FILE) return undefined;
  const entries: [string, string][] = [];
  for (const p of plans) for (const t of p.tensors) entries.push([t.name, p.file]);
  // Object.fromEntries defines own properties, so a tensor named `__proto__` is listed like any other.
  const weightMap = Object.fromEntries(sortByUtf8(entries, (e) => e[0]));
  const totalSize = plans.reduce((n, p) => n + p.dataSize, 0);
  return `${JSON.stringify({ metadata: { total_size: totalSize }, weight_map: weightMap }, null, 2)}\n`;
}
