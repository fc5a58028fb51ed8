import * as fs from "node:fs";
import * as path from "node:path";
import { INDEX_FILE, SINGLE_FILE } from "./checkpoint.js";
import { describeIoError } from "./source.js";
import {
  type DeclaredTensor,
  DEFAULT_METADATA,
  SafetensorsFileWriter,
  WriteError,
} from "./writer.js";
import { byteLength } from "../tensor/tensor.js";
import { DEFAULT_MAX_SHARD_SIZE } from "./shard-size.js";

// Still exported from here, where library callers have always found it.
export { DEFAULT_MAX_SHARD_SIZE };

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

export interface TensorLocation {
  readonly shard: number;
  /** Offset of the tensor within its shard's data section. */
  readonly offset: number;
  readonly size: number;
}

/**
 * Writes a whole checkpoint's weights into a folder: every shard's header up front, tensor data at known
 * positions in any order, then (on `finish`) data synced, headers read back, and the index written last.
 */
export class ShardedWriter {
  readonly plans: readonly ShardPlan[];
  private readonly writers: SafetensorsFileWriter[] = [];
  private readonly locations = new Map<string, TensorLocation>();
  private readonly syncs: Promise<void>[] = [];

  constructor(
    readonly dir: string,
    tensors: readonly DeclaredTensor[],
    maxShardSize = DEFAULT_MAX_SHARD_SIZE,
  ) {
    this.plans = planShards(tensors, maxShardSize);
    try {
      this.plans.forEach((plan, shard) => {
        const w = new SafetensorsFileWriter(path.join(dir, plan.file), plan.tensors, DEFAULT_METADATA);
        this.writers.push(w);
        plan.tensors.forEach((t, i) => {
          if (this.locations.has(t.name)) throw new RangeError(`tensor ${JSON.stringify(t.name)} declared twice`);
          this.locations.set(t.name, { shard, offset: w.header.offsets[i]!, size: byteLength(t) });
        });
      });
    } catch (e) {
      this.abandon();
      throw e;
    }
  }

  get totalSize(): number {
    return this.plans.reduce((n, p) => n + p.dataSize, 0);
  }

  locate(name: string): TensorLocation {
    const loc = this.locations.get(name);
    if (!loc) throw new RangeError(`tensor ${JSON.stringify(name)} was not declared`);
    return loc;
  }

  /** A write may start in one tensor and run on into the tensors stored after it in the same shard. */
  private target(name: string, offset: number, length: number): { w: SafetensorsFileWriter; at: number } {
    const loc = this.locate(name);
    const w = this.writers[loc.shard]!;
    if (offset < 0 || offset > loc.size || loc.offset + offset + length > w.header.dataSize) {
      throw new RangeError(`write of ${length} bytes at ${offset} is outside tensor ${JSON.stringify(name)} and its shard`);
    }
    return { w, at: loc.offset + offset };
  }

  /** Whether `next` is stored immediately after `previous` in the same shard. */
  follows(previous: string, next: string): boolean {
    const a = this.locations.get(previous);
    const b = this.locations.get(next);
    return a !== undefined && b !== undefined && a.shard === b.shard && a.offset + a.size === b.offset;
  }

  /** Write part of a tensor's bytes, `offset` bytes into the tensor (possibly running on into the next). */
  writeSync(name: string, offset: number, bytes: Uint8Array): void {
    const { w, at } = this.target(name, offset, bytes.byteLength);
    w.writeSync(at, bytes);
    this.syncIfComplete(w);
  }

  async write(name: string, offset: number, bytes: Uint8Array): Promise<void> {
    const { w, at } = this.target(name, offset, bytes.byteLength);
    await w.write(at, bytes);
    this.syncIfComplete(w);
  }

  /** A finished shard is synced right away, overlapping with the writes of the next. */
  private syncIfComplete(w: SafetensorsFileWriter): void {
    if (w.complete && !this.syncing.has(w)) {
      this.syncing.add(w);
      const p = w.finish();
      p.catch(() => undefined);
      this.syncs.push(p);
    }
  }
  private readonly syncing = new Set<SafetensorsFileWriter>();

  /**
   * Complete the folder's weights: wait for every shard to be durable, confirm each on disk (size and a
   * fresh read of its header), then write and sync the index. Returns the folder-relative names written.
   */
  async finish(verify: (file: string, expectedSize: number, header: Uint8Array) => void): Promise<string[]> {
    for (const w of this.writers) this.syncIfComplete(w);
    const incomplete = this.writers.find((w) => !w.complete);
    if (incomplete) throw new Error(`${incomplete.path}: not every tensor was written`);
    await Promise.all(this.syncs);
    for (const w of this.writers) verify(w.path, w.size, w.header.bytes);
    return writeIndex(this.dir, this.plans);
  }

  abandon(): void {
    for (const w of this.writers) w.abandon();
  }
}

/**
 * `model.safetensors.index.json` for sharded plans (nothing for one shard), keys sorted as UTF-8 bytes and
 * written as own properties so a tensor named `__proto__` is listed too. Returns the files of the folder.
 */
export function writeIndex(dir: string, plans: readonly ShardPlan[]): string[] {
  const names = plans.map((p) => p.file);
  if (plans.length < 2) return names;
  const entries: [string, string, Buffer][] = [];
  for (const p of plans) for (const t of p.tensors) entries.push([t.name, p.file, Buffer.from(t.name, "utf8")]);
  entries.sort((a, b) => Buffer.compare(a[2], b[2]));
  // Object.fromEntries defines own properties, so a tensor named `__proto__` is listed like any other.
  const weightMap = Object.fromEntries(entries.map(([k, v]) => [k, v]));
  const totalSize = plans.reduce((n, p) => n + p.dataSize, 0);
  writeFileDurably(path.join(dir, INDEX_FILE), `${JSON.stringify({ metadata: { total_size: totalSize }, weight_map: weightMap }, null, 2)}\n`);
  return [...names, INDEX_FILE];
}

/** Write a small file and sync it before returning. */
export function writeFileDurably(file: string, content: string | Uint8Array): void {
  let fd: number | undefined;
  try {
    fd = fs.openSync(file, "wx", 0o644);
    fs.writeFileSync(fd, content);
    fs.fsyncSync(fd);
  } catch (e) {
    throw new WriteError(`${file}: write failed: ${describeIoError(e)}`);
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

/**
 * Confirm a finished shard on disk: its size, and a fresh read of its header compared byte for byte with
 * the one written. The header was built by our own encoder, so re-parsing it would only prove the encoder
 * again (at ~15 µs per tensor); what can go wrong here is the disk or the file system, and any change to the
 * bytes shows.
 */
export function checkShardOnDisk(file: string, expectedSize: number, header: Uint8Array): void {
  let size: number;
  const back = Buffer.alloc(header.byteLength);
  try {
    const fd = fs.openSync(file, "r");
    try {
      size = fs.fstatSync(fd).size;
      let done = 0;
      while (done < back.byteLength) {
        const n = fs.readSync(fd, back, done, back.byteLength - done, done);
        if (n === 0) break;
        done += n;
      }
    } finally {
      fs.closeSync(fd);
    }
  } catch (e) {
    throw new WriteError(`${file}: cannot be read back after writing: ${describeIoError(e)}`);
  }
  if (size !== expectedSize) throw new WriteError(`${file}: is ${size} bytes after writing, expected ${expectedSize}`);
  if (!back.equals(header)) throw new WriteError(`${file}: its header does not read back as written`);
}
