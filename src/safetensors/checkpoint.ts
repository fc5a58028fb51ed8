import * as fs from "node:fs";
import * as path from "node:path";
import { FormatError, InputError } from "../errors.js";
import type { TensorInfo } from "../tensor/tensor.js";
import { SafetensorsFile } from "./file.js";
import type { TensorEntry } from "./header.js";
import { type JsonValue, JsonSyntaxError, describeJson, isJsonObject, parseJson, toPlain } from "./json.js";
import { FileSource, describeIoError, fileKind } from "./source.js";

export const SINGLE_FILE = "model.safetensors";
export const INDEX_FILE = "model.safetensors.index.json";
export const CONFIG_FILE = "config.json";

/** An index maps tensor names to shard names; 100 MB of it is far beyond any real model. */
const MAX_INDEX_BYTES = 100_000_000;
const MAX_CONFIG_BYTES = 16_000_000;

export interface StoredTensor extends TensorInfo {
  readonly name: string;
  readonly file: SafetensorsFile;
  readonly entry: TensorEntry;
}

export interface OpenOptions {
  /**
   * Let shards be symlinks that lead outside the folder (a Hugging Face cache snapshot links into
   * `../../blobs`). Off by default: an index must not be able to point the tool at arbitrary files.
   */
  followSymlinks?: boolean;
}

/**
 * A checkpoint on disk: a folder with `model.safetensors` or an index and its shards (or one bare
 * `.safetensors` file). Opening validates every header and the index against them, and reads no tensor data.
 */
export class Checkpoint {
  constructor(
    /** The folder, or undefined when a bare file was opened. */
    readonly dir: string | undefined,
    readonly files: readonly SafetensorsFile[],
    readonly tensors: ReadonlyMap<string, StoredTensor>,
    /** Folder-relative names of the files that hold the weights: shards and index. */
    readonly weightFiles: ReadonlySet<string>,
    readonly sharded: boolean,
    private readonly options: OpenOptions = {},
  ) {}

  static open(location: string, options: OpenOptions = {}): Checkpoint {
    let st: fs.Stats;
    try {
      st = fs.statSync(location);
    } catch (e) {
      throw new InputError(`${location}: cannot open checkpoint: ${describeIoError(e)}`);
    }
    if (st.isFile()) {
      const file = SafetensorsFile.open(location);
      return new Checkpoint(undefined, [file], tensorMap([file]), new Set(), false);
    }
    if (!st.isDirectory()) throw new InputError(`${location}: is ${fileKind(st)}, not a checkpoint folder or file`);

    const indexPath = path.join(location, INDEX_FILE);
    const singlePath = path.join(location, SINGLE_FILE);
    const hasIndex = present(indexPath);
    const hasSingle = present(singlePath);
    if (hasIndex && hasSingle) {
      throw new InputError(`${location}: holds both ${SINGLE_FILE} and ${INDEX_FILE}; it is unclear which is the checkpoint`);
    }
    if (!hasIndex && !hasSingle) {
      throw new InputError(`${location}: no ${SINGLE_FILE} or ${INDEX_FILE} in this folder`);
    }
    if (hasSingle) {
      const rel = SINGLE_FILE;
      const file = openShard(location, rel, options);
      return new Checkpoint(location, [file], tensorMap([file]), new Set([rel]), false, options);
    }
    return openIndexed(location, indexPath, options);
  }

  get totalBytes(): number {
    let n = 0;
    for (const t of this.tensors.values()) n += t.entry.end - t.entry.begin;
    return n;
  }

  /** `config.json` of the folder, parsed; a missing or broken config is the user's to fix. */
  readConfig(): Record<string, unknown> {
    if (this.dir === undefined) throw new InputError("a bare .safetensors file has no config.json; pass a checkpoint folder");
    const file = path.join(this.dir, CONFIG_FILE);
    if (present(file)) requireInside(this.dir, file, this.options);
    const value = readJsonFile(file, MAX_CONFIG_BYTES, (text) => toPlain(parseJson(text)));
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      throw new FormatError(file, "is not a JSON object");
    }
    return value as Record<string, unknown>;
  }

  close(): void {
    for (const f of this.files) f.close();
  }
}

/**
 * A file the folder names must not be a symlink out of it: an index or config pointing at arbitrary files
 * would read them (and echo their first bytes in errors). `--follow-symlinks` allows it, for cache snapshots.
 */
export function requireInside(dir: string, file: string, options: OpenOptions, real = fs.realpathSync(file), display = file): void {
  if (options.followSymlinks) return;
  const root = fs.realpathSync(dir);
  if (real !== root && !real.startsWith(root + path.sep)) {
    throw new FormatError(display, `is a symlink leading outside the checkpoint folder (to ${real}); pass --follow-symlinks to allow it`);
  }
}

/** Whether a name exists in the folder; a symlink to nowhere is an error, not an absence. */
function present(file: string): boolean {
  try {
    fs.lstatSync(file);
  } catch {
    return false;
  }
  try {
    fs.statSync(file);
  } catch (e) {
    throw new FormatError(file, `cannot be opened: ${describeIoError(e)} (a broken symlink?)`);
  }
  return true;
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

const UTF8 = new TextDecoder("utf-8", { fatal: true });

/**
 * A small JSON file, read through the same guarded open as shards (no blocking on a FIFO, regular files
 * only, size from the open file) and exactly as many bytes as that size, so the limit holds even for a
 * file that grows meanwhile.
 */
function readJsonFile<T>(file: string, limit: number, parse: (text: string) => T): T {
  const source = new FileSource(file);
  let text: string;
  try {
    if (source.size > limit) throw new FormatError(file, `is ${source.size} bytes, more than the ${limit}-byte limit for this file`);
    const bytes = new Uint8Array(source.size);
    source.readSync(bytes, 0);
    try {
      text = UTF8.decode(bytes);
    } catch {
      throw new FormatError(file, "is not valid UTF-8");
    }
  } finally {
    source.close();
  }
  try {
    return parse(text);
  } catch (e) {
    if (e instanceof JsonSyntaxError) throw new FormatError(file, `is not valid JSON: ${e.message}`);
    throw e;
  }
}

/**
 * Resolve a shard name from an index without letting it escape the folder: no absolute paths, no `..`,
 * and (unless allowed) no symlink whose target lies outside.
 */
function openShard(dir: string, rel: string, options: OpenOptions, indexFile?: string): SafetensorsFile {
  const where = indexFile ?? dir;
  const display = path.join(dir, rel);
  if (rel.length === 0 || rel.includes("\0")) throw new FormatError(where, `names an invalid shard ${JSON.stringify(rel)}`);
  if (path.isAbsolute(rel)) throw new FormatError(where, `names shard ${JSON.stringify(rel)} by absolute path; shards must lie inside the folder`);
  const normal = path.normalize(rel);
  if (normal === ".." || normal.startsWith(`..${path.sep}`) || normal.split(path.sep).includes("..")) {
    throw new FormatError(where, `names shard ${JSON.stringify(rel)}, which lies outside the folder`);
  }
  const full = path.join(dir, normal);
  let real: string;
  try {
    real = fs.realpathSync(full);
  } catch (e) {
    throw new FormatError(where, `names shard ${JSON.stringify(rel)}, which cannot be opened: ${describeIoError(e)}`);
  }
  requireInside(dir, full, options, real, display);
  return SafetensorsFile.open(full, display);
}

function openIndexed(dir: string, indexPath: string, options: OpenOptions): Checkpoint {
  requireInside(dir, indexPath, options);
  const index = readJsonFile(indexPath, MAX_INDEX_BYTES, parseJson);
  if (!isJsonObject(index)) throw new FormatError(indexPath, `is ${describeJson(index)}, not a JSON object`);
  const weightMap = index.get("weight_map");
  if (weightMap === undefined) throw new FormatError(indexPath, "has no weight_map");
  if (!isJsonObject(weightMap)) throw new FormatError(indexPath, `weight_map is ${describeJson(weightMap)}, not an object`);

  const byShard = new Map<string, string[]>();
  for (const [tensor, shard] of weightMap as Map<string, JsonValue>) {
    if (typeof shard !== "string") {
      throw new FormatError(indexPath, `weight_map entry for ${JSON.stringify(tensor)} is ${describeJson(shard)}, not a file name`);
    }
    const list = byShard.get(shard) ?? [];
    list.push(tensor);
    byShard.set(shard, list);
  }

  const files: SafetensorsFile[] = [];
  const weightFiles = new Set<string>([INDEX_FILE]);
  const opened = new Map<string, SafetensorsFile>();
  try {
    for (const shard of byShard.keys()) {
      const key = path.normalize(shard);
      if (opened.has(key)) throw new FormatError(indexPath, `names the same shard twice (${JSON.stringify(shard)})`);
      const file = openShard(dir, shard, options, indexPath);
      opened.set(key, file);
      files.push(file);
      weightFiles.add(key);
    }
    const tensors = tensorMap(files);
    for (const [shard, names] of byShard) {
      const file = opened.get(path.normalize(shard))!;
      for (const name of names) {
        if (!file.tensors.has(name)) {
          throw new FormatError(indexPath, `lists tensor ${JSON.stringify(name)} in ${shard}, which does not hold it`);
        }
      }
    }
    for (const t of tensors.values()) {
      const listed = weightMap.get(t.name);
      if (listed === undefined) {
        throw new FormatError(t.file.name, `is not listed in ${INDEX_FILE}`, t.name);
      }
    }
    return new Checkpoint(dir, files, tensors, weightFiles, true, options);
  } catch (e) {
    for (const f of files) f.close();
    throw e;
  }
}
