import { FormatError, InputError } from "../errors.js";
import type { ByteSource } from "../io/byte-source.js";
import { type Folder, checkRelative, readText } from "../io/folder.js";
import type { TensorInfo } from "../tensor/tensor.js";
import { SafetensorsFile } from "./file.js";
import type { TensorEntry } from "./header.js";
import { type JsonValue, JsonSyntaxError, describeJson, isJsonObject, parseJson, toPlain } from "./json.js";
import { CONFIG_FILE, INDEX_FILE, SINGLE_FILE } from "./shard-plan.js";

export { CONFIG_FILE, INDEX_FILE, SINGLE_FILE };

/** An index maps tensor names to shard names; 100 MB of it is far beyond any real model. */
const MAX_INDEX_BYTES = 100_000_000;
const MAX_CONFIG_BYTES = 16_000_000;

export interface StoredTensor extends TensorInfo {
  readonly name: string;
  readonly file: SafetensorsFile;
  readonly entry: TensorEntry;
}

/** A config.json as read: its exact text (copied or edited in place, never re-serialized) and its values. */
export interface ConfigFile {
  readonly file: string;
  readonly text: string;
  readonly values: Record<string, unknown>;
}

/**
 * Parse config.json text. Python's `json` writes `Infinity`/`NaN` for non-finite floats, and transformers
 * saves configs through it, so those literals are read here (and only here: headers stay strict JSON).
 */
export function parseConfigText(text: string, file: string): ConfigFile {
  let value: unknown;
  try {
    value = toPlain(parseJson(text, { nonFinite: true }));
  } catch (e) {
    if (e instanceof JsonSyntaxError) throw new FormatError(file, `is not valid JSON: ${e.message}`);
    throw e;
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) throw new FormatError(file, "is not a JSON object");
  return { file, text, values: value as Record<string, unknown> };
}

/**
 * A checkpoint in a folder: `model.safetensors`, or an index and its shards. Opening validates every
 * header and the index against them, and reads no tensor data.
 */
export class Checkpoint {
  constructor(
    /** Where the checkpoint is read from; undefined when a bare `.safetensors` source was opened. */
    readonly folder: Folder | undefined,
    readonly files: readonly SafetensorsFile[],
    readonly tensors: ReadonlyMap<string, StoredTensor>,
    /** Folder-relative names of the files that hold the weights: shards and index. */
    readonly weightFiles: ReadonlySet<string>,
    readonly sharded: boolean,
  ) {}

  /** How the checkpoint is named in messages. */
  get where(): string {
    return this.folder?.name ?? this.files[0]?.name ?? "checkpoint";
  }

  /** Open the checkpoint of a folder. */
  static async open(folder: Folder, options: { readonly signal?: AbortSignal } = {}): Promise<Checkpoint> {
    const signal = options.signal;
    const index = await folder.stat(INDEX_FILE, signal);
    const single = await folder.stat(SINGLE_FILE, signal);
    if (index && single) {
      throw new InputError(`${folder.name}: holds both ${SINGLE_FILE} and ${INDEX_FILE}; it is unclear which is the checkpoint`);
    }
    if (!index && !single) throw new InputError(`${folder.name}: no ${SINGLE_FILE} or ${INDEX_FILE} in this folder`);
    if (single) {
      const file = await SafetensorsFile.open(await folder.open(SINGLE_FILE, signal), signal);
      return new Checkpoint(folder, [file], tensorMap([file]), new Set([SINGLE_FILE]), false);
    }
    return openIndexed(folder, signal);
  }

  /** A bare `.safetensors` file as a checkpoint without a folder (inspect and diff accept one). */
  static async fromFile(source: ByteSource, signal?: AbortSignal): Promise<Checkpoint> {
    const file = await SafetensorsFile.open(source, signal);
    return new Checkpoint(undefined, [file], tensorMap([file]), new Set(), false);
  }

  get totalBytes(): number {
    let n = 0;
    for (const t of this.tensors.values()) n += t.entry.end - t.entry.begin;
    return n;
  }

  /** `config.json` of the folder, read and parsed; a missing or broken config is the user's to fix. */
  async readConfig(signal?: AbortSignal): Promise<ConfigFile> {
    if (this.folder === undefined) throw new InputError(`${this.where}: a bare .safetensors file has no config.json; pass the checkpoint folder it belongs to`);
    const file = this.folder.describe(CONFIG_FILE);
    return parseConfigText(await readText(this.folder, CONFIG_FILE, MAX_CONFIG_BYTES, signal), file);
  }

  close(): void {
    for (const f of this.files) f.close();
  }
}

function tensorMap(files: readonly SafetensorsFile[]): Map<string, StoredTensor> {
  const out = new Map<string, StoredTensor>();
  for (const file of files) {
    for (const entry of file.header.entries) {
      const seen = out.get(entry.name);
      if (seen) {
        throw new FormatError(file.name, `is also stored in ${seen.file.name}; a tensor may live in one shard only`, entry.name);
      }
      out.set(entry.name, { name: entry.name, dtype: entry.dtype, shape: entry.shape, file, entry });
    }
  }
  return out;
}

/** The weight map of an index: tensor → shard, in the index's order. */
export async function readIndex(folder: Folder, signal?: AbortSignal): Promise<Map<string, string>> {
  const indexFile = folder.describe(INDEX_FILE);
  const text = await readText(folder, INDEX_FILE, MAX_INDEX_BYTES, signal);
  let index: JsonValue;
  try {
    index = parseJson(text);
  } catch (e) {
    if (e instanceof JsonSyntaxError) throw new FormatError(indexFile, `is not valid JSON: ${e.message}`);
    throw e;
  }
  if (!isJsonObject(index)) throw new FormatError(indexFile, `is ${describeJson(index)}, not a JSON object`);
  const weightMap = index.get("weight_map");
  if (weightMap === undefined) throw new FormatError(indexFile, "has no weight_map");
  if (!isJsonObject(weightMap)) throw new FormatError(indexFile, `weight_map is ${describeJson(weightMap)}, not an object`);
  const out = new Map<string, string>();
  for (const [tensor, shard] of weightMap) {
    if (typeof shard !== "string") {
      throw new FormatError(indexFile, `weight_map entry for ${JSON.stringify(tensor)} is ${describeJson(shard)}, not a file name`);
    }
    out.set(tensor, shard);
  }
  return out;
}

/**
 * Shards whose headers are read at the same time: a remote folder answers each in a round trip, which
 * seventeen shards one after another would pay seventeen times; a local disk does not mind.
 */
const SHARDS_OPENED_AT_ONCE = 8;

/** Run the tasks, at most `limit` at a time, and settle them all; results in the tasks' order. */
async function inOrder<T>(tasks: readonly (() => Promise<T>)[], limit: number): Promise<PromiseSettledResult<T>[]> {
  const results: PromiseSettledResult<T>[] = new Array(tasks.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < tasks.length) {
      const i = next++;
      try {
        results[i] = { status: "fulfilled", value: await tasks[i]!() };
      } catch (reason) {
        results[i] = { status: "rejected", reason };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, tasks.length) }, worker));
  return results;
}

async function openIndexed(folder: Folder, signal?: AbortSignal): Promise<Checkpoint> {
  const indexFile = folder.describe(INDEX_FILE);
  const weightMap = await readIndex(folder, signal);
  const byShard = new Map<string, string[]>();
  for (const [tensor, shard] of weightMap) {
    const list = byShard.get(shard) ?? [];
    list.push(tensor);
    byShard.set(shard, list);
  }

  // Every name is checked before any shard is opened, so a bad index fails the same way whatever opens first.
  const rels: string[] = [];
  for (const shard of byShard.keys()) {
    const rel = checkRelative(shard, indexFile, "shard");
    if (rels.includes(rel)) throw new FormatError(indexFile, `names the same shard twice (${JSON.stringify(shard)})`);
    rels.push(rel);
  }
  const openOne = async (shard: string, rel: string): Promise<SafetensorsFile> => {
    const stat = await folder.stat(rel, signal);
    if (!stat) throw new FormatError(indexFile, `names shard ${JSON.stringify(shard)}, which cannot be opened: no such file (ENOENT)`);
    return SafetensorsFile.open(await folder.open(rel, signal), signal);
  };
  const shards = [...byShard.keys()];
  const results = await inOrder(shards.map((shard, i) => () => openOne(shard, rels[i]!)), SHARDS_OPENED_AT_ONCE);
  const files: SafetensorsFile[] = [];
  const weightFiles = new Set<string>([INDEX_FILE]);
  const opened = new Map<string, SafetensorsFile>();
  for (const r of results) if (r.status === "fulfilled") files.push(r.value);
  try {
    // The first failure in the index's order is the one reported.
    const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed) throw failed.reason;
    results.forEach((r, i) => {
      opened.set(rels[i]!, (r as PromiseFulfilledResult<SafetensorsFile>).value);
      weightFiles.add(rels[i]!);
    });
    const tensors = tensorMap(files);
    for (const [shard, names] of byShard) {
      const file = opened.get(checkRelative(shard, indexFile, "shard"))!;
      for (const name of names) {
        if (!file.tensors.has(name)) {
          throw new FormatError(indexFile, `lists tensor ${JSON.stringify(name)} in ${shard}, which does not hold it`);
        }
      }
    }
    for (const t of tensors.values()) {
      if (!weightMap.has(t.name)) throw new FormatError(t.file.name, `is not listed in ${INDEX_FILE}`, t.name);
    }
    return new Checkpoint(folder, files, tensors, weightFiles, true);
  } catch (e) {
    for (const f of files) f.close();
    throw e;
  }
}
