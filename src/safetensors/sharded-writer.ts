import type { OutputStore } from "../io/output.js";
import { byteLength } from "../tensor/tensor.js";
import { type DeclaredTensor, DEFAULT_METADATA } from "./encode.js";
import { SafetensorsFileWriter } from "./file-writer.js";
import { INDEX_FILE, type ShardPlan, indexJson, planShards } from "./shard-plan.js";
import { DEFAULT_MAX_SHARD_SIZE } from "./shard-size.js";

export interface TensorLocation {
  readonly shard: number;
  /** Offset of the tensor within its shard's data section. */
  readonly offset: number;
  readonly size: number;
}

const encoder = new TextEncoder();

/**
 * Writes a whole checkpoint's weights into an output: every shard's header up front, tensor data at known
 * positions in any order, then (on `finish`) data made durable, shards checked as they read back, and the
 * index written last.
 */
export class ShardedWriter {
  private readonly writers: SafetensorsFileWriter[] = [];
  private readonly locations = new Map<string, TensorLocation>();
  private readonly syncs: Promise<void>[] = [];
  private readonly syncing = new Set<SafetensorsFileWriter>();

  private constructor(
    readonly store: OutputStore,
    readonly plans: readonly ShardPlan[],
    /** Whether `finish` writes the index (not when these plans are only some of a checkpoint's shards). */
    private readonly writeIndex = true,
  ) {}

  /** Shards cut by size from tensors in write order. */
  static create(store: OutputStore, tensors: readonly DeclaredTensor[], maxShardSize = DEFAULT_MAX_SHARD_SIZE): Promise<ShardedWriter> {
    return ShardedWriter.fromPlans(store, planShards(tensors, maxShardSize));
  }

  /**
   * Shards as given (file names and the tensors of each, in order). With `index: false` the index is left
   * to the caller: these shards are only part of a checkpoint (one part of a consolidation split over
   * several processes).
   */
  static async fromPlans(store: OutputStore, plans: readonly ShardPlan[], options: { readonly index?: boolean } = {}): Promise<ShardedWriter> {
    const sw = new ShardedWriter(store, plans, options.index ?? true);
    try {
      for (const [shard, plan] of plans.entries()) {
        const w = await SafetensorsFileWriter.create(store, plan.file, plan.tensors, DEFAULT_METADATA);
        sw.writers.push(w);
        plan.tensors.forEach((t, i) => {
          if (sw.locations.has(t.name)) throw new RangeError(`tensor ${JSON.stringify(t.name)} declared twice`);
          sw.locations.set(t.name, { shard, offset: w.header.offsets[i]!, size: byteLength(t) });
        });
      }
    } catch (e) {
      sw.abandon();
      throw e;
    }
    return sw;
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

  /** A finished shard is made durable right away, overlapping with the writes of the next. */
  private syncIfComplete(w: SafetensorsFileWriter): void {
    if (w.complete && !this.syncing.has(w)) {
      this.syncing.add(w);
      const p = w.finish();
      p.catch(() => undefined);
      this.syncs.push(p);
    }
  }

  /**
   * Complete the output's weights: wait for every shard to be durable, confirm each as it reads back (where
   * the store can), then write the index. Returns the output-relative names written.
   */
  async finish(): Promise<string[]> {
    for (const w of this.writers) this.syncIfComplete(w);
    const incomplete = this.writers.find((w) => !w.complete);
    if (incomplete) throw new Error(`${incomplete.name}: not every tensor was written`);
    await Promise.all(this.syncs);
    if (this.store.check) {
      for (const [i, w] of this.writers.entries()) await this.store.check(this.plans[i]!.file, w.size, w.header.bytes);
    }
    const names = this.plans.map((p) => p.file);
    const index = this.writeIndex ? indexJson(this.plans) : undefined;
    if (index === undefined) return names;
    await this.store.writeFile(INDEX_FILE, encoder.encode(index));
    return [...names, INDEX_FILE];
  }

  abandon(): void {
    for (const w of this.writers) w.abandon();
  }
}
