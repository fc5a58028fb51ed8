import type { PlannedTensor } from "../adapters/plan.js";
import { throwIfAborted } from "../errors.js";
import { itemSize } from "../tensor/dtype.js";
import { type Tensor, type TensorInfo, byteLength } from "../tensor/tensor.js";
import { scaleValues } from "../quant/dequantize.js";
import { Scratch, type Scaling, transfer } from "../tensor/transfer.js";
import { extent, rebase } from "../tensor/view.js";
import { BufferPool } from "./buffer-pool.js";
import { type Chunk, type ChunkSpan, type PieceTask, planChunks, readRuns } from "./chunks.js";

/** Where a stream reads input tensors from: positional reads of a tensor's bytes. */
export interface TensorSource {
  info(name: string): TensorInfo;
  read(name: string, offset: number, buf: Uint8Array, signal?: AbortSignal): Promise<void>;
  /**
   * The same read, done before returning. A stream prefers it: from the page cache a read is a copy the
   * main thread does faster itself than by handing it to another thread and waiting to hear it is done.
   */
  readSync?(name: string, offset: number, buf: Uint8Array): void;
  /** The bytes in place, without a copy, when the source holds them in memory. */
  view?(name: string, offset: number, length: number): Uint8Array | undefined;
  /** Bytes of chunks to read ahead (a network source's `readAhead`); without it, one chunk. */
  readonly readAhead?: number;
}

/** Where finished bytes of output tensors go, `offset` bytes into the tensor. */
export interface TensorSink {
  write(name: string, offset: number, bytes: Uint8Array): Promise<void>;
  /**
   * Whether `next` is stored right after `previous` in the same file. When it is, one write starting in
   * `previous` may run on into `next`: small tensors then share a chunk and a system call.
   */
  follows?(previous: string, next: string): boolean;
}

/**
 * A last step on each chunk's bytes, after its pieces are in place and before it is written: merging a
 * LoRA delta into base weights, say. `spans` says which bytes of which output tensors the chunk holds.
 * It may change the bytes in place, never their length.
 */
export type ChunkTransform = (bytes: Uint8Array, spans: readonly ChunkSpan[]) => void | Promise<void>;

export interface StreamOptions {
  readonly pool?: BufferPool;
  readonly transform?: ChunkTransform;
  /** Stops the stream between chunks; reads and writes already in flight are waited for first. */
  readonly signal?: AbortSignal;
  /** After each chunk is written: its bytes, and how many tensors it completed. */
  readonly onProgress?: (bytes: number, tensorsCompleted: number) => void;
}

/**
 * Chunk writes allowed in flight while the next chunk is read and transformed: enough that the writer
 * thread always has the next one queued, though the main thread only hears that a write is done when it
 * next waits.
 */
const MAX_PENDING_WRITES = 6;

interface Prepared {
  readonly chunk: Chunk;
  readonly buf: Uint8Array;
  /** Per piece: where its source bytes were read to (undefined when read straight into the chunk). */
  readonly regions: (Uint8Array | undefined)[];
  /** The buffers behind `regions`, to release once the chunk is transformed. */
  readonly held: Uint8Array[];
  /** Values of the scale tensors the chunk's quantized pieces need, by name. */
  readonly scales: ReadonlyMap<string, Float32Array>;
}

/**
 * Scale tensors are small (one float per tensor, row or 128×128 block) and shared by every chunk of their
 * weight, so the stream keeps the recent ones rather than reading a scale again for each chunk.
 */
const SCALE_CACHE_BYTES = 16 * 1024 * 1024;

class ScaleCache {
  private readonly values = new Map<string, Float32Array>();
  private bytes = 0;

  get(name: string): Float32Array | undefined {
    return this.values.get(name);
  }

  set(name: string, v: Float32Array): void {
    if (this.values.has(name)) return;
    this.values.set(name, v);
    this.bytes += v.byteLength;
    for (const [old, ov] of this.values) {
      if (this.bytes <= SCALE_CACHE_BYTES || old === name) break;
      this.values.delete(old);
      this.bytes -= ov.byteLength;
    }
  }
}

/** How a piece's scales apply to the region read for it (which starts at the piece's first element). */
function scalingOf(scale: PieceTask["scale"], scales: ReadonlyMap<string, Float32Array>, origin: number): Scaling | undefined {
  if (!scale) return undefined;
  const values = scales.get(scale.src);
  if (!values) throw new Error(`internal: scale ${scale.src} was not read`);
  return { scale, values, origin };
}

/**
 * Build planned tensors from a source into a sink, chunk by chunk: the next chunk's reads are in flight
 * while this one is transformed, and a few writes may trail behind. Memory stays at a few chunks.
 */
export async function streamTensors(
  tensors: readonly PlannedTensor[],
  source: TensorSource,
  sink: TensorSink,
  options: StreamOptions = {},
): Promise<void> {
  const pool = options.pool ?? new BufferPool();
  const scratch = new Scratch(pool);
  const scaleCache = new ScaleCache();
  const release = (bufs: readonly Uint8Array[]): void => {
    for (const b of bufs) pool.release(b);
  };

  const prepare = async (chunk: Chunk): Promise<Prepared> => {
    const buf = pool.acquire(chunk.byteLength);
    const regions: (Uint8Array | undefined)[] = chunk.pieces.map(() => undefined);
    const held: Uint8Array[] = [];
    const scales = new Map<string, Float32Array>();
    const reads: Promise<void>[] = [];
    const read = (name: string, offset: number, into: Uint8Array, then?: () => void): void => {
      if (source.readSync) {
        source.readSync(name, offset, into);
        then?.();
      } else reads.push(then ? source.read(name, offset, into, options.signal).then(then) : source.read(name, offset, into, options.signal));
    };
    let failure: { reason: unknown } | undefined;
    try {
      for (const p of chunk.pieces) {
        const name = p.scale?.src;
        if (name === undefined || scales.has(name)) continue;
        const cached = scaleCache.get(name);
        if (cached) {
          scales.set(name, cached);
          continue;
        }
        const info = source.info(name);
        const bytes = new Uint8Array(byteLength(info));
        scales.set(name, new Float32Array(0));
        read(name, 0, bytes, () => {
          const v = scaleValues(bytes, info.dtype);
          scales.set(name, v);
          scaleCache.set(name, v);
        });
      }
      for (const run of readRuns(chunk)) {
        const region = pool.acquire(run.end - run.start);
        held.push(region);
        for (const i of run.pieces) {
          const p = chunk.pieces[i]!;
          regions[i] = region.subarray(p.srcByteStart - run.start, p.srcByteStart - run.start + p.srcByteLength);
        }
        read(run.src, run.start, region);
      }
      for (const p of chunk.pieces) {
        if (p.directAt !== undefined) read(p.src, p.srcByteStart, buf.subarray(p.directAt, p.directAt + p.srcByteLength));
      }
    } catch (reason) {
      failure = { reason };
    }
    // Memory goes back to the pool, and the caller may close the files, only once no read is using them.
    for (const r of await Promise.allSettled(reads)) if (r.status === "rejected") failure ??= { reason: r.reason };
    if (failure) {
      release([buf, ...held]);
      throw failure.reason;
    }
    return { chunk, buf, regions, held, scales };
  };

  const iterator = planChunks(tensors, (name) => source.info(name).dtype, sink.follows?.bind(sink));
  const pending: Promise<void>[] = [];
  // Chunks being read, in order: one, or as many as fill a network source's read-ahead.
  const ahead: { prepared: Promise<Prepared>; bytes: number }[] = [];
  let aheadBytes = 0;
  const budget = source.readSync === undefined ? (source.readAhead ?? 0) : 0;
  let planned = false;
  const startNext = (): void => {
    while (!planned && (ahead.length === 0 || aheadBytes < budget)) {
      const r = iterator.next();
      if (r.done) {
        planned = true;
        return;
      }
      const prepared = prepare(r.value);
      prepared.catch(() => undefined);
      ahead.push({ prepared, bytes: r.value.byteLength });
      aheadBytes += r.value.byteLength;
    }
  };
  // Reads in flight overlap this chunk's transform; reads done in place would only hold back its write.
  const readAheadFirst = source.readSync === undefined;
  try {
    throwIfAborted(options.signal);
    startNext();
    while (ahead.length > 0) {
      const current = ahead.shift()!;
      aheadBytes -= current.bytes;
      const { chunk, buf, regions, held, scales } = await current.prepared;
      if (readAheadFirst) startNext();
      let written: Promise<void>;
      try {
        chunk.pieces.forEach((p, i) => {
          const region = regions[i];
          if (!region) return;
          const scaling = scalingOf(p.scale, scales, p.srcByteStart / itemSize(p.srcDType));
          transfer(region, p.srcDType, p.srcView, p.dstBase === 0 ? buf : buf.subarray(p.dstBase), p.dstDType, p.dstView, scratch, scaling);
        });
        if (options.transform) await options.transform(buf, chunk.spans);
        written = sink.write(chunk.tensor, chunk.byteStart, buf);
      } catch (e) {
        pool.release(buf);
        throw e;
      } finally {
        release(held);
      }
      const w = written.finally(() => pool.release(buf)).then(() => options.onProgress?.(chunk.byteLength, chunk.tensorsCompleted));
      w.catch(() => undefined);
      pending.push(w);
      throwIfAborted(options.signal);
      if (!readAheadFirst) startNext();
      while (pending.length > MAX_PENDING_WRITES) await pending.shift();
    }
    await Promise.all(pending);
  } finally {
    // Never leave reads or writes running behind a failure (the caller is about to delete their files and
    // close the sources), and give back what a chunk read ahead was holding.
    await Promise.allSettled(pending);
    for (const a of ahead.splice(0)) {
      const read = await a.prepared.catch(() => undefined);
      if (read) release([read.buf, ...read.held]);
    }
    scratch.release();
  }
}

/**
 * Build one planned tensor in memory (from the pool, so its transposes run in SIMD), reading only the byte
 * ranges its pieces need, or viewing them in place when the source already holds them in memory. The
 * caller releases `data` to the pool when done with it.
 */
export async function buildTensor(t: PlannedTensor, source: TensorSource, pool: BufferPool, scratch: Scratch): Promise<Tensor> {
  const data = pool.acquire(byteLength(t));
  try {
    for (const p of t.pieces) {
      const srcDType = source.info(p.src).dtype;
      const inItem = itemSize(srcDType);
      const { start, end } = extent(p.srcView);
      const inPlace = source.view?.(p.src, start * inItem, (end - start) * inItem);
      const region = inPlace ?? pool.acquire((end - start) * inItem);
      try {
        if (!inPlace) await source.read(p.src, start * inItem, region);
        let scaling: Scaling | undefined;
        if (p.scale) {
          const info = source.info(p.scale.src);
          const size = byteLength(info);
          const viewed = source.view?.(p.scale.src, 0, size);
          const bytes = viewed ?? new Uint8Array(size);
          if (!viewed) await source.read(p.scale.src, 0, bytes);
          scaling = { scale: p.scale, values: scaleValues(bytes, info.dtype), origin: start };
        }
        transfer(region, srcDType, rebase(p.srcView, start), data, t.dtype, p.dstView, scratch, scaling);
      } finally {
        if (!inPlace) pool.release(region);
      }
    }
  } catch (e) {
    pool.release(data);
    throw e;
  }
  return { dtype: t.dtype, shape: [...t.shape], data };
}
