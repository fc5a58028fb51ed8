import { parseModelConfig } from "../adapters/config.js";
import { FormatError, InputError } from "../errors.js";
import { type Folder, readText } from "../io/folder.js";
import { type ConfigFile, parseConfigText } from "../safetensors/checkpoint.js";
import { SafetensorsFile } from "../safetensors/file.js";
import type { TensorEntry } from "../safetensors/header.js";
import { type JsonValue, JsonNumber, JsonSyntaxError, describeJson, isJsonObject, parseJson } from "../safetensors/json.js";
import { CONFIG_FILE } from "../safetensors/shard-plan.js";
import { type DType, isDType } from "../tensor/dtype.js";
import { DTYPE_MAPPING, FILE_INDEX_MAPPING, METADATA_DIR, MODEL_DIR, parseRankFileName, rankFileName } from "./names.js";

/**
 * A NeMo Automodel sharded training save (SPEC §9) read from its headers and metadata: every rank file's
 * pieces, the two mappings and the config. Reading never stops at the first fault: every problem found is
 * kept (`problems`), so `inspect` can list them all and `consolidate` refuses with all of them.
 */

/** One thing wrong with a save: which file, which tensor, what. */
export interface Violation {
  readonly file: string;
  readonly tensor?: string;
  readonly detail: string;
}

/** A violation as one line, spelled as a `FormatError` is. */
export function violationLine(v: Violation): string {
  return `${v.file}: ${v.tensor !== undefined ? `tensor ${JSON.stringify(v.tensor)}: ` : ""}${v.detail}`;
}

export interface RankFile {
  /** The number in the file's name: the rank + 1. */
  readonly number: number;
  /** Folder-relative path. */
  readonly rel: string;
  readonly file: SafetensorsFile;
}

/** One rank's piece of a tensor: its box in the full tensor is `offset` and the entry's shape. */
export interface SavedPiece {
  /** Unique among all pieces of the save (a tensor's name appears in several rank files). */
  readonly key: string;
  readonly rank: RankFile;
  readonly entry: TensorEntry;
  readonly offset: readonly number[];
}

/** A tensor of the save: every piece of it, in rank order. */
export interface SavedTensor {
  readonly name: string;
  readonly pieces: readonly SavedPiece[];
}

/** The `.hf_metadata` mappings and config, as far as they could be read. */
export interface SaveMetadata {
  /** `fqn_to_file_index_mapping.json`: tensor → output file index (1-based), in the file's key order. */
  readonly fileIndex: ReadonlyMap<string, number> | undefined;
  /** `fqn_to_dtype_mapping.json`, when the save has one. */
  readonly dtypes: ReadonlyMap<string, string> | undefined;
  readonly config: ConfigFile | undefined;
}

/** Mappings name every tensor of a model: the real model's are ~0.5 MB; this is far beyond any. */
const MAX_MAPPING_BYTES = 100_000_000;
const MAX_CONFIG_BYTES = 16_000_000;

export class ShardedSave {
  constructor(
    readonly folder: Folder,
    /** Folder-relative path of the `model/` folder ("" when the folder given is `model/` itself). */
    readonly modelRel: string,
    readonly ranks: readonly RankFile[],
    /** Tensors by name, in the order first met (rank 1's file first). */
    readonly tensors: ReadonlyMap<string, SavedTensor>,
    readonly metadata: SaveMetadata,
    /** Everything wrong with the files and their metadata; assembling the tensors adds more. */
    readonly problems: readonly Violation[],
  ) {}

  /** A path inside the `model/` folder, relative to the folder given. */
  rel(name: string): string {
    return this.modelRel === "" ? name : `${this.modelRel}/${name}`;
  }

  /** How a file of the `model/` folder is named in messages. */
  describe(name: string): string {
    return this.folder.describe(this.rel(name));
  }

  /** How the save is named in messages: its `model/` folder. */
  get where(): string {
    return this.modelRel === "" ? this.folder.name : this.folder.describe(this.modelRel);
  }

  get metadataRel(): string {
    return this.rel(METADATA_DIR);
  }

  close(): void {
    for (const r of this.ranks) r.file.close();
  }
}

/**
 * Where a folder's sharded save is: "" when the folder is a `model/` folder of one, "model" when it is the
 * checkpoint folder above it, undefined when it holds none. A save is recognised by its rank files' names or
 * its `.hf_metadata/fqn_to_file_index_mapping.json`.
 */
export async function locateShardedSave(folder: Folder, signal?: AbortSignal): Promise<string | undefined> {
  for (const rel of ["", MODEL_DIR]) {
    const prefix = rel === "" ? "" : `${rel}/`;
    if ((await folder.stat(`${prefix}${METADATA_DIR}/${FILE_INDEX_MAPPING}`, signal))?.kind === "file") return rel;
    if (rel !== "" && (await folder.stat(rel, signal))?.kind !== "folder") continue;
    const entries = await folder.list(rel, signal);
    if (entries?.some((e) => parseRankFileName(e.name) !== undefined)) return rel;
  }
  return undefined;
}

/** Open every rank file of the save at `modelRel` and read its metadata; nothing is written or assumed complete. */
export async function openShardedSave(folder: Folder, modelRel: string, signal?: AbortSignal): Promise<ShardedSave> {
  const problems: Violation[] = [];
  const describe = (name: string): string => folder.describe(modelRel === "" ? name : `${modelRel}/${name}`);
  const entries = await folder.list(modelRel, signal);
  if (entries === undefined) throw new InputError(`${modelRel === "" ? folder.name : folder.describe(modelRel)}: cannot be listed, and a sharded save is found by listing its rank files`);

  const found = new Map<number, string>();
  for (const e of entries) {
    if (!e.name.endsWith(".safetensors")) continue;
    const n = parseRankFileName(e.name);
    if (e.kind !== "file") problems.push({ file: describe(e.name), detail: `is ${e.detail ?? "a folder"}, not a regular file` });
    else if (!n) {
      problems.push({ file: describe(e.name), detail: "is not a rank file of a sharded save (shard-NNNNN-model-00001-of-00001.safetensors), and a consolidator would read it as one" });
    } else if (n.index !== 1 || n.of !== 1) {
      problems.push({ file: describe(e.name), detail: `names output file ${n.index} of ${n.of}; Automodel's sharded saves always name 1 of 1` });
    } else if (n.number === 0) problems.push({ file: describe(e.name), detail: "is numbered 0, but rank files are numbered from 1 (rank + 1)" });
    else if (found.has(n.number)) problems.push({ file: describe(e.name), detail: `has the same rank number as ${found.get(n.number)}` });
    else found.set(n.number, e.name);
  }
  const numbers = [...found.keys()].sort((a, b) => a - b);
  const last = numbers[numbers.length - 1] ?? 0;
  if (numbers.length === 0 && problems.length === 0) {
    problems.push({ file: modelRel === "" ? folder.name : folder.describe(modelRel), detail: "holds no rank files (shard-00001-model-00001-of-00001.safetensors, …)" });
  }
  for (let n = 1, i = 0; n <= last; n++) {
    if (numbers[i] === n) {
      i++;
      continue;
    }
    problems.push({ file: describe(rankFileName(n)), detail: `is missing: rank files run from 1 to ${last}, and rank ${n - 1} wrote this one` });
  }

  const ranks: RankFile[] = [];
  const tensors = new Map<string, SavedTensor & { pieces: SavedPiece[] }>();
  try {
    for (const n of numbers) {
      const name = found.get(n)!;
      const rel = modelRel === "" ? name : `${modelRel}/${name}`;
      let file: SafetensorsFile;
      try {
        file = await SafetensorsFile.open(await folder.open(rel, signal), signal);
      } catch (e) {
        if (e instanceof FormatError) {
          problems.push({ file: e.file, ...(e.tensor !== undefined ? { tensor: e.tensor } : {}), detail: e.detail });
          continue;
        }
        throw e;
      }
      const rank: RankFile = { number: n, rel, file };
      ranks.push(rank);
      for (const piece of readPieces(rank, problems)) {
        const t = tensors.get(piece.entry.name);
        if (t) t.pieces.push(piece);
        else tensors.set(piece.entry.name, { name: piece.entry.name, pieces: [piece] });
      }
    }
    const metadata = await readMetadata(folder, modelRel === "" ? METADATA_DIR : `${modelRel}/${METADATA_DIR}`, problems, signal);
    return new ShardedSave(folder, modelRel, ranks, tensors, metadata, problems);
  } catch (e) {
    for (const r of ranks) r.file.close();
    throw e;
  }
}

/** A rank file's pieces, from `__metadata__.DCP_SHARDING_INFO` (itself a JSON string) and the header. */
function readPieces(rank: RankFile, problems: Violation[]): SavedPiece[] {
  const file = rank.file;
  const where = file.name;
  const text = file.header.metadata?.get("DCP_SHARDING_INFO");
  if (text === undefined) {
    problems.push({ file: where, detail: "has no __metadata__.DCP_SHARDING_INFO: not a rank file written by a DCP sharded save" });
    return [];
  }
  let info: JsonValue;
  try {
    info = parseJson(text);
  } catch (e) {
    if (e instanceof JsonSyntaxError && e.duplicate?.depth === 1) {
      problems.push({ file: where, tensor: e.duplicate.key, detail: "appears twice in __metadata__.DCP_SHARDING_INFO" });
      return [];
    }
    if (e instanceof JsonSyntaxError) {
      problems.push({ file: where, detail: `__metadata__.DCP_SHARDING_INFO is not valid JSON: ${e.message}` });
      return [];
    }
    throw e;
  }
  if (!isJsonObject(info)) {
    problems.push({ file: where, detail: `__metadata__.DCP_SHARDING_INFO is ${describeJson(info)}, not an object` });
    return [];
  }
  const pieces: SavedPiece[] = [];
  for (const [name, value] of info) {
    const entry = file.tensors.get(name);
    const fail = (detail: string): void => void problems.push({ file: where, tensor: name, detail });
    if (!entry) {
      fail("is in __metadata__.DCP_SHARDING_INFO but not in the file");
      continue;
    }
    const offsets = isJsonObject(value) ? value.get("saved_offsets") : undefined;
    if (!Array.isArray(offsets)) {
      fail(`DCP_SHARDING_INFO entry has no saved_offsets list (found ${isJsonObject(value) ? "an object without one" : describeJson(value)})`);
      continue;
    }
    const offset: number[] = [];
    for (const [i, o] of offsets.entries()) {
      const n = o instanceof JsonNumber ? o.safeIndex : undefined;
      if (n === undefined) {
        fail(`saved_offsets[${i}] is ${describeJson(o)}, not an exact non-negative integer`);
        break;
      }
      offset.push(n);
    }
    if (offset.length !== offsets.length) continue;
    if (offset.length !== entry.shape.length) {
      fail(`saved_offsets [${offset.join(", ")}] has ${offset.length} entr${offset.length === 1 ? "y" : "ies"}, but the piece has ${entry.shape.length} dimension${entry.shape.length === 1 ? "" : "s"} [${entry.shape.join(", ")}]`);
      continue;
    }
    pieces.push({ key: `${rank.number}/${name}`, rank, entry, offset });
  }
  for (const entry of file.header.entries) {
    if (!info.has(entry.name)) problems.push({ file: where, tensor: entry.name, detail: "has no saved_offsets in __metadata__.DCP_SHARDING_INFO" });
  }
  return pieces;
}

/** Read a small JSON file of the metadata folder, or record why it cannot be. */
async function readJson(folder: Folder, rel: string, problems: Violation[], signal?: AbortSignal): Promise<JsonValue | undefined> {
  const name = folder.describe(rel);
  let text: string;
  try {
    text = await readText(folder, rel, MAX_MAPPING_BYTES, signal);
  } catch (e) {
    if (e instanceof FormatError) {
      problems.push({ file: e.file, detail: e.detail });
      return undefined;
    }
    throw e;
  }
  try {
    return parseJson(text);
  } catch (e) {
    if (e instanceof JsonSyntaxError && e.duplicate?.depth === 1) problems.push({ file: name, tensor: e.duplicate.key, detail: "appears twice (JSON.parse would silently keep the last)" });
    else if (e instanceof JsonSyntaxError) problems.push({ file: name, detail: `is not valid JSON: ${e.message}` });
    else throw e;
    return undefined;
  }
}

/** The mappings and config of `.hf_metadata/`, each checked for form. */
async function readMetadata(folder: Folder, metaRel: string, problems: Violation[], signal?: AbortSignal): Promise<SaveMetadata> {
  const present = async (name: string): Promise<boolean> => (await folder.stat(`${metaRel}/${name}`, signal)) !== undefined;

  let fileIndex: Map<string, number> | undefined;
  const indexRel = `${metaRel}/${FILE_INDEX_MAPPING}`;
  if (!(await present(FILE_INDEX_MAPPING))) {
    problems.push({ file: folder.describe(indexRel), detail: "is missing: it says which output file each tensor goes to" });
  } else {
    const value = await readJson(folder, indexRel, problems, signal);
    if (value !== undefined && !isJsonObject(value)) problems.push({ file: folder.describe(indexRel), detail: `is ${describeJson(value)}, not an object` });
    else if (value !== undefined) {
      fileIndex = new Map();
      for (const [tensor, v] of value) {
        const n = v instanceof JsonNumber ? v.safeIndex : undefined;
        if (n === undefined || n < 1) problems.push({ file: folder.describe(indexRel), tensor, detail: `file index is ${describeJson(v)}, not an integer ≥ 1` });
        else fileIndex.set(tensor, n);
      }
    }
  }

  let dtypes: Map<string, string> | undefined;
  const dtypeRel = `${metaRel}/${DTYPE_MAPPING}`;
  if (await present(DTYPE_MAPPING)) {
    const value = await readJson(folder, dtypeRel, problems, signal);
    if (value !== undefined && !isJsonObject(value)) problems.push({ file: folder.describe(dtypeRel), detail: `is ${describeJson(value)}, not an object` });
    else if (value !== undefined) {
      dtypes = new Map();
      for (const [tensor, v] of value) {
        // FP8 variants the safetensors format may add (F8_E8M0) are kept as written: they are never cast to.
        if (typeof v !== "string" || !(isDType(v) || /^F8_[A-Z0-9]+$/.test(v))) {
          problems.push({ file: folder.describe(dtypeRel), tensor, detail: `dtype is ${typeof v === "string" ? JSON.stringify(v) : describeJson(v)}, not a safetensors dtype` });
        } else dtypes.set(tensor, v);
      }
    }
  }

  let config: ConfigFile | undefined;
  const configRel = `${metaRel}/${CONFIG_FILE}`;
  if (!(await present(CONFIG_FILE))) {
    problems.push({ file: folder.describe(configRel), detail: "is missing: the tensors' shapes are checked against the model config" });
  } else {
    try {
      config = parseConfigText(await readText(folder, configRel, MAX_CONFIG_BYTES, signal), folder.describe(configRel));
      parseModelConfig(config.values, config.file);
    } catch (e) {
      if (!(e instanceof FormatError)) throw e;
      problems.push({ file: e.file, detail: e.detail });
      config = undefined;
    }
  }
  return { fileIndex, dtypes, config };
}

/** A dtype name of the mapping as a dtype this tool knows, or undefined (FP8 variants it does not). */
export function knownDType(name: string | undefined): DType | undefined {
  return name !== undefined && isDType(name) ? name : undefined;
}
